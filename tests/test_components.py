"""Components against cc3d on the whole volume (the oracle), and the node table's statistics."""
import cc3d
import numpy as np
import pytest

from lnrt.nodes import label_components, node_table
from lnrt.volume import Orientation, Volume


@pytest.mark.parametrize("density", [0.0, 0.02, 0.3, 0.6, 1.0])
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_labels_equal_cc3d_on_the_full_volume(density, connectivity):
    rng = np.random.default_rng(int(density * 100) + connectivity)
    fg = rng.random((20, 30, 25)) < density
    fg[:3] = False  # foreground not touching every face: the crop path is exercised
    got, n = label_components(fg, connectivity)
    ref, n_ref = cc3d.connected_components(fg, connectivity=connectivity, return_N=True)
    assert n == n_ref and got.dtype == np.uint16
    np.testing.assert_array_equal(got, ref)


def test_small_components_are_dropped_and_the_rest_renumbered_in_raster_order():
    fg = np.zeros((10, 10, 10), bool)
    fg[0, 8, 0] = True  # 1 voxel, touching nothing
    fg[2:5, 2:5, 2:5] = True  # 27 voxels
    fg[7, 7, 7:9] = True  # 2 voxels
    fg[8:10, 0:3, 0:3] = True  # 18 voxels
    labels, n = label_components(fg, 26, min_voxels=3)
    assert n == 2
    assert labels[3, 3, 3] == 1 and labels[9, 1, 1] == 2 and labels[0, 8, 0] == 0 and labels[7, 7, 7] == 0


def test_more_than_65535_components_switch_to_uint32():
    fg = np.zeros((2, 400, 400), bool)
    fg[0, ::2, ::2] = True  # 40 000 isolated voxels
    fg[1, 1::2, 1::2] = True  # diagonal neighbours of those under 26-connectivity
    labels, n = label_components(fg, 6)
    assert n == 80_000 and labels.dtype == np.uint32 and labels.max() == 80_000


def test_node_table_statistics_match_brute_force():
    rng = np.random.default_rng(5)
    image = rng.normal(40, 10, (12, 20, 22)).astype(np.float32)
    prob = rng.random((12, 20, 22)).astype(np.float32)
    labels = np.zeros((12, 20, 22), np.uint16)
    labels[2:6, 3:9, 4:10] = 3
    labels[8:11, 12:18, 1:5] = 7
    vol = Volume(image, (0.7, 0.8, 2.0), (5.0, -3.0, 100.0), np.diag([1.0, -1.0, 1.0]))
    rows = node_table(labels, vol, Orientation.of(vol.direction), image=image, probability=prob)
    assert [r["id"] for r in rows] == [3, 7]
    for r in rows:
        m = labels == r["id"]
        assert r["voxels"] == m.sum()
        assert np.isclose(r["volume_mm3"], m.sum() * 0.7 * 0.8 * 2.0, rtol=1e-4)
        assert np.isclose(r["mean_hu"], image[m].mean(), atol=0.01)
        assert np.isclose(r["probability"], prob[m].mean(), atol=1e-4)
        idx = np.argwhere(m)
        assert r["bbox_voxels"] == idx.min(0).tolist() + idx.max(0).tolist()
        np.testing.assert_allclose(r["centroid_mm"], vol.index_to_world(idx.mean(0)), atol=1e-3)
    box = rows[0]  # a 4 x 6 x 6 voxel box: outline points sit 0.25 px out along the grid axes only
    assert np.isclose(box["long_axis_mm"], max(np.hypot(5.5 * 0.8, 5 * 0.7), np.hypot(5 * 0.8, 5.5 * 0.7)),
                      atol=0.02)
    # perpendicular to a diagonal, the longest chord spans the rectangle between its narrow sides
    assert 5.5 * 0.7 <= box["short_axis_mm"] <= box["long_axis_mm"]


def test_measuring_repeated_shapes_once_gives_the_same_table(monkeypatch):
    """A noisy mask's components repeat shapes; lnrt.nodes.MaskMemo measures each distinct mask once.
    The node table equals the one measured node by node, field for field, in a flipped, anisotropic
    frame, and the memo did save calls."""
    from lnrt import nodes

    rng = np.random.default_rng(4)
    mask = rng.random((12, 80, 80)) < 0.12
    vol = Volume(np.zeros(mask.shape, np.int16), spacing=(0.7, 0.9, 2.0), origin=(1.0, -2.0, 3.0),
                 direction=np.diag([-1.0, 1.0, -1.0]))
    labels, n = label_components(mask, 26, 0)
    calls = []
    real = nodes.MaskMemo.__call__

    def counted(self, m, *args):
        calls.append(len(self.seen))
        return real(self, m, *args)

    monkeypatch.setattr(nodes.MaskMemo, "__call__", counted)
    memo = node_table(labels, vol, Orientation.of(vol.direction))
    monkeypatch.setattr(nodes.MaskMemo, "__call__", lambda self, m, *args: self.fn(m, *args))
    plain = node_table(labels, vol, Orientation.of(vol.direction))
    assert n > 300 and memo == plain
    assert calls and max(calls) < len(calls) / 2 / 3  # fewer than a third of the masks were distinct
