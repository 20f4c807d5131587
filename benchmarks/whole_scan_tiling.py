"""What skipping air tiles changes against nnU-Net's predictor, on phantoms and the real necks (issue 22).

    python benchmarks/whole_scan_tiling.py [--necks 1,2,3,4,5,6]

An InstanceNorm nnU-Net package (`body_crop.tiling: "whole_scan"`) runs only the tiles of nnU-Net's grid
that hold a body voxel. For each scan, resampled linearly to the model's spacing first (so that neither
tool resamples and only the tiling differs), with the import tests' random-weight folder
(`lnrt.models.nnunet_folder.SMALL`, head bias for 1/3 foreground on the body): tiles run against the
grid, and voxel agreement with nnU-Net before any component filtering, over the voxels whose every
covering tile ran (all of the body and the air near it) and over every voxel. The second is low for a
random network because it calls air foreground in the tiles lnrt skips; a trained one calls air
background. Writes `benchmarks/results/<host>-<date>-whole-scan-tiling.json`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--necks", default="1,2,3,4,5,6")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent / "tests"))
    import test_nnunet_import as t  # the test's scan preparation and tile reach, shared

    import lnrt
    from lnrt.bench import machine_info, save_result
    from lnrt.export.nnunet import import_nnunet
    from lnrt.models import nnunet_folder as nf
    from lnrt.package import ModelPackage
    from lnrt.volume import Volume

    rows = {}
    for case in ["phantom"] + [f"pt_{n}" for n in args.necks.split(",")]:
        hu, origin = t._at_model_spacing(case)
        zc, yc, xc = (max(0, (n - p) // 2) for n, p in zip(hu.shape, nf.PATCH))
        probe = hu[zc:zc + nf.PATCH[0], yc:yc + nf.PATCH[1], xc:xc + nf.PATCH[2]]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            folder = nf.make_folder(tmp / "results", folds=(0,), probe=probe)
            pkg = ModelPackage.load(import_nnunet(folder, tmp / "pkg", variants=()))
            vol = Volume(hu, spacing=tuple(nf.SPACING[::-1]), origin=tuple(origin), direction=np.eye(3))
            with lnrt.Session(pkg, min_volume_mm3=0, backend="onnxruntime") as s:
                t0 = time.perf_counter()
                res = s.run(vol)
                lnrt_s = time.perf_counter() - t0
                body = s.prepare(vol).body
            run, grid, reach = t.run_tiles_and_reach(body, nf.PATCH)
            t0 = time.perf_counter()
            theirs = t._nnunet_prediction(folder, hu, (0,)) > 0
            nnunet_s = time.perf_counter() - t0
        ours = res.labels > 0
        eq = ours == theirs
        rows[case] = {"grid_zyx": list(hu.shape), "tiles_run": len(run), "tiles_grid": grid,
                      "reach_share": round(float(reach.mean()), 4),
                      "agreement_where_every_tile_ran": round(float(eq[reach].mean()), 6),
                      "agreement_all_voxels": round(float(eq.mean()), 6),
                      "nnunet_foreground_outside_reach_share": round(float(theirs[~reach].mean()), 4),
                      "lnrt_s": round(lnrt_s, 2), "nnunet_s": round(nnunet_s, 2)}
        print(case, rows[case], file=sys.stderr, flush=True)
    res = {"schema": "lnrt.whole-scan-tiling/1", "date": dt.date.today().isoformat(), "machine": machine_info(),
           "model": "nnU-Net v2 PlainConvUNet 3 stages 8-16-32, InstanceNorm, random weights, patch 32x64x64 "
                    "at 2 x 1.5 x 1.5 mm (lnrt.models.nnunet_folder.SMALL)", "scans": rows}
    print(f"wrote {save_result(res, args.out, 'whole-scan-tiling')}")


if __name__ == "__main__":
    main()
