"""nnU-Net v2 import: lnrt's output must match nnU-Net's own predictor on the same CT (Dice >= 0.99)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("dynamic_network_architectures")

from conftest import SLOW  # noqa: E402
from lnrt.models import nnunet_folder as nf  # noqa: E402

import lnrt  # noqa: E402
from lnrt.errors import LnrtError  # noqa: E402
from lnrt.export.nnunet import import_nnunet, manifest_fields, read_folder  # noqa: E402
from lnrt.models.neck import make_spec, render  # noqa: E402
from lnrt.package import ModelPackage  # noqa: E402
from lnrt.volume import Volume  # noqa: E402


@pytest.fixture(scope="module")
def scan():
    hu, _, origin = render(make_spec(30001), tuple(nf.SPACING), fov_xy=(150.0, 120.0))
    return hu.astype(np.float32), origin


def _nnunet_prediction(folder, hu, folds, spacing=nf.SPACING):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(key, str(folder))
    predictor_mod = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    pred = predictor_mod.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                         device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=folds)
    return pred.predict_single_npy_array(hu[None], {"spacing": list(spacing)})


@pytest.mark.parametrize("transpose", [(0, 1, 2), (1, 2, 0)])
def test_import_matches_nnunets_own_predictor(tmp_path, scan, transpose):
    hu, origin = scan
    folds = (0, 1)
    folder = nf.make_folder(tmp_path / "results", folds=folds, transpose=transpose, probe=hu)
    pkg_dir = import_nnunet(folder, tmp_path / "pkg")
    pkg = ModelPackage.load(pkg_dir)
    m = pkg.manifest
    assert m["input"]["spacing_zyx_mm"] == nf.SPACING and m["input"]["patch_size_zyx"] == nf.PATCH
    assert m["normalization"] == {"scheme": "ct_zscore", "clip_hu": [-150.0, 500.0], "mean": 60.0, "std": 120.0}
    assert m["classes"] == ["background", "lymph_node"]
    # InstanceNorm: nnU-Net's tile positions over the whole scan, the tiles that touch the body run
    assert m["body_crop"] == {"threshold_hu": -500.0, "margin_mm": 10.0, "tiling": "whole_scan"}
    assert m["provenance"]["imported_from"]["folds"] == ["0", "1"]
    vol = Volume(hu, spacing=tuple(nf.SPACING[::-1]), origin=tuple(origin), direction=np.eye(3))
    ours = lnrt.Session(pkg, min_volume_mm3=0).run(vol).labels > 0
    theirs = _nnunet_prediction(folder, hu, folds) > 0
    assert 0.05 < theirs.mean() < 0.6  # a real mask, not trivially empty or full
    dice = 2 * np.count_nonzero(ours & theirs) / (np.count_nonzero(ours) + np.count_nonzero(theirs))
    print(f"\n3d_fullres {transpose}, two folds: Dice {dice:.5f}")
    assert dice >= 0.99, (dice, ours.mean(), theirs.mean())


@pytest.mark.parametrize("configuration,transpose,resampled", [
    ("2d", (0, 1, 2), False), ("2d", (0, 2, 1), False), ("3d_lowres", (0, 1, 2), False),
    ("3d_lowres", (1, 2, 0), False), ("3d_lowres", (0, 1, 2), True), ("3d_lowres", (1, 2, 0), True)])
def test_2d_and_lowres_match_nnunets_own_predictor(tmp_path, scan, configuration, transpose, resampled):
    """nnU-Net's `2d` runs slice by slice without resampling across slices: lnrt's package is a 2d slice
    model whose z spacing is the scan's (null in the manifest), with nnU-Net's in-plane tiles per slice.
    `3d_lowres` is a 3D configuration at its own, coarser spacing (here 2x the full-resolution one), run
    on a scan at that spacing and (`resampled`) on the full-resolution scan, which both lnrt and nnU-Net
    resample onto the model's grid: normalized first, then third-order splines (`lnrt.splines`); when
    lnrt still resampled linearly before normalizing, that case gave Dice 0.958 on this random network."""
    hu, origin = scan
    shape = nf.SMALL if configuration == "2d" else nf.Shape((4.0, 3.0, 3.0), (16, 32, 32), nf.SMALL.features)
    if configuration != "2d" and not resampled:
        hu, _, origin = render(make_spec(30001), shape.spacing, fov_xy=(150.0, 120.0))
        hu = hu.astype(np.float32)
    folder = nf.make_folder(tmp_path / "results", folds=(0,), transpose=transpose, probe=hu, shape=shape,
                            configuration=configuration)
    pkg = ModelPackage.load(import_nnunet(folder, tmp_path / "pkg"))
    m = pkg.manifest["input"]
    if configuration == "2d":
        assert (m.get("kind"), m["spacing_zyx_mm"], m["patch_size_zyx"]) == ("2d", [None, 1.5, 1.5], [1, 64, 64])
    else:
        assert "kind" not in m and m["spacing_zyx_mm"] == list(shape.spacing)
    spacing = nf.SPACING if configuration == "2d" or resampled else list(shape.spacing)
    vol = Volume(hu, spacing=tuple(spacing[::-1]), origin=tuple(origin), direction=np.eye(3))
    ours = lnrt.Session(pkg, min_volume_mm3=0).run(vol).labels > 0
    theirs = _nnunet_prediction(folder, hu, (0,), spacing) > 0
    assert 0.05 < theirs.mean() < 0.6
    dice = 2 * np.count_nonzero(ours & theirs) / (np.count_nonzero(ours) + np.count_nonzero(theirs))
    print(f"\n{configuration} {transpose} {'resampled' if resampled else 'at its spacing'}: Dice {dice:.5f}")
    assert dice >= 0.99, (dice, ours.mean(), theirs.mean())


def test_2d_sliced_along_another_axis_is_refused(tmp_path, scan):
    folder = nf.make_folder(tmp_path / "r", folds=(0,), transpose=(1, 0, 2), configuration="2d")
    with pytest.raises(LnrtError, match=r"transpose_forward \[1, 0, 2\] slices a 2d configuration along axis 1"):
        manifest_fields(read_folder(folder))


def test_import_refusals(tmp_path, scan):
    with pytest.raises(LnrtError, match="not a folder"):
        import_nnunet(tmp_path / "nothing", tmp_path / "out")
    folder = nf.make_folder(tmp_path / "r", folds=(0,))
    with pytest.raises(LnrtError, match="no configuration '2d'"):
        read_folder(folder, configuration="2d")
    ckpt = folder / "fold_0" / "checkpoint_final.pth"
    torch.save({"weights": 1}, ckpt)
    with pytest.raises(LnrtError, match="network_weights"):
        read_folder(folder)
    torch.save(torch.nn.Conv3d(1, 1, 1), ckpt)  # a pickled module: never unpickled
    with pytest.raises(LnrtError, match="weights_only"):
        read_folder(folder)
    folder = nf.make_folder(tmp_path / "r2", folds=(0,))
    ds = json.loads((folder / "dataset.json").read_text())
    ds["channel_names"] = {"0": "CT", "1": "PET"}
    (folder / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(LnrtError, match="2 input channels"):
        manifest_fields(read_folder(folder))
    (folder / "plans.json").unlink()
    with pytest.raises(LnrtError, match="plans.json: missing"):
        read_folder(folder)


# --- Nothing in an nnU-Net folder may run code: allow-listed classes and layers only -------------------

def _hostile(folder, **arch_changes):
    """Rewrite the fixture's plans.json with its architecture entry changed (None removes a key)."""
    p = json.loads((folder / "plans.json").read_text())
    arch = p["configurations"]["3d_fullres"]["architecture"]
    for k, v in arch_changes.items():
        if v is None:
            arch.pop(k, None)
        else:
            arch[k] = v
    (folder / "plans.json").write_text(json.dumps(p))
    return arch


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    return nf.make_folder(tmp_path_factory.mktemp("genuine"), folds=(0,))


def _copy(genuine, dst):
    import shutil
    return Path(shutil.copytree(genuine, dst))


def test_logging_basicconfig_attack_is_refused_and_the_file_untouched(tmp_path, genuine):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    folder = _copy(genuine, tmp_path / "r")
    # force=True drops pytest's handlers, so without the allow-list basicConfig would open `target` with "w"
    _hostile(folder, network_class_name="logging.basicConfig",
             arch_kwargs={"filename": str(target), "filemode": "w", "force": True},
             _kw_requires_import=[])
    with pytest.raises(LnrtError) as err:
        import_nnunet(folder, tmp_path / "out")
    msg = str(err.value)
    assert "plans.json" in msg and "network_class_name" in msg and "'logging.basicConfig'" in msg
    assert "dynamic_network_architectures.architectures." in msg and "lnrt.models." in msg
    assert "\n" not in msg
    assert target.read_text() == "keep me\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_callables_outside_the_allow_list_are_never_called(tmp_path, genuine, monkeypatch, target):
    import builtins
    import subprocess

    calls = []
    mod = {"os": os, "builtins": builtins, "subprocess": subprocess}[target.split(".")[0]]
    monkeypatch.setattr(mod, target.split(".")[1], lambda *a, **k: calls.append((a, k)))
    folder = _copy(genuine, tmp_path / "r")
    _hostile(folder, network_class_name=target, arch_kwargs={"command": "touch pwned"}, _kw_requires_import=[])
    with pytest.raises(LnrtError, match=rf"network_class_name='{target}' is not allowed"):
        import_nnunet(folder, tmp_path / "out")
    monkeypatch.undo()
    assert calls == []


def test_names_outside_the_allow_list_are_not_even_imported(tmp_path, genuine, capfd, monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "this", raising=False)  # importing `this` prints the Zen of Python
    folder = _copy(genuine, tmp_path / "r")
    _hostile(folder, network_class_name="this.Zen")
    with pytest.raises(LnrtError, match="is not allowed"):
        import_nnunet(folder, tmp_path / "out")
    assert "this" not in sys.modules
    assert "Beautiful is better" not in capfd.readouterr().out


@pytest.mark.parametrize("name", [
    "dynamic_network_architectures_evil.X",            # prefix without the dot
    "dynamic_network_architectures.architecturesX.unet.PlainConvUNet",
    "lnrt.modelsX.Y",
    "lnrt.models.UNet",                                # must name a module below the prefix
    "lnrt.models.train.train",                         # a function, not a class
    "lnrt.models.unet.nn.Conv3d",                      # attribute walks are not followed
    "lnrt.models.unet.nn",                             # a module
    "lnrt.models.train.torch",
    "dynamic_network_architectures.architectures.unet.nn.Module",
    "dynamic_network_architectures.architectures.unet.__builtins__",
    "dynamic_network_architectures.architectures.unet._private",
    "dynamic_network_architectures.architectures.unet.PlainConvUNet.__init__",
    "dynamic_network_architectures.architectures.dinov2_eva.InitWeights_He",  # a class, not an nn.Module
    "PlainConvUNet",
    "",
    ["dynamic_network_architectures.architectures.unet.PlainConvUNet"],
])
def test_lookalike_names_are_refused(tmp_path, genuine, name):
    folder = _copy(genuine, tmp_path / "r")
    _hostile(folder, network_class_name=name)
    with pytest.raises(LnrtError, match="is not allowed; expected a torch.nn.Module class under"):
        import_nnunet(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key,value", [
    ("nonlin", "os.system"),
    ("conv_op", "builtins.eval"),
    ("norm_op", "torch.load"),
    ("norm_op", "torch.nn.Module"),                # not in the layer table
    ("conv_op", "torch.nn.modules.linear.Conv3d"),  # wrong defining module
    ("nonlin", "torch.nn.modules.activation.Softmax2d"),
    ("dropout_op", ["torch.nn.Dropout3d"]),
])
def test_kw_requires_import_values_outside_the_layer_table_are_refused(tmp_path, genuine, monkeypatch,
                                                                      key, value):
    calls = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append(a))
    folder = _copy(genuine, tmp_path / "r")
    arch = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"]
    _hostile(folder, arch_kwargs={**arch["arch_kwargs"], key: value})
    with pytest.raises(LnrtError, match=rf"arch_kwargs\.{key}=.* is not allowed; expected null or one of torch"):
        import_nnunet(folder, tmp_path / "out")
    assert calls == []


def test_architecture_entry_shape_is_checked(tmp_path, genuine):
    folder = _copy(genuine, tmp_path / "r")
    arch = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"]
    kw = arch["arch_kwargs"]
    cases = [
        ({"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
          "arch_kwargs": kw, "_kw_requires_import": arch["_kw_requires_import"], "init": "os.system"},
         r"architecture\.init='os.system' is not allowed; expected only the keys"),
        ({**arch, "arch_kwargs": {**kw, "evil": 1}}, r"arch_kwargs\.evil=1 is not allowed; expected only "
                                                    r"parameters of PlainConvUNet"),
        ({**arch, "arch_kwargs": {**kw, "num_classes": 99}}, r"arch_kwargs\.num_classes=99 is not allowed"),
        ({**arch, "_kw_requires_import": ["conv_op", "missing_key"]}, r"_kw_requires_import='missing_key'"),
        ({**arch, "_kw_requires_import": "conv_op"}, r"_kw_requires_import='conv_op' is not allowed"),
        ({**arch, "arch_kwargs": {**kw, "n_stages": "three"}}, r"PlainConvUNet cannot be built from its "
                                                              r"arch_kwargs"),
        ({**arch, "network_class_name": "lnrt.models.unet.UNet"}, r"a network taking input_channels"),
        ("os.system", r"architecture is a str"),
    ]
    for new_arch, message in cases:
        p = json.loads((genuine / "plans.json").read_text())
        p["configurations"]["3d_fullres"]["architecture"] = new_arch
        (folder / "plans.json").write_text(json.dumps(p))
        with pytest.raises(LnrtError, match=message):
            import_nnunet(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_old_plans_and_inheritance_cycles_are_refused(tmp_path, genuine):
    folder = _copy(genuine, tmp_path / "r")
    _hostile(folder, network_class_name=None, arch_kwargs=None, _kw_requires_import=None)
    p = json.loads((folder / "plans.json").read_text())
    del p["configurations"]["3d_fullres"]["architecture"]
    p["configurations"]["3d_fullres"]["UNet_class_name"] = "os.system"  # nnU-Net < 2.4 spelling
    (folder / "plans.json").write_text(json.dumps(p))
    with pytest.raises(LnrtError, match="architecture is missing"):
        import_nnunet(folder, tmp_path / "out")
    p = json.loads((genuine / "plans.json").read_text())
    p["configurations"]["a"] = {"inherits_from": "b"}
    p["configurations"]["b"] = {"inherits_from": "a"}
    (folder / "plans.json").write_text(json.dumps(p))
    with pytest.raises(LnrtError, match="inherits_from='a' is not allowed"):
        read_folder(folder, configuration="a")
    (folder / "plans.json").write_text("[1, 2]")
    with pytest.raises(LnrtError, match="holds a JSON list"):
        read_folder(folder)


def test_layer_table_and_genuine_plans_still_build(genuine):
    from torch import nn

    from lnrt.export.nnunet import LAYER_NAMES, build_network, layer_classes

    table = layer_classes()
    assert table["torch.nn.modules.conv.Conv3d"] is nn.Conv3d is table["torch.nn.Conv3d"]
    assert table["torch.nn.modules.instancenorm.InstanceNorm3d"] is nn.InstanceNorm3d
    assert table["torch.nn.modules.activation.LeakyReLU"] is nn.LeakyReLU
    assert all(isinstance(c, type) and issubclass(c, nn.Module) for c in table.values())
    assert {c.__name__ for c in table.values()} == set(LAYER_NAMES)
    arch = nf.plans()["configurations"]["3d_fullres"]["architecture"]
    net = build_network(arch, 1, 2)
    ref = torch.load(genuine / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    net.load_state_dict(ref, strict=True)
    assert isinstance(net.encoder.stages[0][0].convs[0].conv, nn.Conv3d)


def test_residual_encoder_unet_is_allowed():
    from lnrt.export.nnunet import build_network

    arch = json.loads(json.dumps(nf.plans()["configurations"]["3d_fullres"]["architecture"]))
    kw = arch["arch_kwargs"]
    kw["n_blocks_per_stage"] = kw.pop("n_conv_per_stage")
    for name in ("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
                 # nnU-Net's own old-plans converter writes this module; the class is found by name
                 "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet"):
        arch["network_class_name"] = name
        net = build_network(arch, 1, 2)
        assert type(net).__name__ == "ResidualEncoderUNet"


def test_cli_refuses_hostile_plans_on_one_line(tmp_path, genuine, capfd):
    from lnrt.cli import main

    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    folder = _copy(genuine, tmp_path / "r")
    _hostile(folder, network_class_name="logging.basicConfig",
             arch_kwargs={"filename": str(target), "filemode": "w", "force": True}, _kw_requires_import=[])
    capfd.readouterr()
    out = tmp_path / "out"
    assert main(["export", "nnunet", str(folder), str(out)]) == 2
    captured = capfd.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("lnrt: error: ") and "network_class_name='logging.basicConfig'" in lines[0]
    assert str(folder / "plans.json") in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    assert target.read_text() == "keep me\n"


def test_training_checkpoints_round_trip_with_weights_only(tmp_path):
    """lnrt.models.train saves only what torch.load(weights_only=True) reads, and resumes that way."""
    import argparse

    from lnrt.models.train import load_training_checkpoint, save_training_checkpoint
    from lnrt.models.unet import UNet, UNetConfig

    cfg = UNetConfig(features=(4, 8), kernel_sizes=((3, 3, 3),) * 2, strides=((1, 1, 1), (2, 2, 2)),
                     n_conv_per_stage=(1, 1), n_conv_per_stage_decoder=(1,))
    model = UNet(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)  # adds initial_lr, as train() does
    model(torch.zeros(1, 1, 8, 8, 8)).sum().backward()
    opt.step()
    save_training_checkpoint(tmp_path / "c.pt", model, opt, np.int64(3), cfg)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["iteration"] == 3 and type(state["iteration"]) is int
    assert UNetConfig.from_dict(state["unet"]) == cfg
    again = UNet(UNetConfig.from_dict(state["unet"]))
    again.load_state_dict(state["model"])
    opt2 = torch.optim.AdamW(again.parameters(), lr=1e-3)
    opt2.load_state_dict(load_training_checkpoint(tmp_path / "c.pt")["optimizer"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(out="x")}, tmp_path / "bad.pt")
    with pytest.raises(LnrtError, match="weights_only=True"):
        load_training_checkpoint(tmp_path / "bad.pt")


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _at_model_spacing(case: str):
    """(HU (z, y, x) at nnU-Net's spacing, origin): a phantom neck in a wide field of view (air around
    it), or a real neck (OpenKBP) resampled linearly to the model's spacing, so that neither lnrt nor
    nnU-Net resamples and the comparison is of the tiling alone (a 96 mm slab of it)."""
    if case == "phantom":
        hu, _, origin = render(make_spec(30002), tuple(nf.SPACING), fov_xy=(420.0, 380.0))
        return hu.astype(np.float32), origin
    import SimpleITK as sitk

    path = SHARED / "openkbp" / f"{case}_ct_hu.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} is absent (the real CT samples live beside the project)")
    img = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32) - 1024.0
    sp = tuple(nf.SPACING[::-1])
    size = [int(round(n * s / t)) for n, s, t in zip(img.GetSize(), img.GetSpacing(), sp)]
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), sp, img.GetDirection(),
                        -1024.0)
    hu = sitk.GetArrayFromImage(out)
    # the 96 mm slab around the body's middle: the whole field of view in-plane (air around the patient),
    # two tile rows in z instead of nine (the test's nnU-Net run takes 1/4 of the time)
    z = np.flatnonzero((hu > -500).any(axis=(1, 2)))
    mid, half = (int(z[0]) + int(z[-1])) // 2 if z.size else hu.shape[0] // 2, 24
    lo = max(0, min(mid - half, hu.shape[0] - 2 * half))
    origin = out.TransformIndexToPhysicalPoint((0, 0, lo))
    return hu[lo:lo + 2 * half], origin


def run_tiles_and_reach(body: np.ndarray, patch) -> tuple:
    """(the tiles of nnU-Net's grid that hold a body voxel, the voxels every covering tile of which is
    one of them) for a body mask on the model grid."""
    from lnrt.sliding_window import SlidingWindowConfig, tiles

    shape = tuple(max(n, p) for n, p in zip(body.shape, patch))
    padded = np.zeros(shape, bool)
    padded[tuple(slice(0, n) for n in body.shape)] = body
    every = tiles(shape, SlidingWindowConfig(patch=tuple(patch)))
    run = [t for t in every if padded[t].any()]
    whole = np.ones(shape, bool)
    for t in every:
        if not padded[t].any():
            whole[t] = False
    return run, len(every), whole[tuple(slice(0, n) for n in body.shape)]


@pytest.mark.parametrize("case", [pytest.param("phantom", marks=SLOW), "pt_1"])
def test_whole_scan_tiling_skips_air_tiles_and_keeps_nnunets_voxels(tmp_path, case):
    """InstanceNorm packages run only the tiles of nnU-Net's grid that hold body (issue 22). Where every
    tile nnU-Net runs over a voxel also ran (all of the body, and the air near it) the voxels agree with
    nnU-Net's predictor, before any component filtering, >= 0.999. Elsewhere lnrt says background: a
    trained model says so too, this random one does not (it calls a large share of the air foreground,
    which the benchmark reports), so agreement over all voxels measures the random weights, not lnrt."""
    hu, origin = _at_model_spacing(case)
    zc, yc, xc = (max(0, (n - p) // 2) for n, p in zip(hu.shape, nf.PATCH))
    probe = hu[zc:zc + nf.PATCH[0], yc:yc + nf.PATCH[1], xc:xc + nf.PATCH[2]]  # the bias on body, not air
    folder = nf.make_folder(tmp_path / "results", folds=(0,), probe=probe)
    pkg = ModelPackage.load(import_nnunet(folder, tmp_path / "pkg", variants=()))
    vol = Volume(hu, spacing=tuple(nf.SPACING[::-1]), origin=tuple(origin), direction=np.eye(3))
    with lnrt.Session(pkg, min_volume_mm3=0, backend="onnxruntime") as s:
        res = s.run(vol)
        body = s.prepare(vol).body  # the whole model grid (here the scan's own grid)
    assert body.shape == hu.shape
    run, grid, reach = run_tiles_and_reach(body, nf.PATCH)
    assert res.settings["tiles"] == len(run) < grid  # exactly the body's tiles ran; air tiles were skipped
    assert reach[body].all()  # every body voxel got all of nnU-Net's tiles
    theirs = _nnunet_prediction(folder, hu, (0,)) > 0
    ours = res.labels > 0
    assert 0.02 < theirs[body].mean() < 0.6  # a real mask, not trivially empty or full
    agreement = np.count_nonzero((ours == theirs)[reach]) / np.count_nonzero(reach)
    assert agreement >= 0.999, (agreement, len(run), grid)
