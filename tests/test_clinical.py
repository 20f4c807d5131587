"""Clinical outputs: DICOM SEG and SR (validated, read back), viewer label maps, QC pictures and page."""
import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

import lnrt
from conftest import dciodvfy_errors
from lnrt.viewer import CATEGORY_RGB, read_slicer_segments

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def dicom_run(shared_data, session, tmp_path_factory):
    hd = pytest.importorskip("highdicom")
    out = tmp_path_factory.mktemp("dicom")
    res = session.run(shared_data / "dicom" / "neckbase_philips_10slices")
    assert res.nodes, "the placeholder marks soft-tissue blobs: this series has some"
    paths = res.save(out, dicom_sr=True, qc=True)
    return hd, res, paths


def test_dicom_seg_and_sr_pass_dciodvfy(dicom_run):
    _, _, paths = dicom_run
    for key in ("dicom_seg", "dicom_sr"):
        assert dciodvfy_errors(paths[key]) == [], key


def test_seg_segments_equal_the_label_map_on_the_source_frames(dicom_run):
    hd, res, paths = dicom_run
    seg = hd.seg.segread(str(paths["dicom_seg"]))
    assert seg.Manufacturer == "lnrt" and "lnrt" in seg.SoftwareVersions
    import pydicom

    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in res.info.files]
    uids = [s.SOPInstanceUID for s in sources]
    numbers = list(range(1, len(res.nodes) + 1))
    pix = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers,
                                            assert_missing_frames_are_empty=True)
    assert pix.shape == (len(uids), *res.labels.shape[1:], len(numbers))
    by_number = {d.SegmentNumber: d for d in seg.SegmentSequence}
    for number, node in zip(numbers, sorted(res.nodes, key=lambda n: n["id"])):
        assert by_number[number].SegmentLabel == f"node {node['id']}"
        assert by_number[number].SegmentedPropertyTypeCodeSequence[0].CodeValue == "59441001"
        np.testing.assert_array_equal(pix[..., number - 1] > 0, res.labels == node["id"])


def test_sr_axes_equal_the_json_report(dicom_run):
    hd, res, paths = dicom_run
    from pydicom.sr.codedict import codes

    sr = hd.sr.srread(str(paths["dicom_sr"]))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    report = json.loads(paths["report"].read_text())
    by_id = {f"node {n['id']}": n for n in report["nodes"]}
    assert len(groups) == len(by_id)
    seg = hd.seg.segread(str(paths["dicom_seg"]))
    for g in groups:
        node = by_id[g.tracking_identifier]
        assert g.get_measurements(name=codes.SCT.ShortAxis)[0].value == pytest.approx(node["short_axis_mm"])
        assert g.get_measurements(name=codes.SCT.LongAxis)[0].value == pytest.approx(node["long_axis_mm"])
        assert g.get_measurements(name=codes.SCT.Volume)[0].value == pytest.approx(node["volume_mm3"])
        assert node["recist"] in g.get_qualitative_evaluations()[0].value.meaning.lower()
        ref = g.reference_type, g.referenced_segment
        assert ref[1].referenced_sop_instance_uid == seg.SOPInstanceUID
    assert report["input"]["study_uid"] and report["input"]["series_uid"]


def test_dicom_outputs_need_a_dicom_input(tmp_path, run_cli, capsys, placeholder_package):
    pytest.importorskip("highdicom")
    rc = run_cli("infer", lnrt.sample_path(), "--out", tmp_path, "--dicom-seg", "--model", placeholder_package)
    assert rc == 2 and "DICOM folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_viewer_label_descriptions_match_the_node_ids(session, tmp_path):
    res = session.run(lnrt.sample_path())
    paths = res.save(tmp_path)
    segments = read_slicer_segments(paths["viewer_nrrd"])
    ids = sorted(n["id"] for n in res.nodes)
    assert sorted(segments) == ids
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["viewer_nrrd"])))
    np.testing.assert_array_equal(arr, res.labels)
    for n in res.nodes:
        name, color = segments[n["id"]]
        assert f"node {n['id']}" in name and f"{n['short_axis_mm']:.1f} mm" in name
        if n["recist"] == "enlarged":
            assert np.allclose(np.array(color) * 255, CATEGORY_RGB["enlarged"], atol=1)
    lines = [ln for ln in paths["viewer_labels"].read_text().splitlines() if not ln.startswith("#")]
    assert [int(ln.split()[0]) for ln in lines] == [0] + ids


def _chromium(html, tmp_path, *args):
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args,
                           html.as_uri()], capture_output=True, encoding="utf-8", errors="replace", timeout=120)


def test_qc_page_renders_every_node_in_headless_chromium(session, tmp_path):
    pytest.importorskip("PIL")
    res = session.run(lnrt.sample_path())
    paths = res.save(tmp_path, qc=True)
    page = paths["qc_html"].read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page.replace("https://dicom", "")  # self-contained
    assert len(list(paths["qc_dir"].glob("node_*.png"))) == len(res.nodes)
    if not CHROMIUM:
        pytest.skip("Chromium (Debian package chromium) is not installed")
    dom = _chromium(paths["qc_html"], tmp_path, "--dump-dom").stdout
    for n in res.nodes:
        assert f'id="row-{n["id"]}"' in dom and f'id="node-{n["id"]}"' in dom
    assert dom.count("data:image/png;base64,") == len(res.nodes) + 1
    shot = tmp_path / "qc.png"
    _chromium(paths["qc_html"], tmp_path, f"--screenshot={shot}", "--window-size=1280,1600")
    from PIL import Image

    img = Image.open(shot)
    assert img.size == (1280, 1600) and len(np.unique(np.asarray(img.convert("L")))) > 50  # not blank


def test_qc_without_nodes_and_with_a_node_at_the_border(tmp_path):
    pytest.importorskip("PIL")
    hu = np.full((6, 50, 60), -100, np.int16)
    hu[:, :2] = -1000
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((0.8, 0.8, 3.0))
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    empty = np.zeros(hu.shape, np.uint8)
    e = sitk.GetImageFromArray(empty)
    e.CopyInformation(img)
    sitk.WriteImage(e, str(tmp_path / "none.nii.gz"))
    paths = lnrt.measure(tmp_path / "none.nii.gz", image=tmp_path / "ct.nii.gz").save(tmp_path / "a", qc=True)
    page = paths["qc_html"].read_text()
    assert 'id="no-nodes"' in page and 'id="overview"' in page
    border = empty.copy()
    border[2:5, 0:8, 50:60] = 1  # touches two faces of the image
    b = sitk.GetImageFromArray(border)
    b.CopyInformation(img)
    sitk.WriteImage(b, str(tmp_path / "border.nii.gz"))
    res = lnrt.measure(tmp_path / "border.nii.gz", image=tmp_path / "ct.nii.gz")
    paths = res.save(tmp_path / "b", qc=True)
    from PIL import Image

    pic = Image.open(paths["qc_dir"] / "node_001.png")
    assert pic.width >= 300 and pic.height >= 300


def test_anonymised_series_without_uids_skips_the_automatic_seg(shared_data, session, tmp_path):
    pytest.importorskip("highdicom")
    res = session.run(shared_data / "dicom" / "abdomen_siemens_20slices")
    paths = res.save(tmp_path / "auto")  # SEG only automatic: skipped, said in the report
    assert "dicom_seg" not in paths and any("no DICOM SEG" in w for w in res.warnings)
    assert any("no DICOM SEG" in w for w in json.loads(paths["report"].read_text())["warnings"])
    res.save(tmp_path / "again")  # saving again does not repeat the warning
    assert sum("no DICOM SEG" in w for w in res.warnings) == 1
    with pytest.raises(lnrt.LnrtError, match="anonymised without UIDs"):
        res.save(tmp_path / "explicit", dicom_seg=True)
    assert not (tmp_path / "explicit").exists()  # refused before anything was written


def test_thorax_series_with_an_rtstruct_gives_valid_seg_and_sr(shared_data, session, tmp_path):
    pytest.importorskip("highdicom")
    res = session.run(shared_data / "dicom" / "thorax_with_rtstruct")
    paths = res.save(tmp_path, dicom_sr=True)
    assert paths["dicom_seg"].is_file() and paths["dicom_sr"].is_file()
    if shutil.which("dciodvfy"):
        for key in ("dicom_seg", "dicom_sr"):
            out = subprocess.run(["dciodvfy", str(paths[key])], capture_output=True, text=True)
            assert not [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]


# -- references, negative results, no silent omissions -------------------------------------------------

def test_sr_axes_reference_the_image_they_were_measured_on(dicom_run):
    hd, res, paths = dicom_run
    from pydicom.sr.codedict import codes

    sr = hd.sr.srread(str(paths["dicom_sr"]))
    by_id = {f"node {n['id']}": n for n in res.nodes}
    for g in sr.content.get_volumetric_roi_measurement_groups():
        node = by_id[g.tracking_identifier]
        for name in (codes.SCT.LongAxis, codes.SCT.ShortAxis):
            images = g.get_measurements(name=name)[0].referenced_images
            assert [i.referenced_sop_instance_uid for i in images] == [node["sop_instance_uid"]]
            assert images[0].referenced_sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    report = json.loads(paths["report"].read_text())
    assert all(n["instance_number"] is not None for n in report["nodes"])


def _air_series(folder):
    """A DICOM series of air only (no body, so no node), with the UIDs a SEG/SR references."""
    import sys
    from pathlib import Path

    import pydicom

    sys.path.insert(0, str(Path(__file__).parent))
    from test_dicom_series import write_series

    _, files = write_series(folder, n=6)
    frame = pydicom.uid.generate_uid()
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PixelData = np.full((ds.Rows, ds.Columns), 24, np.int16).tobytes()  # -1000 HU
        ds.FrameOfReferenceUID = frame
        ds.save_as(f)
    return files


@pytest.fixture
def air_series(tmp_path):
    pytest.importorskip("highdicom")
    folder = tmp_path / "air"
    return folder, _air_series(folder)


def _lnrt_handler():
    """The lnrt log on stderr, as the command line shows it (pytest's own handlers print nothing)."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("lnrt: %(message)s"))
    logging.getLogger("lnrt").addHandler(handler)
    return handler


def test_zero_node_sr_says_no_lymph_node_and_passes_dciodvfy(session, air_series, tmp_path, capfd):
    import logging

    import pydicom

    folder, files = air_series
    res = session.run(folder)
    assert res.nodes == []
    handler = _lnrt_handler()
    try:
        paths = res.save(tmp_path / "out", dicom_sr=True)
        res.save(tmp_path / "again", dicom_sr=True)  # a second save repeats nothing
    finally:
        logging.getLogger("lnrt").removeHandler(handler)
    assert "dicom_sr" in paths and "dicom_seg" not in paths and not (tmp_path / "out" / "air.seg.dcm").exists()
    err = capfd.readouterr().err
    seg = [w for w in res.warnings if "no DICOM SEG written" in w]
    assert len(seg) == 1 and "cannot hold zero segments" in seg[0] and "no lymph node was detected" in seg[0]
    assert err.count(seg[0]) == 1, err
    assert json.loads(paths["report"].read_text())["warnings"].count(seg[0]) == 1
    if shutil.which("dciodvfy"):
        assert dciodvfy_errors(paths["dicom_sr"]) == []
    sr = pydicom.dcmread(paths["dicom_sr"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR

    def items(seq):
        for it in seq:
            yield it
            yield from items(it.get("ContentSequence", []))

    content = list(items(sr.ContentSequence))
    codes_of = {(it.ConceptNameCodeSequence[0].CodeValue, it.ConceptCodeSequence[0].CodeValue)
                for it in content if it.ValueType == "CODE"}
    assert ("59441001", "272519000") in codes_of  # Lymph node: Absent
    assert ("111017", "111241") in codes_of  # CAD summary: all algorithms succeeded; without findings
    assert ("121071", "59441001") in codes_of  # finding type: Lymph node
    texts = {it.ConceptNameCodeSequence[0].CodeMeaning: it.TextValue for it in content if it.ValueType == "TEXT"}
    assert texts["Algorithm Name"].startswith("lnrt/") and "lnrt" in texts["Algorithm Version"]
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    evidence = {str(r.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
    assert evidence == sources
    images = {str(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for it in content if it.ValueType == "IMAGE"}
    assert images == sources


def test_automatic_seg_without_nodes_is_not_skipped_silently(session, air_series, tmp_path, capfd):
    import logging

    res = session.run(air_series[0])
    handler = _lnrt_handler()
    try:
        paths = res.save(tmp_path)
    finally:
        logging.getLogger("lnrt").removeHandler(handler)
    assert "dicom_seg" not in paths
    msg = [w for w in res.warnings if "no DICOM SEG written" in w]
    assert len(msg) == 1 and "cannot hold zero segments" in msg[0] and "SR" not in msg[0]
    assert capfd.readouterr().err.count(msg[0]) == 1


def test_seg_warning_without_highdicom_is_logged_once(shared_data, session, tmp_path, capfd, monkeypatch):
    import logging
    import sys

    res = session.run(shared_data / "dicom" / "neckbase_philips_10slices")
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom now fails
    handler = _lnrt_handler()
    try:
        paths = res.save(tmp_path / "a")
        res.save(tmp_path / "b")
    finally:
        logging.getLogger("lnrt").removeHandler(handler)
    assert "dicom_seg" not in paths
    msg = [w for w in res.warnings if "no DICOM SEG written" in w]
    assert len(msg) == 1 and "highdicom is not installed" in msg[0]
    assert capfd.readouterr().err.count("no DICOM SEG written") == 1


def test_cli_prints_the_seg_warning_once_without_highdicom(shared_data, placeholder_package, tmp_path, capfd):
    import sys

    code = ("import sys; sys.modules['highdicom'] = None\n"
            "from lnrt.cli import main; sys.exit(main(sys.argv[1:]))")
    rc = subprocess.run([sys.executable, "-c", code, "infer", str(shared_data / "dicom" / "neckbase_philips_10slices"),
                         "--model", str(placeholder_package), "--out", str(tmp_path)]).returncode
    err = capfd.readouterr().err
    assert rc == 0 and not (tmp_path / "neckbase_philips_10slices.seg.dcm").exists()
    assert err.count("no DICOM SEG written") == 1, err
