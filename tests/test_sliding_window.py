import numpy as np
import pytest

from lnrt.sliding_window import SlidingWindowConfig, gaussian_importance, sliding_window, tile_starts, tiles

SHAPES = [(8, 8, 8), (16, 16, 16), (17, 33, 9), (5, 40, 41), (3, 3, 3), (64, 20, 31), (1, 1, 1), (30, 30, 30)]
PATCHES = [(8, 8, 8), (16, 8, 12), (4, 6, 8)]


def identity(batch):
    return batch.copy()


@pytest.mark.parametrize("size,patch,overlap", [(10, 10, .5), (11, 10, .5), (100, 32, .5), (33, 16, .25),
                                                 (64, 16, 0.0), (5, 8, .5), (97, 96, .5), (200, 7, .75)])
def test_tile_starts_cover_evenly(size, patch, overlap):
    starts = tile_starts(size, patch, overlap)
    assert starts[0] == 0
    if size >= patch:
        assert starts[-1] == size - patch
        steps = np.diff(starts)
        assert np.all(steps <= max(1, int(patch * (1 - overlap))))
        assert np.all(steps >= 1)
        if len(steps):
            assert steps.max() - steps.min() <= 1  # evenly spread
    else:
        assert starts == [0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("patch", PATCHES)
def test_identity_predictor_returns_the_input(shape, patch):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2,) + shape).astype(np.float32)
    out, covered = sliding_window(image, identity, SlidingWindowConfig(patch=patch, batch_size=3))
    assert out.shape == image.shape
    assert covered.all()
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES[:5])
def test_affine_predictor_and_channel_change(shape):
    rng = np.random.default_rng(1)
    image = rng.normal(size=shape).astype(np.float32)

    def affine(batch):  # one input channel -> three output channels
        return np.concatenate([2 * batch + 1, -batch, batch * 0 + 5], axis=1)

    out, _ = sliding_window(image, affine, SlidingWindowConfig(patch=(8, 6, 8), overlap=0.5))
    np.testing.assert_allclose(out[0], 2 * image + 1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], -image, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[2], 5, rtol=1e-5)


def test_position_dependent_predictor_is_weighted_by_the_gaussian():
    """A predictor that returns each tile's own constant shows the Gaussian blending."""
    calls = []

    def tile_id(batch):
        out = np.empty_like(batch)
        for i in range(len(batch)):
            calls.append(i)
            out[i] = len(calls)
        return out

    cfg = SlidingWindowConfig(patch=(8, 8, 8), overlap=0.5, batch_size=1)
    out, _ = sliding_window(np.zeros((12, 8, 8), np.float32), tile_id, cfg)
    # two tiles along z: starts 0 and 4; voxel z=0..3 only tile 1, z=8..11 only tile 2
    assert np.allclose(out[0, :4], 1) and np.allclose(out[0, 8:], 2)
    mid = out[0, 4:8, 4, 4]
    assert np.all(np.diff(mid) > 0) and np.all((mid > 1) & (mid < 2))


def test_masked_tiles_are_skipped_and_reported_uncovered():
    n_calls = {"tiles": 0}

    def counting(batch):
        n_calls["tiles"] += len(batch)
        return batch.copy()

    image = np.ones((32, 32, 32), np.float32)
    mask = np.zeros(image.shape, bool)
    mask[1:3, 1:3, 1:3] = True  # inside the first tile only
    cfg = SlidingWindowConfig(patch=(8, 8, 8), overlap=0.5)
    out, covered = sliding_window(image, counting, cfg, mask=mask)
    all_tiles = len(tiles(image.shape, cfg))
    assert n_calls["tiles"] == 1 < all_tiles
    assert covered[1:3, 1:3, 1:3].all() and not covered[20:, 20:, 20:].any()
    np.testing.assert_allclose(out[0][covered], 1.0, rtol=1e-6)
    none, cov = sliding_window(image, counting, cfg, mask=np.zeros(image.shape, bool))
    assert none is None and not cov.any()


def test_mirroring_averages_flipped_predictions():
    image = np.random.default_rng(2).normal(size=(8, 8, 8)).astype(np.float32)
    ramp = np.arange(8, dtype=np.float32)

    def ramp_along_x(batch):  # not flip-equivariant: output is the x index
        return np.broadcast_to(ramp, batch.shape).copy()

    out, _ = sliding_window(image, ramp_along_x, SlidingWindowConfig(patch=(8, 8, 8), mirror_axes=(2,)))
    np.testing.assert_allclose(out[0], 3.5, rtol=1e-6)  # mean of x and 7 - x
    same, _ = sliding_window(image, identity, SlidingWindowConfig(patch=(8, 8, 8), mirror_axes=(0, 1, 2)))
    np.testing.assert_allclose(same[0], image, rtol=1e-5, atol=1e-6)


def test_gaussian_importance_map():
    g = gaussian_importance((16, 12, 9), 0.125)
    assert g.shape == (16, 12, 9) and g.dtype == np.float32
    assert g.min() > 0 and np.isclose(g.max(), 1.0)
    # the peak sits at voxel p // 2 of each axis (nnU-Net's convention, so imported models reproduce
    # its accumulation) and the map is symmetric about it
    assert np.unravel_index(g.argmax(), g.shape) == (8, 6, 4)
    np.testing.assert_allclose(g[8 - 5:8, 6, 4], g[8 + 5:8:-1, 6, 4], rtol=1e-6)
    np.testing.assert_allclose(g, g[:, :, ::-1], rtol=1e-6)  # odd axis: symmetric end to end
    assert g[8, 6, 4] > g[0, 6, 4]


@pytest.mark.parametrize("bad", [dict(patch=(8, 8)), dict(patch=(8, 8, 8), overlap=1.0),
                                 dict(patch=(8, 8, 8), batch_size=0), dict(patch=(8, 8, 8), mirror_axes=(3,))])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SlidingWindowConfig(**bad)


def test_config_is_frozen():
    cfg = SlidingWindowConfig(patch=(8, 8, 8))
    with pytest.raises(Exception):
        cfg.overlap = 0.1
