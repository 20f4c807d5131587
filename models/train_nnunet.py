"""Train an nnU-Net-sized network on neck phantoms and write it as an nnU-Net v2 results folder.

    python -m lnrt.models.train_nnunet --out runs/large --iterations 1000 --threads 2
    lnrt export nnunet runs/large/nnUNetTrainer__nnUNetPlans__3d_fullres PKG

Issue 22 asks for an INT8 variant of a real-sized model that passes its gate. A random-weight network
cannot: its two logits are nearly tied almost everywhere, so any rounding flips the argmax (INT8 agreed
with FP32 on 96.1 % of a tile's voxels). This trains the network users bring (`nnunet_folder.LARGE`:
PlainConvUNet, 5 stages of 32-64-128-256-320 features, InstanceNorm, 16.5 M parameters, 2 x 1 x 1 mm) so
its outputs are decided, then writes the folder nnU-Net's own predictor reads, so the gates, the INT8
speed and the peers benchmark can use a trained model of that size.

It is not a default-model candidate: 1,000 iterations on 2 CPU cores (1.4 s an iteration at batch 1,
32 x 64 x 64 patches; 24 minutes on the 2-core AMD EPYC VM, loss 1.56 to 0.26,
`benchmarks/results/vm-2026-12-03-train-nnunet-large.jsonl`) give a network that finds the phantoms'
nodes, not one tuned like `lnrt.models.train`'s. It reuses that trainer's phantom pool,
augmentation, loss and seeds, with nnU-Net's CT normalization (the folder's intensity properties)
instead of lnrt's window, and no deep supervision. The checkpoint is written every `--log-every`
iterations, so a run resumes (`--resume`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from . import nnunet_folder as nf
from .train import SPACING, TRAIN_SEED0, PhantomPool, loss_fn, step

FOLDER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def train(out: Path, iterations: int, shape: nf.Shape = nf.LARGE, patch=(32, 64, 64), batch_size: int = 1,
          lr: float = 1e-3, node_fraction: float = 0.5, pool_size: int = 12, enlarged: float = 0.25,
          seed: int = 0, resume: bool = False, log_every: int = 25) -> Path:
    """Train for `iterations` and return the results folder (`out/FOLDER`). The phantoms are rendered at
    the trainer's SPACING, so `shape.spacing` must be that."""
    if tuple(shape.spacing) != SPACING:
        raise ValueError(f"shape spacing {shape.spacing} must be the phantoms' {SPACING}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = nf.network(nf.resolved(nf.plans(shape=shape), "3d_fullres"))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    ckpt, start = out / "checkpoint.pt", 0
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
    rng = np.random.default_rng(seed + start)
    pool = PhantomPool(pool_size, TRAIN_SEED0 + start, rng, {"enlarged": enlarged})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (1 - min(i + start, iterations) / (iterations + 1)) ** 0.9)
    with open(out / "train_log.jsonl", "a") as log:
        t0, running = time.time(), []
        for it in range(start, iterations):
            net.train()
            xs, ys = zip(*[pool.sample(patch, node_fraction, nf._normalized) for _ in range(batch_size)])
            running.append(step(opt, sched, loss_fn(net(torch.from_numpy(np.stack(xs)[:, None])),
                                                    torch.from_numpy(np.stack(ys)))))
            if (it + 1) % 100 == 0:
                pool.refresh(max(1, pool_size // 4))
            if (it + 1) % log_every == 0 or it + 1 == iterations:
                rec = {"iteration": it + 1, "loss": round(float(np.mean(running)), 4),
                       "elapsed_s": round(time.time() - t0, 1)}
                running = []
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
                torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "iteration": it + 1}, ckpt)
    return nf.make_folder(out / FOLDER, shape=shape, weights=[net.state_dict()])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--patch", type=int, nargs=3, default=(32, 64, 64))
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--enlarged", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(train(Path(args.out), args.iterations, patch=tuple(args.patch), batch_size=args.batch_size, lr=args.lr,
                enlarged=args.enlarged, seed=args.seed, resume=args.resume))


if __name__ == "__main__":
    main()
