"""Multi-class node models (issue 18): N / P / ENE end to end, on a hand-weighted four-class model.

The model is the placeholder blob detector with its node logit split by density
(`lnrt.models.placeholder.CLASSES_NPE`: N below 25 HU, P 25-55 HU, ENE above 55 HU), so every class is
known from the phantom: spheres of 10, 40 and 70 HU, and one mixed node whose left part is 40 HU (P) and
whose right part is 70 HU (ENE). The independent oracle is the phantom itself: which voxels of each node
mask carry which density. Checked: one node per component over the union of the classes (the mixed node
is one node, not two), the class by majority vote with its voxel shares and mean class probabilities in
the report and the CSV, the class map beside the instance map, SEG segments and SR groups carrying the
coded class (and passing dciodvfy), the QC page and viewer files coloured by class, a binary model's
outputs unchanged, and the class map's file in the all-or-nothing pre-flight.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import lnrt
from conftest import dciodvfy_errors
from lnrt.models.placeholder import CLASSES_NPE, build_package
from lnrt.outputs import CSV_COLUMNS
from lnrt.viewer import CLASS_RGB
from lnrt.volume import Volume

SPACING_XYZ = (1.0, 1.0, 2.0)
# centre (z, y, x) mm -> HU of the pure nodes; the mixed node is at MIXED, split at x = MIXED_SPLIT_X
PURE = {10.0: (60.0, 50.0, 40.0), 40.0: (60.0, 50.0, 120.0), 70.0: (60.0, 95.0, 80.0)}
MIXED, MIXED_SPLIT_X = (60.0, 95.0, 40.0), 38.0
RADIUS_MM = 7.0


def phantom() -> Volume:
    """Fat in a body ellipse, air around it, four spherical nodes (see the module's text)."""
    z, y, x = np.mgrid[0:60, 0:140, 0:160].astype(np.float32)
    zz, yy, xx = z * SPACING_XYZ[2], y * SPACING_XYZ[1], x * SPACING_XYZ[0]
    hu = np.full(z.shape, -1000.0, np.float32)
    hu[((yy - 70) / 60) ** 2 + ((xx - 80) / 70) ** 2 < 1] = -100.0
    for value, (cz, cy, cx) in PURE.items():
        hu[(zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < RADIUS_MM ** 2] = value
    ball = (zz - MIXED[0]) ** 2 + (yy - MIXED[1]) ** 2 + (xx - MIXED[2]) ** 2 < RADIUS_MM ** 2
    hu[ball & (xx < MIXED_SPLIT_X)] = 40.0
    hu[ball & (xx >= MIXED_SPLIT_X)] = 70.0
    return Volume(hu, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0), direction=np.eye(3))


def expected_class(hu: float) -> str:
    return "node_n" if hu < 25 else "node_p" if hu < 55 else "node_ene"


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return build_package(tmp_path_factory.mktemp("npe"), CLASSES_NPE)


@pytest.fixture(scope="module")
def run(package):
    vol = phantom()
    with lnrt.Session(package, neck_region=False, threads=2) as s:
        return vol, s.run(vol)


def _oracle_shares(vol: Volume, labels: np.ndarray, node_id: int) -> dict:
    """Each class's share of a node's voxels, from the phantom's density (not from the model)."""
    hu = vol.array[labels == node_id]
    names = [expected_class(v) for v in hu]
    return {c: names.count(c) / len(names) for c in CLASSES_NPE[1:]}


def test_each_node_has_its_voted_class_shares_and_probabilities(run):
    vol, res = run
    assert len(res.nodes) == 4  # the mixed node is one component over the union of P and ENE
    by_class = sorted(n["class"] for n in res.nodes)
    assert by_class == ["node_ene", "node_ene", "node_n", "node_p"]
    for n in res.nodes:
        truth = _oracle_shares(vol, res.labels, n["id"])
        assert set(n["class_fractions"]) == set(CLASSES_NPE[1:]) == set(n["class_mean_prob"])
        assert n["class"] == max(truth, key=truth.get)
        for c in CLASSES_NPE[1:]:
            assert abs(n["class_fractions"][c] - truth[c]) <= 0.02, (n["id"], c, n["class_fractions"], truth)
        assert abs(sum(n["class_fractions"].values()) - 1.0) <= 1e-3  # every node voxel voted for a node class
        assert sum(n["class_mean_prob"].values()) <= n["probability"] + 1e-3  # 1 - p(background)
        winner = max(n["class_mean_prob"], key=n["class_mean_prob"].get)
        assert winner == n["class"]
    mixed = next(n for n in res.nodes if 0.1 < n["class_fractions"]["node_p"] < 0.9)
    assert mixed["class"] == "node_ene" and mixed["class_fractions"]["node_ene"] > 0.6


def test_class_map_holds_each_nodes_voted_class_on_the_input_grid(run, tmp_path):
    vol, res = run
    paths = res.save(tmp_path)
    assert paths["classes"] == tmp_path / "scan.classes.nii.gz"
    img = sitk.ReadImage(str(paths["classes"]))
    labels = sitk.ReadImage(str(paths["labels"]))
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(img, get)() == getattr(labels, get)()
    cmap, lab = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(labels)
    assert cmap.dtype == np.uint8
    assert not cmap[lab == 0].any()
    for n in res.nodes:
        values = np.unique(cmap[lab == n["id"]])
        assert values.tolist() == [CLASSES_NPE.index(n["class"])]  # the node's class, not each voxel's
    assert np.array_equal(cmap, res.class_map())


def test_csv_carries_the_class_columns(run, tmp_path):
    _, res = run
    paths = res.save(tmp_path, viewer=False)
    rows = list(csv.DictReader(paths["csv"].open()))
    fg = CLASSES_NPE[1:]
    assert list(rows[0]) == CSV_COLUMNS + [f"fraction_{c}" for c in fg] + [f"mean_prob_{c}" for c in fg]
    for row, n in zip(rows, res.nodes):
        assert row["class"] == n["class"]
        for c in fg:
            assert float(row[f"fraction_{c}"]) == n["class_fractions"][c]
            assert float(row[f"mean_prob_{c}"]) == n["class_mean_prob"][c]


def test_a_binary_models_outputs_have_no_class_fields(session, tmp_path):
    res = session.run(phantom())
    assert res.nodes and all("class_fractions" not in n for n in res.nodes)
    assert res.class_map() is None
    paths = res.save(tmp_path, viewer=False)
    assert "classes" not in paths and not (tmp_path / "scan.classes.nii.gz").exists()
    assert next(csv.reader(paths["csv"].open())) == CSV_COLUMNS


def test_existing_class_map_stops_the_cli_before_any_work(package, tmp_path, run_cli, capsys):
    scan = tmp_path / "scan.nii.gz"
    vol = phantom()
    img = sitk.GetImageFromArray(vol.array.astype(np.int16))
    img.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(img, str(scan))
    out = tmp_path / "out"
    out.mkdir()
    (out / "scan.classes.nii.gz").write_bytes(b"older")
    assert run_cli("infer", str(scan), "--model", str(package), "--out", str(out), "--all-regions") == 2
    err = capsys.readouterr().err
    assert "scan.classes.nii.gz: already exists" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["scan.classes.nii.gz"]  # nothing half-written
    assert (out / "scan.classes.nii.gz").read_bytes() == b"older"
    assert run_cli("infer", str(scan), "--model", str(package), "--out", str(out), "--all-regions",
                   "--overwrite") == 0
    assert (out / "scan.classes.nii.gz").read_bytes() != b"older"
    table = capsys.readouterr().out
    assert "class (voxel share)" in table and "node_ene (75%)" in table  # the mixed node's vote


def test_viewer_files_and_qc_colour_nodes_by_class(run, tmp_path):
    pytest.importorskip("PIL")
    _, res = run
    paths = res.save(tmp_path, qc=True)
    text = paths["viewer_labels"].read_text()
    for n in res.nodes:
        rgb = CLASS_RGB[CLASSES_NPE.index(n["class"]) - 1]
        line = next(ln for ln in text.splitlines() if ln.split()[0] == str(n["id"]))
        assert [int(v) for v in line.split()[1:4]] == list(rgb) and n["class"] in line
    page = paths["qc_html"].read_text(encoding="utf-8")
    assert 'id="class-key"' in page and "class (voxel shares)" in page
    for c in CLASSES_NPE[1:]:
        assert c in page
    from PIL import Image

    for n in res.nodes:  # each node picture's outline is in its class colour
        pic = paths["qc_dir"] / f"node_{n['id']:03d}.png"
        arr = np.asarray(Image.open(pic).convert("RGB"))
        rgb = CLASS_RGB[CLASSES_NPE.index(n["class"]) - 1]
        assert (arr == np.array(rgb, np.uint8)).all(axis=-1).sum() > 50, (pic.name, rgb)


def _dicom_series(folder: Path, vol: Volume) -> Path:
    """The phantom as a DICOM CT series with the UIDs a SEG references."""
    pydicom = pytest.importorskip("pydicom")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_dicom_series import slice_dataset

    folder.mkdir(parents=True)
    series, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for i in range(vol.shape[0]):
        ds = slice_dataset(i, series, spacing=SPACING_XYZ[2], origin=(0.0, 0.0, 0.0), rows=vol.shape[1],
                           cols=vol.shape[2], pixel_spacing=SPACING_XYZ[1::-1])
        ds.PixelData = (vol.array[i] + 1024).astype(np.int16).tobytes()
        ds.FrameOfReferenceUID = frame
        ds.save_as(folder / f"ct{i:03d}.dcm")
    return folder


@pytest.fixture(scope="module")
def dicom_run(package, tmp_path_factory):
    hd = pytest.importorskip("highdicom")
    root = tmp_path_factory.mktemp("npe-dicom")
    series = _dicom_series(root / "series", phantom())
    with lnrt.Session(package, neck_region=False, threads=2) as s:
        res = s.run(str(series))
    return hd, res, res.save(root / "out", dicom_sr=True)


def test_seg_segments_carry_the_coded_class(dicom_run):
    hd, res, paths = dicom_run
    seg = hd.seg.segread(str(paths["dicom_seg"]))
    by_label = {}
    for item in seg.SegmentSequence:
        modifier = item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
        by_label[item.SegmentLabel] = (modifier.CodingSchemeDesignator, modifier.CodeValue, modifier.CodeMeaning)
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "59441001"  # still a lymph node
    assert by_label == {f"node {n['id']} ({n['class']})":
                        ("99LNRT", f"LNRT-C{CLASSES_NPE.index(n['class'])}", n["class"]) for n in res.nodes}
    assert seg.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99LNRT"


def test_sr_groups_carry_the_class_as_a_qualitative_finding(dicom_run):
    hd, res, paths = dicom_run
    sr = hd.sr.srread(str(paths["dicom_sr"]))
    by_id = {f"node {n['id']}": n for n in res.nodes}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(res.nodes)
    for g in groups:
        node = by_id[g.tracking_identifier]
        found = {(e.name.value, e.value.value, e.value.meaning) for e in g.get_qualitative_evaluations()}
        assert ("LNRT-2", f"LNRT-C{CLASSES_NPE.index(node['class'])}", node["class"]) in found


def test_multiclass_seg_and_sr_pass_dciodvfy(dicom_run):
    _, _, paths = dicom_run
    for key in ("dicom_seg", "dicom_sr"):
        assert dciodvfy_errors(paths[key]) == [], key


def test_seg_per_class_layout_codes_each_class(dicom_run, tmp_path):
    hd, res, _ = dicom_run
    paths = res.save(tmp_path, dicom_seg=True, seg_segments="class", viewer=False)
    seg = hd.seg.segread(str(paths["dicom_seg"]))
    labels = {item.SegmentLabel: item.SegmentedPropertyTypeCodeSequence[0]
              .SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning for item in seg.SegmentSequence}
    assert labels == {c: c for c in {n["class"] for n in res.nodes}}
