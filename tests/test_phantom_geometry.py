"""Known ellipsoid nodes in any orientation: axes, centroids and output geometry against the truth."""
import json

import numpy as np
import pytest
from conftest import geometry_of, place, save, signed_permutations

import lnrt
from lnrt.models.ellipsoids import ellipsoid_phantom
from lnrt.volume import Orientation

SPACING = (2.0, 0.7, 0.55)  # z, y, x: anisotropic
ORIGIN = (-41.0, 17.5, -300.25)
DIRECTIONS = signed_permutations()
PICKED = [0, 5, 7, 12, 19, 26, 33, 41, 47]  # identity, flips, permutations (axial, coronal, sagittal stacks)


@pytest.fixture(scope="module")
def phantom():
    hu, labels, nodes = ellipsoid_phantom((40, 120, 150), SPACING, seed=3, n_nodes=6, noise_hu=8.0)
    assert len(nodes) >= 4
    return hu, labels, nodes


@pytest.mark.parametrize("k", PICKED)
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_measured_axes_and_centroids_match_the_truth(phantom, tmp_path, k, suffix):
    hu, labels, nodes = phantom
    vol = place(labels, SPACING, ORIGIN, DIRECTIONS[k])
    path = save(vol, tmp_path / f"truth{suffix}")
    result = lnrt.measure(path)
    by_id = {n["id"]: n for n in result.nodes}
    assert sorted(by_id) == list(range(1, len(nodes) + 1))
    pixel = max(SPACING[1:])
    voxel_diag = float(np.linalg.norm(SPACING))
    for i, truth in enumerate(nodes, start=1):
        got = by_id[i]
        assert abs(got["short_axis_mm"] - truth.short_axis_mm) <= 0.5 + pixel, (i, got, truth)
        assert abs(got["long_axis_mm"] - truth.long_axis_mm) <= 0.5 + pixel, (i, got, truth)
        world = np.asarray(ORIGIN) + np.asarray(truth.center_mm)[::-1]
        assert np.linalg.norm(np.asarray(got["centroid_mm"]) - world) <= voxel_diag
        assert got["recist"] == lnrt.recist.recist_category(got["short_axis_mm"])
        # the measured slice is the node's centre slice, counted along the input's own axis
        o = Orientation.of(vol.direction)
        centre_in = o.canonical_index_to_input(np.array([truth.center_mm[0] / SPACING[0], 0, 0]), vol.shape)
        assert abs(got["axis_slice"] - centre_in[o.perm[0]]) <= 2
    out = tmp_path / "out"
    paths = result.save(out)
    assert geometry_of(paths["labels"]) == geometry_of(path)
    report = json.loads(paths["report"].read_text())
    assert report["schema"] == "lnrt.report/1" and len(report["nodes"]) == len(nodes)


@pytest.mark.parametrize("k", PICKED)
def test_infer_is_exactly_equivariant_to_storage_order(phantom, session, tmp_path, k):
    """The same scan stored in another order gives the same nodes at the same world points."""
    hu, labels, nodes = phantom
    ref = session.run(save(place(hu, SPACING, ORIGIN, DIRECTIONS[0]), tmp_path / "ref.nii.gz"))
    vol = place(hu, SPACING, ORIGIN, DIRECTIONS[k])
    path = save(vol, tmp_path / "scan.nii.gz")
    res = session.run(path)
    o = Orientation.of(vol.direction)
    np.testing.assert_array_equal(o.to_canonical(res.labels) > 0, ref.labels > 0)
    ref_c = sorted(tuple(n["centroid_mm"]) for n in ref.nodes)
    got_c = sorted(tuple(n["centroid_mm"]) for n in res.nodes)
    np.testing.assert_allclose(got_c, ref_c, atol=1e-3)
    ref_short = sorted(n["short_axis_mm"] for n in ref.nodes)
    np.testing.assert_allclose(sorted(n["short_axis_mm"] for n in res.nodes), ref_short, atol=1e-6)
    paths = res.save(tmp_path / "out")
    assert geometry_of(paths["labels"]) == geometry_of(path)
