"""Which node properties make the default model stop short (issue 19): controlled probe nodes.

    python benchmarks/node_properties.py [--scans 6] [--model PKG]

Each condition adds one probe node of chosen properties (`lnrt.models.neck.add_probe_node`: short axis,
cranio-caudal extent, density, necrotic core) beside the jugular chain of held-out phantoms (seeds 20000
and up, never trained on), rendered at the model's 2 x 1 x 1 mm so that resampling plays no part, and
runs `lnrt.Session` on it as `lnrt infer` does. Scored per probe with `lnrt.evaluate.evaluate_scan`
against the probe alone: coverage (share of its voxels marked), its Dice, the short-axis error. The same
seeds and positions are used across conditions (one rng per scan), so conditions differ only in the
property changed. Writes `benchmarks/results/<host>-<date>-node-properties.json`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# name -> (short axis mm, cranio-caudal mm, HU, necrosis), each a (lo, hi) range or a number;
# cc None: as long as the short axis (a round node)
CONDITIONS = {
    "enlarged, homogeneous, 20-45 HU, cc 31-36 mm (issue 19's failing family)": ((15, 18), (31, 36), (20, 45), 0.0),
    "enlarged, homogeneous, 45-60 HU, cc 31-36 mm": ((15, 18), (31, 36), (45, 60), 0.0),
    "enlarged, homogeneous, 20-45 HU, round (cc = short axis)": ((15, 18), None, (20, 45), 0.0),
    "enlarged, homogeneous, 30-60 HU, round": ((15, 18), None, (30, 60), 0.0),
    "enlarged, necrotic core, 30-60 HU, cc 31-36 mm": ((15, 18), (31, 36), (30, 60), 0.45),
    "very enlarged, homogeneous, 20-45 HU, short 20-30, cc 40-50 mm": ((20, 30), (40, 50), (20, 45), 0.0),
    "medium (control), homogeneous, 30-60 HU, short 10-14, cc 10-20 mm": ((10, 14), (10, 20), (30, 60), 0.0),
}


def _draw(rng, value):
    return float(rng.uniform(*value)) if isinstance(value, tuple) else value


def probe_case(seed: int, condition: tuple):
    """(hu, labels of the probe alone, probe properties) or None when the probe did not fit."""
    from lnrt.models.neck import add_probe_node, make_spec, render

    spec = make_spec(seed)
    rng = np.random.default_rng(seed + 777)
    short_r, cc_r, hu_r, necrosis = condition
    short = _draw(rng, short_r)
    cc = short if cc_r is None else _draw(rng, cc_r)
    hu_value = _draw(rng, hu_r)
    node = add_probe_node(spec, rng, short, cc, hu_value, necrosis)
    if node is None:
        return None
    hu, labels, origin = render(spec, (2.0, 1.0, 1.0))
    probe = (labels == len(spec.nodes)).astype(np.uint16)
    return hu, probe, origin, {"short_axis_mm": round(short, 2), "cc_mm": round(cc, 2), "hu": round(hu_value, 1),
                               "necrosis": necrosis, "level": node.level}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=6)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()

    import lnrt
    from lnrt.bench import machine_info, save_result
    from lnrt.evaluate import evaluate_scan

    rows, summary = [], {}
    with lnrt.Session(args.model) as session:
        for name, condition in CONDITIONS.items():
            scored = []
            for i in range(args.scans):
                case = probe_case(20000 + i, condition)
                if case is None:
                    continue
                hu, probe, origin, props = case
                vol = lnrt.Volume(hu, spacing=(1.0, 1.0, 2.0), origin=tuple(origin), direction=np.eye(3))
                res = session.run(vol)
                truth = lnrt.Volume(probe, spacing=vol.spacing, origin=vol.origin, direction=vol.direction)
                pred = lnrt.Volume(res.labels, spacing=vol.spacing, origin=vol.origin, direction=vol.direction)
                node = evaluate_scan(pred, truth, f"{20000 + i}")["nodes"][0]
                row = {"condition": name, "seed": 20000 + i, **props, "coverage": node["coverage"],
                       "dice": node["dice"], "short_axis_true_mm": node["short_axis_mm"],
                       "short_axis_error_mm": node.get("short_axis_error_mm")}
                rows.append(row)
                scored.append(row)
                print(row, file=sys.stderr, flush=True)
            errors = [abs(r["short_axis_error_mm"]) for r in scored if r["short_axis_error_mm"] is not None]
            summary[name] = {"probes": len(scored), "coverage_mean": round(float(np.mean([r["coverage"] for r in scored])), 3),
                             "covered_over_50pct": sum(r["coverage"] > 0.5 for r in scored),
                             "dice_mean": round(float(np.mean([r["dice"] for r in scored])), 3),
                             "short_axis_abs_error_mm_median": round(float(np.median(errors)), 2) if errors else None}
            print(name, summary[name], file=sys.stderr, flush=True)
        model = session.model_info()
    res = {"schema": "lnrt.node-properties/1", "date": dt.date.today().isoformat(), "machine": machine_info(),
           "model": {k: model.get(k) for k in ("name", "version", "variant", "backend")},
           "phantoms": "lnrt.models.neck make_spec(20000 + i) plus one probe node, rendered at 2 x 1 x 1 mm",
           "summary": summary, "probes": rows}
    print(f"wrote {save_result(res, args.out, 'node-properties')}")


if __name__ == "__main__":
    main()
