"""Readers and input validation: bad input gives one line, exit 2 and no outputs; real CT runs."""
import gzip
import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import geometry_of

from lnrt.errors import LnrtError
from lnrt.imageio import read_scan, stem_of


def write(arr, path, spacing=(0.8, 0.8, 2.5), origin=(0, 0, 0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing[: img.GetDimension()])
    img.SetOrigin(origin[: img.GetDimension()])
    sitk.WriteImage(img, str(path))
    return path


def ct(shape=(8, 40, 40)):
    a = np.full(shape, -1000, np.int16)
    a[:, 8:32, 8:32] = 40
    return a


def write_dicom_series(folder, hu, series_uid, modality="CT", prefix="s", spacing=(0.8, 0.8, 2.5)):
    img = sitk.GetImageFromArray(hu.astype(np.int16))
    img.SetSpacing(spacing)
    w = sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn()
    for i in range(hu.shape[0]):
        s = img[:, :, i]
        tags = {"0008|0060": modality, "0020|000e": series_uid, "0020|000d": "1.2.3.4",
                "0020|0032": "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, i)))),
                "0020|0013": str(i + 1), "0020|0037": "1\\0\\0\\0\\1\\0",
                "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series_uid}.{i + 1}"}
        for k, v in tags.items():
            s.SetMetaData(k, v)
        w.SetFileName(str(folder / f"{prefix}{i:03d}.dcm"))
        w.Execute(s)


def assert_one_line_failure(run_cli, capsys, args, out_dir, match):
    rc = run_cli(*args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("lnrt: error: ") and "\n" not in err and "Traceback" not in err
    assert match in err, err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_truncated_gzip(tmp_path, run_cli, capsys):
    good = write(ct(), tmp_path / "good.nii.gz")
    data = good.read_bytes()
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    assert_one_line_failure(run_cli, capsys, ["infer", bad, "--out", tmp_path / "o"], tmp_path / "o",
                            "trunc.nii.gz")


def test_garbage_and_empty_files(tmp_path, run_cli, capsys):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not an image at all" * 10))
    assert_one_line_failure(run_cli, capsys, ["infer", junk, "--out", tmp_path / "o"], tmp_path / "o", "junk")
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    assert_one_line_failure(run_cli, capsys, ["infer", empty, "--out", tmp_path / "o"], tmp_path / "o", "empty")


def test_empty_folder_and_missing_path(tmp_path, run_cli, capsys):
    (tmp_path / "nothing").mkdir()
    assert_one_line_failure(run_cli, capsys, ["infer", tmp_path / "nothing", "--out", tmp_path / "o"],
                            tmp_path / "o", "folder is empty")
    assert_one_line_failure(run_cli, capsys, ["infer", tmp_path / "nope.nii.gz", "--out", tmp_path / "o"],
                            tmp_path / "o", "no such file")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    assert_one_line_failure(run_cli, capsys, ["infer", tmp_path / "notes", "--out", tmp_path / "o"],
                            tmp_path / "o", "no DICOM image series")


def test_2d_image_and_single_slice(tmp_path, run_cli, capsys):
    two_d = write(ct()[0], tmp_path / "slice.nrrd")
    assert_one_line_failure(run_cli, capsys, ["infer", two_d, "--out", tmp_path / "o"], tmp_path / "o", "2D")
    one = write(ct((1, 40, 40)), tmp_path / "one.nii.gz")
    assert_one_line_failure(run_cli, capsys, ["infer", one, "--out", tmp_path / "o"], tmp_path / "o",
                            "single slice")


@pytest.mark.parametrize("spacing", ["0 0.8 2.5", "0.8 0.8 500", "0.0001 0.0001 0.0001"])
def test_absurd_spacing(tmp_path, run_cli, capsys, spacing):
    """MetaImage keeps spacing as header text, so any value can be written, zero included."""
    path = tmp_path / "sp.mha"
    img = sitk.GetImageFromArray(ct())
    img.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(img, str(path), useCompression=False)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = " + spacing.encode()))
    assert_one_line_failure(run_cli, capsys, ["infer", path, "--out", tmp_path / "o"], tmp_path / "o", "sp.mha")


def test_not_hounsfield(tmp_path, run_cli, capsys):
    unrescaled = write((ct() + 1024).astype(np.uint16), tmp_path / "raw.nii.gz")
    assert_one_line_failure(run_cli, capsys, ["infer", unrescaled, "--out", tmp_path / "o"], tmp_path / "o",
                            "unrescaled")
    vector = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Compose([sitk.GetImageFromArray(ct())] * 3), str(vector))
    assert_one_line_failure(run_cli, capsys, ["infer", vector, "--out", tmp_path / "o"], tmp_path / "o",
                            "components per voxel")


def test_too_large_for_the_memory_limit(tmp_path, run_cli, capsys):
    path = write(ct((8, 64, 64)), tmp_path / "big.nii.gz")
    assert_one_line_failure(run_cli, capsys, ["infer", path, "--out", tmp_path / "o", "--max-memory-gb", "0.1"],
                            tmp_path / "o", "GB limit")


def test_input_is_never_modified(tmp_path, run_cli):
    path = write(ct(), tmp_path / "scan.nii.gz")
    before = path.read_bytes()
    assert run_cli("infer", path, "--out", tmp_path, "--quiet") == 0
    assert path.read_bytes() == before
    # outputs beside the input do not clobber it, and a second run refuses without --overwrite
    assert run_cli("infer", path, "--out", tmp_path, "--quiet") == 2
    assert path.read_bytes() == before


def test_dicom_folder_picks_the_largest_ct_series_and_honours_series(tmp_path, session):
    folder = tmp_path / "study"
    folder.mkdir()
    write_dicom_series(folder, ct((6, 40, 40)), "1.2.3.4.5.1", prefix="a")
    write_dicom_series(folder, ct((4, 40, 40)), "1.2.3.4.5.2", prefix="b")
    (folder / "notes.txt").write_text("not dicom")
    vol, info = read_scan(folder)
    assert vol.shape[0] == 6 and info.series_uid == "1.2.3.4.5.1" and info.kind == "dicom"
    vol, info = read_scan(folder, series_uid="1.2.3.4.5.2")
    assert vol.shape[0] == 4
    with pytest.raises(LnrtError, match="no series with UID"):
        read_scan(folder, series_uid="9.9")
    res = session.run(folder)
    assert res.report()["input"]["series_uid"] == "1.2.3.4.5.1" and stem_of(folder) == "study"


def test_dicom_folder_without_ct_is_refused(tmp_path):
    folder = tmp_path / "mr"
    folder.mkdir()
    write_dicom_series(folder, ct((4, 40, 40)), "1.2.3.9", modality="MR")
    with pytest.raises(LnrtError, match="no CT series"):
        read_scan(folder)


# -- real CT samples (skip when ../shared/data is absent) ---------------------------------------

REAL = ["openkbp/pt_1_ct_hu.nii.gz", "openkbp/pt_4_ct_hu.nii.gz", "nifti/abdomen_3mm_30slices.nii.gz",
        "dicom/abdomen_siemens_20slices", "dicom/neckbase_philips_10slices", "dicom/thorax_with_rtstruct"]


@pytest.mark.parametrize("name", REAL)
def test_real_scans_run_and_outputs_overlay_them(shared_data, session, tmp_path, name):
    src = shared_data / name
    res = session.run(src)
    paths = res.save(tmp_path)
    lab = sitk.ReadImage(str(paths["labels"]))
    assert lab.GetPixelID() == sitk.sitkUInt16
    if src.is_dir():
        r = sitk.ImageSeriesReader()
        r.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(src), res.info.series_uid or ""))
        ref = r.Execute()
        ref_geom = (ref.GetSize(), ref.GetSpacing(), ref.GetOrigin(), ref.GetDirection())
        from conftest import Geometry
        assert geometry_of(paths["labels"]) == Geometry(*ref_geom)
        assert res.info.modality == "CT" and res.info.study_uid != ""
        assert report_uids_or_none(res)
    else:
        assert geometry_of(paths["labels"]) == geometry_of(src)
    report = json.loads(paths["report"].read_text())
    assert len(report["nodes"]) == int(sitk.GetArrayViewFromImage(lab).max())
    assert set(report["timings_s"]) >= {"read", "preprocess", "network", "components", "measure"}


def report_uids_or_none(res):
    inp = res.report()["input"]
    return all(inp.get(k) is None or len(inp[k]) > 4 for k in ("series_uid", "study_uid"))


def test_real_dicom_is_rescaled_to_hounsfield(shared_data):
    folder = shared_data / "dicom" / "neckbase_philips_10slices"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(sorted(folder.iterdir())[0]))
    reader.ReadImageInformation()
    intercept = float(reader.GetMetaData("0028|1052"))
    assert intercept != 0  # stored values are not HU: the reader must apply the rescale
    vol, _ = read_scan(folder)
    assert vol.array.min() <= -1000 + 1 and vol.array.max() < 4000


def test_rtstruct_in_the_folder_is_ignored(shared_data):
    vol, info = read_scan(shared_data / "dicom" / "thorax_with_rtstruct")
    assert vol.shape[0] == 60 and info.extra["slices"] == 60


def test_real_mr_is_refused(shared_data, run_cli, capsys, tmp_path):
    assert_one_line_failure(run_cli, capsys, ["infer", shared_data / "nifti" / "mr_not_ct.nii.gz", "--out",
                                              tmp_path / "o"], tmp_path / "o", "MR")


def _sitk_volume(path):
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.float32, np.uint16, np.float64])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_fast_nifti_reader_equals_itk(tmp_path, dtype, suffix):
    """lnrt reads simple NIfTI voxels itself (ITK supplies the geometry): the same array, type and
    geometry as sitk.ReadImage, in any of the 48 storage orders."""
    from conftest import signed_permutations

    from lnrt.imageio import read_image_file, read_nifti_fast

    rng = np.random.default_rng(3)
    for i, direction in enumerate(signed_permutations()[::7]):
        arr = (rng.random((5, 6, 7)) * 200).astype(dtype)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.7, 0.9, 2.5))
        img.SetOrigin((-3.0, 40.5, 7.25))
        img.SetDirection(tuple(direction.ravel()))
        path = tmp_path / f"v{i}{suffix}"
        sitk.WriteImage(img, str(path))
        fast = read_nifti_fast(path)
        assert fast is not None
        want, sp, org, d = _sitk_volume(path)
        assert fast.array.dtype == want.dtype and fast.array.flags.writeable
        np.testing.assert_array_equal(fast.array, want)
        assert fast.spacing == sp and fast.origin == org and tuple(fast.direction.ravel()) == d
        assert read_image_file(path).array.dtype == want.dtype


def test_fast_nifti_reader_leaves_scaled_and_big_endian_files_right(tmp_path):
    """Scaled voxels (scl_slope) go to ITK, which applies the scale; big-endian voxels are swapped."""
    nib = pytest.importorskip("nibabel")
    from lnrt.imageio import read_image_file, read_nifti_fast

    arr = (np.arange(5 * 6 * 7).reshape(7, 6, 5) - 100).astype(np.int16)  # nibabel is (x, y, z)
    scaled = nib.Nifti1Image(arr, np.diag([0.8, 0.8, 2.0, 1.0]))
    scaled.header.set_slope_inter(2.0, -1024.0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    assert read_nifti_fast(tmp_path / "scaled.nii.gz") is None
    np.testing.assert_array_equal(read_image_file(tmp_path / "scaled.nii.gz").array,
                                  _sitk_volume(tmp_path / "scaled.nii.gz")[0])
    big = nib.Nifti1Image(arr.astype(">i2"), np.diag([0.8, 0.8, 2.0, 1.0]), nib.Nifti1Header(endianness=">"))
    big.header.set_slope_inter(1.0, 0.0)
    nib.save(big, tmp_path / "big.nii")
    assert np.frombuffer((tmp_path / "big.nii").read_bytes()[:4], ">i4")[0] == 348  # really big-endian
    fast = read_nifti_fast(tmp_path / "big.nii")
    np.testing.assert_array_equal(fast.array, _sitk_volume(tmp_path / "big.nii")[0])
    np.testing.assert_array_equal(fast.array, arr.transpose(2, 1, 0))
