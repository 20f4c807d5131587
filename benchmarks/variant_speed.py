"""Per-tile network latency of each precision variant on each CPU backend (issues: export, bench).

    python benchmarks/variant_speed.py [--model PKG] [--repeat 10]

Runs a batch of `batch_size` real tiles (a neck phantom, preprocessed as `lnrt infer` does) through every
variant file in the package on ONNX Runtime and OpenVINO, after a warm-up, and records the median
seconds per tile and the max logit difference from FP32 on ONNX Runtime. Writes
`benchmarks/results/<host>-<date>-variant-speed.json`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    import lnrt
    from lnrt.backends import available, create_backend
    from lnrt.bench import machine_info, save_result
    from lnrt.compare import _tiles
    from lnrt.models.neck import random_scan

    pkg = lnrt.ModelPackage.load(args.model)
    vol = random_scan(41005)[0]
    with lnrt.Session(pkg, backend="onnxruntime") as s:
        tiles = _tiles(s, vol, n=2)
        batch = np.concatenate(tiles)
        ref = s.backend.run(batch)
    rows = []
    for backend in available():
        for variant in pkg.variants():
            be = create_backend(pkg.onnx_path(variant), backend, "cpu", args.threads)
            be.run(batch)
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                out = be.run(batch)
                times.append((time.perf_counter() - t0) / len(batch))
            rows.append({"backend": backend, "variant": variant, "s_per_tile": round(float(np.median(times)), 4),
                         "max_abs_logit_diff_vs_fp32_ort": round(float(np.abs(out - ref).max()), 4),
                         "argmax_agreement": round(float((out.argmax(1) == ref.argmax(1)).mean()), 6),
                         "engine": be.describe(),
                         # timed either way; lnrt itself refuses a variant where its gate failed
                         "gate_on_this_backend": "failed" if backend in pkg.gate_failed_on(variant) else "passed"})
            print(f"{backend:<12} {variant:<5} {rows[-1]['s_per_tile']:.3f} s/tile", flush=True)
            be.close()
    res = {"schema": "lnrt.variant-speed/1", "date": dt.date.today().isoformat(), "machine": machine_info(args.threads),
           "model": {"name": pkg.name, "version": pkg.version, "patch_zyx": list(pkg.patch_zyx),
                     "variants": {v: pkg.sha256(v) for v in pkg.variants()}},
           "tiles": len(batch), "repeat": args.repeat, "rows": rows}
    path = save_result(res, args.out, "variant-speed")
    print(path)


if __name__ == "__main__":
    main()
