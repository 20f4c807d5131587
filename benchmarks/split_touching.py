"""The touching-nodes split's height against the held-out necks (issue 19): what each h does to the
short-axis errors, the false positives and the pairs measured as one.

    python benchmarks/split_touching.py [--model PKG] [--heights 0 0.5 1 1.5] [--scans 16]

Each phantom (seeds 20000+, as `evaluate_default.py`) is run once per height through `lnrt.Session` with
`split_touching_mm=h` (0: components whole) and scored with `lnrt.evaluate`. `merged` counts the true
nodes whose best-matching predicted component also holds another true node. Writes
`benchmarks/results/<host>-<date>-split-touching.json`.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
from pathlib import Path

import lnrt
from lnrt.bench import machine_info, save_result
from lnrt.evaluate import evaluate_scan, summarize
from lnrt.models.neck import random_scan

KEYS = ("recall_50", "false_positives_per_scan", "dice_mean", "short_axis_abs_error_mm_median",
        "short_axis_abs_error_mm_p90", "dice_per_node_mean")


def merged(scans: list) -> int:
    count = 0
    for s in scans:
        shared = collections.Counter(n["pred_id"] for n in s["nodes"] if n["detected"])
        count += sum(1 for n in s["nodes"] if n["detected"] and shared[n["pred_id"]] > 1)
    return count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--heights", type=float, nargs="+", default=(0.0, 0.5, 0.75, 1.0, 1.5))
    ap.add_argument("--scans", type=int, default=16)
    ap.add_argument("--seed0", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    phantoms = [random_scan(args.seed0 + i)[:2] for i in range(args.scans)]
    rows = []
    for h in args.heights:
        with lnrt.Session(args.model, split_touching_mm=h) as session:
            scans = [evaluate_scan(ct.with_array(session.run(ct).labels), truth, f"phantom_{args.seed0 + i}")
                     for i, (ct, truth) in enumerate(phantoms)]
            info = session.model_info()
        s = summarize(scans)
        rows.append({"h_mm": h, **{k: s[k] for k in KEYS}, "merged_true_nodes": merged(scans),
                     "predicted_components": sum(r["pred_nodes"] for r in scans)})
        print(rows[-1], flush=True)
    result = {"schema": "lnrt.bench/1", "benchmark": "split_touching", "date": dt.date.today().isoformat(),
              "machine": machine_info(), "model": info, "scans": args.scans, "seed0": args.seed0, "rows": rows}
    print(f"wrote {save_result(result, args.out, 'split-touching')}")


if __name__ == "__main__":
    main()
