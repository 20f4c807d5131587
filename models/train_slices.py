"""Train a 2D / 2.5D slice network (default: `lnrt.models.attention.SNet25D`) on generated neck phantoms,
then package it as an lnrt slice model.

    python -m lnrt.models.train_slices --out runs/snet --iterations 600 --package runs/snet/pkg

Why it exists: a random-weight network's logits are nearly tied almost everywhere, so no precision gate
can pass on one (issue 18: FP16 moved a short axis 2.55 mm, INT8 reached Dice 0.90); a briefly trained
one has decisive logits, so the FP16 / INT8 gates of `lnrt export variants` measure the precision and not
the noise, and the 2.5D timing sees a realistic number of nodes. It is not a clinical model.

Training reuses `lnrt.models.train`'s phantom pool (the same seeds, augmentation and loss): a sample is a
slab of 2K + 1 slices at the training spacing (2 x 1 x 1 mm), the network sees the slices as channels and
is scored on the centre slice. The package declares that spacing (the scan is resampled to 2 mm slices,
so the context slices cover the same 2K x 2 mm as in training), a patch of 1 x P x P and the window
normalization of training.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .neck import make_spec, render
from .train import SPACING, TRAIN_SEED0, VAL_SEED0, WINDOW, PhantomPool, dice, loss_fn, normalize, step


def centre_slices(model, hu: np.ndarray, labels: np.ndarray, k: int, patch: int, count: int = 12) -> float:
    """Validation Dice of the centre slices of `count` slabs through a phantom's nodes (or its middle)."""
    zs = np.unique(np.argwhere(labels > 0)[:, 0]) if (labels > 0).any() else np.array([hu.shape[0] // 2])
    zs = zs[np.linspace(0, len(zs) - 1, min(count, len(zs))).astype(int)]
    pad = np.pad(hu, [(k, k), (0, max(0, patch - hu.shape[1])), (0, max(0, patch - hu.shape[2]))], mode="edge")
    cy, cx = (np.array(pad.shape[1:]) - patch) // 2
    xs = np.stack([normalize(pad[z:z + 2 * k + 1, cy:cy + patch, cx:cx + patch]) for z in zs])
    with torch.no_grad():
        pred = model(torch.from_numpy(xs)).argmax(1).numpy() > 0
    truth = np.stack([labels[z, cy:cy + patch, cx:cx + patch] > 0 for z in zs])
    return dice(pred, truth)


def train(args) -> torch.nn.Module:
    from lnrt.export.torch_export import import_object

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    k, p = args.context, args.patch
    kwargs = {"in_channels": 2 * k + 1, **json.loads(args.kwargs)}
    model = import_object(args.cls)(**kwargs)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (1 - i / (args.iterations + 1)) ** 0.9)
    pool = PhantomPool(args.pool, TRAIN_SEED0, rng)
    val = [render(make_spec(VAL_SEED0 + i), SPACING)[:2] for i in range(2)]
    (out / "config.json").write_text(json.dumps({"class": args.cls, "kwargs": kwargs, "args": vars(args)}, indent=2))
    t0, running, log = time.time(), [], open(out / "train_log.jsonl", "w")
    for it in range(args.iterations):
        model.train()
        xs, ys = zip(*[pool.sample((2 * k + 1, p, p), args.node_fraction) for _ in range(args.batch_size)])
        running.append(step(opt, sched, loss_fn(model(torch.from_numpy(np.stack(xs))),
                                                torch.from_numpy(np.stack(ys)[:, k]))))
        if (it + 1) % args.refresh_every == 0:
            pool.refresh(max(1, args.pool // 4))
        if (it + 1) % args.log_every == 0 or it + 1 == args.iterations:
            model.eval()
            rec = {"iteration": it + 1, "loss": round(float(np.mean(running)), 4),
                   "val_dice_centre_slices": round(float(np.mean([centre_slices(model, h, lab, k, p)
                                                                  for h, lab in val])), 4),
                   "elapsed_s": round(time.time() - t0, 1)}
            running = []
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
    torch.save({"class": args.cls, "kwargs": kwargs, "model": model.state_dict()}, out / "weights.pt")
    return model.eval()


def package(model, out, args) -> Path:
    from lnrt.export.builder import build_package

    return build_package(
        model, out, name=f"{args.cls.rsplit(':', 1)[-1].lower()}-phantoms", version="0.1.0",
        spacing_zyx=SPACING, patch_zyx=(1, args.patch, args.patch),
        normalization={"scheme": "window", "window_hu": list(WINDOW)}, classes=["background", "lymph_node"],
        provenance={"trained_on": f"lnrt.models.neck phantoms, seeds {TRAIN_SEED0}+, {args.iterations} iterations "
                                  "(python -m lnrt.models.train_slices)",
                    "intended_use": "precision gates and timing of slice models; not a clinical model"},
        input_kind="2.5d" if args.context else "2d", context_slices=args.context,
        variants=tuple(v for v in args.variants.split(",") if v), overwrite=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--class", dest="cls", default="lnrt.models.attention:SNet25D")
    ap.add_argument("--kwargs", default="{}", help="JSON keyword arguments of the class")
    ap.add_argument("--context", type=int, default=7, help="K slices above and below (0: a 2D model)")
    ap.add_argument("--patch", type=int, default=128, help="in-plane patch (voxels at 1 mm)")
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--node-fraction", type=float, default=0.6)
    ap.add_argument("--pool", type=int, default=16)
    ap.add_argument("--refresh-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--package", default=None, help="write an lnrt package here after training")
    ap.add_argument("--variants", default="", help="precision variants to gate into the package (fp16,int8)")
    args = ap.parse_args()
    model = train(args)
    if args.package:
        print(package(model, args.package, args))


if __name__ == "__main__":
    main()
