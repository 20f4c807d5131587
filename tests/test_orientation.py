import numpy as np
import pytest
from conftest import place, signed_permutations

from lnrt.errors import LnrtError
from lnrt.volume import Orientation, Volume, world_to_index


def rotation_z(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


@pytest.mark.parametrize("direction", signed_permutations())
def test_canonical_view_keeps_every_voxel_in_place(direction):
    rng = np.random.default_rng(0)
    arr_c = rng.integers(0, 1000, size=(4, 5, 6)).astype(np.int16)
    vol = place(arr_c, (3.0, 0.7, 0.9), (10.0, -20.0, 30.0), direction)
    o = Orientation.of(vol.direction)
    can = o.canonical_volume(vol)
    np.testing.assert_allclose(can.direction, np.eye(3), atol=1e-12)
    np.testing.assert_array_equal(can.array, arr_c)
    np.testing.assert_allclose(can.spacing, (0.9, 0.7, 3.0))
    np.testing.assert_allclose(can.origin, (10.0, -20.0, 30.0))
    np.testing.assert_array_equal(o.from_canonical(o.to_canonical(vol.array)), vol.array)
    # the same voxel is at the same world point in both views
    for idx_c in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        idx_in = o.canonical_index_to_input(np.array(idx_c, float), vol.shape).astype(int)
        assert vol.array[tuple(idx_in)] == can.array[idx_c]
        np.testing.assert_allclose(vol.index_to_world(idx_in), can.index_to_world(idx_c), atol=1e-9)
        np.testing.assert_allclose(world_to_index(vol, vol.index_to_world(idx_in)), idx_in, atol=1e-9)
        np.testing.assert_allclose(o.input_index_to_canonical(idx_in, vol.shape), idx_c, atol=1e-12)


def test_small_obliquity_is_accepted_and_reported():
    o = Orientation.of(rotation_z(5.0))
    assert o.perm == (0, 1, 2) and abs(o.obliquity_deg - 5.0) < 1e-6


@pytest.mark.parametrize("deg", [30.0, 45.0])
def test_strong_obliquity_is_refused_with_a_clear_message(deg):
    with pytest.raises(LnrtError, match="oblique"):
        Orientation.of(rotation_z(deg), "scan.nii.gz")


def test_same_geometry():
    v = Volume(np.zeros((2, 3, 4)), (1, 1, 2), (0, 0, 0), np.eye(3))
    assert v.same_geometry(Volume(np.ones((2, 3, 4)), (1, 1, 2), (0, 0, 0), np.eye(3)))
    assert not v.same_geometry(Volume(np.ones((2, 3, 4)), (1, 1, 2.5), (0, 0, 0), np.eye(3)))
