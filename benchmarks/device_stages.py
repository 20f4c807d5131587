"""The whole-neck scan through the stages on the GPU against the CPU, per stage, in one run.

    python benchmarks/device_stages.py [--size 512x512x250] [--repeat 3] [--backend onnxruntime]

Writes the whole-neck phantom (512 x 512 x 250 at 0.5 x 0.5 x 1 mm, `lnrt bench`'s synthetic scan), runs
it with one `lnrt.Session` twice per repeat: once with the stages on the CPU and once on the GPU
(`lnrt.device.cuda_device()`; the network on the session's backend either way, so the comparison is of
the stages: a CPU backend's batches go to the host and back, timed as "network"). Records each stage's
median, "after the network" (postprocess + components + rules + measure + output: the issue's 150 ms
target), end to end with reading, the parity (node-mask Dice, node count, largest short-axis difference)
and what CuPy's memory pool holds at the end, to `benchmarks/results/<host>-<date>-device-stages.json`. Without a usable GPU
it says why and exits 0 (the same stage code runs in CI on the NumPy stand-in: tests/test_device_pipeline.py).
`--emulate` runs the "GPU" side on that stand-in instead: a check of this script, whose timings mean nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import gpu_side  # benchmarks/, beside this script

AFTER_NETWORK = ("postprocess", "components", "rules", "measure", "output")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    fa, fb = a > 0, b > 0
    total = int(fa.sum() + fb.sum())
    return 1.0 if total == 0 else 2.0 * int((fa & fb).sum()) / total


def _runs(session, path: Path, device, repeat: int) -> tuple:
    session.device = device
    session.run(path)  # warm-up: NVRTC compiles the kernels, the memory pool fills
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = session.run(path)
        times.append({**result.timings, "end_to_end": time.perf_counter() - t0})
    med = {k: round(float(np.median([t.get(k, 0.0) for t in times])), 4) for k in times[0]}
    med["after_network"] = round(sum(med.get(k, 0.0) for k in AFTER_NETWORK), 4)
    return med, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="512x512x250")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--emulate", action="store_true", help="the GPU side on the NumPy stand-in (a check)")
    args = ap.parse_args()
    import lnrt
    from lnrt.bench import parse_size, synthetic_scan
    from lnrt.device import CPU, cuda_device

    if not gpu_side.usable(args.emulate):
        return
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        s = stack.enter_context(lnrt.Session(backend=args.backend))
        device, pool = (stack.enter_context(gpu_side.emulation()), None) if args.emulate else (cuda_device(), _pool())
        path = synthetic_scan(parse_size(args.size), out_dir=Path(tmp))
        cpu, a = _runs(s, path, CPU, args.repeat)
        gpu, b = _runs(s, path, device, args.repeat)
        s.device = CPU
    report(args, cpu, gpu, a, b, pool)


def _pool():
    import cupy
    return cupy.get_default_memory_pool()


def report(args, cpu: dict, gpu: dict, a, b, pool) -> None:
    from lnrt.bench import machine_info, parse_size, save_result

    short = [abs(x["short_axis_mm"] - y["short_axis_mm"]) for x, y in zip(a.nodes, b.nodes)]
    parity = {"dice": round(_dice(a.labels, b.labels), 6), "nodes_cpu": len(a.nodes), "nodes_gpu": len(b.nodes),
              "max_short_axis_diff_mm": round(max(short, default=0.0), 4)}
    result = {"benchmark": "device-stages", "date": dt.date.today().isoformat(), "machine": machine_info(),
              "scan": {"size_xyz": list(parse_size(args.size)), "spacing_xyz_mm": [0.5, 0.5, 1.0]},
              "backend": args.backend, "cpu_s": cpu, "gpu_s": gpu,
              "after_network_ratio_cpu_over_gpu": round(cpu["after_network"] / max(gpu["after_network"], 1e-9), 2),
              "emulated": bool(args.emulate), "parity": parity,
              "gpu_pool_mb": None if pool is None else round(pool.total_bytes() / 2**20, 1),
              "targets": {"after_network_under_150_ms": gpu["after_network"] < 0.150}}
    print(json.dumps(result, indent=1))
    print(f"wrote {save_result(result, args.out, 'device-stages')}")
    ok = (parity["dice"] >= 0.999 and parity["nodes_cpu"] == parity["nodes_gpu"]
          and parity["max_short_axis_diff_mm"] <= 0.1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
