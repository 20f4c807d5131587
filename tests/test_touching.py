"""The touching-nodes split (lnrt.touching): pairs joined at a waist are cut, single nodes stay whole.

The phantoms are analytic shapes on anisotropic grids, with known volumes; the oracle is the shape each
voxel came from.
"""
import json
import shutil

import numpy as np
import pytest

import lnrt
from lnrt.nodes import label_components
from lnrt.package import write_manifest
from lnrt.touching import split_touching
from lnrt.volume import Volume


def grid(shape, spacing):
    return np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")


def balls(shape, spacing, spheres):
    """(mask, owner): the union of spheres (centre zyx mm, radius mm), and which sphere each voxel is in."""
    zz, yy, xx = grid(shape, spacing)
    owner = np.zeros(shape, np.int32)
    for k, ((cz, cy, cx), r) in enumerate(spheres, start=1):
        owner[((zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (owner == 0)] = k
    return owner > 0, owner


@pytest.mark.parametrize("spacing", [(1.0, 0.5, 0.5), (2.5, 0.45, 0.45), (0.7, 0.9, 0.7)])
@pytest.mark.parametrize("radii", [(5.0, 5.0), (6.0, 3.5), (8.0, 4.0)])
def test_two_touching_nodes_become_two(spacing, radii):
    r1, r2 = radii
    shape = tuple(int(round(60 / s)) for s in spacing)
    # centres a little closer than r1 + r2: the spheres overlap by 0.5 mm, as the generator's conglomerates
    mask, owner = balls(shape, spacing, [((30, 30, 20), r1), ((30, 30, 20 + r1 + r2 - 0.5), r2)])
    labels, n = label_components(mask)
    assert n == 1
    out, m, split = split_touching(labels, n, spacing, 1.0)
    assert (m, split) == (2, 1) and set(np.unique(out)) == {0, 1, 2}
    assert ((out > 0) == mask).all()  # no voxel gained or lost
    for k in (1, 2):  # each piece is one sphere, up to the voxels along the cut
        piece = out == k
        sphere = np.bincount(owner[piece], minlength=3)[1:].argmax() + 1
        agree = (owner[piece] == sphere).sum() / (owner == sphere).sum()
        assert agree > 0.9 and (owner[piece] != sphere).sum() < 0.1 * piece.sum(), (k, agree)


def ellipsoid(shape, spacing, centre, axes, lobes=None):
    zz, yy, xx = grid(shape, spacing)
    cz, cy, cx = centre
    e = ((zz - cz) / axes[0]) ** 2 + ((yy - cy) / axes[1]) ** 2 + ((xx - cx) / axes[2]) ** 2
    if lobes:  # the generator's lobulated outline: the in-plane radius modulated by 1 + amp sin(freq theta)
        amp, freq = lobes
        e = e / (1 + amp * np.sin(freq * np.arctan2(yy - cy, xx - cx))) ** 2
    return e <= 1


@pytest.mark.parametrize("spacing", [(1.0, 0.5, 0.5), (2.5, 0.45, 0.45), (3.0, 0.8, 0.8)])
@pytest.mark.parametrize("shape_mm", ["round", "ovoid", "elongated", "flattened", "lobulated", "enlarged"])
def test_single_nodes_stay_whole(spacing, shape_mm):
    axes, lobes = {"round": ((6, 6, 6), None), "ovoid": ((5, 4, 7), None),
                   "elongated": ((25, 7.5, 8), None),  # 3.3 times as long as wide, the enlarged family
                   "flattened": ((5, 3, 9), None), "lobulated": ((8, 8, 8), (0.15, 4)),
                   "enlarged": ((20, 15, 12), (0.1, 3))}[shape_mm]
    shape = tuple(int(round(70 / s)) for s in spacing)
    mask = ellipsoid(shape, spacing, (35, 35, 35), axes, lobes)
    labels, n = label_components(mask)
    out, m, split = split_touching(labels, n, spacing, 1.0)
    assert (m, split) == (1, 0) and out is labels


def test_ids_of_unsplit_components_are_kept_and_new_ids_follow():
    spacing = (1.0, 0.5, 0.5)
    shape = (40, 120, 200)
    pair, _ = balls(shape, spacing, [((20, 30, 20), 5), ((20, 30, 29.5), 5)])
    single = ellipsoid(shape, spacing, (20, 30, 70), (6, 6, 6))
    labels, n = label_components(pair | single)
    pair_id = int(labels[20, 60, 40])
    out, m, split = split_touching(labels, n, spacing, 1.0)
    assert (n, m, split) == (2, 3, 1) and out.dtype == labels.dtype
    assert (out[labels == 3 - pair_id] == 3 - pair_id).all()  # the single node keeps its id
    assert set(np.unique(out[labels == pair_id])) == {pair_id, 3}


def test_a_cut_that_leaves_a_piece_below_the_size_floor_is_not_made():
    spacing = (1.0, 0.5, 0.5)
    mask, _ = balls((40, 80, 120), spacing, [((20, 20, 20), 6), ((20, 20, 29.0), 3.5)])
    labels, n = label_components(mask)
    out, m, split = split_touching(labels, n, spacing, 1.0)
    assert split == 1
    small = int(np.bincount(out.ravel())[1:].min())
    out, m, split = split_touching(labels, n, spacing, 1.0, min_voxels=small + 1)
    assert (m, split) == (1, 0)


def two_touching_nodes_scan():
    """A neck-sized body of fat with two 40 HU nodes (6 and 4.5 mm radius) joined at a waist."""
    spacing = (2.0, 0.8, 0.8)
    shape = (40, 150, 150)
    zz, yy, xx = grid(shape, spacing)
    hu = np.full(shape, -1000, np.int16)
    hu[(yy - 60) ** 2 + (xx - 60) ** 2 <= 55 ** 2] = -100
    mask, _ = balls(shape, spacing, [((40, 60, 50), 6.0), ((40, 60, 60), 4.5)])
    hu[mask] = 40
    return Volume(hu, spacing[::-1], (0.0, 0.0, 0.0), np.eye(3))


@pytest.fixture(scope="module")
def split_package(placeholder_package, tmp_path_factory):
    root = tmp_path_factory.mktemp("split") / "pkg"
    shutil.copytree(placeholder_package, root)
    manifest = json.loads((root / "lnrt.json").read_text())
    manifest["postprocessing"]["split_touching_mm"] = 1.0
    write_manifest(root, manifest)
    return root


def test_session_reports_touching_nodes_apart_when_the_manifest_asks(split_package):
    vol = two_touching_nodes_scan()
    with lnrt.Session(split_package, threads=2) as s:
        res = s.run(vol)
    with lnrt.Session(split_package, threads=2, split_touching_mm=0) as s:
        whole = s.run(vol)
    assert len(whole.nodes) == 1 and "split_touching" not in whole.settings["rules"]
    assert len(res.nodes) == 2 and set(np.unique(res.labels)) == {0, 1, 2}
    assert res.settings["rules"]["split_touching"] == {"h_mm": 1.0, "split": 1, "pieces_added": 1}
    assert res.settings["split_touching_mm"] == 1.0
    shorts = sorted(n["short_axis_mm"] for n in res.nodes)
    longs = sorted(n["long_axis_mm"] for n in res.nodes)
    assert whole.nodes[0]["long_axis_mm"] > 1.5 * longs[1]  # the pair, measured as one, is about 20 mm long
    assert abs(shorts[0] - 9.0) < 2.5 and abs(shorts[1] - 12.0) < 2.5, shorts  # 2 x 4.5 and 2 x 6 mm
    assert ((res.labels > 0) == (whole.labels > 0)).all()  # the same voxels, cut in two


@pytest.mark.parametrize("value", [-1, float("nan"), "one"])
def test_session_refuses_a_bad_split_height_in_one_line(split_package, value):
    with pytest.raises(lnrt.LnrtError, match="split_touching_mm .*: expected a finite number >= 0"):
        lnrt.Session(split_package, split_touching_mm=value)


def test_manifest_refuses_a_negative_split_height(split_package, tmp_path):
    root = tmp_path / "pkg"
    shutil.copytree(split_package, root)
    manifest = json.loads((root / "lnrt.json").read_text())
    manifest["postprocessing"]["split_touching_mm"] = -1
    with pytest.raises(lnrt.LnrtError, match="postprocessing.split_touching_mm is -1; expected a finite number >= 0"):
        write_manifest(root, manifest)  # a package is checked when it is sealed, and again when loaded


def test_the_split_benchmark_runs_and_records_each_height(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "split_touching.py"
    spec = importlib.util.spec_from_file_location("split_touching_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["split_touching.py", "--scans", "1", "--seed0", "20014",
                                      "--heights", "0", "1", "--out", str(tmp_path)])
    bench.main()
    (out,) = tmp_path.glob("*-split-touching.json")
    rows = json.loads(out.read_text())["rows"]
    assert [r["h_mm"] for r in rows] == [0.0, 1.0]
    # seed 20014: the split cuts one of the components the default model 1.2 marks there
    assert rows[1]["predicted_components"] == rows[0]["predicted_components"] + 1
    assert rows[1]["merged_true_nodes"] <= rows[0]["merged_true_nodes"]
    assert all(0 <= r["recall_50"] <= 1 and r["short_axis_abs_error_mm_p90"] >= 0 for r in rows)
