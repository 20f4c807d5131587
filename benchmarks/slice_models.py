"""What a 2.5D slice model costs on a whole neck, beside the 3D default on the same scan (issue 18).

    python benchmarks/slice_models.py [--class lnrt.models.attention:SNet25D] [--context 7] [--patch 128]
                                      [--batch 1,16] [--backends openvino,onnxruntime] [--package PKG]

The 2.5D network (random weights: timing only, say so) is exported with `lnrt export torch`'s builder as
a 2.5D package (K context slices above and below, in-plane 0.8 mm, the scan's own slice spacing) and
run end to end by `lnrt.Session` on the benchmark's whole neck (512 x 512 x 250 at 0.5 x 0.5 x 1 mm,
`lnrt.bench.synthetic_scan`), then the embedded 3D default on the same scan, in one process, one after
the other, per backend. Reported: seconds end to end and per stage, slices and tiles, slices per second,
and the ratio 2.5D / 3D. Slice batches are timed at each `--batch` (slices per network call). `--package`
times a given slice package instead (e.g. the briefly trained SNet25D of `python -m
lnrt.models.train_slices`, whose node count is realistic where a random network's is not). Writes
`benchmarks/results/<host>-<date>-slice-models.json`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _timed(session, scan) -> dict:
    t0 = time.perf_counter()
    res = session.run(scan)
    total = time.perf_counter() - t0
    rep = res.report()
    return {"end_to_end_s": round(total, 2), "stages_s": {k: round(v, 3) for k, v in rep["timings_s"].items()},
            "tiles": rep["settings"]["tiles"], "model_grid_zyx": rep["settings"]["model_grid_zyx"],
            "nodes": len(rep["nodes"])}


def _described(path: Path) -> str:
    m = json.loads((path / "lnrt.json").read_text())
    inp = m["input"]
    return (f"package {m['name']} {m['version']} ({m['provenance'].get('trained_on')}), K = "
            f"{inp.get('context_slices', 0)} context slices, patch {inp['patch_size_zyx']} at "
            f"{inp['spacing_zyx_mm']} mm (z, y, x; null: the scan's)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--class", dest="cls", default="lnrt.models.attention:SNet25D")
    ap.add_argument("--kwargs", default="{}")
    ap.add_argument("--context", type=int, default=7)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--backends", default="openvino,onnxruntime")
    ap.add_argument("--size", default="512,512,250")
    ap.add_argument("--package", type=Path, default=None, help="a slice-model package to time instead")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()

    import torch

    import lnrt
    from lnrt.bench import machine_info, save_result, synthetic_scan
    from lnrt.export.builder import build_package
    from lnrt.export.torch_export import import_object

    c = args.context
    kwargs = {"in_channels": 2 * c + 1, **json.loads(args.kwargs)}
    torch.manual_seed(0)
    net = import_object(args.cls)(**kwargs).eval()
    params = sum(p.numel() for p in net.parameters())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scan = synthetic_scan(tuple(int(v) for v in args.size.split(",")), out_dir=tmp)
        pkg = args.package or build_package(
            net, tmp / "pkg", name="snet-bench", version="0", spacing_zyx=(None, 0.8, 0.8),
            patch_zyx=(1, args.patch, args.patch), normalization={"scheme": "window", "window_hu": [-160.0, 240.0]},
            classes=["background", "lymph_node"], provenance={"trained_on": "random weights"},
            input_kind="2.5d", context_slices=c)
        for backend in args.backends.split(","):
            for batch in (int(b) for b in args.batch.split(",")):
                with lnrt.Session(pkg, backend=backend, batch_size=batch) as s:
                    row = {"model": "2.5d", "backend": backend, "batch": batch, **_timed(s, scan)}
                row["slices_per_s"] = round(row["model_grid_zyx"][0] / row["end_to_end_s"], 2)
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
            with lnrt.Session(backend=backend) as s:
                row = {"model": "3d default", "backend": backend, **_timed(s, scan)}
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    best = {}
    for r in rows:
        key = (r["backend"], r["model"])
        if key not in best or r["end_to_end_s"] < best[key]["end_to_end_s"]:
            best[key] = r
    ratios = {b: round(best[(b, "2.5d")]["end_to_end_s"] / best[(b, "3d default")]["end_to_end_s"], 2)
              for b in args.backends.split(",")}
    res = {"schema": "lnrt.slice-models/1", "date": dt.date.today().isoformat(), "machine": machine_info(),
           "scan": f"lnrt.bench.synthetic_scan {args.size} (x, y, z) at 0.5 x 0.5 x 1 mm",
           "model_25d": _described(args.package) if args.package else
                        f"{args.cls} {kwargs}, {params} parameters, random weights (timing only), "
                        f"K = {c} context slices, patch 1 x {args.patch} x {args.patch} at scan z x 0.8 x 0.8 mm",
           "runs": rows, "ratio_25d_over_3d_best_batch": ratios}
    print(f"wrote {save_result(res, args.out, 'slice-models')}")


if __name__ == "__main__":
    main()
