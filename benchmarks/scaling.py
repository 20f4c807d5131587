"""Cost against volume size: `lnrt bench` over a sweep of synthetic neck phantoms (issue: bench).

    python benchmarks/scaling.py [--sizes 128 256x256x128 ...] [--repeat 2] [--backend auto]

Each size is a generated neck phantom at 0.5 x 0.5 x 1 mm (the neck centred, so larger fields of view
add air and body edges around it, as real scans do). Records every stage's median against the voxel
count, fits end-to-end time = a + b * voxels by least squares, and reports each size's deviation from
the fit. Writes `benchmarks/results/<host>-<date>-scaling-<backend>.json` and prints a table.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np

SIZES = ["128x128x128", "256x256x128", "256x256x256", "384x384x200", "512x512x250", "512x512x400"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=SIZES)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    from lnrt.bench import STAGES, bench, machine_info, save_result

    points = []
    for size in args.sizes:
        r = bench(synthetic=size, backend=args.backend, repeat=args.repeat, warmup=1)
        points.append({"size_xyz": r["scan"]["size_xyz"], "voxels": r["scan"]["voxels"], "tiles": r["tiles"],
                       "nodes": r["nodes"], "peak_host_memory_mb": r["peak_host_memory_mb"],
                       "stages_median_s": {k: r["stages_s"][k]["median"] for k in STAGES + ("end_to_end",)}})
        engine = r["engine"]
        print(f"{size}: {points[-1]['stages_median_s']['end_to_end']:.2f} s, {r['tiles']} tiles", file=sys.stderr,
              flush=True)
    v = np.array([p["voxels"] for p in points], dtype=np.float64)
    t = np.array([p["stages_median_s"]["end_to_end"] for p in points])
    b, a = np.polyfit(v, t, 1)
    for p, ti, vi in zip(points, t, v):
        p["fit_s"] = round(float(a + b * vi), 3)
        p["deviation_pct"] = round(float(100 * (ti - (a + b * vi)) / (a + b * vi)), 1)
        p["us_per_kvoxel"] = round(float(1e9 * ti / vi / 1e3), 2)
    res = {"schema": "lnrt.scaling/1", "date": dt.date.today().isoformat(), "machine": machine_info(),
           "engine": engine, "fit": {"intercept_s": round(float(a), 3), "s_per_mvoxel": round(float(b * 1e6), 4)},
           "points": points}
    path = save_result(res, args.out, f"scaling-{engine['backend']}")
    print(f"{'size (x y z)':<14} {'M voxels':>8} {'tiles':>6} {'e2e s':>7} {'network':>8} {'fit s':>7} {'dev %':>6}")
    for p in points:
        print(f"{'x'.join(map(str, p['size_xyz'])):<14} {p['voxels'] / 1e6:>8.1f} {p['tiles']:>6} "
              f"{p['stages_median_s']['end_to_end']:>7.2f} {p['stages_median_s']['network']:>8.2f} "
              f"{p['fit_s']:>7.2f} {p['deviation_pct']:>6.1f}")
    print(path)


if __name__ == "__main__":
    main()
