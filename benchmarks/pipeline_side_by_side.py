"""Everything but the network, side by side: this checkout's `lnrt infer` against another checkout's
(today's main in a `git worktree`, installed in its own venv), same scan, same backend, one run.

    python benchmarks/pipeline_side_by_side.py --baseline-python /path/to/main-venv/bin/python [--repeat 5]

Generates the whole-neck benchmark scan once (lnrt.bench.synthetic_scan: 512 x 512 x 250 voxels at
0.5 x 0.5 x 1 mm, seed 40000), then runs `lnrt infer --json` in a fresh process per run, alternating the
two checkouts (A B A B ...), so both see the same machine state. Per run: the report's stage timings and
the process's peak resident memory (its VmHWM). "non_network_s" is every stage but the network and the write (read,
preprocess, accumulate, postprocess, components, rules, measure, output; the older lnrt has no rules or
output stage). Writes `benchmarks/results/<host>-<date>-pipeline-side-by-side.json` with both medians and
the ratio. Nothing is asserted: this records numbers.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from lnrt.bench import machine_info, save_result, synthetic_scan

# Peak memory from the child's own VmHWM: getrusage's ru_maxrss survives fork + exec on Linux, so a child
# of this script (which renders a 1.4 GB phantom first) would report at least the parent's peak.
CODE = ("import sys, json; from lnrt.cli import main; rc = main(sys.argv[1:]); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
        "print(json.dumps({'rc': rc, 'maxrss_kb': int(hwm)}), file=sys.stderr)")
EXCLUDED = ("network", "write", "total")


def run_once(python: str, scan: Path, out: Path, extra: list) -> dict:
    proc = subprocess.run([python, "-c", CODE, "infer", str(scan), "--out", str(out), "--json", "--overwrite",
                           "--no-viewer", *extra], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    report = json.loads(proc.stdout)
    child = json.loads(proc.stderr.strip().splitlines()[-1])
    st = report["timings_s"]
    return {"stages_s": st, "non_network_s": round(sum(v for k, v in st.items() if k not in EXCLUDED), 4),
            "peak_rss_mb": round(child["maxrss_kb"] / 1024, 1), "nodes": len(report["nodes"]),
            "labels_nodes": [n["short_axis_mm"] for n in report["nodes"]], "engine": report["model"]["backend"]}


def summary(runs: list) -> dict:
    stages = sorted({k for r in runs for k in r["stages_s"]})
    return {"median_stages_s": {k: round(float(np.median([r["stages_s"].get(k, 0.0) for r in runs])), 4)
                                for k in stages},
            "median_non_network_s": round(float(np.median([r["non_network_s"] for r in runs])), 4),
            "max_peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "nodes": runs[0]["nodes"],
            "engine": runs[0]["engine"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-python", required=True, help="python of the venv where main is installed")
    ap.add_argument("--baseline-commit", default=None, help="recorded with the result")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    extra = ["--backend", args.backend]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scan = synthetic_scan((512, 512, 250), (0.5, 0.5, 1.0), seed=40000, out_dir=tmp)
        runs = {"baseline": [], "this": []}
        for i in range(args.repeat):
            for name, py in (("baseline", args.baseline_python), ("this", sys.executable)):
                r = run_once(py, scan, tmp / name, extra)
                runs[name].append(r)
                print(f"{i + 1}/{args.repeat} {name}: non-network {r['non_network_s']:.3f} s, "
                      f"network {r['stages_s']['network']:.2f} s, peak {r['peak_rss_mb']:.0f} MB", flush=True)
    base, this = summary(runs["baseline"]), summary(runs["this"])
    result = {"benchmark": "pipeline_side_by_side", "date": dt.date.today().isoformat(), "machine": machine_info(),
              "scan": {"shape_zyx": [250, 512, 512], "spacing_zyx_mm": [1.0, 0.5, 0.5], "seed": 40000},
              "baseline": {"commit": args.baseline_commit, **base}, "this": this,
              "ratio_non_network": round(this["median_non_network_s"] / base["median_non_network_s"], 3),
              "same_short_axes": runs["baseline"][0]["labels_nodes"] == runs["this"][0]["labels_nodes"],
              "runs": runs}
    print(json.dumps({k: result[k] for k in ("ratio_non_network", "same_short_axes")}, indent=1))
    print(json.dumps({"baseline": base, "this": this}, indent=1))
    print(f"wrote {save_result(result, args.out, 'pipeline-side-by-side')}")


if __name__ == "__main__":
    main()
