"""Whole-neck-sized CPU benchmark of `lnrt infer` (issue: core runtime).

    python benchmarks/cpu_infer.py [--repeat 3] [--shape 250 512 512] [--spacing 1.0 0.5 0.5]

Generates a neck phantom (lnrt.models.neck, seed 40000) of the given size (default 512 x 512 x 250
voxels at 0.5 x 0.5 x 1 mm: a 256 mm field of view, the neck centred in 250 mm of slices),
runs `lnrt infer` on it in a fresh process per repeat (so the peak RSS is that run's own), and writes
`benchmarks/results/<host>-<date>-cpu-infer.json` with the per-stage times of every repeat, their
median, and the peak resident memory of each run. Nothing is asserted: this records numbers.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lnrt.bench import machine_info, save_result, synthetic_scan


def run_once(scan: Path, out: Path, model: str | None = None, extra_args=()) -> dict:
    # the child's own VmHWM: ru_maxrss survives fork + exec on Linux, so it would include this script's
    # peak (rendering the phantom: about 1.47 GB, which results before 2026-12-01 report)
    code = ("import sys, json; from lnrt.cli import main; rc = main(sys.argv[1:]); "
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
            "print(json.dumps({'rc': rc, 'maxrss_kb': int(hwm)}), file=sys.stderr)")
    t0 = time.perf_counter()
    extra = (["--model", model] if model else []) + list(extra_args)
    proc = subprocess.run([sys.executable, "-c", code, "infer", str(scan), "--out", str(out), "--json",
                           "--overwrite", *extra], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    report = json.loads(proc.stdout)
    child = json.loads(proc.stderr.strip().splitlines()[-1])
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(child["maxrss_kb"] / 1024, 1),
            "stages_s": report["timings_s"], "nodes": len(report["nodes"]),
            "model_grid_zyx": report["settings"]["model_grid_zyx"],
            "body_box_zyx": report["settings"]["body_box_zyx"], "model": report["model"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(250, 512, 512), help="z y x voxels")
    ap.add_argument("--spacing", type=float, nargs=3, default=(1.0, 0.5, 0.5), help="z y x mm")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--model", default=None, help="model package (default: the embedded one)")
    ap.add_argument("--backend", default=None, help="passed to lnrt infer (default: its automatic choice)")
    ap.add_argument("--variant", default=None, help="passed to lnrt infer (default: fp32)")
    args = ap.parse_args()
    from lnrt.models.neck import make_spec

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nodes = make_spec(40000).nodes
        scan = synthetic_scan(tuple(args.shape[::-1]), tuple(args.spacing[::-1]), seed=40000, out_dir=tmp)
        extra = (["--backend", args.backend] if args.backend else []) + (["--variant", args.variant] if args.variant else [])
        runs = [run_once(scan, tmp / "out", args.model, extra) for _ in range(args.repeat)]
        file_mb = scan.stat().st_size / 2**20
    stages = sorted({k for r in runs for k in r["stages_s"]})
    median = {k: round(float(np.median([r["stages_s"].get(k, 0.0) for r in runs])), 3) for k in stages}
    result = {
        "benchmark": "cpu_infer", "date": dt.date.today().isoformat(),
        "machine": machine_info(),
        "scan": {"shape_zyx": list(args.shape), "spacing_zyx_mm": list(args.spacing),
                 "file_mb": round(file_mb, 1), "true_nodes": len(nodes)},
        "median_stages_s": median, "median_wall_s": round(float(np.median([r["wall_s"] for r in runs])), 3),
        "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": runs,
    }
    engine = runs[0]["model"]
    tag = f"-{engine['backend']}-{engine.get('variant', 'fp32')}" if (args.backend or args.variant) else ""
    path = save_result(result, args.out, f"cpu-infer{tag}")
    print(json.dumps({k: result[k] for k in ("median_stages_s", "median_wall_s", "max_peak_rss_mb")}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
