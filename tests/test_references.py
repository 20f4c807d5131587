"""PACS-usable references of each node (lnrt.references): the measured slice's position in mm, its DICOM
Instance Number and SOP Instance UID, and the side, checked against the DICOM files themselves."""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import lnrt
from lnrt.references import FIELDS, MIDLINE_TOLERANCE_MM, node_references, side_of
from lnrt.volume import Orientation, Volume

pydicom = pytest.importorskip("pydicom")
sys.path.insert(0, str(Path(__file__).parent))
from test_dicom_series import write_series  # noqa: E402

# The phantom, in world mm (LPS: +x is the patient's left, +y posterior, +z superior): a neck-sized fat
# ellipse centred on x = 0 with three soft-tissue nodes, each in its own slab of slices.
NODES = {"right": (-30.0, -10.0, -12.0), "left": (30.0, 10.0, 0.0), "midline": (1.0, -32.0, 9.0)}
RADIUS_MM = 7.0
ORIGIN = (-80.0, -80.0, -30.0)  # the first pixel of the first slice
SIZE, SLICES, STEP = 160, 16, 3.0  # 160 x 160 pixels of 1 mm, 16 slices 3 mm apart


def phantom_hu(z_mm: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    x, y = np.meshgrid(xs, ys)  # rows run along y, columns along x
    hu = np.full(x.shape, -1000.0)
    hu[(x / 60.0) ** 2 + (y / 50.0) ** 2 <= 1.0] = -100.0
    for cx, cy, cz in NODES.values():
        r2 = RADIUS_MM ** 2 - (z_mm - cz) ** 2
        if r2 > 0:
            hu[(x - cx) ** 2 + (y - cy) ** 2 <= r2] = 40.0
    return hu


def write_phantom_series(folder: Path) -> list:
    """The phantom as a DICOM series (test_dicom_series' builder: shuffled names, InstanceNumber 100 - i);
    returns the files in position order."""
    _, files = write_series(folder, n=SLICES, rows=SIZE, cols=SIZE, pixel_spacing=(1.0, 1.0), spacing=STEP,
                            origin=ORIGIN)
    frame = pydicom.uid.generate_uid()
    xs = ORIGIN[0] + np.arange(SIZE)
    ys = ORIGIN[1] + np.arange(SIZE)
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        hu = phantom_hu(ORIGIN[2] + i * STEP, xs, ys)
        ds.PixelData = np.round(hu + 1024).astype(np.int16).tobytes()
        ds.FrameOfReferenceUID = frame
        ds.save_as(f)
    return files


def header(path):
    return pydicom.dcmread(path, stop_before_pixels=True)


def position_along_normal(ds) -> float:
    iop = np.asarray(ds.ImageOrientationPatient, float)
    return float(np.dot(np.asarray(ds.ImagePositionPatient, float), np.cross(iop[:3], iop[3:])))


@pytest.fixture(scope="module")
def phantom_session(placeholder_package):
    with lnrt.Session(placeholder_package, threads=2, neck_region=False) as s:
        yield s


@pytest.fixture(scope="module")
def phantom_run(phantom_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs") / "ct"
    files = write_phantom_series(folder)
    return phantom_session.run(folder), files


def test_instance_fields_are_those_of_the_file_at_the_measured_slice(phantom_run):
    res, files = phantom_run
    assert len(res.nodes) == 3
    assert res.info.files == [str(f) for f in files]
    for n in res.nodes:
        ds = header(files[n["axis_slice"]])
        assert n["instance_number"] == int(ds.InstanceNumber) == 100 - n["axis_slice"]  # not axis_slice + 1
        assert n["sop_instance_uid"] == ds.SOPInstanceUID
        assert n["slice_position_mm"] == pytest.approx(position_along_normal(ds), abs=1e-3)
        # the slice holds the centroid: within half a slice of it along the normal (z here)
        assert abs(n["slice_position_mm"] - n["centroid_mm"][2]) <= STEP


def test_side_of_each_node_in_lps(phantom_run):
    """LPS: +x is the patient's left. The "right" node is drawn at low column indices: on a radiological
    display (image column 0 on the screen's left, since the rows run along +x) it is on the screen's left,
    the patient's right."""
    res, _ = phantom_run
    by_side = {n["side"]: n for n in res.nodes}
    assert sorted(by_side) == ["left", "midline", "right"]
    for side, (cx, cy, _) in NODES.items():
        assert by_side[side]["centroid_mm"][0] == pytest.approx(cx, abs=1.0)
    assert by_side["right"]["bbox_voxels"][2] < SIZE // 2 < by_side["left"]["bbox_voxels"][2]


def test_side_uses_the_world_x_not_the_column_index(tmp_path):
    """The same phantom stored with its x axis reversed (columns run to the patient's right): the node at
    low column indices is now on the patient's left. measure() with the CT gives the side."""
    xs, ys = ORIGIN[0] + np.arange(SIZE), ORIGIN[1] + np.arange(SIZE)
    hu = np.stack([phantom_hu(ORIGIN[2] + i * STEP, xs, ys) for i in range(SLICES)]).astype(np.int16)
    flipped = np.ascontiguousarray(hu[:, :, ::-1])
    direction = np.diag([-1.0, 1.0, 1.0])
    origin = (ORIGIN[0] + SIZE - 1, ORIGIN[1], ORIGIN[2])
    image = Volume(flipped, (1.0, 1.0, STEP), origin, direction)
    labels = Volume((flipped > 0).astype(np.uint8), (1.0, 1.0, STEP), origin, direction)
    res = lnrt.measure(labels, image=image)
    by_side = {n["side"]: n for n in res.nodes}
    assert sorted(by_side) == ["left", "midline", "right"]
    assert by_side["left"]["bbox_voxels"][2] < SIZE // 2 < by_side["right"]["bbox_voxels"][2]
    assert all(n["instance_number"] is None and n["sop_instance_uid"] is None for n in res.nodes)
    assert lnrt.measure(labels).nodes[0]["side"] is None  # no CT: no body, no midline


def test_midline_tolerance():
    assert side_of(10.0, 10.0 + MIDLINE_TOLERANCE_MM) == "midline"
    assert side_of(10.0 + MIDLINE_TOLERANCE_MM + 0.1, 10.0) == "left"
    assert side_of(10.0 - MIDLINE_TOLERANCE_MM - 0.1, 10.0) == "right"
    assert side_of(3.0, None) is None


def test_real_philips_series_against_pydicom(shared_data, session):
    folder = shared_data / "dicom" / "neckbase_philips_10slices"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    res = session.run(folder)
    assert res.nodes
    for n in res.nodes:
        ds = header(res.info.files[n["axis_slice"]])
        assert n["instance_number"] == int(ds.InstanceNumber)
        assert n["sop_instance_uid"] == ds.SOPInstanceUID
        assert n["slice_position_mm"] == pytest.approx(position_along_normal(ds), abs=1e-3)
        assert n["side"] in ("right", "left", "midline")
    # the radiologist's example: array slice 1 of 10 is image 9, at 99.5 mm
    first = next(n for n in res.nodes if n["axis_slice"] == 1)
    assert (first["instance_number"], first["slice_position_mm"]) == (9, 99.5)


def test_nifti_gives_the_position_in_mm_and_no_instance(session):
    res = session.run(lnrt.sample_path())
    img = sitk.ReadImage(str(lnrt.sample_path()))
    normal = np.asarray(img.GetDirection()).reshape(3, 3)[:, 2]
    assert res.nodes
    for n in res.nodes:
        assert n["instance_number"] is None and n["sop_instance_uid"] is None
        corner = img.TransformIndexToPhysicalPoint((0, 0, int(n["axis_slice"])))
        assert n["slice_position_mm"] == pytest.approx(float(np.dot(corner, normal)), abs=1e-3)
        assert n["side"] in ("right", "left", "midline")


def test_no_axes_and_non_axial_series_give_none():
    vol = Volume(np.zeros((4, 5, 6), np.int16), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    row = {"id": 1, "centroid_mm": [0.0, 0.0, 0.0], "axis_slice": None}
    out = node_references([row], vol, Orientation.of(vol.direction), vol.array, ["a.dcm"] * 4)
    assert all(out[0][k] is None for k in FIELDS) and list(out[0])[:3] == ["id", "centroid_mm", "axis_slice"]
    # a coronal series: array z runs posterior, the axial slices are array y rows, not instances
    coronal = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
    vol_c = Volume(np.zeros((4, 5, 6), np.int16), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), coronal)
    out = node_references([dict(row, axis_slice=2)], vol_c, Orientation.of(coronal), None, ["missing.dcm"] * 4)
    assert out[0]["instance_number"] is None and out[0]["sop_instance_uid"] is None
    # row 2, 1 mm apart, is at world z = -2: along the axis' own direction (0, 0, -1) that is +2 mm
    assert out[0]["slice_position_mm"] == pytest.approx(2.0)


def test_csv_and_cli_table_carry_the_references(phantom_run, run_cli, placeholder_package, tmp_path, capsys):
    res, files = phantom_run
    folder = Path(files[0]).parent
    rc = run_cli("infer", folder, "--model", placeholder_package, "--all-regions", "--out", tmp_path,
                 "--no-dicom-seg", "-q")
    out = capsys.readouterr().out
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO((tmp_path / "ct.nodes.csv").read_text())))
    by_id = {n["id"]: n for n in res.nodes}
    assert len(rows) == 3
    for r in rows:
        n = by_id[int(r["id"])]
        assert int(r["instance_number"]) == n["instance_number"] and r["sop_instance_uid"] == n["sop_instance_uid"]
        assert float(r["slice_position_mm"]) == n["slice_position_mm"] and r["side"] == n["side"]
    lines = out.splitlines()
    head = lines[0].split()
    assert head[:7] == ["id", "short", "mm", "long", "mm", "vol", "mm3"] and "image" in head and "side" in head
    for line in lines[1:4]:
        cells = line.split()
        n = by_id[int(cells[0])]
        assert cells[4] == str(n["instance_number"]) and cells[5] == str(n["axis_slice"])
        assert cells[7] == n["side"]
