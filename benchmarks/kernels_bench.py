"""Components + statistics + RECIST axes on the GPU against their CPU twins, on the same labels, in one run.

    python benchmarks/kernels_bench.py [--shape 250 512 512] [--repeat 5]

The foreground is the default model's on the whole-neck benchmark phantom when lnrt can run it here, else
a field of random blobs of node size (`--blobs`). Each side runs `label_components` then
`component_stats` (with HU and probability sums): the CPU twins (cc3d + one-pass NumPy) and the CUDA
launchers (CuPy; device synchronised before each clock read), then the RECIST axes of every component
(`lnrt.nodes.node_axes` against `kernels/recist.cu`), timed apart and together. Checks that both give the
same labels, statistics and axes (within 1e-4 mm), and writes `benchmarks/results/<host>-<date>-kernels.json`
with both medians and the ratios.
Without a usable GPU it says why and exits 0 (the CUDA side is also tested under the CPU emulation).
`--emulate` runs the CUDA side under that emulation (tests/cuda_emu) instead: a check of this script, whose
timings mean nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

from lnrt import nodes
from lnrt.bench import machine_info, save_result

import gpu_side  # benchmarks/, beside this script


def blobs(shape, n: int, seed: int = 0) -> np.ndarray:
    """n ellipsoids of 3-15 mm (at 1 x 0.5 x 0.5 mm) at random places."""
    rng = np.random.default_rng(seed)
    fg = np.zeros(shape, bool)
    for _ in range(n):
        r = rng.uniform(3, 15, 3) / np.array([1.0, 0.5, 0.5]) / 2
        c = rng.uniform(r, np.array(shape) - r)
        lo = np.maximum(0, (c - r).astype(int))
        hi = np.minimum(shape, (c + r).astype(int) + 1)
        z, y, x = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        fg[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + (
            (x - c[2]) / r[2]) ** 2 <= 1
    return fg


def timed(fn, repeat: int, sync=lambda: None) -> tuple:
    times, out = [], None
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return out, round(float(np.median(times)), 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(250, 512, 512))
    ap.add_argument("--blobs", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--emulate", action="store_true", help="the CUDA side under the CPU emulation (a check)")
    args = ap.parse_args()
    from lnrt.kernels import cuda

    if gpu_side.usable(args.emulate):
        with gpu_side.emulation() if args.emulate else contextlib.nullcontext():
            run(args, cuda.cupy(), cuda)


def run(args, cp, cuda) -> None:
    fg = blobs(tuple(args.shape), args.blobs)
    rng = np.random.default_rng(1)
    hu = rng.normal(40, 20, fg.shape).astype(np.float32)
    prob = rng.random(fg.shape).astype(np.float32)

    spacing = (1.0, 0.5, 0.5)

    def cpu():
        lab, n = nodes.label_components(fg, 26)
        return lab, n, nodes.component_stats(lab, n, hu, prob)

    def cpu_axes(lab, n, st):
        return nodes.node_axes(lab, np.arange(1, n + 1), st["bbox"], spacing)

    def gpu_axes(lab, n, st):
        return cuda.recist_axes(lab, np.arange(1, n + 1), st["bbox"], spacing)

    d_fg, d_hu, d_prob = cp.asarray(fg), cp.asarray(hu), cp.asarray(prob)
    sync = cp.cuda.get_current_stream().synchronize

    def gpu():
        lab, n = cuda.label_components(d_fg, 26)
        return lab, n, cuda.component_stats(lab, n, d_hu, d_prob)

    lab0, n0, st0 = gpu()  # compile the kernels (NVRTC) outside the timing
    gpu_axes(lab0, n0, st0)
    (lab_c, n_c, st_c), t_cpu = timed(cpu, args.repeat)
    (lab_g, n_g, st_g), t_gpu = timed(gpu, args.repeat, sync)
    ax_c, t_cpu_axes = timed(lambda: cpu_axes(lab_c, n_c, st_c), max(1, args.repeat // 2))
    ax_g, t_gpu_axes = timed(lambda: gpu_axes(lab_g, n_g, st_g), args.repeat, sync)
    same = (n_c == n_g and bool((cp.asnumpy(lab_g) == lab_c).all())
            and all(np.array_equal(st_c[k], st_g[k]) for k in ("count", "bbox", "first"))
            and np.allclose(st_c["sums"], st_g["sums"], rtol=1e-9))
    axes_diff = max((max(abs(a.long_mm - b.long_mm), abs(a.short_mm - b.short_mm)) for a, b in zip(ax_c, ax_g)
                     if a is not None and b is not None), default=0.0)
    same_axes = [a is None for a in ax_c] == [b is None for b in ax_g] and axes_diff <= 1e-4
    total_cpu, total_gpu = t_cpu + t_cpu_axes, t_gpu + t_gpu_axes
    result = {"benchmark": "kernels", "date": dt.date.today().isoformat(), "machine": machine_info(),
              "emulated": bool(args.emulate),
              "shape_zyx": list(args.shape), "components": int(n_c), "same_result": bool(same),
              "cpu_s": t_cpu, "gpu_s": t_gpu, "ratio_cpu_over_gpu": round(t_cpu / t_gpu, 2),
              "axes": {"same_result": bool(same_axes), "max_diff_mm": axes_diff, "cpu_s": t_cpu_axes,
                       "gpu_s": t_gpu_axes, "ratio_cpu_over_gpu": round(t_cpu_axes / t_gpu_axes, 2)},
              "with_axes": {"cpu_s": round(total_cpu, 5), "gpu_s": round(total_gpu, 5),
                            "ratio_cpu_over_gpu": round(total_cpu / total_gpu, 2), "target_ratio": 20}}
    print(json.dumps(result, indent=1))
    print(f"wrote {save_result(result, args.out, 'kernels')}")
    sys.exit(0 if same and same_axes else 1)


if __name__ == "__main__":
    main()
