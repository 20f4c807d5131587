"""Train a U-Net of `lnrt.models.unet` on generated neck phantoms, then package it.

    python -m lnrt.models.train --out runs/edge --iterations 1500            # CPU or GPU (auto)
    python -m lnrt.models.train --out runs/edge --iterations 3000 --resume   # continue a run
    python -m lnrt.models.train --out runs/edge --package-only --package models/default

Phantoms (`lnrt.models.neck`) are rendered at the model spacing from training seeds (1000 and up;
validation uses 9000 and up, evaluation never uses either range below 20000). A pool of phantoms is
kept and refreshed, patches are sampled with a share centred on nodes, augmented (left-right flip,
HU scale and shift, extra noise), and the loss is cross-entropy + soft Dice of the node class.
Every `--val-every` iterations the model runs a full sliding window over validation phantoms and the
Dice is logged to `train_log.jsonl`; the checkpoint (`checkpoint.pt`: weights, optimizer,
iteration; tensors and plain values, read back with `weights_only=True`) makes runs resumable and reproducible.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lnrt.errors import LnrtError

from .families import FAMILIES, apply_family
from .neck import confounders, make_spec, render
from .unet import EDGE, UNet, UNetConfig

SPACING = (2.0, 1.0, 1.0)
WINDOW = (-200.0, 400.0)
TRAIN_SEED0, VAL_SEED0 = 1000, 9000
INFER_PATCH = (48, 96, 96)


def normalize(hu: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def coarsen(hu: np.ndarray, in_plane: float, thickness: float) -> np.ndarray:
    """A scan acquired at `in_plane` x `thickness` mm voxels (box-averaged from the SPACING grid), then
    resampled back onto that grid with linear interpolation, as `lnrt infer` resamples a coarse scan:
    the blocky, blurred look of 4 mm radiotherapy planning CTs."""
    x = torch.from_numpy(np.ascontiguousarray(hu))[None, None]
    small = [max(2, int(round(n * s / f))) for n, s, f in zip(hu.shape, SPACING, (thickness, in_plane, in_plane))]
    x = F.interpolate(F.interpolate(x, size=small, mode="area"), size=hu.shape, mode="trilinear",
                      align_corners=False)
    return x[0, 0].numpy()


# How the training pool is made, one phantom at a time (shares of the pool, drawn at random):
# - ABDOMEN: an abdomen with no nodes (wrong-region negatives: bowel, kidneys, liver, pelvis);
# - CONTEXT: a neck with the head above and the shoulders and lung apices below, unlabelled;
# - the rest: the neck alone, one in three blanked to air above and below a slab, as radiotherapy
#   planning CTs often are (the body then ends in a flat cut face the network must not call a node);
# - COARSE (of any kind): acquired at 1.5-4.5 mm in-plane and 2-5 mm slices, then resampled up.
MIX = {"abdomen": 0.25, "context": 0.45, "coarse": 0.35}  # the default model's last phase (model card)
# - ENLARGED (necks only, `--enlarged`): one to three enlarged nodes placed on purpose
#   (`lnrt.models.neck.add_probe_node`): short axis 15-30 mm, cranio-caudal extent from round to 3.3x it
#   (at most 50 mm), 20-60 HU, a necrotic core in one in three. Left to chance they rarely fit the
#   generator's neck: 4.4 % of the training nodes were >= 15 mm and 7 of 3,663 were 15-18 mm wide and
#   >= 30 mm long, the family the default model 1.2 marks as slivers (issue 19, model card).
ENLARGED_SHORT_MM, ENLARGED_CC_MM, ENLARGED_HU = (15.0, 30.0), 50.0, (20.0, 60.0)


def add_enlarged_nodes(spec, rng: np.random.Generator) -> int:
    """One to three enlarged nodes (see ENLARGED) added to a neck phantom's spec; returns how many fit."""
    from .neck import add_probe_node

    added = 0
    for _ in range(int(rng.integers(1, 4))):
        short = float(rng.uniform(*ENLARGED_SHORT_MM))
        cc = float(min(ENLARGED_CC_MM, short * rng.uniform(1.0, 3.3)))
        necrosis = float(rng.uniform(0.35, 0.6)) if rng.random() < 1 / 3 else 0.0
        added += add_probe_node(spec, rng, short, cc, float(rng.uniform(*ENLARGED_HU)), necrosis) is not None
    return added


class PhantomPool:
    def __init__(self, size: int, seed0: int, rng: np.random.Generator, mix: dict | None = None,
                 families: tuple = (), family_share: float = 0.0):
        # `families`: of lnrt.models.families, given to a `family_share` of the necks; the others are held out
        self.seed0, self.rng, self.next = seed0, rng, 0
        self.families, self.family_share = tuple(families), float(family_share)
        self.mix = {"abdomen": 0.0, "context": 0.0, "coarse": 0.0, "enlarged": 0.0, **(mix or {})}
        self.items = [self._make() for _ in range(size)]

    def _make(self):
        from .context import make_abdomen, make_context, render_abdomen
        seed = self.seed0 + self.next
        self.next += 1
        u = self.rng.random()
        spec = None
        if u < self.mix["abdomen"]:
            hu, labels, _ = render_abdomen(make_abdomen(seed), SPACING)
        elif u < self.mix["abdomen"] + self.mix["context"]:
            spec = self._neck(seed)
            hu, labels, origin = render(spec, SPACING, context=make_context(spec, seed))
        else:
            pad = float(self.rng.uniform(6, 30)) if self.rng.random() < 1 / 3 else 0.0
            spec = self._neck(seed)
            hu, labels, origin = render(spec, SPACING, pad_z=pad)
        if self.rng.random() < self.mix["coarse"]:
            hu = coarsen(hu, float(self.rng.uniform(1.5, 4.5)), float(self.rng.uniform(2.0, 5.0)))
        nodes = np.argwhere(labels > 0)
        body = np.argwhere(hu[:, ::8, ::8] > -500) * np.array([1, 8, 8])
        conf = np.zeros((0, 3), int)
        if spec is not None:  # (x, y, z) mm to (z, y, x) voxels of this render
            xyz = (confounders(spec) - origin) / np.asarray(SPACING[::-1])
            conf = np.round(xyz[:, ::-1]).astype(int)
            conf = conf[((conf >= 0) & (conf < hu.shape)).all(1)]
        return hu, labels, nodes, body, conf

    def _neck(self, seed: int):
        spec = make_spec(seed)
        if self.rng.random() < self.mix["enlarged"]:
            add_enlarged_nodes(spec, self.rng)
        if self.families and self.rng.random() < self.family_share:  # no draw without families: the stream
            apply_family(spec, self.families[int(self.rng.integers(len(self.families)))], seed)
        return spec

    def refresh(self, n: int):
        for _ in range(n):
            self.items[int(self.rng.integers(len(self.items)))] = self._make()

    def sample(self, patch, node_fraction, norm=normalize, confounder_fraction=0.0, per_node=0.0):
        # `norm`: HU to the network's input (lnrt's window by default; nnU-Net's CT normalization for
        # `lnrt.models.train_nnunet`). `confounder_fraction`: the share of patches centred on a gland or an
        # unenhanced vessel (`neck.confounders`); 0 leaves the random stream as it was before it existed.
        # `per_node`: the share of node-centred patches whose node is drawn uniformly among the scan's
        # nodes (`_node_voxel`) instead of among node voxels; 0 leaves the stream as it was.
        hu, labels, nodes, body, conf = self.items[int(self.rng.integers(len(self.items)))]
        if len(nodes) and self.rng.random() < node_fraction:
            pick = _node_voxel(labels, nodes, self.rng) if per_node and self.rng.random() < per_node \
                else self.rng.integers(len(nodes))
            centre = nodes[pick] + self.rng.integers(-8, 9, 3) * [0, 1, 1]
        elif confounder_fraction and len(conf) and \
                self.rng.random() < confounder_fraction / max(1e-6, 1 - node_fraction):
            centre = conf[self.rng.integers(len(conf))] + self.rng.integers(-8, 9, 3) * [0, 1, 1]
        else:
            centre = body[self.rng.integers(len(body))]
        start = [int(np.clip(c - p // 2, 0, max(0, s - p))) for c, p, s in zip(centre, patch, hu.shape)]
        sl = tuple(slice(a, a + p) for a, p in zip(start, patch))
        x, y = hu[sl], labels[sl] > 0
        pads = [(0, p - s) for p, s in zip(patch, x.shape)]
        x = np.pad(x, pads, constant_values=-1000.0)
        y = np.pad(y, pads)
        if self.rng.random() < 0.5:
            x, y = x[:, :, ::-1], y[:, :, ::-1]
        x = x * self.rng.uniform(0.92, 1.08) + self.rng.uniform(-20, 20)
        if self.rng.random() < 0.3:
            x = x + self.rng.normal(0, self.rng.uniform(3, 15), x.shape)
        return norm(x), y.astype(np.int64)


def _node_voxel(labels: np.ndarray, nodes: np.ndarray, rng: np.random.Generator) -> int:
    """Index into `nodes` (the node voxels) of a random voxel of a node drawn uniformly among the scan's
    nodes. Drawn by voxel, a node is picked in proportion to its volume: a 30 mm node 1,000 times as
    often as a 3 mm one, and 16 of the 19 nodes 1.3rc2 covered less than half were under 5 mm (issue 19)."""
    ids = labels[tuple(nodes.T)]
    node = rng.choice(np.unique(ids))
    return int(rng.choice(np.flatnonzero(ids == node)))


def loss_fn(logits, target):
    ce = F.cross_entropy(logits, target)
    p = torch.softmax(logits, 1)[:, 1]
    t = (target == 1).float()
    inter = (p * t).sum()
    dice = (2 * inter + 1) / (p.sum() + t.sum() + 1)
    return ce + (1 - dice)


def predict_volume(model, hu, device, batch_size=2):
    """Sliding window with lnrt's own implementation, so validation sees what inference will do."""
    from lnrt.sliding_window import SlidingWindowConfig, sliding_window

    def run(batch):
        with torch.no_grad():
            return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()
    logits, _ = sliding_window(normalize(hu), run, SlidingWindowConfig(patch=INFER_PATCH, batch_size=batch_size))
    return logits.argmax(0)


def step(opt, sched, loss) -> float:
    """One optimizer and schedule step on `loss`; returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def add_activation_noise(model) -> None:
    """Quantization-aware fine-tuning, the light way: in training mode every activation gets uniform
    noise of one int8 step (max |a| / 127, per tensor, symmetric as the INT8 export quantizes), so the
    network learns to be robust to the rounding its INT8 variant will apply."""
    def hook(_module, _inp, out):
        if not _module.training:
            return out
        step = out.detach().abs().amax() / 127.0
        return out + step * (torch.rand_like(out) - 0.5)

    for m in model.modules():
        if isinstance(m, torch.nn.LeakyReLU):
            m.register_forward_hook(hook)


class _WeightFakeQuant(torch.nn.Module):
    """A convolution weight rounded to int8, symmetric per output channel (scale max |w| / 127), as the
    INT8 export stores it; the gradient passes straight through. ConvTranspose weights are (in, out, ...),
    so their output channel is dimension 1."""
    def __init__(self, channel_dim: int):
        super().__init__()
        self.channel_dim = channel_dim

    def forward(self, w):
        if not self.training:
            return w
        dims = tuple(d for d in range(w.dim()) if d != self.channel_dim)
        scale = w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / 127.0
        return w + (torch.round(w / scale).clamp(-127, 127) * scale - w).detach()


def _fake_quant_input(module, inputs):
    if not module.training:
        return None
    x = inputs[0]
    scale = x.detach().abs().amax().clamp_min(1e-12) / 127.0
    return (x + (torch.round(x / scale).clamp(-127, 127) * scale - x).detach(),) + tuple(inputs[1:])


def add_fake_quant(model) -> None:
    """Quantization-aware fine-tuning with the INT8 variant's own rounding (`--qat`): in training mode the
    input of every convolution but the first is rounded to int8, symmetric per tensor (scale max |x| /
    127; the export calibrates the 99.9995th percentile, within a bin of the maximum), and every such
    convolution's weight per output channel, where `lnrt.export.precision.to_int8` puts its Q/DQ (the
    input layer stays float32 there too). The rounding passes gradients straight through (the
    straight-through estimator: Bengio, Leonard and Courville 2013; as in Jacob et al., CVPR 2018).
    Unlike `--act-noise`, the error is the deterministic one the variant makes, so the network can learn
    margins against it. Checkpoints keep plain `weight` keys (`plain_state_dict`)."""
    from torch.nn.utils import parametrize

    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    for m in convs[1:]:
        m.register_forward_pre_hook(_fake_quant_input)
        parametrize.register_parametrization(
            m, "weight", _WeightFakeQuant(1 if isinstance(m, torch.nn.ConvTranspose3d) else 0))


def plain_state_dict(model) -> dict:
    """The state dict without parametrizations' renaming (`x.parametrizations.weight.original` is `x.weight`),
    so a `--qat` checkpoint loads into a plain UNet and packages like any other."""
    return {k.replace("parametrizations.weight.original", "weight"): v
            for k, v in model.state_dict().items()}


def dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * np.logical_and(a, b).sum() / s


def train(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cfg = EDGE
    model = UNet(cfg).to(device)
    if getattr(args, "init", None):  # fine-tune from a weights file ({"unet": cfg, "model": state dict}, weights_only)
        init = torch.load(args.init, map_location=device, weights_only=True)
        cfg = UNetConfig.from_dict(init["unet"])
        model = UNet(cfg).to(device)
        model.load_state_dict(init["model"])
    start, state = 0, None
    ckpt = out / "checkpoint.pt"
    if args.resume and ckpt.exists():  # weights before the fake quantization renames them
        state = load_training_checkpoint(ckpt, device)
        model.load_state_dict(state["model"])
    if getattr(args, "qat", False):
        add_fake_quant(model)
    if getattr(args, "act_noise", False):
        add_activation_noise(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        start = state["iteration"]
        rng = np.random.default_rng(args.seed + start)
        torch.manual_seed(args.seed + start)
    (out / "config.json").write_text(json.dumps({"unet": cfg.to_dict(), "args": vars(args)}, indent=2))
    mix = dict(zip(("abdomen", "context", "coarse"), getattr(args, "mix", (0.0, 0.0, 0.0))),
               enlarged=getattr(args, "enlarged", 0.0))
    pool = PhantomPool(args.pool, TRAIN_SEED0 + 100_000 * (start // 100_000) + start, rng, mix,
                       getattr(args, "families", ()) or (), getattr(args, "family_share", 0.0))
    val = [render(make_spec(VAL_SEED0 + i), SPACING)[:2] for i in range(args.val_count)]
    log = open(out / "train_log.jsonl", "a")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: (1 - min(i + start, args.iterations) / (args.iterations + 1)) ** 0.9)
    t0, running, confounder = time.time(), [], getattr(args, "confounder_fraction", 0.0)
    for it in range(start, args.iterations):
        model.train()
        xs, ys = zip(*[pool.sample(args.patch, args.node_fraction, confounder_fraction=confounder,
                                   per_node=getattr(args, "per_node", 0.0)) for _ in range(args.batch_size)])
        x = torch.from_numpy(np.stack(xs)[:, None]).to(device)
        y = torch.from_numpy(np.stack(ys)).to(device)
        running.append(step(opt, sched, loss_fn(model(x), y)))
        if (it + 1) % args.refresh_every == 0:
            pool.refresh(max(1, args.pool // 4))
        if (it + 1) % args.log_every == 0:
            rec = {"iteration": it + 1, "loss": round(float(np.mean(running)), 4),
                   "lr": sched.get_last_lr()[0], "elapsed_s": round(time.time() - t0, 1)}
            running = []
            if (it + 1) % args.val_every == 0 or it + 1 == args.iterations:
                model.eval()
                rec["val_dice"] = round(float(np.mean([dice(predict_volume(model, h, device) > 0, l > 0)
                                                       for h, l in val])), 4)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
            save_training_checkpoint(ckpt, model, opt, it + 1, cfg)
    save_training_checkpoint(ckpt, model, opt, args.iterations, cfg)
    return model


def save_training_checkpoint(path, model, opt, iteration: int, cfg) -> None:
    """`checkpoint.pt`: tensors, numbers, strings, lists and dicts only, so it loads with
    `torch.load(weights_only=True)` (no argparse Namespace, numpy object or module is pickled)."""
    torch.save({"model": plain_state_dict(model), "optimizer": opt.state_dict(), "iteration": int(iteration),
                "unet": cfg.to_dict()}, path)


def load_training_checkpoint(path, device="cpu") -> dict:
    """A `save_training_checkpoint` file, unpickled with weights_only=True (nothing else is unpickled)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # unpickling errors of many kinds
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise LnrtError(f"{path}: cannot be read with weights_only=True ({first}); expected a checkpoint "
                        "written by lnrt.models.train (or start a new run in another --out)") from None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--patch", type=int, nargs=3, default=(32, 64, 64))
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--node-fraction", type=float, default=0.5)
    ap.add_argument("--confounder-fraction", type=float, default=0.0,
                    help="share of patches centred on a submandibular gland or an unenhanced vessel (hard negatives)")
    ap.add_argument("--per-node", type=float, default=0.0,
                    help="share of node-centred patches whose node is drawn uniformly among the scan's nodes, "
                         "not by volume (small nodes then get as many patches as enlarged ones)")
    ap.add_argument("--pool", type=int, default=24)
    ap.add_argument("--refresh-every", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--val-count", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", default=None, help="fine-tune from this weights file (e.g. models/edge_weights.pt)")
    ap.add_argument("--act-noise", action="store_true",
                    help="int8-step activation noise while training (quantization-aware fine-tuning)")
    ap.add_argument("--qat", action="store_true",
                    help="round conv inputs and weights to int8 as the INT8 export does, gradients straight through")
    ap.add_argument("--mix", type=float, nargs=3, default=(0.0, 0.0, 0.0), metavar=("ABDOMEN", "CONTEXT", "COARSE"),
                    help="shares of abdomen phantoms, necks with head and shoulders, and coarse scans in the "
                         f"pool (0 0 0: the neck alone; the default model's last phase used {' '.join(map(str, MIX.values()))})")
    ap.add_argument("--enlarged", type=float, default=0.0,
                    help="share of neck phantoms given 1-3 enlarged nodes on purpose (15-30 mm, up to 50 mm long)")
    ap.add_argument("--families", nargs="*", default=(), choices=sorted(FAMILIES),
                    help="families of lnrt.models.families to train on (the rest stay held out; default none)")
    ap.add_argument("--family-share", type=float, default=0.3, help="share of necks given one of --families")
    ap.add_argument("--package", default=None, help="after training, write a model package here")
    ap.add_argument("--package-only", action="store_true", help="package the checkpoint, no training")
    args = ap.parse_args()
    if not 0 <= args.confounder_fraction <= 1 - args.node_fraction:
        ap.error(f"--confounder-fraction {args.confounder_fraction}: expected 0 to 1 - --node-fraction "
                 f"({1 - args.node_fraction:g}), the share of patches not centred on nodes")
    if not 0 <= args.per_node <= 1:
        ap.error(f"--per-node {args.per_node}: expected a share from 0 to 1")
    if not 0 <= args.family_share <= 1:
        ap.error(f"--family-share {args.family_share}: expected a share from 0 to 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.package_only:
        train(args)
    if args.package:
        from .package_model import package_checkpoint
        print(package_checkpoint(Path(args.out) / "checkpoint.pt", Path(args.package)))


if __name__ == "__main__":
    main()
