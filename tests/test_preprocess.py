import numpy as np
import pytest

from lnrt.errors import LnrtError
from lnrt.preprocess import BodyCropConfig, Grid, body_mask, bounding_box, model_grid, normalize, resample
from lnrt.volume import Volume


def test_normalization_recipes():
    hu = np.array([-2000, -160, 40, 240, 3000], np.float32)
    w = normalize(hu.copy(), {"scheme": "window", "window_hu": [-160, 240]})
    np.testing.assert_allclose(w, [0, 0, 0.5, 1, 1])
    z = normalize(hu.copy(), {"scheme": "ct_zscore", "clip_hu": [-100, 300], "mean": 50.0, "std": 25.0})
    np.testing.assert_allclose(z, [-6, -6, -0.4, 7.6, 10])
    with pytest.raises(LnrtError):
        normalize(hu.copy(), {"scheme": "mr"})


def test_model_grid_covers_the_same_extent_and_resampling_round_trips():
    native = Grid((20, 31, 40), (2.5, 0.7, 0.7))
    mg = model_grid(native, (2.0, 1.0, 1.0))
    ext = np.array(native.shape) * native.spacing
    np.testing.assert_allclose(np.array(mg.shape) * mg.spacing, ext)
    # a linear ramp survives resampling there and back (linear interpolation is exact on ramps)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(native.shape, native.spacing)], indexing="ij")
    ramp = (0.3 * z + 0.2 * y - 0.1 * x).astype(np.float32)
    back = resample(resample(ramp, native, mg), mg, native)
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(back[inner], ramp[inner], atol=1e-3)


def test_body_crop_ignores_specks_and_air():
    hu = np.full((20, 40, 40), -1000.0, np.float32)
    hu[5:15, 10:30, 12:28] = 40.0
    hu[0, 0, 0] = 500.0  # a speck of noise
    mask = body_mask(hu, BodyCropConfig())
    assert bounding_box(mask) == ((5, 15), (10, 30), (12, 28))
    assert bounding_box(body_mask(np.full((4, 4, 4), -1000.0, np.float32), BodyCropConfig())) is None


def test_oblique_scan_runs_with_a_warning_and_keeps_its_geometry(session):
    a = np.radians(8.0)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    hu = np.full((10, 48, 48), -1000, np.int16)
    hu[:, 8:40, 8:40] = -100
    hu[3:7, 20:28, 20:28] = 40
    vol = Volume(hu, (0.8, 0.8, 2.5), (1.0, 2.0, 3.0), rot)
    res = session.run(vol)
    assert any("oblique" in w for w in res.warnings)
    img = res.label_image()
    np.testing.assert_allclose(img.GetDirection(), rot.ravel())
    assert img.GetSize() == (48, 48, 10)
    assert res.report()["settings"]["orientation"]["obliquity_deg"] == pytest.approx(8.0, abs=1e-3)


def test_a_float32_scan_on_the_model_grid_is_not_modified(placeholder_package):
    """Regression: resampling onto an identical grid returned the input itself, which normalization
    then changed in place (found by the nnU-Net parity test)."""
    import lnrt
    from lnrt.package import ModelPackage
    from lnrt.volume import Volume

    pkg = ModelPackage.load(placeholder_package)
    rng = np.random.default_rng(0)
    arr = rng.normal(0, 300, size=(40, 64, 64)).astype(np.float32)
    arr[:, 20:40, 20:40] = 50.0
    vol = Volume(arr, spacing=tuple(pkg.spacing_zyx[::-1]), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    before = arr.copy()
    lnrt.Session(pkg).run(vol)
    assert np.array_equal(arr, before)
