"""How a model behaves on real CT it never saw (issue: the default model).

    python benchmarks/real_ct_behaviour.py [--model PKG] [--data ../shared/data]

Runs the model on every real sample in `../shared/data` (head-and-neck OpenKBP CTs, abdominal CTs,
the DICOM series) and records, per scan, the number of nodes, their short axes and RECIST categories,
the time, and for OpenKBP how many reported nodes lie inside the planning target volumes (PTV56 = the
elective nodal neck, structure label 8, and PTV63/70, labels 9-10), where nodes are expected, and how
many lie behind the spinal cord (label 2), where mostly muscle does.
Writes `benchmarks/results/<host>-<date>-real-ct.json` and prints a table. There are no node labels
for these scans: this shows plausibility, not accuracy.
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

import lnrt
from lnrt.bench import machine_info, save_result


def _behind_cord(node: np.ndarray, cord: np.ndarray) -> bool:
    """Whether a node's centroid lies posterior to the spinal cord (OpenKBP label 2) on its median slice.
    Neck nodes lie anterior and lateral to the cord (level V, the most posterior, in front of the
    trapezius); what lies behind it is mostly the deep and posterior muscles, so this counts likely false
    positives, not certain ones."""
    zz, yy, _ = np.nonzero(node)
    rows = np.nonzero(cord[int(np.median(zz))])[0]
    return bool(len(rows)) and float(yy.mean()) > float(rows.mean())  # rows run posterior (LPS arrays)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    session = lnrt.Session(args.model)
    scans = sorted((args.data / "openkbp").glob("*_ct_hu.nii.gz")) + sorted((args.data / "nifti").glob("abdomen*")) \
        + sorted(p for p in (args.data / "dicom").iterdir() if p.is_dir())
    rows = []
    for scan in scans:
        t0 = time.perf_counter()
        res = session.run(scan)
        row = {"scan": str(scan.relative_to(args.data)), "nodes": len(res.nodes),
               "short_axes_mm": sorted((round(n["short_axis_mm"], 1) for n in res.nodes), reverse=True),
               "recist": {c: sum(n["recist"] == c for n in res.nodes) for c in ("normal", "pathological", "enlarged")},
               "seconds": round(time.perf_counter() - t0, 2),
               # what the package's postprocessing rules dropped (neck region, resolution floor)
               "rules": res.settings.get("rules", {}), "warnings": res.warnings}
        structures = Path(str(scan).replace("_ct_hu", "_structures"))
        if "_ct_hu" in scan.name and structures.is_file() and res.nodes:
            s = sitk.GetArrayFromImage(sitk.ReadImage(str(structures)))
            in_ptv = sum(bool(np.isin(s[res.labels == n["id"]], (8, 9, 10)).any()) for n in res.nodes)
            row["nodes_touching_ptv"] = in_ptv
            row["nodes_behind_cord"] = sum(_behind_cord(res.labels == n["id"], s == 2) for n in res.nodes)
        rows.append(row)
        dropped = sum(r.get("dropped", 0) for r in row["rules"].values())
        print(f"{row['scan']:<45} nodes {row['nodes']:>3} (+{dropped} dropped by rules)  "
              f"{row.get('nodes_touching_ptv', '-'):>3} in PTV {row.get('nodes_behind_cord', '-'):>3} behind cord  "
              f"largest short axes {row['short_axes_mm'][:5]}  ({row['seconds']} s)", flush=True)
    result = {"benchmark": "real_ct_behaviour", "date": dt.date.today().isoformat(),
              "machine": machine_info(), "model": session.model_info(), "scans": rows}
    print(f"wrote {save_result(result, args.out, 'real-ct')}")


if __name__ == "__main__":
    main()
