"""nnU-Net v2 results folders built from scratch (random weights), for the import tests and benchmarks.

`SMALL` (3 stages, 8-16-32 features, 12 k parameters) is what the import tests use; `LARGE` is the size
of network users bring (issue 22): a PlainConvUNet of 5 stages, 32-64-128-256-320 features, 16.5 M
parameters, patch 64 x 128 x 128 at 2 x 1 x 1 mm, the shape of a head-and-neck CT `3d_fullres` plan.
Needs torch and dynamic-network-architectures (the `peers` extra).

It follows the files nnU-Net's own predictor reads: plans.json (with a PlainConvUNet `architecture`
entry and CT foreground intensity properties), dataset.json, and fold_N/checkpoint_final.pth with
`network_weights`, `init_args`, `trainer_name` and `inference_allowed_mirroring_axes`. The final layer's
bias is set so about a third of a phantom's body is foreground, so masks are not trivially empty.

`make_cascade` writes the two folders of nnU-Net's cascade in one dataset folder, as nnU-Net lays them
out: `..__3d_lowres` and `..__3d_cascade_fullres`, with one plans.json holding `3d_fullres`, `3d_lowres`
(`next_stage`) and `3d_cascade_fullres` (`inherits_from: 3d_fullres`, `previous_stage: 3d_lowres`). The
cascade's network takes 1 + n_foreground channels (the CT, then one one-hot mask per foreground label of
the low-res segmentation, nnU-Net's `determine_num_input_channels`); the first convolution's weights on
the mask channels are scaled by `ONE_HOT_GAIN`, so a random network's output depends on the masks
enough for a test to see that they are fed right (zeroing them changes many voxels).
"""
from __future__ import annotations

import json
from pathlib import Path

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shape:
    spacing: tuple  # (z, y, x) mm
    patch: tuple  # (z, y, x) voxels
    features: tuple  # per stage; the first stage keeps full resolution, each next one halves it


SMALL = Shape((2.0, 1.5, 1.5), (32, 64, 64), (8, 16, 32))
LARGE = Shape((2.0, 1.0, 1.0), (64, 128, 128), (32, 64, 128, 256, 320))
SPACING, PATCH, FEATURES = list(SMALL.spacing), list(SMALL.patch), list(SMALL.features)
LOWRES = Shape((4.0, 3.0, 3.0), (16, 32, 32), SMALL.features)  # the cascade's first stage: 2x coarser
CASCADE = "3d_cascade_fullres"
ONE_HOT_GAIN = 3.0
PROPS = {"max": 1800.0, "mean": 60.0, "median": 55.0, "min": -1000.0, "percentile_00_5": -150.0,
         "percentile_99_5": 500.0, "std": 120.0}


def plans(transpose=(0, 1, 2), shape: Shape = SMALL, configuration: str = "3d_fullres",
          lowres: Shape = LOWRES, data_order: int = 3) -> dict:
    """plans.json with one configuration: "3d_fullres" or "3d_lowres" (3D, the shape's spacing and
    patch), or "2d" (the shape's in-plane spacing and patch; nnU-Net slices along the transposed first
    axis, so `transpose` must keep axis 0 first for lnrt). "3d_cascade_fullres" gives the three
    configurations of a cascade: 3d_fullres (`shape`), 3d_lowres (`lowres`) and the cascade inheriting
    from 3d_fullres, as nnU-Net's planner writes them. `data_order` is the CT's resampling order
    (nnU-Net's default 3, third-order splines; 1 resamples linearly, as lnrt does)."""
    if configuration == CASCADE:
        p = plans(transpose, shape, "3d_fullres", data_order=data_order)
        low = _configuration(transpose, lowres, "3d_lowres", data_order)
        low["next_stage"] = CASCADE
        p["configurations"].update({"3d_lowres": low, CASCADE: {"inherits_from": "3d_fullres",
                                                                "previous_stage": "3d_lowres"}})
        return p
    back = [list(transpose).index(a) for a in range(3)]
    return {"dataset_name": "Dataset901_LnrtTest", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [shape.spacing[a] for a in transpose],
            "original_median_shape_after_transp": [64, 128, 128], "image_reader_writer": "SimpleITKIO",
            "transpose_forward": list(transpose), "transpose_backward": back,
            "configurations": {configuration: _configuration(transpose, shape, configuration, data_order)},
            "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": PROPS}}


def _configuration(transpose, shape: Shape, configuration: str, data_order: int = 3) -> dict:
    n, spacing, patch = len(shape.features), list(shape.spacing), list(shape.patch)
    d = 2 if configuration == "2d" else 3
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(shape.features), "conv_op": f"torch.nn.modules.conv.Conv{d}d",
            "kernel_sizes": [[3] * d] * n, "strides": [[1] * d] + [[2] * d] * (n - 1),
            "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{d}d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    cfg = {
        "data_identifier": f"nnUNetPlans_{configuration}", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": [patch[a] for a in transpose][3 - d:],
        "median_image_size_in_voxels": [64, 128, 128][3 - d:], "spacing": [spacing[a] for a in transpose][3 - d:],
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": data_order, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": arch, "batch_dice": False,
    }
    return cfg


def _normalized(hu: np.ndarray) -> np.ndarray:
    x = np.clip(hu, PROPS["percentile_00_5"], PROPS["percentile_99_5"])
    return ((x - PROPS["mean"]) / PROPS["std"]).astype(np.float32)


def _margin(net, x: np.ndarray) -> np.ndarray:
    """Foreground minus background logit of one patch ((C, ...) in nnU-Net's axis order)."""
    import torch

    with torch.no_grad():
        y = net(torch.from_numpy(np.ascontiguousarray(x))[None])[0].numpy()
    return y[1] - y[0]


def _probe_input(probe: np.ndarray, transpose, patch, masks: int, probe_seg=None) -> np.ndarray:
    """The network input (C, ...) of the probe's first patch: the normalized CT, then `masks` one-hot
    channels of `probe_seg` (a cascade's previous stage; default: the probe's brightest third, a stand-in
    with about the share of foreground the calibrated low-res stage gives)."""
    if masks and probe_seg is None:
        probe_seg = (probe >= np.quantile(probe, 2 / 3)).astype(np.uint8)
    chans = [_normalized(probe)] + [(probe_seg == lab).astype(np.float32) for lab in range(1, masks + 1)]
    x = np.stack([np.transpose(c, transpose) for c in chans])
    x = x[:, x.shape[1] // 2] if len(patch) == 2 else x  # a 2d model: the middle slice
    return x[(slice(None),) + tuple(slice(0, s) for s in patch)]


def _calibrate_head(net, x: np.ndarray, foreground: float) -> None:
    import torch

    d = _margin(net, x)
    with torch.no_grad():
        net.decoder.seg_layers[-1].bias[1] -= float(np.quantile(d, 1.0 - foreground))


def resolved(p: dict, configuration: str) -> dict:
    """A configuration with nnU-Net's `inherits_from` applied."""
    cfg = dict(p["configurations"][configuration])
    while "inherits_from" in cfg:
        parent = dict(p["configurations"][cfg.pop("inherits_from")])
        parent.update(cfg)
        cfg = parent
    return cfg


def dataset() -> dict:
    return {"channel_names": {"0": "CT"}, "labels": {"background": 0, "lymph_node": 1},
            "numTraining": 1, "file_ending": ".nii.gz"}


def network(cfg: dict, input_channels: int = 1):
    """The PlainConvUNet of a (resolved) configuration, built as nnU-Net's predictor builds it from the
    plans, with random weights (seeded by the caller)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    two = len(cfg["patch_size"]) == 2
    kw = dict(cfg["architecture"]["arch_kwargs"])
    kw.update(conv_op=nn.Conv2d if two else nn.Conv3d, norm_op=nn.InstanceNorm2d if two else nn.InstanceNorm3d,
              dropout_op=None, nonlin=nn.LeakyReLU)
    return PlainConvUNet(input_channels=input_channels, num_classes=2, deep_supervision=False, **kw)


def make_folder(root: Path, folds=(0,), transpose=(0, 1, 2), seed: int = 0, probe=None,
                shape: Shape = SMALL, foreground: float = 1 / 3, configuration: str = "3d_fullres",
                lowres: Shape = LOWRES, probe_seg=None, data_order: int = 3, weights=None) -> Path:
    """Write the folder. `weights` (one state dict per fold, e.g. from `lnrt.models.train_nnunet`)
    replaces the random initialisation and the head calibration. Otherwise `probe` ((z, y, x) HU array,
    at least a patch) calibrates the head bias so that the share `foreground` of its first patch is
    foreground (for a cascade with `probe_seg`, the previous stage's labels on the probe's grid, as its
    mask channels)."""
    import torch

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    p = plans(transpose, shape, configuration, lowres, data_order)
    (root / "plans.json").write_text(json.dumps(p, indent=1))
    (root / "dataset.json").write_text(json.dumps(dataset(), indent=1))
    cfg = resolved(p, configuration)
    two = configuration == "2d"
    masks = len(dataset()["labels"]) - 1 if "previous_stage" in cfg else 0
    for i, f in enumerate(folds):
        torch.manual_seed(seed + i)
        net = network(cfg, 1 + masks).eval()
        if weights is not None:
            net.load_state_dict(weights[i])
        elif masks:
            with torch.no_grad():
                net.encoder.stages[0][0].convs[0].conv.weight[:, 1:] *= ONE_HOT_GAIN
        if probe is not None and weights is None:
            _calibrate_head(net, _probe_input(probe, transpose, cfg["patch_size"], masks, probe_seg), foreground)
        ckpt = {"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"plans": p, "configuration": configuration, "fold": f, "dataset_json": dataset()},
                "inference_allowed_mirroring_axes": (0, 1) if two else (0, 1, 2), "current_epoch": 1000,
                "logging": {"train_losses": [np.float64(0.5)]}, "optimizer_state": {},
                "grad_scaler_state": None, "_best_ema": np.float64(0.1)}
        (root / f"fold_{f}").mkdir(exist_ok=True)
        torch.save(ckpt, root / f"fold_{f}" / "checkpoint_final.pth")
    return root


def make_cascade(dataset_dir: Path, folds=(0,), transpose=(0, 1, 2), seed: int = 0, probe=None,
                 shape: Shape = SMALL, lowres: Shape = LOWRES, foreground: float = 1 / 3,
                 data_order: int = 3) -> tuple:
    """(low-res folder, cascade folder): nnU-Net's two results folders of a cascade in `dataset_dir`,
    named Trainer__Plans__configuration, each with the same plans.json (all three configurations). The
    low-res head is calibrated on `probe` taken every second voxel (about its coarser grid)."""
    dataset_dir = Path(dataset_dir)
    name = "nnUNetTrainer__nnUNetPlans__"
    low = make_folder(dataset_dir / f"{name}3d_lowres", folds, transpose, seed + 100,
                      None if probe is None else probe[::2, ::2, ::2], lowres, foreground, "3d_lowres", lowres,
                      data_order=data_order)
    cascade = make_folder(dataset_dir / f"{name}{CASCADE}", folds, transpose, seed, probe, shape, foreground,
                          CASCADE, lowres, data_order=data_order)
    (low / "plans.json").write_text((cascade / "plans.json").read_text())
    return low, cascade
