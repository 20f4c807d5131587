"""The neck-region rule and the resolution floor (README: Postprocessing).

Body masks and scans are built with known widths and known places, so every answer is exact: which
slices are neck-sized, which lie within the margin, which findings a session reports.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import lnrt
from lnrt.nodes import keep_nodes, label_components
from lnrt.package import write_manifest
from lnrt.recist import recist_axes
from lnrt.region import NeckRegionConfig, find_neck_region, slice_widths
from lnrt.volume import Volume


def ellipse(shape_yx, spacing, width_mm, depth_mm, centre_mm=None):
    ny, nx = shape_yx
    y = (np.arange(ny) + 0.5) * spacing
    x = (np.arange(nx) + 0.5) * spacing
    cy, cx = centre_mm or (ny * spacing / 2, nx * spacing / 2)
    return ((y[:, None] - cy) / (depth_mm / 2)) ** 2 + ((x[None, :] - cx) / (width_mm / 2)) ** 2 <= 1.0


@pytest.mark.parametrize("spacing", [0.5, 1.0, 2.0, 3.9])
def test_slice_width_is_the_body_width_within_one_sample(spacing):
    shape = (int(220 / spacing), int(480 / spacing))
    body = np.zeros((3,) + shape, dtype=bool)
    body[0] = ellipse(shape, spacing, 120, 100)
    body[1] = ellipse(shape, spacing, 350, 200)
    widths, cut = slice_widths(body, (2.0, spacing, spacing))
    assert not cut.any()
    step = max(spacing, 2.0)
    assert abs(widths[0] - 120) <= step + 1e-6
    assert abs(widths[1] - 350) <= step + 1e-6
    assert widths[2] == 0


def test_couch_shell_and_separate_parts_do_not_widen_the_neck():
    sp = 1.0
    shape = (260, 480)
    neck = ellipse(shape, sp, 120, 100, centre_mm=(120, 240))
    body = np.zeros((2,) + shape, dtype=bool)
    body[0] = neck
    body[0, 170:173, 10:470] = True  # a 3 mm couch skin 460 mm wide, touching the neck's back
    assert body[0, 169:171, 240].all()
    body[1] = neck
    body[1] |= ellipse(shape, sp, 60, 60, centre_mm=(120, 40))  # an arm beside it, not touching
    widths, cut = slice_widths(body, (2.0, sp, sp))
    assert not cut.any()
    assert np.all(np.abs(widths - 120) <= 2.0 + 1e-6), widths


def stack(profile_mm, spacing=(2.0, 2.0, 2.0), shape_yx=(120, 200)):
    """A body mask with one ellipse per slice of the given widths (0: empty slice)."""
    body = np.zeros((len(profile_mm),) + shape_yx, dtype=bool)
    for z, w in enumerate(profile_mm):
        if w:
            body[z] = ellipse(shape_yx, spacing[1], w, min(w, 200))
    return body


def test_neck_slices_and_the_margin_below_them():
    # 40 slices of trunk (350 mm), then 60 of neck (120 mm), at 2 mm: margin 50 mm reaches 25 slices down
    body = stack([350] * 40 + [120] * 60)
    region = find_neck_region(body, (2.0, 2.0, 2.0), NeckRegionConfig(margin_mm=50.0))
    assert np.flatnonzero(region.slices).tolist() == list(range(15, 100))
    assert region.widths[0] > 200 and region.widths[50] < 200
    region0 = find_neck_region(body, (2.0, 2.0, 2.0), NeckRegionConfig(margin_mm=0.0))
    assert np.flatnonzero(region0.slices).tolist() == list(range(40, 100))


def test_the_region_reaches_the_lateral_margin_beyond_the_neck_sides():
    # the neck is 120 mm wide, centred at 200 mm across: sides at 140 and 260 mm (2 mm sampling)
    body = stack([350] * 40 + [120] * 60)
    region = find_neck_region(body, (2.0, 2.0, 2.0), NeckRegionConfig(margin_mm=50.0, lateral_margin_mm=60.0))
    assert abs(region.x_mm[0] - 80) <= 2 and abs(region.x_mm[1] - 320) <= 2, region.x_mm
    z = [50, 50, 20, 20, 20, 5]
    x = [200, 330, 85, 315, 60, 200]
    assert region.contains(z, x).tolist() == [True, False, True, True, False, False]


def test_no_neck_sized_slice_allows_nothing():
    # an abdomen (wider than 200 mm everywhere) and slices blanked to specks (narrower than 60 mm)
    body = stack([330] * 30 + [20] * 5 + [0] * 5)
    region = find_neck_region(body, (2.0, 2.0, 2.0), NeckRegionConfig())
    assert not region.found and region.x_mm is None and not region.contains([5], [200.0]).any()
    assert region.widths[-1] == 0 and 0 < region.widths[32] < 60


def test_a_body_cut_by_the_image_edge_is_not_neck_sized():
    # a thorax reconstructed with a 180 mm field of view, and a neck the field of view cuts on one side:
    # both look 60-200 mm wide, but their true widths are unknown
    sp = 1.0
    body = np.zeros((3, 200, 180), dtype=bool)
    body[0] = ellipse((200, 180), sp, 330, 190)
    body[1] = ellipse((200, 180), sp, 120, 100, centre_mm=(100, 40))
    body[2] = ellipse((200, 180), sp, 120, 100)  # the same neck, whole
    widths, cut = slice_widths(body, (2.0, sp, sp))
    assert cut.tolist() == [True, True, False]
    assert 60 <= widths[0] <= 200 and 60 <= widths[1] <= 200
    assert not find_neck_region(body[:2], (2.0, sp, sp), NeckRegionConfig()).found
    assert find_neck_region(body, (2.0, sp, sp), NeckRegionConfig()).slices.all()


def test_region_config_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="width_mm"):
        NeckRegionConfig(width_mm=(200.0, 60.0))
    with pytest.raises(ValueError, match="margin_mm"):
        NeckRegionConfig(margin_mm=-1.0)
    with pytest.raises(ValueError, match="lateral_margin_mm"):
        NeckRegionConfig(lateral_margin_mm=-1.0)
    cfg = NeckRegionConfig(width_mm=(50.0, 180.0), margin_mm=30.0, lateral_margin_mm=10.0)
    assert NeckRegionConfig.from_manifest(cfg.to_dict()) == cfg
    assert NeckRegionConfig.from_manifest(None) is None


def test_keep_nodes_renumbers_in_order_and_leaves_inputs_alone():
    fg = np.zeros((5, 20, 20), dtype=bool)
    for x in (2, 7, 12, 17):
        fg[2, 5:8, x:x + 2] = True
    labels, n = label_components(fg, 26)
    rows = [{"id": i, "tag": t} for i, t in zip(range(1, n + 1), "abcd")]
    before = labels.copy()
    new, kept = keep_nodes(labels, rows, [True, False, True, False])
    assert np.array_equal(labels, before) and [r["id"] for r in rows] == [1, 2, 3, 4]
    assert [(r["id"], r["tag"]) for r in kept] == [(1, "a"), (2, "c")]
    assert np.array_equal(new, np.where(before == 1, 1, np.where(before == 3, 2, 0)))
    same, all_rows = keep_nodes(labels, rows, [True] * 4)
    assert same is labels and all_rows == rows
    with pytest.raises(ValueError, match="3 entries for 4 nodes"):
        keep_nodes(labels, rows, [True] * 3)


@pytest.mark.parametrize("spacing", [0.5, 3.9])
def test_one_pixel_thick_finding_measures_below_one_pixel_two_pixels_above(spacing):
    """The resolution floor's premise: at 1 px, it drops exactly the one-pixel-thick components."""
    for thick, lo, hi in ((1, 0.3, 0.8), (2, 1.2, 1.8)):
        m = np.zeros((1, 30, 30), dtype=bool)
        m[0, 10:10 + thick, 5:25] = True
        axes = recist_axes(m, (2.0, spacing, spacing))
        assert lo * spacing <= axes.short_mm <= hi * spacing, (thick, axes.short_mm)


# -- through a session: the placeholder blob detector on a neck above a trunk -------------------------

def scan_with_trunk(blobs_z_mm, trunk_mm=60.0, neck_mm=60.0, sp=2.0, radius_mm=6.0, blobs_x_mm=None):
    """LPS scan at sp mm: a 300 mm trunk (inferior), a 120 mm neck above it, fat with soft-tissue blobs.
    Blobs sit at the given heights (mm above the scan's bottom), in the middle of the body (x = 170 mm
    across, y = 90 mm) unless blobs_x_mm says where across."""
    nz = int((trunk_mm + neck_mm) / 2.0)
    ny, nx = int(180 / sp), int(340 / sp)
    hu = np.full((nz, ny, nx), -1000, dtype=np.int16)
    z_mm = (np.arange(nz) + 0.5) * 2.0
    for z in range(nz):
        w, d = (300, 160) if z_mm[z] < trunk_mm else (120, 100)
        hu[z][ellipse((ny, nx), sp, w, d)] = -100
    zz, yy, xx = np.meshgrid(z_mm, (np.arange(ny) + 0.5) * sp, (np.arange(nx) + 0.5) * sp, indexing="ij")
    for zb, xb in zip(blobs_z_mm, blobs_x_mm or [170.0] * len(blobs_z_mm)):
        hu[(zz - zb) ** 2 + (yy - 90) ** 2 + (xx - xb) ** 2 <= radius_mm ** 2] = 40
    return Volume(hu, (sp, sp, 2.0), (0.0, 0.0, 0.0), np.eye(3))


@pytest.fixture(scope="module")
def ruled_package(placeholder_package, tmp_path_factory):
    """The placeholder with the default model's rules (a 20 mm margin keeps the test scan small)."""
    root = tmp_path_factory.mktemp("ruled") / "pkg"
    shutil.copytree(placeholder_package, root)
    manifest = json.loads((root / "lnrt.json").read_text())
    manifest["postprocessing"].update({"neck_region": {"width_mm": [60.0, 200.0], "margin_mm": 20.0,
                                                       "lateral_margin_mm": 60.0},
                                       "min_short_axis_px": 1.0})
    write_manifest(root, manifest)  # hashed and sealed (an unsealed manifest is refused)
    return root


def test_session_reports_only_findings_near_the_neck(ruled_package):
    # blobs: in the neck (90 mm), in the trunk 12 mm below the neck's base (48 mm) in the middle and 135 mm
    # to the side (the neck's sides are at 110 and 230 mm across, so the region ends 60 mm beyond, at 290),
    # and in the middle 44 mm below the neck's base (16 mm)
    vol = scan_with_trunk([90.0, 48.0, 48.0, 16.0], blobs_x_mm=[170.0, 170.0, 305.0, 170.0])
    with lnrt.Session(ruled_package, threads=2) as s:
        res = s.run(vol)
    with lnrt.Session(ruled_package, threads=2, neck_region=False) as s:
        every = s.run(vol)
    places = sorted((round(n["centroid_mm"][2]), round(n["centroid_mm"][0])) for n in every.nodes)
    assert len(places) == 4 and all(abs(z - zt) <= 2 and abs(x - xt) <= 2 for (z, x), (zt, xt) in
                                    zip(places, ((16, 169), (48, 169), (48, 304), (90, 169)))), places
    assert sorted((round(n["centroid_mm"][2]), round(n["centroid_mm"][0])) for n in res.nodes) == \
        [places[1], places[3]]
    assert [n["id"] for n in res.nodes] == [1, 2] and set(np.unique(res.labels)) == {0, 1, 2}
    rule = res.settings["rules"]["neck_region"]
    assert rule["dropped"] == 2 and rule["neck_sized"] and rule["margin_mm"] == 20.0
    assert abs(rule["across_mm"][0] - 50) <= 3 and abs(rule["across_mm"][1] - 290) <= 3, rule
    assert "neck_region" not in every.settings["rules"]
    assert not res.warnings


def test_session_on_a_scan_without_a_neck_reports_nothing_and_says_why(ruled_package):
    vol = scan_with_trunk([30.0, 80.0], trunk_mm=120.0, neck_mm=0.0)
    with lnrt.Session(ruled_package, threads=2) as s:
        res = s.run(vol)
    with lnrt.Session(ruled_package, threads=2, neck_region=False) as s:
        every = s.run(vol)
    assert len(every.nodes) == 2 and res.nodes == [] and not res.labels.any()
    assert res.settings["rules"]["neck_region"] == {"width_mm": [60.0, 200.0], "margin_mm": 20.0,
                                                    "lateral_margin_mm": 60.0, "neck_sized": False,
                                                    "across_mm": None, "dropped": 2}
    assert len(res.warnings) == 1 and "no neck-sized body section" in res.warnings[0]
    assert "2 found; --all-regions reports them" in res.warnings[0]


def test_resolution_floor_drops_findings_below_it(ruled_package):
    # two neck blobs, 4 and 8 mm radius, on 2 mm pixels: short axes about 8 and 16 mm
    vol = scan_with_trunk([70.0], trunk_mm=0.0, neck_mm=120.0, radius_mm=4.0)
    big = scan_with_trunk([100.0], trunk_mm=0.0, neck_mm=120.0, radius_mm=8.0)
    vol = vol.with_array(np.maximum(vol.array, big.array))
    with lnrt.Session(ruled_package, threads=2, min_short_axis_px=0) as s:
        every = s.run(vol)
    shorts = sorted(n["short_axis_mm"] for n in every.nodes)
    assert len(shorts) == 2 and shorts[0] < 12.0 < shorts[1], shorts
    with lnrt.Session(ruled_package, threads=2, min_short_axis_px=6.0) as s:  # 12 mm at 2 mm pixels
        res = s.run(vol)
    assert [round(n["short_axis_mm"], 3) for n in res.nodes] == [round(shorts[1], 3)]
    assert res.settings["rules"]["min_short_axis"] == {"px": 6.0, "mm": 12.0, "dropped": 1}


def test_cli_all_regions_reports_findings_outside_the_neck(ruled_package, tmp_path, run_cli):
    from conftest import save

    scan = save(scan_with_trunk([30.0, 80.0], trunk_mm=120.0, neck_mm=0.0), tmp_path / "abdomen.nii.gz")
    assert run_cli("infer", scan, "--model", ruled_package, "--out", tmp_path / "a", "--quiet") == 0
    assert json.loads((tmp_path / "a" / "abdomen.report.json").read_text())["nodes"] == []
    assert run_cli("infer", scan, "--model", ruled_package, "--out", tmp_path / "b", "--quiet",
                   "--all-regions") == 0
    assert len(json.loads((tmp_path / "b" / "abdomen.report.json").read_text())["nodes"]) == 2


# -- on real anatomy (skipped without ../shared/data) -------------------------------------------------

def test_real_necks_keep_every_nodal_target_and_other_regions_have_no_neck(shared_data):
    """The OpenKBP planning target volumes (PTV56-70: the node levels at risk, drawn by radiation
    oncologists) lie wholly inside the default model's neck region (the margins were set from them, so
    this guards that they still hold); the abdomens and the thorax have no
    neck-sized slice. The region is computed as a run computes it (`Session.prepare`)."""
    import SimpleITK as sitk

    from lnrt.imageio import read_scan
    from lnrt.preprocess import Grid, resample
    from lnrt.volume import Orientation

    with lnrt.Session(threads=2) as s:
        assert s.neck_region is not None and s.neck_region.margin_mm == 100.0
        for i in range(1, 7):
            vol, _ = read_scan(shared_data / "openkbp" / f"pt_{i}_ct_hu.nii.gz")
            prep = s.prepare(vol)
            o = Orientation.of(vol.direction)
            ptv = o.to_canonical(sitk.GetArrayFromImage(sitk.ReadImage(
                str(shared_data / "openkbp" / f"pt_{i}_structures.nii.gz"))) >= 8)
            on_grid = resample(ptv.astype(np.float32), prep.native, prep.grid, linear=False) > 0
            z, _, x = np.nonzero(on_grid)
            inside = prep.neck.contains(z, (x + 0.5) * prep.grid.spacing[2])
            assert z.size > 1000 and inside.all(), (i, int((~inside).sum()))
        for name in ("nifti/abdomen_pelvis_3mm.nii.gz", "nifti/abdomen_3mm_30slices.nii.gz",
                     "dicom/abdomen_siemens_20slices", "dicom/thorax_with_rtstruct"):
            vol, _ = read_scan(shared_data / name)
            assert not s.prepare(vol).neck.found, name
