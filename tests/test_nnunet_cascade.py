"""nnU-Net v2 `3d_cascade_fullres`: lnrt's two-stage package against nnU-Net's own predictor run as a
cascade (its 3d_lowres predicted first, that segmentation then given to the second stage as
`segmentation_previous_stage`, what `folder_with_segs_from_prev_stage` feeds it from files).

What is compared (the measured values are printed; run with -s to see them), against nnU-Net's default
plans (the CT resampled with third-order splines) and plans that resample it linearly:
- Stage 2 alone: nnU-Net's second stage is given the very first-stage segmentation lnrt fed its own
  second stage (captured in `lnrt.pipeline.mask_channels`), so the mask resampling, the channel stacking
  and the network input are compared without the first stage's differences (Dice 0.9999).
- The first stage alone (Dice 0.99997: 5 voxels of 384,000 differ).
- End to end, lnrt's cascade against nnU-Net's (Dice 0.998).
The random cascade network's output depends strongly on its mask channels (that is what the test needs:
zeroing them changes ~30 % of the voxels, checked on lnrt's side), so any first-stage voxel that differs
changes many more at stage 2. Before lnrt resampled as nnU-Net does (normalized on the scan's grid,
then splines: `lnrt.splines`) and summed its tiles in half precision as nnU-Net does, the first stage
was 0.94 and the cascade 0.71.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("dynamic_network_architectures")

import lnrt  # noqa: E402
import lnrt.pipeline as pipeline  # noqa: E402
from lnrt.errors import LnrtError  # noqa: E402
from lnrt.export.nnunet import import_nnunet  # noqa: E402
from lnrt.models import nnunet_folder as nf  # noqa: E402
from lnrt.models.neck import make_spec, render  # noqa: E402
from lnrt.package import MANIFEST, ModelPackage, check_manifest, make_manifest, seal, write_manifest  # noqa: E402
from lnrt.volume import Volume  # noqa: E402


@pytest.fixture(scope="module")
def phantom():
    """A neck at the full-resolution spacing, 48 slices (two tile rows of the cascade's patch)."""
    hu, _, origin = render(make_spec(30001), tuple(nf.SPACING), fov_xy=(150.0, 120.0))
    return hu.astype(np.float32)[8:56], (origin[0], origin[1], origin[2] + 8 * nf.SPACING[0])


def _dice(a, b) -> float:
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def _predictor(folder):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(key, str(folder))
    mod = pytest.importorskip("nnunetv2.inference.predict_from_raw_data")
    pred = mod.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                               device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    return pred


def _nnunet(pred, hu, previous=None):
    """nnU-Net's segmentation of `hu`; `previous`: the first stage's label map on the scan's grid."""
    prev = None if previous is None else previous.astype(np.int16)[None]  # nnU-Net marks outside with -1
    return pred.predict_single_npy_array(hu[None], {"spacing": list(nf.SPACING)}, segmentation_previous_stage=prev)


def _lnrt(pkg, hu, origin, monkeypatch, zeroed: bool = False):
    """(lnrt's foreground, the first-stage label map lnrt's second stage was fed, the report's timings);
    `zeroed`: the mask channels replaced by zeros (what the network says without them)."""
    fed = []
    real = pipeline.mask_channels

    def capture(seg, *args, **kwargs):
        fed.append(np.array(seg))
        masks = real(seg, *args, **kwargs)
        return masks * 0 if zeroed else masks

    monkeypatch.setattr(pipeline, "mask_channels", capture)
    vol = Volume(hu, spacing=tuple(nf.SPACING[::-1]), origin=tuple(origin), direction=np.eye(3))
    with lnrt.Session(pkg, min_volume_mm3=0) as s:
        res = s.run(vol)
    monkeypatch.undo()
    assert len(fed) == 1 and fed[0].shape == hu.shape  # canonical = array order here (identity direction)
    return res.labels > 0, fed[0], res.timings


def _cascade(tmp_path, hu, transpose, data_order=3):
    low, cascade = nf.make_cascade(tmp_path / "Dataset901_LnrtTest", folds=(0,), transpose=transpose, probe=hu,
                                   data_order=data_order)
    pkg = ModelPackage.load(import_nnunet(cascade, tmp_path / "pkg"))
    return low, cascade, pkg


@pytest.mark.parametrize("transpose", [(0, 1, 2), (1, 2, 0)])
def test_cascade_matches_nnunets_own_predictor(tmp_path, phantom, transpose, monkeypatch):
    hu, origin = phantom
    low, cascade, pkg = _cascade(tmp_path, hu, transpose)
    inp = pkg.manifest["input"]
    assert inp["channels"] == 2 and inp["previous_stage"]["labels"] == [1]
    assert inp["previous_stage"]["package_sha256"] == pkg.previous_stage.package_sha256
    assert pkg.previous_stage.manifest["input"]["spacing_zyx_mm"] == list(nf.LOWRES.spacing)
    for p in (pkg, pkg.previous_stage):  # both stages resample and sum as nnU-Net does
        assert p.manifest["resampling"]["data"]["order"] == 3 and p.manifest["resampling"]["logits"]["order"] == 1
        assert p.manifest["sliding_window"]["accumulate"] == "float16"
    with lnrt.Session(pkg) as both, lnrt.Session(pkg.previous_stage) as alone:
        # the memory estimate covers the larger stage, the first stage's labels and nnU-Net's resampling
        args = ((512, 512, 250), (1.0, 0.5, 0.5), 2)
        assert both.estimate_memory_gb(*args) > alone.estimate_memory_gb(*args)
        own = lnrt.session._model_grid_bytes
        plain = own(replace(both.config, resample_data=None), 512 * 512 * 250, args[1])
        assert own(both.config, 512 * 512 * 250, args[1]) > plain
    ours, fed, timings = _lnrt(pkg, hu, origin, monkeypatch)
    assert {"previous_stage_preprocess", "previous_stage_network", "previous_stage_postprocess",
            "network"} <= set(timings)
    assert abs(timings["total"] - sum(v for k, v in timings.items() if k != "total")) < 1e-9
    second = _predictor(cascade)
    same = _nnunet(second, hu, fed) > 0
    assert 0.05 < same.mean() < 0.6 and 0.05 < fed.mean() < 0.6  # real masks at both stages
    stage2 = _dice(ours, same)
    first = _nnunet(_predictor(low), hu)
    stage1 = _dice(fed > 0, first > 0)
    theirs = _nnunet(second, hu, first) > 0
    end = _dice(ours, theirs)
    print(f"\ncascade {transpose}, default plans: stage 2 alone Dice {stage2:.5f}; first stage Dice "
          f"{stage1:.5f}; end to end Dice {end:.5f}")
    assert stage2 >= 0.999 and stage1 >= 0.999, (stage2, stage1)
    assert end >= 0.99, end
    # the mask channels matter: without them the same network's output changes a lot
    zeroed = _lnrt(pkg, hu, origin, monkeypatch, zeroed=True)[0]
    changed = np.count_nonzero(zeroed != ours) / ours.size
    print(f"zeroing the mask channels changes {changed:.1%} of the voxels")
    assert changed > 0.05, changed


@pytest.mark.parametrize("transpose", [(0, 1, 2), (1, 2, 0)])
def test_cascade_with_linear_plans_matches_too(tmp_path, phantom, transpose, monkeypatch):
    """Plans whose CT is resampled linearly (`resampling_fn_data_kwargs.order` 1): the manifest follows
    the plans, and the cascade still matches nnU-Net's end to end."""
    hu, origin = phantom
    low, cascade, pkg = _cascade(tmp_path, hu, transpose, data_order=1)
    assert pkg.manifest["resampling"]["data"]["order"] == 1
    ours, fed, _ = _lnrt(pkg, hu, origin, monkeypatch)
    first = _nnunet(_predictor(low), hu)
    assert 0.05 < (first > 0).mean() < 0.6
    stage1 = _dice(fed > 0, first > 0)
    end = _dice(ours, _nnunet(_predictor(cascade), hu, first) > 0)
    print(f"\ncascade {transpose}, linear plans: first stage Dice {stage1:.5f}; end to end Dice {end:.5f}")
    assert stage1 >= 0.999 and end >= 0.99, (stage1, end)


@pytest.mark.parametrize("spacing,target", [((3.0, 2.0, 2.0), (2.0, 1.5, 1.5)),   # a non-integer ratio
                                            ((2.0, 1.5, 1.5), (4.0, 3.0, 3.0)),   # down by 2: exact ties
                                            ((4.0, 3.0, 3.0), (2.0, 1.5, 1.5))])  # up by 2
def test_mask_channels_are_nnunets_seg_resampling(spacing, target):
    """Three labels (more than two meet, so a threshold at 0.5 would differ): lnrt's mask channels are
    voxel for voxel nnU-Net's `resample_data_or_seg_to_shape(is_seg=True, order=1)` + one-hot. The
    parity tests above run the scan at the second stage's spacing, where this resampling is the identity."""
    from scipy.ndimage import gaussian_filter

    resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

    from lnrt.preprocess import Grid, model_grid

    f = gaussian_filter(np.random.default_rng(0).normal(size=(20, 30, 40)), 2)
    seg = np.digitize(f, np.quantile(f, [0.6, 0.85])).astype(np.int16)
    shape = resampling.compute_new_shape(seg.shape, spacing, target)
    theirs = resampling.resample_data_or_seg_to_shape(seg[None], shape, spacing, target, is_seg=True, order=1,
                                                      order_z=0, force_separate_z=None)[0]
    native = Grid(seg.shape, spacing)
    grid = model_grid(native, target)
    ours = pipeline.mask_channels(seg, (1, 2), native, grid)
    assert ours.shape == (2, *shape) and 0.05 < ours.mean() < 0.5
    assert np.array_equal(ours, convert_labelmap_to_one_hot(theirs, [1, 2]).astype(np.float32))
    box = ((2, shape[0] - 3), (1, shape[1] // 2), (shape[2] // 3, shape[2]))  # a body box: only its voxels
    inside = pipeline.mask_channels(seg, (1, 2), native, grid.crop(box))
    assert np.array_equal(inside, ours[(slice(None),) + tuple(slice(a, b) for a, b in box)])


# --- refusals -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A cascade's two folders without calibration (fast), the first stage moved out of nnU-Net's layout."""
    root = tmp_path_factory.mktemp("cascade")
    low, cascade = nf.make_cascade(root / "Dataset901_LnrtTest")
    moved = root / "elsewhere" / low.name
    moved.parent.mkdir()
    shutil.move(str(low), str(moved))
    return cascade, moved


def _one_error_line(capfd) -> str:
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lnrt: error: "), lines
    return lines[0]


def test_cascade_export_refusals_and_the_previous_stage_option(tmp_path, untrained, capfd):
    from lnrt.cli import main

    cascade, moved = untrained
    out = tmp_path / "pkg"
    capfd.readouterr()
    assert main(["export", "nnunet", str(cascade), str(out)]) == 2
    line = _one_error_line(capfd)
    assert "configurations.3d_cascade_fullres.previous_stage is '3d_lowres'" in line
    assert "nnUNetTrainer__nnUNetPlans__3d_lowres is not a folder" in line and "--previous-stage" in line
    assert not out.exists() and not list(tmp_path.glob(".pkg*"))
    with pytest.raises(LnrtError, match="has no previous_stage; expected --previous-stage only for a cascade"):
        import_nnunet(moved, out, previous_stage=moved)
    # the first stage given explicitly
    assert main(["export", "nnunet", str(cascade), str(out), "--previous-stage", str(moved), "--variants", ""]) == 0
    capfd.readouterr()
    pkg = ModelPackage.load(out)
    assert pkg.manifest["provenance"]["imported_from"]["previous_stage"]["folder"] == str(moved)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".pkg.lock", "pkg"]  # no temporary left

    # a nested package that is missing, or changed after the cascade was sealed, or a channel count that
    # disagrees: one line each, from the CLI with status 2
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / "previous_stage" / "model.onnx").write_bytes(b"x")
    assert main(["package", "check", str(bad)]) == 2
    assert "input.previous_stage:" in _one_error_line(capfd)
    shutil.rmtree(bad / "previous_stage")
    assert main(["package", "check", str(bad)]) == 2
    line = _one_error_line(capfd)
    assert f"{bad / MANIFEST}: input.previous_stage.package is 'previous_stage', but" in line
    assert "holds no lnrt.json" in line
    shutil.rmtree(bad)
    shutil.copytree(out, bad)
    sub = json.loads((bad / "previous_stage" / MANIFEST).read_text())
    sub["version"] = "2.0.0"
    (bad / "previous_stage" / MANIFEST).write_text(json.dumps(sub))
    seal(bad / "previous_stage")  # consistent on its own, but not the first stage the cascade pinned
    assert main(["package", "check", str(bad)]) == 2
    assert "is not the pinned" in _one_error_line(capfd)
    m = json.loads((bad / MANIFEST).read_text())
    m["input"]["channels"] = 3
    (bad / MANIFEST).write_text(json.dumps(m))
    before = (bad / "lnrt.json.sha256").read_text()
    assert main(["package", "seal", str(bad)]) == 2
    line = _one_error_line(capfd)
    assert "input.channels is 3; expected 2 for a cascade" in line and str(bad / MANIFEST) in line
    assert (bad / "lnrt.json.sha256").read_text() == before  # nothing half-written
    # a consistent, sealed manifest whose network takes one channel (the first stage's): refused on load
    # into a session, before a backend sees it
    shutil.rmtree(bad)
    shutil.copytree(out, bad)
    shutil.copyfile(bad / "previous_stage" / "model.onnx", bad / "model.onnx")
    m = json.loads((bad / MANIFEST).read_text())
    m["input"]["patch_size_zyx"] = pkg.previous_stage.manifest["input"]["patch_size_zyx"]
    write_manifest(bad, m)
    with pytest.raises(LnrtError, match=r"the model's input 'image' is \['batch', 1, 16, 32, 32\], where .*"
                                        r"input.channels.* asks for \['batch', 2, 16, 32, 32\]"):
        lnrt.Session(bad)


def test_cascade_variants_are_gated_through_both_stages(tmp_path, untrained):
    """An fp16 variant of the second stage, its gate run on whole cascade sessions (tiles with the mask
    channel), written or not as the gate says (this random network's nodes are noise); the first stage
    stays fp32."""
    from lnrt.export.variants import add_variants

    cascade, moved = untrained
    out = import_nnunet(cascade, tmp_path / "pkg", previous_stage=moved)
    add_variants(out, ("fp16",), n_gate=1, backends=("onnxruntime",))
    gate = json.loads((out / "parity.fp16.json").read_text())
    assert gate["tiles"]["count"] > 0 and gate["dice"] >= 0.99, gate
    pkg = ModelPackage.load(out)
    assert pkg.variants() == (["fp32", "fp16"] if gate["passed"] else ["fp32"])
    assert pkg.previous_stage.variants() == ["fp32"]
    assert pkg.previous_stage.package_sha256 == pkg.manifest["input"]["previous_stage"]["package_sha256"]


def _manifest(**previous):
    return make_manifest("c", "1.0.0", (2.0, 1.5, 1.5), (32, 64, 64),
                         {"scheme": "ct_zscore", "clip_hu": [-150.0, 500.0], "mean": 60.0, "std": 120.0}, {},
                         previous_stage={"package": "previous_stage", "package_sha256": "a" * 64, "labels": [1],
                                         **previous})


@pytest.mark.parametrize("key,value,message", [
    ("package", "../up", r"input.previous_stage.package is \"../up\"; expected a folder inside the package"),
    ("package", 7, r"input.previous_stage.package is 7; expected a folder inside"),
    ("package_sha256", "abc", r"input.previous_stage.package_sha256 is \"abc\"; expected 64 lowercase hex"),
    ("labels", [2, 1], r"input.previous_stage.labels is \[2, 1\]; expected ascending distinct label values"),
    ("labels", [0], r"input.previous_stage.labels is \[0\]; expected ascending"),
    ("labels", [], r"input.previous_stage.labels is \[\]; expected ascending"),
    ("extra", 1, r"input.previous_stage has unknown key 'extra'"),
])
def test_cascade_manifest_schema(key, value, message):
    m = _manifest()
    check_manifest(m, "x/lnrt.json", files=False)
    assert m["input"]["channels"] == 2
    m["input"]["previous_stage"][key] = value
    if key == "labels" and value:
        m["input"]["channels"] = 1 + len(value)
    with pytest.raises(LnrtError, match=message) as err:
        check_manifest(m, "x/lnrt.json", files=False)
    assert str(err.value).startswith("x/lnrt.json: ") and "\n" not in str(err.value)


def test_single_stage_manifests_are_unchanged():
    m = make_manifest("c", "1.0.0", (2.0, 1.5, 1.5), (32, 64, 64),
                      {"scheme": "ct_zscore", "clip_hu": [-150.0, 500.0], "mean": 60.0, "std": 120.0}, {})
    assert m["input"] == {"name": "image", "spacing_zyx_mm": [2.0, 1.5, 1.5], "patch_size_zyx": [32, 64, 64],
                          "channels": 1, "orientation": "LPS"}
    m["input"]["channels"] = 2  # two channels without a previous stage: still refused
    with pytest.raises(LnrtError, match=r"input.channels is 2; expected 1 \(lnrt runs single-channel CT models"):
        check_manifest(m, "x/lnrt.json", files=False)
