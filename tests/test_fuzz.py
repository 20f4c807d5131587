"""The fuzz suite (issue 15): bad inputs, broken DICOM series, tampered packages, hostile nnU-Net plans
and impossible outputs, generated on the fly. Every probe must end the way a user error ends:

- exit status 2 and exactly one line on stderr, starting `lnrt: error:` (no traceback, no ITK, GDCM,
  niftilib or click text before it);
- nothing in `--out` (the folder not even created);
- every input file byte-identical afterwards.

Each probe is a function `probe(tmp) -> argv`, building its inputs under `tmp/in`; the CLI runs in-process
(`lnrt.cli.main`) with the process's file descriptors captured, so C-level messages count too.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import lnrt
from lnrt.cli import main

SAMPLE = lnrt.sample_path()
PROBES: dict = {}


def probe(name: str):
    def register(fn):
        PROBES[name] = fn
        return fn
    return register


# ---- helpers ---------------------------------------------------------------------------------------
def _sample_image() -> sitk.Image:
    return sitk.ReadImage(str(SAMPLE))


def _write(arr: np.ndarray, path: Path, like: sitk.Image | None = None, spacing=None, direction=None,
           compress: bool = True) -> Path:
    img = sitk.GetImageFromArray(arr)
    like = like if like is not None else _sample_image()
    if img.GetDimension() == like.GetDimension() and img.GetSize() == like.GetSize():
        img.CopyInformation(like)
    if spacing is not None:
        img.SetSpacing(spacing)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path), useCompression=compress)
    return path


def _ct(dtype=np.int16) -> np.ndarray:
    return sitk.GetArrayFromImage(_sample_image()).astype(dtype)


def _nifti_bytes(path: Path) -> bytearray:
    with gzip.open(path, "rb") as fh:
        return bytearray(fh.read())


def _put_nifti(path: Path, raw: bytes) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(bytes(raw))
    return path


def _patched_header(tmp: Path, name: str, offset: int, fmt: str, value) -> Path:
    raw = _nifti_bytes(Path(SAMPLE))
    raw[offset:offset + np.dtype(fmt).itemsize] = np.array(value, fmt).tobytes()
    return _put_nifti(tmp / name, raw)


def _infer(path, tmp: Path, *extra) -> list:
    return ["infer", str(path), "--out", str(tmp / "out"), "-q", *map(str, extra)]


# ---- image files ---------------------------------------------------------------------------------------
@probe("missing path")
def _(tmp):
    return _infer(tmp / "nope.nii.gz", tmp)


@probe("empty file")
def _(tmp):
    (tmp / "empty.nii.gz").write_bytes(b"")
    return _infer(tmp / "empty.nii.gz", tmp)


@probe("a named pipe")
def _(tmp):
    os.mkfifo(tmp / "pipe.nii.gz")
    return _infer(tmp / "pipe.nii.gz", tmp)


@probe("a character device")
def _(tmp):
    return _infer("/dev/zero", tmp)


@probe("a symlink to a system file")
def _(tmp):
    (tmp / "link.nii.gz").symlink_to("/etc/hostname" if Path("/etc/hostname").exists() else "/etc/passwd")
    return _infer(tmp / "link.nii.gz", tmp)


@probe("garbage bytes")
def _(tmp):
    (tmp / "junk.nii.gz").write_bytes(os.urandom(4096))
    return _infer(tmp / "junk.nii.gz", tmp)


@probe("text file with an image suffix")
def _(tmp):
    (tmp / "notes.nrrd").write_text("hello\n")
    return _infer(tmp / "notes.nrrd", tmp)


@probe("unknown suffix")
def _(tmp):
    shutil.copy(SAMPLE, tmp / "scan.txt")
    return _infer(tmp / "scan.txt", tmp)


@probe("truncated gzip")
def _(tmp):
    data = Path(SAMPLE).read_bytes()
    (tmp / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    return _infer(tmp / "cut.nii.gz", tmp)


@probe("truncated uncompressed nifti")
def _(tmp):
    raw = _nifti_bytes(Path(SAMPLE))
    (tmp / "cut.nii").write_bytes(bytes(raw[: len(raw) - 5000]))
    return _infer(tmp / "cut.nii", tmp)


@probe("NaN in an odd slice")
def _(tmp):
    a = _ct(np.float32)
    a[3, 10, 10] = np.nan
    return _infer(_write(a, tmp / "nan.nii.gz"), tmp)


@probe("Inf in the last slice")
def _(tmp):
    a = _ct(np.float32)
    a[-1, 0, 0] = np.inf
    return _infer(_write(a, tmp / "inf.nii.gz"), tmp)


@probe("NaN in a scaled float nifti")
def _(tmp):
    a = _ct(np.float32)
    a[5, 5, 5] = np.nan
    path = _write(a, tmp / "scaled.nii.gz")
    raw = _nifti_bytes(path)
    raw[112:120] = np.array([2.0, 1.0], "<f4").tobytes()  # scl_slope 2, scl_inter 1: ITK's own path
    return _infer(_put_nifti(path, raw), tmp)


@probe("1e30 in an odd slice")
def _(tmp):
    a = _ct(np.float32)
    a[7, 3, 3] = 1e30
    return _infer(_write(a, tmp / "huge.nii.gz"), tmp)


@probe("pixdim 0")
def _(tmp):
    return _infer(_patched_header(tmp, "pd0.nii.gz", 76 + 4 * 3, "<f4", 0.0), tmp)


@probe("pixdim NaN")
def _(tmp):
    return _infer(_patched_header(tmp, "pdnan.nii.gz", 76 + 4 * 1, "<f4", np.nan), tmp)


@probe("pixdim negative")
def _(tmp):
    return _infer(_patched_header(tmp, "pdneg.nii.gz", 76 + 4 * 2, "<f4", -1.0), tmp)


@probe("scl_slope NaN")
def _(tmp):
    return _infer(_patched_header(tmp, "slope.nii.gz", 112, "<f4", np.nan), tmp)


@probe("dimension 0 in the header")
def _(tmp):
    return _infer(_patched_header(tmp, "dim0.nii.gz", 40 + 2 * 2, "<i2", 0), tmp)


@probe("2D image")
def _(tmp):
    return _infer(_write(_ct()[10], tmp / "slice.nrrd"), tmp)


@probe("4D image")
def _(tmp):
    nib = pytest.importorskip("nibabel")
    a = np.stack([_ct()[:8, :32, :32].T] * 2, axis=-1)
    nib.save(nib.Nifti1Image(a, np.diag([0.9, 0.9, 3.0, 1.0])), str(tmp / "t.nii.gz"))
    return _infer(tmp / "t.nii.gz", tmp)


@probe("vector voxels")
def _(tmp):
    a = np.repeat(_ct()[:8, :32, :32, None], 3, axis=3)
    sitk.WriteImage(sitk.GetImageFromArray(a, isVector=True), str(tmp / "rgb.nrrd"))
    return _infer(tmp / "rgb.nrrd", tmp)


@probe("complex voxels")
def _(tmp):
    a = _ct()[:8, :32, :32].astype(np.complex64)
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp / "c.nrrd"))
    return _infer(tmp / "c.nrrd", tmp)


@probe("one slice")
def _(tmp):
    return _infer(_write(_ct()[:1], tmp / "one.nrrd"), tmp)


@probe("sheared direction")
def _(tmp):
    return _infer(_write(_ct(), tmp / "shear.nrrd", direction=(1, 0.3, 0, 0, 1, 0, 0, 0, 1)), tmp)


@probe("scaled direction")
def _(tmp):
    return _infer(_write(_ct(), tmp / "scale.mha", direction=(2, 0, 0, 0, 1, 0, 0, 0, 1)), tmp)


@probe("spacing 0.001 mm")
def _(tmp):
    return _infer(_write(_ct(), tmp / "tiny.nrrd", spacing=(0.001, 0.9, 3.0)), tmp)


@probe("spacing 100 mm")
def _(tmp):
    return _infer(_write(_ct(), tmp / "wide.nrrd", spacing=(0.9, 0.9, 100.0)), tmp)


@probe("MR-like values")
def _(tmp):
    a = np.clip(_ct() + 1000, 0, 2000)
    return _infer(_write(a, tmp / "mr.nii.gz"), tmp)


@probe("unrescaled CT (0..4095)")
def _(tmp):
    a = np.clip(_ct() + 1024, 0, 4095).astype(np.uint16)
    return _infer(_write(a, tmp / "raw.nii.gz"), tmp)


@probe("memory bomb: 1 GiB of voxels in a small gzip")
def _(tmp):
    raw = _nifti_bytes(Path(SAMPLE))[:352]
    raw[40:56] = np.array([3, 1024, 1024, 512, 1, 1, 1, 1], "<i2").tobytes()
    raw[70:72] = np.array(4, "<i2").tobytes()  # int16
    raw[72:74] = np.array(16, "<i2").tobytes()
    path = tmp / "bomb.nii.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(bytes(raw))
        block = b"\0" * (1 << 24)
        for _ in range(1024 * 1024 * 512 * 2 // len(block)):
            fh.write(block)
    return _infer(path, tmp, "--max-memory-gb", 0.5)


@probe("mhd data file is an absolute path")
def _(tmp):
    (tmp / "evil.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
                                  "ElementDataFile = /etc/passwd\n")
    return _infer(tmp / "evil.mhd", tmp)


@probe("mhd data file climbs out with ..")
def _(tmp):
    (tmp / "evil.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
                                  "ElementDataFile = ../../../etc/passwd\n")
    return _infer(tmp / "evil.mhd", tmp)


@probe("mhd LIST with an absolute entry")
def _(tmp):
    (tmp / "a.raw").write_bytes(b"\0" * 32)
    (tmp / "evil.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 2\nElementType = MET_SHORT\n"
                                  "ElementDataFile = LIST\na.raw\n/etc/passwd\n")
    return _infer(tmp / "evil.mhd", tmp)


@probe("nhdr data file is an absolute path")
def _(tmp):
    (tmp / "evil.nhdr").write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n"
                                   "data file: /etc/passwd\n\n")
    return _infer(tmp / "evil.nhdr", tmp)


@probe("mhd whose data file is missing")
def _(tmp):
    (tmp / "lost.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
                                  "ElementDataFile = lost.raw\n")
    return _infer(tmp / "lost.mhd", tmp)


@probe("empty folder")
def _(tmp):
    (tmp / "series").mkdir()
    return _infer(tmp / "series", tmp)


@probe("folder without DICOM")
def _(tmp):
    (tmp / "series").mkdir()
    (tmp / "series" / "readme.txt").write_text("not dicom")
    shutil.copy(SAMPLE, tmp / "series" / "scan.nii.gz")
    return _infer(tmp / "series", tmp)


# ---- options and outputs ------------------------------------------------------------------------------
@probe("--threads 0")
def _(tmp):
    return _infer(SAMPLE, tmp, "--threads", 0)


@probe("unknown option")
def _(tmp):
    return _infer(SAMPLE, tmp, "--frobnicate")


@probe("unknown backend")
def _(tmp):
    return _infer(SAMPLE, tmp, "--backend", "cuda-magic")


@probe("--out under a file")
def _(tmp):
    (tmp / "afile").write_text("x")
    return ["infer", str(SAMPLE), "--out", str(tmp / "afile" / "out"), "-q"]


@probe("--out is a file")
def _(tmp):
    return ["infer", str(SAMPLE), "--out", str(SAMPLE), "-q"]


@probe("file name too long")
def _(tmp):
    long = tmp / ("x" * 245 + ".nii.gz")
    shutil.copy(SAMPLE, long)
    return _infer(long, tmp)


@probe("--max-memory-gb below the scan's need")
def _(tmp):
    return _infer(SAMPLE, tmp, "--max-memory-gb", 0.1)


@probe("DICOM SEG asked for a NIfTI input")
def _(tmp):
    return _infer(SAMPLE, tmp, "--dicom-seg")


@probe("model folder without a manifest")
def _(tmp):
    (tmp / "pkg").mkdir()
    return _infer(SAMPLE, tmp, "--model", tmp / "pkg")


@probe("model manifest not JSON")
def _(tmp):
    (tmp / "pkg").mkdir()
    (tmp / "pkg" / "lnrt.json").write_text("{not json")
    return _infer(SAMPLE, tmp, "--model", tmp / "pkg")


# ---- measure --------------------------------------------------------------------------------------------
def _measure(path, tmp: Path, *extra) -> list:
    return ["measure", str(path), "--out", str(tmp / "out"), "-q", *map(str, extra)]


@probe("measure: negative labels")
def _(tmp):
    a = np.zeros((8, 16, 16), np.int16)
    a[2:4, 2:4, 2:4] = -3
    return _measure(_write(a, tmp / "neg.nii.gz", like=sitk.Image([16, 16, 8], sitk.sitkInt16)), tmp)


@probe("measure: fractional labels")
def _(tmp):
    a = np.zeros((8, 16, 16), np.float32)
    a[2:4, 2:4, 2:4] = 0.5
    return _measure(_write(a, tmp / "frac.nii.gz", like=sitk.Image([16, 16, 8], sitk.sitkFloat32)), tmp)


@probe("measure: image of another geometry")
def _(tmp):
    a = np.zeros((8, 16, 16), np.uint8)
    a[2:4, 2:4, 2:4] = 1
    return _measure(_write(a, tmp / "lab.nii.gz", like=sitk.Image([16, 16, 8], sitk.sitkUInt8)), tmp,
                    "--image", SAMPLE)


@probe("measure: --qc without --image")
def _(tmp):
    a = np.zeros((8, 16, 16), np.uint8)
    a[2:4, 2:4, 2:4] = 1
    return _measure(_write(a, tmp / "lab.nii.gz", like=sitk.Image([16, 16, 8], sitk.sitkUInt8)), tmp, "--qc")


# ---- DICOM series ------------------------------------------------------------------------------------------
def _series(tmp: Path, n: int = 10, **kw) -> tuple:
    """A synthetic CT series (tests/test_dicom_series.py's builder) in tmp/series: (folder, uid, files)."""
    pytest.importorskip("pydicom")
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from test_dicom_series import write_series

    folder = tmp / "series"
    uid, files = write_series(folder, n=n, **kw)
    return folder, uid, files


def _dicom_edit(path: Path, **changes) -> None:
    """Rewrite one slice file's attributes (None removes one): tests/test_dicom_series.py's helper."""
    from test_dicom_series import rewrite
    rewrite(path, **changes)


@probe("DICOM: a missing middle slice")
def _(tmp):
    folder, _, files = _series(tmp)
    files[5].unlink()
    return _infer(folder, tmp)


@probe("DICOM: uneven spacing")
def _(tmp):
    folder, _, files = _series(tmp)
    pos = [float(v) for v in __import__("pydicom").dcmread(files[6]).ImagePositionPatient]
    _dicom_edit(files[6], ImagePositionPatient=[pos[0], pos[1], pos[2] + 1.2])
    return _infer(folder, tmp)


@probe("DICOM: a duplicated position")
def _(tmp):
    folder, _, files = _series(tmp)
    pos = __import__("pydicom").dcmread(files[3]).ImagePositionPatient
    _dicom_edit(files[4], ImagePositionPatient=pos)
    return _infer(folder, tmp)


@probe("DICOM: a truncated slice file")
def _(tmp):
    folder, _, files = _series(tmp)
    data = files[4].read_bytes()
    files[4].write_bytes(data[: len(data) - 700])
    return _infer(folder, tmp)


@probe("DICOM: a garbage .dcm among the slices")
def _(tmp):
    folder, _, _ = _series(tmp)
    (folder / "zz_broken.dcm").write_bytes(os.urandom(2000))
    return _infer(folder, tmp)


@probe("DICOM: two orientations in one series")
def _(tmp):
    folder, uid, _ = _series(tmp, names=lambda i: f"a{i:02d}.dcm")
    _series(tmp, n=7, series_uid=uid, iop=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0), names=lambda i: f"c{i:02d}.dcm")
    return _infer(folder, tmp)


@probe("DICOM: rescale slope -1")
def _(tmp):
    folder, _, files = _series(tmp, slope=-1)
    return _infer(folder, tmp)


@probe("DICOM: rescale slope 0")
def _(tmp):
    folder, _, files = _series(tmp, slope=0)
    return _infer(folder, tmp)


@probe("DICOM: inconsistent rows")
def _(tmp):
    folder, uid, files = _series(tmp)
    import numpy as np_
    _dicom_edit(files[2], Rows=16, PixelData=np_.zeros((16, 32), np_.int16).tobytes())
    return _infer(folder, tmp)


@probe("DICOM: inconsistent pixel spacing")
def _(tmp):
    folder, _, files = _series(tmp)
    _dicom_edit(files[7], PixelSpacing=[1.0, 1.0])
    return _infer(folder, tmp)


@probe("DICOM: no ImageOrientationPatient")
def _(tmp):
    folder, _, files = _series(tmp)
    _dicom_edit(files[0], ImageOrientationPatient=None)
    return _infer(folder, tmp)


@probe("DICOM: non-orthogonal orientation")
def _(tmp):
    folder, _, files = _series(tmp, iop=(1.0, 0.0, 0.0, 0.3, 0.954, 0.0))
    return _infer(folder, tmp)


@probe("DICOM: an MR series only")
def _(tmp):
    folder, _, files = _series(tmp)
    for f in files:
        _dicom_edit(f, Modality="MR")
    return _infer(folder, tmp)


@probe("DICOM: a single slice")
def _(tmp):
    folder, _, _ = _series(tmp, n=1)
    return _infer(folder, tmp)


@probe("DICOM: --series names no series in the folder")
def _(tmp):
    folder, _, _ = _series(tmp)
    return _infer(folder, tmp, "--series", "1.2.3.4.5.6.7")


@probe("DICOM: --dicom-seg for a series without UIDs")
def _(tmp):
    folder, _, files = _series(tmp)
    for f in files:
        _dicom_edit(f, StudyInstanceUID=None)
    return _infer(folder, tmp, "--dicom-seg")


@probe("DICOM: slices sharing one SOP Instance UID")
def _(tmp):
    folder, _, files = _series(tmp)
    import pydicom
    uid = pydicom.dcmread(files[0]).SOPInstanceUID
    _dicom_edit(files[3], SOPInstanceUID=uid)
    return _infer(folder, tmp)


@probe("DICOM: one series spanning two studies")
def _(tmp):
    folder, _, files = _series(tmp)
    _dicom_edit(files[2], StudyInstanceUID="1.2.826.0.1.3680043.8.498.2")
    return _infer(folder, tmp)


@probe("DICOM: --out inside the input folder")
def _(tmp):
    folder, _, _ = _series(tmp)
    return ["infer", str(folder), "--out", str(folder / "results"), "-q"]


# ---- tampered model packages -------------------------------------------------------------------------------
_PLACEHOLDER: list = []


def _package(tmp: Path, edit=None, reseal: bool = True) -> Path:
    """A copy of the placeholder package in tmp/pkg; `edit(manifest, root)` changes it, and the manifest
    is sealed again (so the probe reaches the check it is about) unless `reseal` is False."""
    pytest.importorskip("onnx")
    from lnrt.models.placeholder import build_package
    from lnrt.package import seal_bytes

    if not _PLACEHOLDER:
        import tempfile
        _PLACEHOLDER.append(build_package(Path(tempfile.mkdtemp(prefix="lnrt-fuzz-pkg-"))))
    root = Path(shutil.copytree(_PLACEHOLDER[0], tmp / "pkg"))
    manifest = json.loads((root / "lnrt.json").read_text())
    if edit is not None:
        edit(manifest, root)
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    if reseal:
        seal_bytes(root, data)
    else:
        (root / "lnrt.json").write_bytes(data)
    return root


def _with_model(root: Path, tmp: Path) -> list:
    return _infer(SAMPLE, tmp, "--model", root)


def _set(section, key, value):
    def edit(m, root):
        m[section][key] = value
    return edit


def _list_file(name, size=None, target=None):
    def edit(m, root):
        entry = dict(m["files"]["model.onnx"])
        if size is not None:
            entry["size"] = size
        m["files"][name] = entry
    return edit


@probe("package: a manifest value edited, seal not updated")
def _(tmp):
    return _with_model(_package(tmp, _set("postprocessing", "min_volume_mm3", 1000.0), reseal=False), tmp)


@probe("package: the HU window edited, seal not updated")
def _(tmp):
    return _with_model(_package(tmp, _set("normalization", "window_hu", [-1000.0, 1000.0]), reseal=False), tmp)


@probe("package: no lnrt.json.sha256")
def _(tmp):
    root = _package(tmp)
    (root / "lnrt.json.sha256").unlink()
    return _with_model(root, tmp)


@probe("package: a listed file outside with ../")
def _(tmp):
    return _with_model(_package(tmp, _list_file("../../etc/passwd")), tmp)


@probe("package: a listed absolute path")
def _(tmp):
    return _with_model(_package(tmp, _list_file("/etc/passwd")), tmp)


@probe("package: a listed symlink out of the package")
def _(tmp):
    def edit(m, root):
        (root / "extra.bin").symlink_to("/etc/passwd")
        m["files"]["extra.bin"] = {"sha256": "0" * 64, "size": Path("/etc/passwd").stat().st_size}
    return _with_model(_package(tmp, edit), tmp)


@probe("package: a 1 TB sparse file listed")
def _(tmp):
    def edit(m, root):
        with open(root / "huge.bin", "wb") as fh:
            fh.truncate(1 << 40)
        m["files"]["huge.bin"] = {"sha256": "0" * 64, "size": 1024}
    return _with_model(_package(tmp, edit), tmp)


@probe("package: the model file swapped (same size)")
def _(tmp):
    root = _package(tmp)
    data = bytearray((root / "model.onnx").read_bytes())
    data[-1] ^= 0x01
    (root / "model.onnx").write_bytes(bytes(data))
    return _with_model(root, tmp)


@probe("package: unlisted ONNX external data")
def _(tmp):
    onnx = pytest.importorskip("onnx")

    def edit(m, root):
        model = onnx.load(str(root / "model.onnx"))
        onnx.save_model(model, str(root / "model.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
        from lnrt.package import sha256_of
        m["files"]["model.onnx"] = {"sha256": sha256_of(root / "model.onnx"),
                                    "size": (root / "model.onnx").stat().st_size}
        m.pop("variants", None)
        for v in ("model.fp16.onnx", "model.int8.onnx"):
            m["files"].pop(v, None)
    return _with_model(_package(tmp, edit), tmp)


@probe("package: a patch of 3.55 PiB")
def _(tmp):
    return _with_model(_package(tmp, _set("input", "patch_size_zyx", [1 << 20, 1 << 20, 1 << 20])), tmp)


@probe("package: window_hu [0, 0]")
def _(tmp):
    return _with_model(_package(tmp, _set("normalization", "window_hu", [0, 0])), tmp)


@probe("package: classes as a string")
def _(tmp):
    def edit(m, root):
        m["classes"] = "background,lymph_node"
    return _with_model(_package(tmp, edit), tmp)


@probe("package: spacing as strings")
def _(tmp):
    return _with_model(_package(tmp, _set("input", "spacing_zyx_mm", ["1", "1", "1"])), tmp)


@probe("package: overlap 1.0")
def _(tmp):
    return _with_model(_package(tmp, _set("sliding_window", "overlap", 1.0)), tmp)


@probe("package: batch size 0")
def _(tmp):
    return _with_model(_package(tmp, _set("sliding_window", "batch_size", 0)), tmp)


@probe("package: connectivity 7")
def _(tmp):
    return _with_model(_package(tmp, _set("postprocessing", "connectivity", 7)), tmp)


@probe("package: deeply nested JSON")
def _(tmp):
    from lnrt.package import seal_bytes
    root = _package(tmp)
    text = (root / "lnrt.json").read_text()
    deep = "[" * 100000 + "]" * 100000
    seal_bytes(root, text.replace('"provenance": {', f'"deep": {deep}, "provenance": {{', 1).encode())
    return _with_model(root, tmp)


@probe("package: the manifest is a list")
def _(tmp):
    root = _package(tmp)
    from lnrt.package import seal_bytes
    seal_bytes(root, b"[1, 2, 3]\n")
    return _with_model(root, tmp)


@probe("package: a patch the model was not exported for")
def _(tmp):
    return _with_model(_package(tmp, _set("input", "patch_size_zyx", [16, 32, 32])), tmp)


@probe("package: three class names on a two-channel model")
def _(tmp):
    def edit(m, root):
        m["classes"] = ["background", "lymph_node", "extra"]
    return _with_model(_package(tmp, edit), tmp)


@probe("package: a listed file missing")
def _(tmp):
    root = _package(tmp)
    (root / "model.onnx").unlink()
    return _with_model(root, tmp)


# ---- nnU-Net results folders with hostile plans ----------------------------------------------------------
_GENUINE: list = []


def _nnunet_folder(tmp: Path, **arch_changes) -> Path:
    """A copy of a genuine nnU-Net v2 results folder (made once), its architecture entry changed."""
    pytest.importorskip("torch")
    pytest.importorskip("dynamic_network_architectures")
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from lnrt.models import nnunet_folder as nf

    if not _GENUINE:
        import tempfile
        _GENUINE.append(nf.make_folder(Path(tempfile.mkdtemp(prefix="lnrt-fuzz-nnunet-")), folds=(0,)))
    folder = Path(shutil.copytree(_GENUINE[0], tmp / "results"))
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"].update(arch_changes)
    (folder / "plans.json").write_text(json.dumps(plans))
    return folder


def _export_nnunet(folder: Path, tmp: Path) -> list:
    return ["export", "nnunet", str(folder), str(tmp / "out"), "--variants", ""]


@probe("nnU-Net plans: logging.basicConfig truncating a file")
def _(tmp):
    (tmp / "precious.txt").write_text("keep me\n")
    folder = _nnunet_folder(tmp, network_class_name="logging.basicConfig", _kw_requires_import=[],
                            arch_kwargs={"filename": str(tmp / "precious.txt"), "filemode": "w", "force": True})
    return _export_nnunet(folder, tmp)


@probe("nnU-Net plans: os.system as the network")
def _(tmp):
    folder = _nnunet_folder(tmp, network_class_name="os.system", _kw_requires_import=[],
                            arch_kwargs={"command": f"touch {tmp / 'pwned'}"})
    return _export_nnunet(folder, tmp)


@probe("nnU-Net plans: os.system as a layer to import")
def _(tmp):
    plans = json.loads((_nnunet_folder(tmp) / "plans.json").read_text())
    kw = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    kw["nonlin"] = "os.system"
    shutil.rmtree(tmp / "results")
    return _export_nnunet(_nnunet_folder(tmp, arch_kwargs=kw), tmp)


@probe("nnU-Net plans: a look-alike module prefix")
def _(tmp):
    folder = _nnunet_folder(tmp, network_class_name="dynamic_network_architectures_evil.X")
    return _export_nnunet(folder, tmp)


@probe("nnU-Net plans: NaN spacing")
def _(tmp):
    folder = _nnunet_folder(tmp)
    text = (folder / "plans.json").read_text()
    plans = json.loads(text)
    plans["configurations"]["3d_fullres"]["spacing"] = [1.0, 1.0, 1.0]
    text = json.dumps(plans).replace('"spacing": [1.0, 1.0, 1.0]', '"spacing": [NaN, 1.0, 1.0]', 1)
    (folder / "plans.json").write_text(text)
    return _export_nnunet(folder, tmp)


@probe("nnU-Net plans.json not JSON")
def _(tmp):
    folder = _nnunet_folder(tmp)
    (folder / "plans.json").write_text("{\"configurations\": ")
    return _export_nnunet(folder, tmp)


# ---- found by an independent hostile review (session 7) -----------------------------------------------------
@probe("bitpix understating the datatype, file cut to half")
def _(tmp):
    raw = _nifti_bytes(Path(SAMPLE))
    raw[72:74] = np.array(8, "<i2").tobytes()  # int16 data, bitpix 8: the byte count would look complete
    (tmp / "c.nii").write_bytes(bytes(raw[: 352 + (len(raw) - 352) // 2]))
    return _infer(tmp / "c.nii", tmp)


@probe("mhd data file after a colon")
def _(tmp):
    (tmp / "sp.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\n"
                                "ElementDataFile:/etc/passwd\n")
    return _infer(tmp / "sp.mhd", tmp, "--no-hu-check")


@probe("qform and sform disagree (ITK's warning text)")
def _(tmp):
    nib = pytest.importorskip("nibabel")
    x = nib.load(str(SAMPLE))
    aff = x.affine.copy()
    aff[:3, :3] *= 2
    y = nib.Nifti1Image(np.asanyarray(x.dataobj).astype(np.int16) + 1100, x.affine, x.header)
    y.set_sform(aff, 1)
    nib.save(y, str(tmp / "q.nii.gz"))
    return _infer(tmp / "q.nii.gz", tmp)  # refused as not HU; ITK's sform warning must not print


@probe("--max-memory-gb nan")
def _(tmp):
    return _infer(SAMPLE, tmp, "--max-memory-gb", "nan")


@probe("--min-short-axis-px nan")
def _(tmp):
    return _infer(SAMPLE, tmp, "--min-short-axis-px", "nan")


@probe("measure: --min-volume-mm3 nan")
def _(tmp):
    return _measure(SAMPLE, tmp, "--min-volume-mm3", "nan")


@probe("--batch-size 100000")
def _(tmp):
    return _infer(SAMPLE, tmp, "--batch-size", 100000)


@probe("--out ''")
def _(tmp):
    return ["infer", str(SAMPLE), "--out", "", "-q"]


@probe("--series on a file")
def _(tmp):
    return _infer(SAMPLE, tmp, "--series", "1.2.3")


@probe("measure: a uint64 label of 2^40")
def _(tmp):
    a = np.zeros((8, 16, 16), np.uint64)
    a[2:4, 2:4, 2:4] = 2 ** 40 + 3
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp / "big.nrrd"))
    return _measure(tmp / "big.nrrd", tmp)


@probe("measure: a float label of 1e20")
def _(tmp):
    a = np.zeros((8, 16, 16), np.float32)
    a[2:4, 2:4, 2:4] = 1e20
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp / "bigf.nrrd"))
    return _measure(tmp / "bigf.nrrd", tmp)


def _evaluate_pair(tmp: Path, change=None) -> tuple:
    a = np.zeros((8, 16, 16), np.uint8)
    a[2:5, 3:7, 3:7] = 1
    pred = _write(a, tmp / "pred.nii.gz", like=sitk.Image([16, 16, 8], sitk.sitkUInt8))
    img = sitk.GetImageFromArray(a)
    if change:
        change(img)
    sitk.WriteImage(img, str(tmp / "truth.nii.gz"))
    return pred, tmp / "truth.nii.gz"


@probe("evaluate: --out is the truth file")
def _(tmp):
    pred, truth = _evaluate_pair(tmp)
    return ["evaluate", str(pred), str(truth), "--out", str(truth)]


@probe("evaluate: --out under a file")
def _(tmp):
    pred, truth = _evaluate_pair(tmp)
    return ["evaluate", str(pred), str(truth), "--out", str(truth / "x.json")]


@probe("evaluate: truth moved 50 mm")
def _(tmp):
    pred, truth = _evaluate_pair(tmp, lambda img: img.SetOrigin((50.0, 0.0, 0.0)))
    return ["evaluate", str(pred), str(truth)]


@probe("evaluate: truth flipped")
def _(tmp):
    pred, truth = _evaluate_pair(tmp, lambda img: img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1)))
    return ["evaluate", str(pred), str(truth)]


_RUNS: list = []


def _finished_run(tmp: Path, edit) -> list:
    """A finished `lnrt infer` run (made once, copied), its report edited by hand, then `lnrt report --qc`."""
    if not _RUNS:
        import tempfile
        base = Path(tempfile.mkdtemp(prefix="lnrt-fuzz-run-"))
        assert main(["infer", str(SAMPLE), "--out", str(base), "-q", "--no-viewer", "--model",
                     str(_package(base))]) == 0
        _RUNS.append(base)
    run = tmp / "run"
    run.mkdir()
    for name in ("sample_neck_phantom.nodes.nii.gz", "sample_neck_phantom.report.json", "sample_neck_phantom.nodes.csv"):
        shutil.copy(_RUNS[0] / name, run / name)
    report = json.loads((run / "sample_neck_phantom.report.json").read_text())
    edit(report)
    (run / "sample_neck_phantom.report.json").write_text(json.dumps(report))
    return ["report", str(run / "sample_neck_phantom.report.json"), "--qc", "--out", str(tmp / "out")]


def _node(key, value):
    def edit(r):
        if value is None:
            r["nodes"][0].pop(key)
        else:
            r["nodes"][0][key] = value
    return edit


for _key, _value in (("id", "abc"), ("id", 3.7), ("id", None), ("axis_slice", 999), ("axis_slice", -5),
                     ("short_axis_mm", "big"), ("centroid_mm", [1, 2, 3, 4]), ("long_axis_ends_mm", None)):
    probe(f"report: node {_key} {'removed' if _value is None else json.dumps(_value)}")(
        lambda tmp, k=_key, v=_value: _finished_run(tmp, _node(k, v)))


@probe("report: input.path removed")
def _(tmp):
    return _finished_run(tmp, lambda r: r["input"].pop("path"))


@probe("report: input.spacing null")
def _(tmp):
    return _finished_run(tmp, lambda r: r["input"].update(spacing_xyz_mm=None))


@probe("report: nodes as a dict")
def _(tmp):
    return _finished_run(tmp, lambda r: r.update(nodes={"1": {}}))


# ---- the runner -----------------------------------------------------------------------------------------
def _digest(p: Path) -> str:
    st = p.stat()
    if st.st_size > 64 << 20:  # a sparse giant: its size and time stand for its content
        return f"{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): _digest(p) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_is_refused_in_one_line(name, tmp_path, capfd):
    inputs = tmp_path / "in"
    inputs.mkdir()
    argv = PROBES[name](inputs)
    argv = [a.replace(str(inputs / "out"), str(tmp_path / "out")) for a in argv]
    before = _hashes(inputs)
    sample_before = hashlib.sha256(Path(SAMPLE).read_bytes()).hexdigest()
    capfd.readouterr()
    rc = main(argv)
    err = capfd.readouterr().err
    assert rc == 2, f"{name}: exit {rc}; stderr: {err[-800:]}"
    assert err.count("\n") == 1 and err.startswith("lnrt: error: "), f"{name}: stderr was {err!r}"
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), f"{name}: left {list(out.iterdir())}"
    assert _hashes(inputs) == before, f"{name}: an input was modified"
    assert hashlib.sha256(Path(SAMPLE).read_bytes()).hexdigest() == sample_before


def test_the_suite_is_as_large_as_the_readme_says():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert f"{len(PROBES)} probes" in readme, f"README should state the fuzz suite's {len(PROBES)} probes"
