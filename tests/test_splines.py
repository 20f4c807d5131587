"""nnU-Net's resampling and sums, reproduced (lnrt.splines, the float16 sliding window): each piece
against nnU-Net's own function (the oracle, installed with the `peers` extra), and the B-spline against
its definition. The end-to-end effect is in tests/test_nnunet_cascade.py (a cascade from 0.71 to 0.998
Dice against nnU-Net's predictor)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lnrt.errors import LnrtError
from lnrt.package import check_manifest, make_manifest
from lnrt.sliding_window import SlidingWindowConfig, gaussian_importance, sliding_window
from lnrt.splines import PAD, Resampling, prefilter, sample_box, zoom_like_nnunet

# (scan spacing, target spacing, order, order_z, force_separate_z): downsampling and upsampling, a
# non-integer ratio, the anisotropic cases nnU-Net resamples slice by slice (scan or target anisotropic),
# order_z 1, both forced choices, and linear data
CASES = [((2.0, 1.5, 1.5), (4.0, 3.0, 3.0), 3, 0, None),
         ((4.0, 3.0, 3.0), (2.0, 1.5, 1.5), 3, 0, None),
         ((2.0, 1.5, 1.5), (2.7, 1.1, 1.3), 3, 0, None),
         ((3.0, 0.7, 0.7), (1.0, 1.0, 1.0), 3, 0, None),
         ((3.0, 0.7, 0.7), (1.0, 1.0, 1.0), 3, 1, None),
         ((1.0, 1.0, 1.0), (5.0, 1.0, 1.0), 3, 0, None),
         ((1.0, 0.8, 0.8), (2.0, 1.0, 1.0), 3, 0, True),
         ((3.0, 0.7, 0.7), (1.0, 1.0, 1.0), 3, 0, False),
         ((2.0, 1.5, 1.5), (2.7, 1.1, 1.3), 1, 0, None)]


def _volume(seed: int = 0) -> np.ndarray:
    """Noise with a bright block: values far beyond a spline's overshoot, and edges to ring at."""
    x = np.random.default_rng(seed).normal(size=(23, 41, 37)).astype(np.float32)
    x[5:9, 10:30, 5:20] += 4.0
    return x


@pytest.mark.parametrize("src,dst,order,order_z,force", CASES)
def test_zoom_is_nnunets_resampling(src, dst, order, order_z, force):
    resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    x = _volume()
    shape = resampling.compute_new_shape(x.shape, src, dst)
    theirs = resampling.resample_data_or_seg_to_shape(x[None], shape, src, dst, is_seg=False, order=order,
                                                      order_z=order_z, force_separate_z=force)[0]
    ours = zoom_like_nnunet(x, shape, src, dst, Resampling(order, order_z, force))
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    # the same values to float32 rounding (here: every one bit for bit); the input is never modified
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(x, _volume())
    if order == 3:  # splines overshoot: the result is clipped to the input's range, as skimage clips
        assert x.min() <= ours.min() and ours.max() <= x.max()


def test_prefilter_gives_the_coefficients_of_the_interpolating_spline():
    """The definition: the cubic B-spline through the coefficients passes through every sample,
    s[i] = (c[i-1] + 4 c[i] + c[i+1]) / 6, away from the padding's start-up (POLE^PAD)."""
    s = np.random.default_rng(1).normal(size=(64, 5))
    c = prefilter(np.pad(s, ((PAD, PAD), (0, 0)), mode="edge").astype(np.float64))
    back = (c[PAD - 1:-PAD - 1] + 4 * c[PAD:-PAD] + c[PAD + 1:-PAD + 1]) / 6
    np.testing.assert_allclose(back, s, rtol=0, atol=1e-12)


@pytest.mark.parametrize("src,dst,order_z", [((4.0, 3.0, 3.0), (2.0, 1.5, 1.5), 0),
                                             ((1.0, 1.0, 1.0), (4.0, 0.9, 0.9), 0),
                                             ((1.0, 1.0, 1.0), (4.0, 0.9, 0.9), 1)])
def test_a_box_of_the_logits_resampling_is_that_box_of_the_whole(src, dst, order_z):
    """`sample_box` computes only the requested native voxels, from an input that may itself be a crop
    of the model grid: the same values as the whole order-1 resampling there (what nnU-Net does with
    its logits, `resampling_fn_probabilities_kwargs`)."""
    x = np.stack([_volume(2), _volume(3)])
    cfg = Resampling(1, order_z)
    full = tuple(round(n * s / d) for n, s, d in zip(x.shape[1:], src, dst))
    whole = np.stack([zoom_like_nnunet(c, full, src, dst, cfg) for c in x])
    box = ((3, full[0] - 2), (5, 17), (0, full[2]))
    crop = (2, 1, 0)  # the input held from these model indices on (a body-box crop of the model grid)
    part = sample_box(x[:, crop[0]:, crop[1]:, crop[2]:], x.shape[1:], full, crop, box, src, dst, cfg)
    ref = whole[(slice(None),) + tuple(slice(lo, hi) for lo, hi in box)]
    # equal wherever the input needed lies inside the crop: native z 5 on (model z 2.25 and above, or
    # z 1.25 - 0.25 = 1 and above where z is 4x coarser), the rows before it read the crop's edge instead
    np.testing.assert_allclose(part[:, 2:], ref[:, 2:], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="order 0 or 1"):
        sample_box(x, x.shape[1:], full, (0, 0, 0), box, src, dst, Resampling(3))


@pytest.mark.parametrize("patch", [(16, 32, 32), (32, 64, 64), (5, 20, 12)])
def test_float16_gaussian_is_nnunets(patch):
    torch = pytest.importorskip("torch")
    sw = pytest.importorskip("nnunetv2.inference.sliding_window_prediction")
    theirs = sw.compute_gaussian(patch, sigma_scale=1 / 8, value_scaling_factor=10, dtype=torch.float16,
                                 device=torch.device("cpu")).numpy()
    ours = gaussian_importance(patch, 1 / 8, np.float16)
    assert ours.dtype == np.float16 and ours.min() > 0
    np.testing.assert_array_equal(ours, theirs)


def test_float16_sums_round_where_tiles_barely_overlap():
    """The same tiles summed in float16 and float32: half-precision values everywhere, equal to float32
    within half's resolution in the tiles' middles, and coarser only where the weights are tiny."""
    rng = np.random.default_rng(4)
    image = rng.normal(size=(24, 40, 40)).astype(np.float32)
    net = lambda b: np.concatenate([b, -b], axis=1) * 0.5  # noqa: E731 (two "classes" of logits)
    out = {a: sliding_window(image, net, SlidingWindowConfig(patch=(16, 32, 32), accumulate=a))[0]
           for a in ("float32", "float16")}
    assert out["float16"].dtype == np.float32
    np.testing.assert_array_equal(out["float16"], out["float16"].astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(out["float32"][0], image * 0.5, atol=1e-5)  # a tile's own logits come back
    middle = (slice(6, 18), slice(10, 30), slice(10, 30))
    np.testing.assert_allclose(out["float16"][0][middle], image[middle] * 0.5, rtol=2e-3, atol=2e-3)
    assert np.abs(out["float16"] - out["float32"]).max() > 1e-4  # the half sums do differ somewhere
    with pytest.raises(ValueError, match="accumulate must be one of float32, float16"):
        SlidingWindowConfig(patch=(16, 32, 32), accumulate="bfloat16")


def _manifest(**sections):
    m = make_manifest("c", "1.0.0", (2.0, 1.5, 1.5), (32, 64, 64),
                      {"scheme": "ct_zscore", "clip_hu": [-150.0, 500.0], "mean": 60.0, "std": 120.0}, {})
    m.update(json.loads(json.dumps(sections)))
    return m


GOOD = {"scheme": "nnunet", "data": {"order": 3, "order_z": 0, "force_separate_z": None},
        "logits": {"order": 1, "order_z": 0, "force_separate_z": None}}


@pytest.mark.parametrize("change,message", [
    ({"scheme": "cubic"}, r"resampling.scheme is \"cubic\"; expected one of 'nnunet'"),
    ({"data": {"order": 2}}, r"resampling.data.order is 2; expected 0 or 1 or 3"),
    ({"logits": {"order": 3}}, r"resampling.logits.order is 3; expected 0 or 1"),
    ({"data": {"order": 3, "order_z": 3}}, r"resampling.data.order_z is 3; expected 0 or 1"),
    ({"data": {"order": True}}, r"resampling.data.order is true; expected 0 or 1 or 3"),
    ({"data": {"order": 3, "force_separate_z": "yes"}}, r"resampling.data.force_separate_z is \"yes\""),
    ({"data": {"order": 3, "is_seg": False}}, r"resampling.data has unknown key 'is_seg'"),
    ({"anisotropy_threshold": 0}, r"resampling.anisotropy_threshold is 0; expected a finite number >= 1"),
])
def test_resampling_section_schema(change, message):
    check_manifest(_manifest(resampling=GOOD), "x/lnrt.json", files=False)
    with pytest.raises(LnrtError, match=message) as err:
        check_manifest(_manifest(resampling={**GOOD, **change}), "x/lnrt.json", files=False)
    assert str(err.value).startswith("x/lnrt.json: ") and "\n" not in str(err.value)
    m = _manifest()
    m["sliding_window"]["accumulate"] = "float8"
    with pytest.raises(LnrtError, match=r"sliding_window.accumulate is \"float8\"; expected one of 'float32', "
                                        r"'float16'"):
        check_manifest(m, "x/lnrt.json", files=False)


def test_run_config_reads_the_sections_and_reports_them(tmp_path):
    """A package with nnU-Net's resampling and sums: the run configuration carries both, and the report's
    settings say so; a package without them reports exactly what it reported before."""
    from lnrt.config import RunConfig
    from lnrt.package import ModelPackage

    m = _manifest(resampling=GOOD)
    m["sliding_window"]["accumulate"] = "float16"
    cfg = RunConfig.from_package(ModelPackage(tmp_path, m))
    assert cfg.resample_data == Resampling(3, 0, None) and cfg.resample_logits == Resampling(1, 0, None)
    assert cfg.window.accumulate == "float16"
    settings = cfg.to_dict()
    assert settings["resampling"]["data"]["order"] == 3 and settings["sliding_window"]["accumulate"] == "float16"
    plain = RunConfig.from_package(ModelPackage(tmp_path, _manifest())).to_dict()
    assert "resampling" not in plain and "accumulate" not in plain["sliding_window"]
