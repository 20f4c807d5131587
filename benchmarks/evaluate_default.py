"""Held-out evaluation of a model package on generated neck phantoms (issue: the default model).

    python benchmarks/evaluate_default.py [--model PKG] [--scans 16] [--seed0 20000] [--kind neck]

Each phantom comes from a seed never used in training (training 1000+, validation 9000+) and is
rendered at a random in-plane spacing (0.4-1.0 mm) and slice thickness (0.6-3.0 mm), stored in a random
axis-aligned direction with a random origin, written as NIfTI, run through `lnrt.Session` exactly as
`lnrt infer` does, and scored with `lnrt.evaluate` against its exact instance truth. Writes
`benchmarks/results/<host>-<date>-model-eval.json` and prints the metrics table.

`--kind context` adds the head above and the shoulders and lung apices below each neck (unlabelled);
`--kind abdomen` scores abdomens with no nodes (every detection is a false positive). Both measure
false positives on anatomy beyond the neck, at 0.7-1.0 mm in-plane and 2-3 mm slices (the volumes are
3-4 times larger than the neck's); their results are written as `model-eval-<kind>.json`.

`--family NAME` gives every neck one family of `lnrt.models.families` (flattened, fatty_hilum,
sharp_kernel, back_muscles): trained without it, a model is scored on a kind of node or scanner it has
never seen (the held-out-family protocol of issue 19); results go to `model-eval-family-<name>.json`.
`back_muscles` changes no node: with it the false positives are the figure to read.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

import lnrt
from lnrt.bench import machine_info, save_result
from lnrt.evaluate import evaluate_scan, format_table, summarize
from lnrt.imageio import to_sitk
from lnrt.models.families import FAMILIES, apply_family
from lnrt.models.neck import make_spec, random_scan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--scans", type=int, default=16)
    ap.add_argument("--seed0", type=int, default=20000)
    ap.add_argument("--kind", choices=("neck", "context", "abdomen"), default="neck")
    ap.add_argument("--family", default=None, choices=sorted(FAMILIES),
                    help="a held-out family of lnrt.models.families given to every neck (flattened, fatty_hilum, "
                         "sharp_kernel, back_muscles); results go to model-eval-family-<name>.json")
    ap.add_argument("--split-touching-mm", type=float, default=None,
                    help="the touching-nodes split's height (default: the package's; 0: off)")
    ap.add_argument("--variant", default="fp32", help="precision variant of the package (default fp32)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if args.family and args.kind == "abdomen":
        ap.error("--family changes necks; expected --kind neck or context with it")
    session = lnrt.Session(args.model, backend=args.backend, variant=args.variant,
                           split_touching_mm=args.split_touching_mm)
    scans, settings = [], []
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.scans):
            seed = args.seed0 + i
            # beyond the neck the volumes are 3-4x larger: coarser (still clinical) spacing keeps them in memory
            grid = {} if args.kind == "neck" else {"in_plane": (0.7, 1.0), "slices": (2.0, 3.0)}
            ct, truth, spec = random_scan(seed, kind=args.kind, family=args.family, **grid)
            path = Path(tmp) / f"phantom_{seed}.nii.gz"
            sitk.WriteImage(to_sitk(ct), str(path), useCompression=True)
            res = session.run(path)
            r = evaluate_scan(ct.with_array(res.labels), truth, f"phantom_{seed}")
            r["timings_s"] = {k: round(v, 3) for k, v in res.timings.items()}
            r["rules"] = res.settings.get("rules", {})  # what the postprocessing rules dropped
            scans.append(r)
            settings.append({"seed": seed, "spacing_xyz_mm": [round(s, 3) for s in ct.spacing],
                             "shape_zyx": list(ct.shape), "direction": ct.direction.ravel().tolist()})
            if args.family:  # how much of the phantom the family changed (the same draw again)
                settings[-1]["family_nodes"] = apply_family(make_spec(seed), args.family, seed)
            print(f"{r['name']}: {r['true_nodes']} nodes, found {r['detected']}, FP {r['false_positives']}, "
                  f"Dice {r['dice']:.3f} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    result = {"schema": "lnrt.evaluation/1", "benchmark": "model_eval", "date": dt.date.today().isoformat(),
              "machine": machine_info(),
              "kind": args.kind, "family": args.family, "split_touching_mm": session.split_touching_mm,
              "model": session.model_info(), "summary": summarize(scans), "scans": scans, "phantoms": settings}
    if args.family:  # the nodes the family changed, alone (false positives and Dice stay per scan)
        only = [dict(r, nodes=[n for n in r["nodes"] if n["id"] in p["family_nodes"]]) for r, p in zip(scans, settings)]
        result["summary_family_nodes"] = summarize(only)
    suffix = ("" if args.kind == "neck" else f"-{args.kind}") + ("" if args.variant == "fp32" else f"-{args.variant}") \
        + (f"-family-{args.family}" if args.family else "")
    path = save_result(result, args.out, f"model-eval{suffix}")
    print(format_table(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
