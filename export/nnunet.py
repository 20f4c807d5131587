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
- A cascade (`3d_cascade_fullres`: a configuration with `previous_stage`, inheriting from 3d_fullres) is
  exported with its first stage: the folder `Trainer__Plans__<previous_stage>` beside it (nnU-Net's
  layout) or `previous_stage=`/`--previous-stage`, same folds, same labels, itself imported under every
  rule here and nested whole in the package (`input.previous_stage`, pinned by its sha256). Its network
  takes 1 + n_foreground channels (nnU-Net's `determine_num_input_channels`); the dataset's own image
  channels must still be one CT.
- `resampling_fn_data_kwargs` / `resampling_fn_probabilities_kwargs` -> the manifest's `resampling`
  (scheme "nnunet"): the scan is normalized on its own grid and then resampled with nnU-Net's splines,
  and the logits are brought back to the scan before the softmax, as nnU-Net's predictor does
  (`lnrt.splines`, equal to nnU-Net's `resample_data_or_seg_to_shape` to float32 rounding).
- The sliding window sums logits and Gaussian weights in half precision (`sliding_window.accumulate:
  "float16"`), as nnU-Net's predictor does, and the logits brought back are rounded to half as its are.
Things lnrt does differently and says so in the manifest: it reads scans into LPS order (nnU-Net uses
the stored array order, the same for LPS-stored scans). Tiles that hold no body voxel are not run. With InstanceNorm a tile's output
depends on the tile's own statistics, so the imported package tiles the whole scan at nnU-Net's own
tile positions (`body_crop.tiling: "whole_scan"`) and runs the tiles that touch the body: every body
voxel gets nnU-Net's accumulation exactly; without InstanceNorm the body's box is tiled.

Nothing in the folder's files can run code (nnU-Net itself resolves plans names with `pydoc.locate`;
lnrt does not):
- `network_class_name` must name a class under `dynamic_network_architectures.architectures.` or
  `lnrt.models.` (whole dotted components, none starting with `_`), defined there and subclassing
  `torch.nn.Module`; the name is checked before anything is imported. If that module is missing (the
  class moved between dynamic-network-architectures versions) the class is looked up by name among
  `dynamic_network_architectures.architectures`' own modules, as nnU-Net does.
- `_kw_requires_import` values are looked up in `layer_classes()`, a fixed table of torch.nn layers
  (`LAYER_NAMES`: convolutions, transposed convolutions, instance/batch/group/layer norms, dropouts,
  common activations, Identity) spelled `torch.nn.X` or by their defining module
  (`torch.nn.modules.conv.Conv3d`, as nnU-Net writes them), or null; nothing is imported for them.
- The `architecture` entry may hold only `network_class_name`, `arch_kwargs` and `_kw_requires_import`
  (nnU-Net v2's keys); `arch_kwargs` names must be parameters of the class's `__init__` (unless it takes
  `**kwargs`) and may not set `input_channels`, `num_classes` or `deep_supervision`, which lnrt passes.
- Plans without an `architecture` entry (nnU-Net < 2.4) are refused; re-plan them with a current nnU-Net.
Every refusal is one `LnrtError` line naming plans.json, the key, the value and what is allowed.
"""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

from lnrt.errors import LnrtError

from .torch_export import _torch

NORMALIZATION_SCHEMES = ("CTNormalization",)


def _json(path: Path) -> dict:
    if not path.is_file():
        raise LnrtError(f"{path}: missing; expected an nnU-Net v2 results folder with plans.json and dataset.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LnrtError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise LnrtError(f"{path}: holds a JSON {type(data).__name__}; expected an object (nnU-Net v2 format)")
    return data


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


# Where `network_class_name` may point: nnU-Net v2's own architectures, and lnrt's.
ARCH_MODULE_PREFIXES = ("dynamic_network_architectures.architectures.", "lnrt.models.")
# The keys of nnU-Net v2's plans `architecture` entry (nnunetv2 experiment planners, plans_handler).
ARCH_KEYS = ("network_class_name", "arch_kwargs", "_kw_requires_import")
# Passed by lnrt itself (nnU-Net's network interface), never taken from the plans.
LNRT_KWARGS = ("input_channels", "num_classes", "deep_supervision")
# torch.nn layers a `_kw_requires_import` entry (conv_op, norm_op, dropout_op, nonlin, ...) may name.
LAYER_NAMES = (
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "GroupNorm", "LayerNorm", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
    "ReLU", "LeakyReLU", "PReLU", "GELU", "ELU", "SELU", "SiLU", "Mish", "Tanh", "Sigmoid", "Identity",
)
_DOTTED = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)+")  # no component starts with _
_ALLOWED_ARCH = ("a torch.nn.Module class under " + " or ".join(ARCH_MODULE_PREFIXES)
                 + " (e.g. dynamic_network_architectures.architectures.unet.PlainConvUNet)")
_ALLOWED_LAYERS = ("null or one of torch.nn." + ", ".join(LAYER_NAMES)
                   + " (also spelled by defining module, e.g. torch.nn.modules.conv.Conv3d)")


def layer_classes() -> dict:
    """{spelling: class} for `LAYER_NAMES`: `torch.nn.X` and `<defining module>.X`."""
    nn = _torch().nn
    table = {}
    for name in LAYER_NAMES:
        cls = getattr(nn, name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            table[f"torch.nn.{name}"] = cls
            table[f"{cls.__module__}.{name}"] = cls
    return table


def _refuse(where: str, key: str, value, allowed: str) -> LnrtError:
    return LnrtError(f"{where}: {key}={value!r} is not allowed; expected {allowed}")


def _allowed_prefix(name: str) -> str | None:
    return next((p for p in ARCH_MODULE_PREFIXES if name.startswith(p)), None)


def resolve_network_class(name, where: str = "plans.json", key: str = "architecture.network_class_name"):
    """`network_class_name` -> the class, only inside `ARCH_MODULE_PREFIXES` (checked before importing)."""
    torch = _torch()
    if not isinstance(name, str) or not _DOTTED.fullmatch(name) or not _allowed_prefix(name.rpartition(".")[0] + "."):
        raise _refuse(where, key, name, _ALLOWED_ARCH)
    mod_name, _, cls_name = name.rpartition(".")
    prefix = _allowed_prefix(mod_name + ".")
    if mod_name + "." == prefix:  # `lnrt.models.X`: a class must live in a module below the prefix
        raise _refuse(where, key, name, _ALLOWED_ARCH)
    try:
        candidates = [importlib.import_module(mod_name)]
    except ImportError:  # no such module below the prefix, or dynamic-network-architectures missing
        if not prefix.startswith("dynamic_network_architectures."):
            raise _refuse(where, key, name, _ALLOWED_ARCH) from None
        candidates = _dna_modules()
        if not candidates:
            raise LnrtError(f"{where}: {key}={name!r} cannot be imported; install the package that provides it "
                            "(dynamic-network-architectures for nnU-Net's own)") from None
    for module in candidates:
        cls = vars(module).get(cls_name)
        if (isinstance(cls, type) and issubclass(cls, torch.nn.Module)
                and _allowed_prefix(getattr(cls, "__module__", "") + ".")):
            return cls
    raise _refuse(where, key, name, _ALLOWED_ARCH)


def _dna_modules() -> list:
    """dynamic_network_architectures.architectures' own modules (nnU-Net's fallback lookup by class name)."""
    try:
        pkg = importlib.import_module("dynamic_network_architectures.architectures")
    except ImportError:
        return []
    mods = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            try:
                mods.append(importlib.import_module(f"{pkg.__name__}.{info.name}"))
            except ImportError:  # a module needing an optional dependency
                continue
    return mods


def network_kwargs(arch, where: str = "plans.json", key: str = "architecture") -> tuple:
    """The plans' architecture entry -> (class, kwargs), checked against the allow-lists."""
    if not isinstance(arch, dict):
        raise LnrtError(f"{where}: {key} is a {type(arch).__name__}; expected an object with "
                        f"{', '.join(ARCH_KEYS)}")
    unknown = sorted(set(arch) - set(ARCH_KEYS))
    if unknown:
        raise _refuse(where, f"{key}.{unknown[0]}", arch[unknown[0]],
                      f"only the keys {', '.join(ARCH_KEYS)} (nnU-Net v2's architecture entry)")
    cls = resolve_network_class(arch.get("network_class_name"), where, f"{key}.network_class_name")
    kwargs = arch.get("arch_kwargs", {})
    if not isinstance(kwargs, dict):
        raise _refuse(where, f"{key}.arch_kwargs", kwargs, "an object of keyword arguments")
    kwargs = dict(kwargs)
    for k in LNRT_KWARGS:
        if k in kwargs:
            raise _refuse(where, f"{key}.arch_kwargs.{k}", kwargs[k], f"no {k} (lnrt sets it)")
    imports = arch.get("_kw_requires_import", [])
    if not isinstance(imports, list) or not all(isinstance(k, str) for k in imports):
        raise _refuse(where, f"{key}._kw_requires_import", imports, "a list of arch_kwargs names")
    layers = layer_classes()
    for k in imports:
        if k not in kwargs:
            raise _refuse(where, f"{key}._kw_requires_import", k, "names of keys in arch_kwargs")
        value = kwargs[k]
        if value is None:
            continue
        if not isinstance(value, str) or value not in layers:
            raise _refuse(where, f"{key}.arch_kwargs.{k}", value, _ALLOWED_LAYERS)
        kwargs[k] = layers[value]
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params):
        accepted = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        missing = [k for k in LNRT_KWARGS if k not in accepted]
        if missing:
            raise _refuse(where, f"{key}.network_class_name", arch["network_class_name"],
                          f"a network taking {', '.join(LNRT_KWARGS)} (nnU-Net's interface; it lacks "
                          f"{', '.join(missing)})")
        extra = sorted(set(kwargs) - accepted)
        if extra:
            raise _refuse(where, f"{key}.arch_kwargs.{extra[0]}", kwargs[extra[0]],
                          f"only parameters of {cls.__name__}.__init__")
    return cls, kwargs


def build_network(arch: dict, in_channels: int, num_classes: int, where: str = "plans.json",
                  key: str = "architecture"):
    """The plans' architecture entry -> an nn.Module without deep supervision (allow-listed, see above)."""
    cls, kwargs = network_kwargs(arch, where, key)
    try:
        return cls(input_channels=in_channels, num_classes=num_classes, deep_supervision=False, **kwargs)
    except Exception as exc:  # the plans' values do not fit the class: a bad file, not a bug here
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise LnrtError(f"{where}: {key}: {arch['network_class_name']} cannot be built from its arch_kwargs "
                        f"({type(exc).__name__}: {first}); expected the plans nnU-Net wrote for it") from None


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
    init_args = ckpts[0].get("init_args")
    configuration = (configuration or (init_args.get("configuration") if isinstance(init_args, dict) else None)
                     or "3d_fullres")
    configs = plans.get("configurations", {})
    if not isinstance(configs, dict) or not all(isinstance(c, dict) for c in configs.values()):
        raise LnrtError(f"{folder / 'plans.json'}: 'configurations' is not an object of objects; expected "
                        "nnU-Net v2 plans")
    if not isinstance(configuration, str) or configuration not in configs:
        raise LnrtError(f"{folder / 'plans.json'}: no configuration {configuration!r} "
                        f"(has {', '.join(configs)}); expected --configuration one of those")
    cfg, seen = dict(configs[configuration]), [configuration]
    while "inherits_from" in cfg:  # nnU-Net's configuration inheritance (3d_cascade_fullres etc.)
        parent_name = cfg.pop("inherits_from")
        if not isinstance(parent_name, str) or parent_name not in configs or parent_name in seen:
            raise LnrtError(f"{folder / 'plans.json'}: configurations.{seen[-1]}.inherits_from="
                            f"{parent_name!r} is not allowed; expected another configuration, without cycles")
        seen.append(parent_name)
        parent = dict(configs[parent_name])
        parent.update(cfg)
        cfg = parent
    return {"folder": folder, "plans": plans, "dataset": dataset, "configuration": configuration,
            "config": cfg, "folds": [str(f) for f in folds], "checkpoints": ckpts}


def manifest_fields(info: dict) -> dict:
    """lnrt manifest fields from nnU-Net's plans and dataset (axis orders converted)."""
    try:
        return _manifest_fields(info)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise LnrtError(f"{info['folder']}: plans.json or dataset.json lacks or garbles a field "
                        f"({type(exc).__name__}: {str(exc)[:120]}); expected nnU-Net v2 files") from None


def _manifest_fields(info: dict) -> dict:
    plans, cfg, dataset = info["plans"], info["config"], info["dataset"]
    src = info["folder"] / "plans.json"
    dims = len(cfg.get("patch_size", []))
    if dims not in (2, 3) or len(cfg.get("spacing", [])) != dims:
        raise LnrtError(f"{src}: configuration {info['configuration']!r} has a patch of {dims} axes; lnrt runs "
                        "3D and 2D nnU-Net configurations")
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
    spacing_t, patch_t = list(cfg["spacing"]), list(cfg["patch_size"])
    mirror = [int(a) for a in info["checkpoints"][0].get("inference_allowed_mirroring_axes") or []]
    if dims == 2:  # nnU-Net runs 2d models slice by slice along the transposed first axis, not resampled
        if fwd[0] != 0:
            raise LnrtError(f"{src}: transpose_forward {fwd} slices a 2d configuration along axis {fwd[0]}; lnrt "
                            "runs 2d models on axial slices (transpose_forward starting with 0)")
        spacing_t, patch_t, mirror = [None] + spacing_t, [1] + patch_t, [a + 1 for a in mirror]
    return {
        "input_kind": "3d" if dims == 3 else "2d",
        "spacing_zyx": [None if spacing_t[a] is None else float(spacing_t[a]) for a in back],
        "patch_zyx": [int(patch_t[a]) for a in back],
        "transpose": fwd,
        "normalization": {"scheme": "ct_zscore",
                          "clip_hu": [float(props["percentile_00_5"]), float(props["percentile_99_5"])],
                          "mean": float(props["mean"]), "std": max(float(props["std"]), 1e-8)},
        "classes": classes,
        # mirroring axes are in the transposed order: bring them back to (z, y, x)
        "mirror_axes": sorted(fwd[int(a)] for a in mirror),
        "resampling": resampling_section(cfg, src, info["configuration"]),
    }


# nnU-Net's own resampling function, the one lnrt.splines reproduces, and its defaults
RESAMPLING_FN = "resample_data_or_seg_to_shape"
RESAMPLING_DEFAULTS = {"data": {"order": 3, "order_z": 0, "force_separate_z": None},
                       "probabilities": {"order": 1, "order_z": 0, "force_separate_z": None}}


def resampling_section(cfg: dict, src, configuration: str) -> dict:
    """The manifest's `resampling` from the plans' `resampling_fn_data(_kwargs)` and
    `resampling_fn_probabilities(_kwargs)`: the scan is resampled as nnU-Net resamples it, and its logits
    brought back the same way; another function or keyword is refused (lnrt would resample differently)."""
    out = {"scheme": "nnunet"}
    for part, key in (("data", "data"), ("probabilities", "logits")):
        where = f"configurations.{configuration}.resampling_fn_{part}"
        fn = cfg.get(f"resampling_fn_{part}", RESAMPLING_FN)
        if fn != RESAMPLING_FN:
            raise _refuse(str(src), where, fn, f"{RESAMPLING_FN!r} (nnU-Net's default, what lnrt reproduces)")
        kwargs = {**RESAMPLING_DEFAULTS[part], **cfg.get(f"resampling_fn_{part}_kwargs", {})}
        if kwargs.pop("is_seg", False):
            raise _refuse(str(src), f"{where}_kwargs.is_seg", True, "false for the CT and its logits")
        unknown = sorted(set(kwargs) - {"order", "order_z", "force_separate_z"})
        if unknown:
            raise _refuse(str(src), f"{where}_kwargs", unknown[0], "only order, order_z, force_separate_z")
        out[key] = kwargs
    return out


def _check_fields_early(info: dict, fields: dict, name, version: str) -> None:
    """The plans' values as the manifest will hold them, schema-checked before any network is built
    (NaN spacing or intensity statistics are refused in one line naming plans.json, not after the export)."""
    from lnrt.package import check_manifest, make_manifest

    provisional = make_manifest(name or "nnunet", version, fields["spacing_zyx"], fields["patch_zyx"],
                                fields["normalization"], {}, classes=fields["classes"],
                                input_kind=fields["input_kind"])
    provisional["resampling"] = fields["resampling"]
    check_manifest(provisional, f"{info['folder'] / 'plans.json'}, as the manifest would hold it", files=False)


def previous_stage_folder(info: dict, given=None) -> Path | None:
    """The results folder of a cascade's first stage (None: the configuration is not a cascade): `given`,
    or nnU-Net's layout, the sibling `Trainer__Plans__<previous_stage>` in the same dataset folder."""
    prev = info["config"].get("previous_stage")
    if prev is None:
        if given is not None:
            raise LnrtError(f"{info['folder'] / 'plans.json'}: configuration {info['configuration']!r} has no "
                            "previous_stage; expected --previous-stage only for a cascade (3d_cascade_fullres)")
        return None
    key = f"configurations.{info['configuration']}.previous_stage"
    src = f"{info['folder'] / 'plans.json'}: {key}"
    if not isinstance(prev, str) or prev not in info["plans"]["configurations"] or prev == info["configuration"]:
        raise _refuse(str(info["folder"] / "plans.json"), key, prev, "another configuration of these plans")
    if given is not None:
        return Path(given)
    parts = info["folder"].name.split("__")
    if len(parts) != 3:
        raise LnrtError(f"{src} is {prev!r}, and {info['folder'].name!r} is not named Trainer__Plans__"
                        "configuration; expected the first stage's folder given with --previous-stage FOLDER")
    sibling = info["folder"].parent / "__".join(parts[:2] + [prev])
    if not sibling.is_dir():
        raise LnrtError(f"{src} is {prev!r}, but {sibling} is not a folder; expected the first stage's results "
                        "folder there (nnU-Net's layout), or given with --previous-stage FOLDER")
    return sibling


def _first_stage(info: dict, fields: dict, given, checkpoint: str) -> dict | None:
    """The first stage's `read_folder` info, checked to be a single-stage model of the same labels."""
    folder = previous_stage_folder(info, given)
    if folder is None:
        return None
    prev = info["config"]["previous_stage"]
    first = read_folder(folder, prev, info["folds"], checkpoint)
    if "previous_stage" in first["config"]:
        raise LnrtError(f"{folder / 'plans.json'}: configuration {prev!r} is itself a cascade stage; expected "
                        "the low-res first stage (nnU-Net's cascades have two stages)")
    theirs = manifest_fields(first)
    if theirs["classes"] != fields["classes"]:
        raise LnrtError(f"{folder / 'dataset.json'}: labels {theirs['classes']} differ from the cascade's "
                        f"{fields['classes']}; expected both stages of one dataset")
    return first


def import_nnunet(folder, out, configuration: str | None = None, folds=None,
                  checkpoint: str = "checkpoint_final.pth", name: str | None = None, version: str = "1.0.0",
                  previous_stage=None, **package_kwargs) -> Path:
    """Write an lnrt package for an nnU-Net v2 model; see `lnrt.export.builder.build_package`. A cascade
    (a configuration with `previous_stage`, nnU-Net's 3d_cascade_fullres) also exports its first stage
    (the folder `previous_stage`, default nnU-Net's sibling folder; the same folds) into the package."""
    info = read_folder(folder, configuration, folds, checkpoint)
    fields = manifest_fields(info)
    _check_fields_early(info, fields, name, version)
    first = _first_stage(info, fields, previous_stage, checkpoint)
    arch = info["config"].get("architecture")
    where, key = info["folder"] / "plans.json", f"configurations.{info['configuration']}.architecture"
    if not arch:
        raise LnrtError(f"{where}: {key} is missing (plans from nnU-Net < 2.4); re-plan with a current nnU-Net")
    network_kwargs(arch, where, key)  # every allow-list check before any fold is built
    # nnU-Net's determine_num_input_channels: a cascade's network also takes one mask per foreground label
    labels = list(range(1, len(fields["classes"]))) if first else []
    nets = []
    for f, ckpt in zip(info["folds"], info["checkpoints"]):
        net = build_network(arch, 1 + len(labels), len(fields["classes"]), where, key)
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
                          "allowed_mirroring_axes_zyx": fields["mirror_axes"],
                          **({"previous_stage": {"folder": str(first["folder"]),
                                                 "configuration": first["configuration"],
                                                 "folds": first["folds"]}} if first else {})},
        "differences_from_nnunet": ["scans are read in LPS order (nnU-Net: stored array order)",
                                    "tiles without body are skipped (with instance normalization at "
                                    "nnU-Net's own tile positions over the whole scan, since a tile's "
                                    "output depends on its own statistics; without it over the body's box)"]
        + ([CASCADE_DIFFERENCE] if first else []),
    }
    if first is None:
        return _build(info, fields, arch, module, out, name, version, provenance, None, **package_kwargs)
    return _build_cascade(info, fields, arch, module, out, name, version, provenance, first, labels,
                          checkpoint, **package_kwargs)


# What a cascade's first stage does differently in lnrt (besides what every imported model does)
CASCADE_DIFFERENCE = ("the first stage's segmentation is brought back to the scan's grid only where a voxel "
                      "can be foreground; its tiles without body are skipped too")


def _build_cascade(info, fields, arch, module, out, name, version, provenance, first, labels, checkpoint,
                   **package_kwargs) -> Path:
    """The first stage exported (fp32) into a temporary folder beside `out`, then the cascade with it
    nested; nothing is left behind when either fails."""
    import tempfile

    out = Path(out)
    if out.exists() and not package_kwargs.get("overwrite"):
        raise LnrtError(f"{out}: already exists; expected a new folder (or --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.first.") as tmp:
        kw = {k: package_kwargs[k] for k in ("threads", "force") if k in package_kwargs}
        pkg = import_nnunet(first["folder"], Path(tmp) / "pkg", configuration=first["configuration"],
                            folds=first["folds"], checkpoint=checkpoint,
                            name=f"{name}-previous-stage" if name else None, version=version, **kw)
        return _build(info, fields, arch, module, out, name, version, provenance, (pkg, labels), **package_kwargs)


def _build(info, fields, arch, module, out, name, version, provenance, previous, **package_kwargs) -> Path:
    from .builder import build_package

    return build_package(
        module, out, name=name or f"nnunet-{info['plans'].get('dataset_name', 'model')}-{info['configuration']}",
        version=version, spacing_zyx=fields["spacing_zyx"], patch_zyx=fields["patch_zyx"],
        normalization=fields["normalization"], classes=fields["classes"], provenance=provenance,
        transpose=fields["transpose"], mirror_axes=fields["mirror_axes"], input_kind=fields["input_kind"],
        tiling=package_kwargs.pop("tiling", "whole_scan" if _has_instance_norm(arch) else "body_box"),
        previous_stage=previous, resampling=fields["resampling"], accumulate="float16", **package_kwargs)


def _has_instance_norm(arch: dict) -> bool:
    return "InstanceNorm" in str(arch.get("arch_kwargs", {}).get("norm_op"))
