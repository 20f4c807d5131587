"""Import an nnU-Net v2 results folder as an lnrt model package.

    pkg = import_nnunet("Dataset042_Nodes/nnUNetTrainer__nnUNetPlans__3d_fullres", "out/pkg",
                        configuration="3d_fullres", folds=(0, 1))

What is read and how it maps (nnU-Net v2 file formats, as its predictor reads them):
- `plans.json` -> the configuration's `architecture` entry (`network_class_name`, `arch_kwargs`, with the
  `_kw_requires_import` entries resolved to classes) rebuilds the network without deep supervision;
  `spacing` and `patch_size` (in nnU-Net's transposed axis order) become the manifest's spacing and
  patch in lnrt's (z, y, x) order via `transpose_backward`, and `transpose_forward` is recorded so the
  runtime feeds the network the axis order it was trained on; `CTNormalization` becomes lnrt's
  `ct_zscore` with the plans' foreground `percentile_00_5`/`percentile_99_5` clip, `mean` and `std`.
- `dataset.json` -> the class names (label values 0..K-1), the channel check (one CT channel).
- `fold_N/checkpoint_final.pth` -> `network_weights`, read with `torch.load(weights_only=True)`
  (numpy scalars in the training log allow-listed, nothing else unpickled);
  `inference_allowed_mirroring_axes` -> the manifest's mirroring axes (off by default in lnrt, on with
  `--tta`). Several folds are exported as one ONNX graph that averages their logits, which is what
  nnU-Net's predictor does.
- The sliding window keeps nnU-Net's defaults: step 0.5 of the patch, Gaussian sigma 1/8.
Things lnrt does differently and says so in the manifest: it reads scans into LPS order (nnU-Net uses
the stored array order, the same for LPS-stored scans) and resamples with linear interpolation (nnU-Net:
third-order splines). Tiles outside the body are skipped only for networks without instance
normalization: with InstanceNorm a tile's output depends on the tile's own statistics, so the
imported package tiles the whole scan exactly as nnU-Net does (body crop disabled in the manifest).
"""
from __future__ import annotations

import json
import pydoc
from pathlib import Path

from lnrt.errors import LnrtError

from .torch_export import _torch

NORMALIZATION_SCHEMES = ("CTNormalization",)


def _json(path: Path) -> dict:
    if not path.is_file():
        raise LnrtError(f"{path}: missing; expected an nnU-Net v2 results folder with plans.json and dataset.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LnrtError(f"{path}: not valid JSON ({exc})") from None


def load_checkpoint(path: Path) -> dict:
    """An nnU-Net checkpoint's dict, unpickled with weights_only=True (numpy scalars allowed)."""
    torch = _torch()
    import numpy as np

    if not path.is_file():
        raise LnrtError(f"{path}: missing; expected fold_N/checkpoint_final.pth")
    safe = [np.dtype, type(np.dtype("float64")), type(np.dtype("float32")), type(np.dtype("int64"))]
    try:
        safe.append(np._core.multiarray.scalar)
    except AttributeError:  # numpy < 2
        safe.append(np.core.multiarray.scalar)
    try:
        with torch.serialization.safe_globals(safe):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of many kinds
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise LnrtError(f"{path}: cannot be read with weights_only=True ({first}); expected an nnU-Net "
                        "v2 checkpoint") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise LnrtError(f"{path}: has no 'network_weights' state dict; expected an nnU-Net v2 checkpoint")
    return ckpt


def build_network(arch: dict, in_channels: int, num_classes: int):
    """The plans' architecture entry -> an nn.Module without deep supervision."""
    name = arch.get("network_class_name")
    cls = pydoc.locate(name) if name else None
    if cls is None:
        raise LnrtError(f"plans.json: network class {name!r} cannot be imported; install the package "
                        "that provides it (dynamic-network-architectures for nnU-Net's own)")
    kwargs = dict(arch.get("arch_kwargs", {}))
    for key in arch.get("_kw_requires_import", []):
        if kwargs.get(key) is not None:
            obj = pydoc.locate(kwargs[key])
            if obj is None:
                raise LnrtError(f"plans.json: {key}={kwargs[key]!r} cannot be imported")
            kwargs[key] = obj
    return cls(input_channels=in_channels, num_classes=num_classes, deep_supervision=False, **kwargs)


def fold_ensemble(networks: list):
    """One module whose output is the mean of the folds' logits (nnU-Net's ensembling)."""
    torch = _torch()

    class FoldEnsemble(torch.nn.Module):
        def __init__(self, nets):
            super().__init__()
            self.folds = torch.nn.ModuleList(nets)

        def forward(self, x):
            out = self.folds[0](x)
            for net in self.folds[1:]:
                out = out + net(x)
            return out / len(self.folds) if len(self.folds) > 1 else out

    return FoldEnsemble(networks).eval()


def read_folder(folder, configuration: str | None = None, folds=None,
                checkpoint: str = "checkpoint_final.pth") -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise LnrtError(f"{folder}: not a folder; expected an nnU-Net v2 results folder "
                        "(Dataset.../Trainer__Plans__configuration)")
    plans, dataset = _json(folder / "plans.json"), _json(folder / "dataset.json")
    if folds is None:
        folds = sorted(p.name[5:] for p in folder.glob("fold_*") if (p / checkpoint).is_file())
        if not folds:
            raise LnrtError(f"{folder}: no fold_*/{checkpoint} found; expected trained folds")
    ckpts = [load_checkpoint(folder / f"fold_{f}" / checkpoint) for f in folds]
    configuration = configuration or ckpts[0].get("init_args", {}).get("configuration") or "3d_fullres"
    configs = plans.get("configurations", {})
    if configuration not in configs:
        raise LnrtError(f"{folder / 'plans.json'}: no configuration {configuration!r} "
                        f"(has {', '.join(configs)}); expected --configuration one of those")
    cfg = dict(configs[configuration])
    while "inherits_from" in cfg:  # nnU-Net's configuration inheritance (3d_cascade_fullres etc.)
        parent = dict(configs[cfg.pop("inherits_from")])
        parent.update(cfg)
        cfg = parent
    return {"folder": folder, "plans": plans, "dataset": dataset, "configuration": configuration,
            "config": cfg, "folds": [str(f) for f in folds], "checkpoints": ckpts}


def manifest_fields(info: dict) -> dict:
    """lnrt manifest fields from nnU-Net's plans and dataset (axis orders converted)."""
    plans, cfg, dataset = info["plans"], info["config"], info["dataset"]
    src = info["folder"] / "plans.json"
    if len(cfg.get("patch_size", [])) != 3:
        raise LnrtError(f"{src}: configuration {info['configuration']!r} is not 3D; lnrt runs 3D models")
    channels = dataset.get("channel_names", dataset.get("modality", {}))
    if len(channels) != 1:
        raise LnrtError(f"{info['folder'] / 'dataset.json'}: {len(channels)} input channels; lnrt "
                        "runs single-channel CT models")
    schemes = cfg.get("normalization_schemes", [])
    if schemes != ["CTNormalization"]:
        raise LnrtError(f"{src}: normalization {schemes}; lnrt imports CTNormalization models")
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    fwd = [int(a) for a in plans.get("transpose_forward", [0, 1, 2])]
    back = [int(a) for a in plans.get("transpose_backward", [0, 1, 2])]
    labels = dataset["labels"]
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise LnrtError(f"{info['folder'] / 'dataset.json'}: region-based labels are not supported")
    classes = [name for name, _ in sorted(labels.items(), key=lambda kv: int(kv[1]))]
    spacing_t, patch_t = cfg["spacing"], cfg["patch_size"]
    mirror = info["checkpoints"][0].get("inference_allowed_mirroring_axes") or []
    return {
        "spacing_zyx": [float(spacing_t[a]) for a in back],
        "patch_zyx": [int(patch_t[a]) for a in back],
        "transpose": fwd,
        "normalization": {"scheme": "ct_zscore",
                          "clip_hu": [float(props["percentile_00_5"]), float(props["percentile_99_5"])],
                          "mean": float(props["mean"]), "std": max(float(props["std"]), 1e-8)},
        "classes": classes,
        # mirroring axes are in the transposed order: bring them back to (z, y, x)
        "mirror_axes": sorted(fwd[int(a)] for a in mirror),
    }


def import_nnunet(folder, out, configuration: str | None = None, folds=None,
                  checkpoint: str = "checkpoint_final.pth", name: str | None = None, version: str = "1.0.0",
                  **package_kwargs) -> Path:
    """Write an lnrt package for an nnU-Net v2 model; see `lnrt.export.builder.build_package`."""
    from .builder import build_package

    info = read_folder(folder, configuration, folds, checkpoint)
    fields = manifest_fields(info)
    arch = info["config"].get("architecture")
    if not arch:
        raise LnrtError(f"{info['folder'] / 'plans.json'}: configuration has no 'architecture' entry "
                        "(plans from nnU-Net < 2.4); re-plan with a current nnU-Net")
    nets = []
    for f, ckpt in zip(info["folds"], info["checkpoints"]):
        net = build_network(arch, 1, len(fields["classes"]))
        try:
            net.load_state_dict(ckpt["network_weights"], strict=True)
        except RuntimeError as exc:
            raise LnrtError(f"fold_{f}: weights do not fit the plans' network "
                            f"({str(exc).splitlines()[0][:200]})") from None
        nets.append(net.eval())
    module = fold_ensemble(nets)
    provenance = {
        "trained_on": f"nnU-Net v2 dataset {info['plans'].get('dataset_name', '?')} (see its dataset.json)",
        "intended_use": "as stated by the model's authors; imported by lnrt",
        "imported_from": {"format": "nnU-Net v2", "folder": str(info["folder"]),
                          "configuration": info["configuration"], "folds": info["folds"],
                          "trainer": info["checkpoints"][0].get("trainer_name"),
                          "plans_name": info["plans"].get("plans_name"),
                          "network": arch.get("network_class_name"),
                          "transpose_forward": fields["transpose"],
                          "allowed_mirroring_axes_zyx": fields["mirror_axes"]},
        "differences_from_nnunet": ["scans are read in LPS order (nnU-Net: stored array order)",
                                    "resampling is linear (nnU-Net: third-order spline)",
                                    "tiles without body are skipped (only for models without instance "
                                    "normalization: with it, every tile runs as in nnU-Net, since a "
                                    "tile's output depends on its own statistics)"],
    }
    return build_package(
        module, out, name=name or f"nnunet-{info['plans'].get('dataset_name', 'model')}-{info['configuration']}",
        version=version, spacing_zyx=fields["spacing_zyx"], patch_zyx=fields["patch_zyx"],
        normalization=fields["normalization"], classes=fields["classes"], provenance=provenance,
        transpose=fields["transpose"], mirror_axes=fields["mirror_axes"],
        body_crop=package_kwargs.pop("body_crop", not _has_instance_norm(arch)), **package_kwargs)


def _has_instance_norm(arch: dict) -> bool:
    return "InstanceNorm" in str(arch.get("arch_kwargs", {}).get("norm_op"))
