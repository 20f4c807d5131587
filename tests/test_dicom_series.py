"""DICOM series geometry: broken series are refused from their headers, on one line, before any pixel is
decoded; sound series read with the right spacing and slice order."""
from __future__ import annotations

import dataclasses
import hashlib
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid  # noqa: E402

import lnrt.dicom_in as dicom_in  # noqa: E402
from lnrt.dicom_in import list_dicom_series, probe_dicom_folder, read_dicom_folder, read_dicom_series  # noqa: E402
from lnrt.errors import LnrtError  # noqa: E402

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
STUDY = "1.2.826.0.1.3680043.8.498.1"


def slice_dataset(i, series_uid, iop=AXIAL, spacing=3.0, origin=(-48.0, -48.0, -100.0), rows=32, cols=32,
                  pixel_spacing=(1.5, 1.5), slope=1, intercept=-1024, offset=0.0):
    """Slice i of a synthetic CT: HU value 10 * i everywhere but an air corner, so order is visible."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.PatientID = "LNRT-TEST"
    ds.InstanceNumber = 100 - i  # deliberately not the position order
    normal = np.cross(iop[:3], iop[3:])
    ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + (i * spacing + offset) * normal]
    if iop is not None:
        ds.ImageOrientationPatient = list(iop)
    ds.Rows, ds.Columns = rows, cols
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    ds.SliceThickness = spacing
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    arr = np.full((rows, cols), 1024 + 10 * i, np.int16)
    arr[:4, :4] = 24  # -1000 HU
    ds.PixelData = arr.tobytes()
    return ds


def write_series(folder, n=10, series_uid=None, names=None, rng_seed=0, **kw):
    """n slices 3 mm apart, file names shuffled; returns (series uid, files in position order)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    order = np.random.default_rng(rng_seed).permutation(n)
    files = []
    for i in range(n):
        name = names(i) if names else f"img{order[i]:03d}.dcm"
        path = folder / name
        slice_dataset(i, series_uid, **kw).save_as(path)
        files.append(path)
    return series_uid, files


def rewrite(path, **changes):
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)


def hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def no_pixels(monkeypatch):
    """Fail the test if ITK is asked to read pixels: refusals must come from the headers."""
    def boom(series):
        raise AssertionError(f"pixels read for a series that should be refused: {series.uid}")
    monkeypatch.setattr(dicom_in, "read_dicom_series", boom)


def refused(folder, *words, series_uid=None):
    before = hashes(folder)
    with pytest.raises(LnrtError) as info:
        read_dicom_folder(folder, series_uid)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{folder}: series "), msg
    for w in words:
        assert w in msg, msg
    assert hashes(folder) == before  # inputs are read, never modified
    return msg


# -- sound series ------------------------------------------------------------------------------------

def test_valid_series_reads_in_position_order_with_its_spacing(tmp_path):
    uid, files = write_series(tmp_path / "ct", n=10)
    before = hashes(tmp_path / "ct")
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    series = probe_dicom_folder(tmp_path / "ct")
    assert series.files == tuple(str(f) for f in files)  # position order, not name or InstanceNumber order
    assert series.shape_zyx == (10, 32, 32) and series.orientation == "axial" and series.has_uids
    assert series.spacing_xyz == pytest.approx((1.5, 1.5, 3.0)) and series.uid == uid == series.series_uid
    assert series.study_uid == STUDY and series.modality == "CT" and series.series_in_folder == 1
    vol, info = read_dicom_series(series)
    assert sitk.ProcessObject.GetGlobalWarningDisplay() == warn  # ITK's warning display is restored
    assert vol.spacing == pytest.approx((1.5, 1.5, 3.0)) and vol.shape == (10, 32, 32)
    assert [int(round(vol.array[k, 16, 16])) for k in range(10)] == [10 * k for k in range(10)]
    assert vol.origin == pytest.approx((-48.0, -48.0, -100.0))
    assert info.series_uid == uid and info.files == [str(f) for f in files]
    assert info.extra["slice_spacing_mm"] == pytest.approx(3.0) and info.extra["orientation"] == "axial"
    assert info.extra["slices"] == 10
    assert hashes(tmp_path / "ct") == before
    vol2, _ = read_dicom_folder(tmp_path / "ct")
    assert np.array_equal(vol2.array, vol.array)


def test_valid_read_prints_nothing(tmp_path, capfd):
    write_series(tmp_path / "ct", n=6)
    capfd.readouterr()
    read_dicom_folder(tmp_path / "ct")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_coronal_series_reads_with_its_normal_as_z(tmp_path):
    write_series(tmp_path / "cor", n=8, iop=CORONAL, spacing=2.0)
    series = probe_dicom_folder(tmp_path / "cor")
    assert series.orientation == "coronal" and series.spacing_xyz[2] == pytest.approx(2.0)
    vol, _ = read_dicom_series(series)
    assert np.allclose(vol.direction[:, 2], (0, 1, 0)) and vol.spacing[2] == pytest.approx(2.0)
    assert [int(round(vol.array[k, 16, 16])) for k in range(8)] == [10 * k for k in range(8)]


def test_small_rounding_of_positions_is_accepted(tmp_path):
    uid, files = write_series(tmp_path / "ct", n=10)
    rewrite(files[4], ImagePositionPatient=[-48.0, -48.0, -100.0 + 12.004])  # 4 um off: DS rounding
    assert probe_dicom_folder(tmp_path / "ct").spacing_xyz[2] == pytest.approx(3.0, abs=1e-3)


def test_rle_compressed_series_reads(tmp_path):
    uid, files = write_series(tmp_path / "rle", n=6)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    vol, _ = read_dicom_folder(tmp_path / "rle")
    assert vol.spacing[2] == pytest.approx(3.0)
    assert [int(round(vol.array[k, 16, 16])) for k in range(6)] == [10 * k for k in range(6)]


def test_itk_disagreeing_with_the_headers_is_refused(tmp_path):
    write_series(tmp_path / "ct", n=6)
    series = probe_dicom_folder(tmp_path / "ct")
    wrong = dataclasses.replace(series, spacing_xyz=series.spacing_xyz[:2] + (2.5,))
    with pytest.raises(LnrtError, match="ITK reads a slice spacing of 3.0 mm"):
        read_dicom_series(wrong)


# -- refusals ----------------------------------------------------------------------------------------

def test_missing_middle_slice_is_a_gap(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=10)
    files[5].unlink()
    msg = refused(tmp_path / "ct", uid, "gap of 6.0 mm", "slices 5 and 6 of 9", files[4].name, files[6].name,
                  "spacing is 3.0 mm", "1 slice missing", "none missing")


def test_uneven_spacing_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=10)
    for i in range(5, 10):
        rewrite(files[i], ImagePositionPatient=[-48.0, -48.0, -100.0 + 3.0 * i + 1.5])
    refused(tmp_path / "ct", "uneven slice spacing", "4.5 mm between slices 5 and 6")


def test_slow_drift_off_the_grid_is_refused(tmp_path, no_pixels):
    # each step is within 0.03 mm of the median 3.0, but slices 6..10 are 3.02 apart: the positions
    # leave the even grid from the first slice to the last by 0.044 mm
    uid, files = write_series(tmp_path / "ct", n=10)
    for i in range(6, 10):
        rewrite(files[i], ImagePositionPatient=[-48.0, -48.0, -100.0 + 15.0 + 3.02 * (i - 5)])
    refused(tmp_path / "ct", "off the even grid")


def test_duplicated_position_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=10)
    dup = slice_dataset(3, uid)
    dup.save_as(tmp_path / "ct" / "copy_of_slice3.dcm")
    refused(tmp_path / "ct", "same position", "duplicated slice", "copy_of_slice3.dcm", files[3].name)


def test_truncated_slice_file_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=10)
    data = files[6].read_bytes()
    files[6].write_bytes(data[:-700])  # the header is intact, the pixel data is cut short
    refused(tmp_path / "ct", files[6].name, "truncated", f"is {len(data) - 700} bytes")


@pytest.mark.parametrize("keep", [160, 400, 650])
def test_last_slice_cut_inside_its_header_is_refused(tmp_path, no_pixels, keep):
    # pydicom reads a file cut inside its header quietly as a shorter data set; dropping the top slice
    # would leave no gap to see, so the cut file itself must be refused
    uid, files = write_series(tmp_path / "ct", n=10)
    files[-1].write_bytes(files[-1].read_bytes()[:keep])
    msg = refused(tmp_path / "ct", files[-1].name)
    assert "truncated" in msg or "ends before its pixel data" in msg, msg


def test_truncated_compressed_slice_file_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "rle", n=6)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless)
        ds.save_as(f)
    data = files[2].read_bytes()
    files[2].write_bytes(data[:-20])  # ends inside the last fragment (no sequence delimiter)
    refused(tmp_path / "rle", files[2].name, "encapsulated pixel data", "truncated")


def test_short_pixel_data_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=6)
    ds = pydicom.dcmread(files[1])
    ds.PixelData = ds.PixelData[:1000]
    ds.save_as(files[1])
    refused(tmp_path / "ct", files[1].name, "holds 1000 bytes", "need 2048")


def test_unreadable_dcm_in_the_series_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=8)
    (tmp_path / "ct" / "img999.dcm").write_bytes(b"this is not a DICOM file\n" * 40)
    (tmp_path / "ct" / "notes.txt").write_text("not DICOM, and not meant to be: ignored")
    refused(tmp_path / "ct", uid, "img999.dcm", "cannot be read as DICOM")


def test_non_dicom_files_in_the_folder_are_ignored(tmp_path):
    write_series(tmp_path / "ct", n=6)
    (tmp_path / "ct" / "notes.txt").write_text("not DICOM")
    (tmp_path / "ct" / "LICENSE.md").write_text("# licence")
    assert probe_dicom_folder(tmp_path / "ct").shape_zyx == (6, 32, 32)


def test_two_orientations_in_one_series_are_two_choices(tmp_path, no_pixels):
    folder = tmp_path / "mixed"
    uid, axial = write_series(folder, n=10, names=lambda i: f"a{i:02d}.dcm")
    write_series(folder, n=7, series_uid=uid, iop=CORONAL, names=lambda i: f"c{i:02d}.dcm")
    listed = {e["uid"]: e for e in list_dicom_series(folder)}
    assert set(listed) == {f"{uid}:axial", f"{uid}:coronal"}
    assert listed[f"{uid}:axial"]["slices"] == 10 and listed[f"{uid}:coronal"]["orientation"] == "coronal"
    for choice in (None, uid):  # no choice, or the plain SeriesInstanceUID: refused, both choices listed
        msg = refused(folder, uid, "2 orientations", f"{uid}:axial", f"{uid}:coronal", "10 slices", "7 slices",
                      f"--series {uid}:axial", series_uid=choice)
    series = probe_dicom_folder(folder, f"{uid}:coronal")
    assert series.orientation == "coronal" and series.shape_zyx == (7, 32, 32) and series.series_uid == uid
    assert series.series_in_folder == 2


def test_choosing_one_orientation_reads_it(tmp_path):
    folder = tmp_path / "mixed"
    uid, axial = write_series(folder, n=10, names=lambda i: f"a{i:02d}.dcm")
    write_series(folder, n=7, series_uid=uid, iop=CORONAL, names=lambda i: f"c{i:02d}.dcm")
    vol, info = read_dicom_folder(folder, f"{uid}:axial")
    assert vol.shape == (10, 32, 32) and info.files == [str(f) for f in axial]
    assert info.series_uid == uid and info.extra["series_choice"] == f"{uid}:axial"
    assert np.allclose(vol.direction, np.eye(3))


def test_two_groups_with_one_label_are_numbered(tmp_path):
    folder = tmp_path / "mixed"
    uid, _ = write_series(folder, n=6, names=lambda i: f"a{i:02d}.dcm")
    flipped = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # axial too, rotated 180 degrees in plane
    write_series(folder, n=4, series_uid=uid, iop=flipped, names=lambda i: f"b{i:02d}.dcm")
    assert {e["uid"] for e in list_dicom_series(folder)} == {f"{uid}:axial1", f"{uid}:axial2"}
    assert probe_dicom_folder(folder, f"{uid}:axial2").shape_zyx[0] == 4


def test_oblique_label(tmp_path):
    c, s = np.cos(np.radians(40)), np.sin(np.radians(40))
    write_series(tmp_path / "obl", n=6, iop=(1.0, 0.0, 0.0, 0.0, c, s))
    assert probe_dicom_folder(tmp_path / "obl").orientation == "oblique"


@pytest.mark.parametrize("slope", [-1, 0])
def test_non_positive_rescale_slope_is_refused(tmp_path, no_pixels, slope):
    uid, files = write_series(tmp_path / "ct", n=8)
    rewrite(files[2], RescaleSlope=slope)
    refused(tmp_path / "ct", f"RescaleSlope {slope}", "expected a positive finite slope", files[2].name)


def test_rescale_slope_on_some_slices_only_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=8)
    rewrite(files[3], RescaleSlope=None)
    refused(tmp_path / "ct", "RescaleSlope absent", "expected the same RescaleSlope on every slice")


def test_inconsistent_rows_are_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=8)
    slice_dataset(5, uid, rows=16).save_as(files[5])
    refused(tmp_path / "ct", "Rows 16", "other slices have 32", "expected the same Rows on every slice",
            files[5].name)


def test_inconsistent_pixel_spacing_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=8)
    rewrite(files[4], PixelSpacing=[1.2, 1.2])
    refused(tmp_path / "ct", "PixelSpacing 1.2\\1.2", "1.5\\1.5", "expected the same PixelSpacing")


def test_missing_orientation_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=8)
    rewrite(files[3], ImageOrientationPatient=None)
    refused(tmp_path / "ct", files[3].name, "has no ImageOrientationPatient")


def test_non_orthogonal_orientation_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=8)
    for f in files:
        rewrite(f, ImageOrientationPatient=[1.0, 0.0, 0.0, 0.1, 0.995, 0.0])
    refused(tmp_path / "ct", "not orthogonal", "dot product 0.1")


def test_non_unit_orientation_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=8)
    for f in files:
        rewrite(f, ImageOrientationPatient=[2.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    refused(tmp_path / "ct", "not unit length")


def test_missing_position_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=8)
    rewrite(files[0], ImagePositionPatient=None)
    refused(tmp_path / "ct", files[0].name, "has no ImagePositionPatient")


def test_sheared_stack_is_refused(tmp_path, no_pixels):
    uid, files = write_series(tmp_path / "ct", n=8)
    for i, f in enumerate(files):  # each slice shifted 0.5 mm along y: a gantry-tilt shear
        rewrite(f, ImagePositionPatient=[-48.0, -48.0 + 0.5 * i, -100.0 + 3.0 * i])
    refused(tmp_path / "ct", "sheared stack")


# -- the CLI -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["missing", "cut"])
def test_cli_refuses_a_broken_series_on_one_line(tmp_path, capfd, fault):
    from lnrt.cli import main

    uid, files = write_series(tmp_path / "ct", n=10)
    if fault == "missing":
        files[5].unlink()
    else:  # cut inside its header: pydicom's warnings about it must not reach the terminal
        files[9].write_bytes(files[9].read_bytes()[:160])
    out = tmp_path / "out"
    rc = main(["infer", str(tmp_path / "ct"), "--out", str(out), "--quiet"])
    captured = capfd.readouterr()
    assert rc == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lnrt: error: "), captured.err
    assert ("gap of 6.0 mm" if fault == "missing" else files[9].name) in lines[0]
    assert str(tmp_path / "ct") in lines[0]
    assert not out.exists() or not any(out.iterdir())


# -- real CT (skip when ../shared/data is absent) ----------------------------------------------------

def real_copy(shared_data, name, tmp_path):
    src = shared_data / "dicom" / name
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    dst = tmp_path / name
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def test_real_series_with_a_missing_middle_slice_is_refused(shared_data, tmp_path, no_pixels):
    folder = real_copy(shared_data, "neckbase_philips_10slices", tmp_path)
    files = list(probe_dicom_folder(folder).files)
    assert len(files) == 10
    from pathlib import Path
    Path(files[5]).unlink()
    refused(folder, "gap of 4.0 mm", "spacing is 2.0 mm", Path(files[4]).name, Path(files[6]).name)


def test_real_compressed_series_with_a_truncated_slice_is_refused(shared_data, tmp_path, no_pixels):
    folder = real_copy(shared_data, "abdomen_siemens_20slices", tmp_path)  # JPEG 2000, encapsulated
    series = probe_dicom_folder(folder)
    assert series.shape_zyx == (20, 512, 512) and series.spacing_xyz[2] == pytest.approx(2.0)
    from pathlib import Path
    victim = Path(series.files[7])
    victim.write_bytes(victim.read_bytes()[:-5000])
    refused(folder, victim.name, "truncated")


def test_real_series_with_rtstruct_reads(shared_data):
    folder = shared_data / "dicom" / "thorax_with_rtstruct"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    series = probe_dicom_folder(folder)
    assert series.shape_zyx == (60, 201, 204) and series.spacing_xyz[2] == pytest.approx(3.0)
    assert not any("RS" in f.rsplit("/", 1)[-1] for f in series.files)
