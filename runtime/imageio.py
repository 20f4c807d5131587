"""Reading scans (files and DICOM series) into `Volume`s, validating them, writing images atomically.

Every check raises `LnrtError` with one line that names the file, what was wrong and what was
expected. Inputs are opened read-only and never modified.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import LnrtError
from .volume import Volume

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
SPACING_RANGE_MM = (0.05, 20.0)
# A CT in Hounsfield units always holds air (-1000) or at least fat (-100) somewhere in the field of
# view; an MR or an unrescaled CT (stored 0..4095) does not go that low.
HU_MIN_REQUIRED = -200.0
HU_PLAUSIBLE = (-4000.0, 40000.0)


@dataclass
class ScanInfo:
    """Where a scan came from: recorded in the report so each output traces back to its input."""

    path: str
    kind: str  # "file" or "dicom"
    stem: str
    series_uid: str | None = None
    study_uid: str | None = None
    modality: str | None = None
    extra: dict = field(default_factory=dict)
    files: list = field(default_factory=list, repr=False)  # DICOM slice files, in the volume's z order


def stem_of(path: str | os.PathLike) -> str:
    """`a/b/scan.nii.gz` -> `scan`; a DICOM folder `a/b/scan/` -> `scan`."""
    p = Path(path)
    name = p.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem if p.is_file() else name


def _from_sitk(image: sitk.Image, source: str) -> Volume:
    if image.GetDimension() != 3:
        raise LnrtError(
            f"{source}: image is {image.GetDimension()}D; expected a 3D volume"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise LnrtError(
            f"{source}: image has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "expected a scalar (greyscale) volume"
        )
    array = sitk.GetArrayFromImage(image)
    return Volume(array, image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()))


def to_sitk(vol: Volume, array: np.ndarray | None = None) -> sitk.Image:
    image = sitk.GetImageFromArray(vol.array if array is None else array)
    image.SetSpacing(vol.spacing)
    image.SetOrigin(vol.origin)
    image.SetDirection(tuple(np.asarray(vol.direction).ravel()))
    return image


def check_geometry(vol: Volume, source: str) -> None:
    if min(vol.shape) < 2:
        raise LnrtError(
            f"{source}: image has shape {vol.shape[::-1]} (x, y, z), a single slice; "
            "expected a 3D volume with at least 2 voxels along every axis"
        )
    sp = np.asarray(vol.spacing)
    lo, hi = SPACING_RANGE_MM
    if not np.all(np.isfinite(sp)) or np.any(sp < lo) or np.any(sp > hi):
        raise LnrtError(
            f"{source}: voxel spacing {tuple(np.round(sp, 4))} mm is not plausible; "
            f"expected every spacing between {lo} and {hi} mm"
        )
    if not np.all(np.isfinite(vol.origin)) or not np.all(np.isfinite(vol.direction)):
        raise LnrtError(f"{source}: origin or direction is not finite; expected a valid geometry")
    d = vol.direction
    if abs(abs(np.linalg.det(d)) - 1.0) > 1e-3:
        raise LnrtError(
            f"{source}: direction matrix is not orthonormal (det {np.linalg.det(d):.4f}); "
            "expected an orthonormal direction"
        )


def check_hounsfield(vol: Volume, source: str) -> None:
    """Refuse images that are not CT in Hounsfield units (an MR, an unrescaled CT)."""
    a = vol.array
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise LnrtError(f"{source}: voxel type {a.dtype} is not numeric; expected CT in HU")
    sample = a[:: max(1, a.shape[0] // 32)]  # whole slices, spread along z: cheap and representative
    lo, hi = float(sample.min()), float(sample.max())
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(sample).all():
        raise LnrtError(f"{source}: image contains NaN or infinite values; expected CT in HU")
    if lo > HU_MIN_REQUIRED:
        raise LnrtError(
            f"{source}: values range {lo:g}..{hi:g} with nothing below {HU_MIN_REQUIRED:g}; "
            "expected a CT in Hounsfield units (air -1000, fat -100): "
            "this looks like an MR or an unrescaled CT"
        )
    if lo < HU_PLAUSIBLE[0] or hi > HU_PLAUSIBLE[1]:
        raise LnrtError(
            f"{source}: values range {lo:g}..{hi:g} is outside {HU_PLAUSIBLE[0]:g}..{HU_PLAUSIBLE[1]:g}; "
            "expected a CT in Hounsfield units"
        )


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Header size + voxel data size of a NIfTI-1 or NIfTI-2 file, from its header; None if unknown."""
    for order in ("<", ">"):
        n1 = np.frombuffer(header[:4], dtype=order + "i4")[0]
        if n1 == 348 and len(header) >= 348:
            dims = np.frombuffer(header[40:56], dtype=order + "i2")
            bitpix = int(np.frombuffer(header[72:74], dtype=order + "i2")[0])
            offset = int(np.frombuffer(header[108:112], dtype=order + "f4")[0])
            break
        if n1 == 540 and len(header) >= 540:
            dims = np.frombuffer(header[16:80], dtype=order + "i8")
            bitpix = int(np.frombuffer(header[14:16], dtype=order + "i2")[0])
            offset = int(np.frombuffer(header[168:176], dtype=order + "i8")[0])
            break
    else:
        return None
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    n = int(np.prod([max(1, int(d)) for d in dims[1:ndim + 1]], dtype=np.int64))
    return max(offset, 348) + n * bitpix // 8


def check_nifti_complete(path: Path) -> None:
    """ITK reads a truncated NIfTI without error (missing voxels become 0): check the byte count."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    gz = name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            expected = _nifti_expected_bytes(fh.read(540))
        if expected is None:
            return  # not a header we know: let the reader decide
        if not gz:
            actual = path.stat().st_size
        else:
            with open(path, "rb") as fh:  # gzip trailer: uncompressed size mod 2**32
                fh.seek(-4, os.SEEK_END)
                isize = int.from_bytes(fh.read(4), "little")
            if isize == expected % (1 << 32):
                return
            actual = 0
            with gzip.open(path, "rb") as fh:  # multi-member or truncated: count exactly
                while block := fh.read(1 << 22):
                    actual += len(block)
    except (OSError, EOFError, zlib.error) as exc:
        raise LnrtError(f"{path}: file is damaged or truncated ({exc}); expected a complete NIfTI image") from None
    if actual < expected:
        raise LnrtError(
            f"{path}: file is truncated ({actual} of {expected} bytes of image data); "
            "expected a complete NIfTI image"
        )


# NIfTI-1 datatype codes whose voxels SimpleITK returns as stored (with scl_slope 0 or 1 and no intercept)
_NIFTI_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}
_SITK_TYPES = {"u1": "sitkUInt8", "i2": "sitkInt16", "i4": "sitkInt32", "f4": "sitkFloat32", "f8": "sitkFloat64",
               "i1": "sitkInt8", "u2": "sitkUInt16", "u4": "sitkUInt32"}


def _gzip_open(path: Path):
    """A reader of the decompressed stream: ISA-L's igzip (about 2x zlib here) when installed."""
    try:
        from isal import igzip
        return igzip.open(path, "rb")
    except ImportError:
        return gzip.open(path, "rb")


def read_nifti_fast(path: Path) -> Volume | None:
    """A 3D scalar NIfTI-1 image read without ITK's copy: ITK supplies the geometry (its header reading
    decides spacing, origin and direction, so they are exactly what `sitk.ReadImage` gives), and the voxels
    are decompressed straight into the array. None when the file is outside that simple case (NIfTI-2,
    scaled values, vectors, another ITK pixel type): the caller reads it with ITK then."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        with (_gzip_open(path) if name.endswith(".gz") else open(path, "rb")) as fh:
            header = fh.read(352)
    except (RuntimeError, OSError, EOFError, zlib.error):
        return None
    if len(header) < 352 or reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        return None
    order = next((o for o in "<>" if int(np.frombuffer(header[:4], o + "i4")[0]) == 348), None)
    if order is None:
        return None
    dims = np.frombuffer(header[40:56], order + "i2")
    code = int(np.frombuffer(header[70:72], order + "i2")[0])
    offset = int(np.frombuffer(header[108:112], order + "f4")[0])
    slope, inter = (float(v) for v in np.frombuffer(header[112:120], order + "f4"))
    kind = _NIFTI_TYPES.get(code)
    if (kind is None or dims[0] != 3 or slope not in (0.0, 1.0) or inter != 0.0
            or reader.GetPixelID() != getattr(sitk, _SITK_TYPES[kind])):
        return None
    shape = (int(dims[3]), int(dims[2]), int(dims[1]))
    array = np.empty(shape, dtype=np.dtype(order + kind).newbyteorder("="))
    with (_gzip_open(path) if name.endswith(".gz") else open(path, "rb")) as fh:
        skipped = len(fh.read(max(offset, 352)))
        got = fh.readinto(memoryview(array).cast("B")) if array.size else 0
    if skipped < max(offset, 352) or got != array.nbytes:
        return None
    if np.dtype(order + kind).byteorder not in ("=", "|") and np.dtype(order + kind) != array.dtype:
        array.byteswap(inplace=True)
    return Volume(array, reader.GetSpacing(), reader.GetOrigin(), np.array(reader.GetDirection()))


def read_image_file(path: Path) -> Volume:
    source = str(path)
    check_nifti_complete(path)
    fast = read_nifti_fast(path)
    if fast is not None:
        return fast
    try:
        image = sitk.ReadImage(source)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in reversed(reason) if ln.strip()), "unknown error")
        raise LnrtError(
            f"{source}: cannot read the image ({detail[:160]}); "
            f"expected a readable 3D image ({', '.join(IMAGE_SUFFIXES)}) or a DICOM folder"
        ) from None
    return _from_sitk(image, source)


def _dicom_tag(reader: sitk.ImageFileReader, tag: str) -> str | None:
    value = reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""
    return value or None  # anonymised series may carry empty UIDs


def list_dicom_series(folder: Path) -> list[dict]:
    """Image series in a folder: uid, file names, modality, study uid. Non-image files are ignored."""
    try:
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        uids = ()
    series = []
    for uid in uids:
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        if not files:
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        series.append({
            "uid": uid,
            "files": list(files),
            "modality": _dicom_tag(reader, "0008|0060"),
            "study_uid": _dicom_tag(reader, "0020|000d"),
            "series_uid": _dicom_tag(reader, "0020|000e") or uid or None,
        })
    return series


def read_dicom_folder(folder: Path, series_uid: str | None = None) -> tuple[Volume, ScanInfo]:
    source = str(folder)
    if not any(p.is_file() for p in folder.iterdir()):
        raise LnrtError(f"{source}: folder is empty; expected a DICOM series or give an image file")
    series = list_dicom_series(folder)
    if not series:
        raise LnrtError(f"{source}: no DICOM image series found; expected a folder of CT DICOM slices")
    if series_uid is not None:
        chosen = [s for s in series if series_uid in (s["uid"], s["series_uid"])]
        if not chosen:
            known = ", ".join(s["series_uid"] or "(no uid)" for s in series)
            raise LnrtError(f"{source}: no series with UID {series_uid}; the folder holds: {known}")
        pick = chosen[0]
    else:
        ct = [s for s in series if (s["modality"] or "").upper() == "CT"]
        if not ct:
            found = ", ".join(sorted({s["modality"] or "unknown" for s in series}))
            raise LnrtError(f"{source}: no CT series (found modality {found}); expected a CT series")
        pick = max(ct, key=lambda s: len(s["files"]))
    if len(pick["files"]) < 2:
        raise LnrtError(f"{source}: series {pick['series_uid']} has one slice; expected a 3D series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(pick["files"])
    try:
        # GDCM applies Rescale Slope / Intercept: values come back in HU.
        image = reader.Execute()
    except RuntimeError as exc:
        raise LnrtError(f"{source}: cannot read the DICOM series ({str(exc).strip()[:160]})") from None
    vol = _from_sitk(image, source)
    info = ScanInfo(
        path=source, kind="dicom", stem=stem_of(folder), series_uid=pick["series_uid"],
        study_uid=pick["study_uid"], modality=pick["modality"],
        extra={"slices": len(pick["files"]), "series_in_folder": len(series)}, files=list(pick["files"]),
    )
    return vol, info


def read_scan(path: str | os.PathLike, series_uid: str | None = None, check_hu: bool = True
              ) -> tuple[Volume, ScanInfo]:
    """Read and validate a CT scan: an image file or a DICOM folder."""
    p = Path(path)
    if not p.exists():
        raise LnrtError(f"{p}: no such file or folder; expected a CT image file or a DICOM folder")
    if p.is_dir():
        vol, info = read_dicom_folder(p, series_uid)
    else:
        if p.stat().st_size == 0:
            raise LnrtError(f"{p}: file is empty; expected a 3D CT image")
        vol = read_image_file(p)
        info = ScanInfo(path=str(p), kind="file", stem=stem_of(p))
    check_geometry(vol, str(p))
    if check_hu:
        check_hounsfield(vol, str(p))
    return vol, info


def read_labels(path: str | os.PathLike) -> Volume:
    """Read a label image (integer voxels) for measurement."""
    p = Path(path)
    if not p.exists():
        raise LnrtError(f"{p}: no such file; expected a label image")
    vol = read_dicom_folder(p)[0] if p.is_dir() else read_image_file(p)
    check_geometry(vol, str(p))
    a = vol.array
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise LnrtError(f"{p}: voxel values are not whole numbers; expected integer labels")
    elif not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
        raise LnrtError(f"{p}: voxel type {a.dtype}; expected integer labels")
    if a.size and a.min() < 0:
        raise LnrtError(f"{p}: negative label {a.min()}; expected labels 0 (background) and up")
    return vol


def write_image(image: sitk.Image, path: Path, compress: bool = True) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
