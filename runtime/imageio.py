"""Reading scans (files and DICOM series) into `Volume`s, validating them, writing images atomically.

Every check raises `LnrtError` with one line that names the file, what was wrong and what was
expected. Inputs are opened read-only and never modified.
"""
from __future__ import annotations

import gzip
import logging
import os
import sys
import tempfile
import threading
import zlib
from contextlib import contextmanager
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
log = logging.getLogger("lnrt")


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


def check_geometry(vol: Volume, source: str, shape_zyx: tuple | None = None) -> None:
    """Size, spacing, origin and direction plausible. `shape_zyx` stands for the array's shape when the
    volume carries a header's geometry without its voxels (`probe_scan`)."""
    shape = tuple(vol.shape if shape_zyx is None else shape_zyx)
    if min(shape) < 2:
        raise LnrtError(
            f"{source}: image has shape {shape[::-1]} (x, y, z), a single slice; "
            "expected a 3D volume with at least 2 voxels along every axis"
        )
    sp = np.asarray(vol.spacing)
    lo, hi = SPACING_RANGE_MM
    if not np.all(np.isfinite(sp)) or np.any(sp < lo) or np.any(sp > hi):
        raise LnrtError(
            f"{source}: voxel spacing {tuple(round(float(v), 4) for v in sp)} mm is not plausible; "
            f"expected every spacing between {lo} and {hi} mm"
        )
    if not np.all(np.isfinite(vol.origin)) or not np.all(np.isfinite(vol.direction)):
        raise LnrtError(f"{source}: origin or direction is not finite; expected a valid geometry")
    check_direction(np.asarray(vol.direction, dtype=float).reshape(3, 3), source)


ORTHONORMAL_TOL = 1e-3  # |D^T D - I| per entry: directions written as float32 text differ by ~1e-7


def check_direction(d: np.ndarray, source: str) -> None:
    """A direction matrix must be a rotation (or reflection): orthonormal columns. A determinant of 1
    is not enough: a shear [[1, .3, 0], [0, 1, 0], [0, 0, 1]] has one, and would be taken for an
    axis-aligned scan with every millimetre measurement wrong."""
    err = float(np.abs(d.T @ d - np.eye(3)).max())
    if not np.isfinite(err) or err > ORTHONORMAL_TOL:
        raise LnrtError(
            f"{source}: direction matrix is not orthonormal (largest deviation of D^T D from the identity "
            f"{err:.4f}: sheared or scaled axes); expected orthonormal direction cosines"
        )


SLAB_VOXELS = 1 << 22  # 4 Mi voxels (8 MB of int16) per step: min/max/isfinite stay in cache-sized pieces


def value_range(a: np.ndarray) -> tuple:
    """(min, max, all finite) over every voxel, a slab at a time: no full-size temporary (isfinite of a
    whole float volume would allocate one byte per voxel). On 512 x 512 x 250 voxels (2-core VM,
    benchmarks/preflight.py): 0.018 s in int16, as fast as a plain min() and max(); 0.064 s in float32."""
    if a.size == 0:
        return 0.0, 0.0, True
    step = max(1, SLAB_VOXELS // max(1, a[0].size))
    lo, hi, finite = np.inf, -np.inf, True
    floating = np.issubdtype(a.dtype, np.floating)
    for z in range(0, a.shape[0], step):
        slab = a[z:z + step]
        if floating and not np.isfinite(slab).all():
            return float("nan"), float("nan"), False
        lo, hi = min(lo, float(slab.min())), max(hi, float(slab.max()))
    return lo, hi, finite


def check_hounsfield(vol: Volume, source: str) -> None:
    """Refuse images that are not CT in Hounsfield units (an MR, an unrescaled CT)."""
    a = vol.array
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise LnrtError(f"{source}: voxel type {a.dtype} is not numeric; expected CT in HU")
    lo, hi, finite = value_range(a)
    if not finite:
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
    code = int(np.frombuffer(header[70:72] if n1 == 348 else header[12:14], dtype=order + "i2")[0])
    bitpix = NIFTI_BITS.get(code, bitpix)  # the datatype decides what a reader reads, not bitpix
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    n = int(np.prod([max(1, int(d)) for d in dims[1:ndim + 1]], dtype=np.int64))
    return max(offset, 348) + n * bitpix // 8


# bits per voxel of each NIfTI datatype code (the standard's table): a header's bitpix must agree
NIFTI_BITS = {2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32, 1024: 64,
              1280: 64, 1536: 128, 1792: 128, 2048: 256, 2304: 32}


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
        with quiet_native():
            reader.ReadImageInformation()
        with (_gzip_open(path) if name.endswith(".gz") else open(path, "rb")) as fh:
            header = fh.read(352)
    except (RuntimeError, OSError, EOFError, zlib.error):
        return None
    if len(header) < 352 or reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        return None
    order = _nifti1_order(header)
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


def _nifti1_order(header: bytes) -> str | None:
    """The byte order ("<" or ">") of a NIfTI-1 header (sizeof_hdr 348), None for anything else."""
    if len(header) < 348:
        return None
    return next((o for o in "<>" if int(np.frombuffer(header[:4], o + "i4")[0]) == 348), None)


def check_nifti_header(path: Path, header: bytes) -> None:
    """The NIfTI-1 header's values that ITK would silently replace, checked before it reads: a voxel
    size of 0 or NaN (ITK reads 1.0 mm), a non-finite scale (scl_slope / scl_inter), dimensions that
    are not positive."""
    order = _nifti1_order(header)
    if order is None:
        return  # NIfTI-2 or not a NIfTI-1 header: ITK's reader decides
    dims = np.frombuffer(header[40:56], order + "i2")
    pixdim = np.frombuffer(header[76:108], order + "f4")
    slope, inter = (float(v) for v in np.frombuffer(header[112:120], order + "f4"))
    ndim = int(dims[0])
    if not 1 <= ndim <= 7 or any(int(d) < 1 for d in dims[1:ndim + 1]):
        raise LnrtError(f"{path}: NIfTI header has dimensions {list(map(int, dims[:ndim + 1 if 0 < ndim < 8 else 8]))}; "
                        "expected positive sizes along every axis")
    code = int(np.frombuffer(header[70:72], order + "i2")[0])
    bitpix = int(np.frombuffer(header[72:74], order + "i2")[0])
    if code in NIFTI_BITS and bitpix != NIFTI_BITS[code]:
        raise LnrtError(f"{path}: NIfTI header gives bitpix {bitpix} for datatype {code}, which has "
                        f"{NIFTI_BITS[code]} bits per voxel; expected a consistent header")
    spatial = pixdim[1:1 + min(3, ndim)]
    if not np.all(np.isfinite(spatial)) or np.any(spatial <= 0):
        raise LnrtError(f"{path}: NIfTI header gives voxel size {[round(float(v), 4) for v in spatial]} mm (pixdim); "
                        "expected positive, finite sizes (a reader would replace them with 1.0 mm)")
    if not (np.isfinite(slope) and np.isfinite(inter)):
        raise LnrtError(f"{path}: NIfTI header has a non-finite value scale (scl_slope {slope}, scl_inter "
                        f"{inter}); expected finite numbers")


def _nifti_header(path: Path) -> bytes:
    with (_gzip_open(path) if path.name.lower().endswith(".gz") else open(path, "rb")) as fh:
        return fh.read(352)


def _nifti_raw_finite(path: Path, header: bytes) -> bool:
    """Whether a floating-point NIfTI-1 file's stored voxels are all finite, streamed from the file
    (ITK's reader turns NaN and Inf into 0, so its array cannot tell). True for integer types."""
    order = _nifti1_order(header)
    if order is None:
        return True
    code = int(np.frombuffer(header[70:72], order + "i2")[0])
    kind = {16: "f4", 64: "f8"}.get(code)
    if kind is None:
        return True
    dtype = np.dtype(order + kind)
    offset = max(int(np.frombuffer(header[108:112], order + "f4")[0]), 352)
    with (_gzip_open(path) if path.name.lower().endswith(".gz") else open(path, "rb")) as fh:
        fh.read(offset)
        while block := fh.read(SLAB_VOXELS * dtype.itemsize):
            usable = len(block) - len(block) % dtype.itemsize
            if not np.isfinite(np.frombuffer(block[:usable], dtype)).all():
                return False
    return True


_DATA_FILE_KEYS = {".mhd": ("elementdatafile",), ".mha": ("elementdatafile",),
                   ".nhdr": ("data file", "datafile"), ".nrrd": ("data file", "datafile")}


def check_data_file_reference(path: Path) -> None:
    """A MetaImage (.mhd/.mha) or detached NRRD (.nhdr) header names the file holding its voxels; ITK
    reads whatever it names, `/etc/passwd` included. Only files beside the header (or in a folder below
    it) are accepted: no absolute path, no `..`."""
    suffix = next((x for x in _DATA_FILE_KEYS if path.name.lower().endswith(x)), None)
    if suffix is None:
        return
    with open(path, "rb") as fh:
        text = fh.read(1 << 16).decode("latin-1")
    lines = text.splitlines()
    keys = _DATA_FILE_KEYS[suffix]
    for i, line in enumerate(lines):
        if suffix in (".nhdr", ".nrrd") and not line.strip() and i > 0:
            break  # a blank line ends a NRRD header: what follows is data
        # MetaIO accepts "=" or ":" between key and value (NRRD fields use ":"): the first one found
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut < 0:
            continue
        key, value = line[:cut].strip(), line[cut + 1:].strip()
        if suffix in (".nhdr", ".nrrd") and line.find(":") >= 0:
            key, value = (part.strip() for part in line.split(":", 1))
        if key.lower() not in keys:
            continue
        first = value.split()[0] if value.split() else ""
        if first.upper() == "LOCAL":
            return
        if first.upper() == "LIST":
            names = [ln.strip() for ln in lines[i + 1:] if ln.strip()]
        else:
            # a single file, or a printf pattern followed by its numbers ("slice%03d.raw 1 40 1")
            names = [value] if len(value.split()) == 1 or "%" not in value else [value.split()[0]]
        for name in names:
            _check_inside(path, name)
        return


def _check_inside(header: Path, name: str) -> None:
    ref = Path(name)
    folder = header.resolve().parent
    if ref.is_absolute() or ".." in ref.parts or not name.strip():
        raise LnrtError(f"{header}: header names its data file {name!r}; expected a file beside the header "
                        "(a relative name without '..')")
    target = (header.parent / ref).resolve()
    if folder not in target.parents:
        raise LnrtError(f"{header}: header's data file {name!r} resolves to {target}, outside the header's "
                        "folder; expected a file beside the header")


@contextmanager
def quiet_native():
    """ITK's, GDCM's and niftilib's own warnings off while they read: their text goes to lnrt's debug
    log instead of stderr, so a refused input prints lnrt's one line and nothing else. ITK's global
    warning switch is turned off; in the main thread the C-level stderr (fd 2) is also captured, since
    GDCM and niftilib write to it directly (other threads keep their stderr untouched)."""
    previous = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    capture = threading.current_thread() is threading.main_thread()
    saved = sink = None
    if capture:
        try:
            sys.stderr.flush()
            sink = tempfile.TemporaryFile()
            saved = os.dup(2)
            os.dup2(sink.fileno(), 2)
        except (OSError, ValueError, AttributeError):
            if sink is not None:
                sink.close()
            saved = sink = None
    try:
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            sink.close()
            if text:
                log.debug("reader messages: %s", " | ".join(ln.strip() for ln in text.splitlines() if ln.strip()))
        sitk.ProcessObject_SetGlobalWarningDisplay(previous)


@dataclass(frozen=True)
class ScanHeader:
    """What a scan's headers say, read and checked before any voxel is decoded (issue 15): enough to
    estimate the memory a run needs and to plan its outputs. `read_scan` takes it and reads the voxels."""

    path: Path
    kind: str  # "file" or "dicom"
    shape_zyx: tuple
    spacing_xyz: tuple
    itemsize: int  # bytes per stored voxel
    series: object = None  # the validated `lnrt.dicom_in.DicomSeries` of a DICOM folder

    @property
    def spacing_zyx(self) -> tuple:
        return tuple(self.spacing_xyz[::-1])

    @property
    def has_uids(self) -> bool | None:
        """Whether the series carries the UIDs a DICOM SEG references (None for an image file)."""
        return getattr(self.series, "has_uids", None)


def _header_of_file(p: Path) -> ScanHeader:
    source = str(p)
    if not p.is_file():
        raise LnrtError(f"{p}: not a regular file (a device, a pipe or a socket); expected a CT image file "
                        "or a DICOM folder")
    if p.stat().st_size == 0:
        raise LnrtError(f"{p}: file is empty; expected a 3D CT image")
    check_data_file_reference(p)
    name = p.name.lower()
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        try:
            check_nifti_header(p, _nifti_header(p))
        except (OSError, EOFError, zlib.error) as exc:
            raise LnrtError(f"{p}: file is damaged or truncated ({exc}); expected a complete NIfTI image") from None
        check_nifti_complete(p)
    reader = sitk.ImageFileReader()
    reader.SetFileName(source)
    try:
        with quiet_native():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise LnrtError(f"{source}: cannot read the image ({_last_line(exc)}); expected a readable 3D image "
                        f"({', '.join(IMAGE_SUFFIXES)}) or a DICOM folder") from None
    if reader.GetDimension() != 3:
        raise LnrtError(f"{source}: image is {reader.GetDimension()}D; expected a 3D volume")
    if reader.GetNumberOfComponents() != 1:
        raise LnrtError(f"{source}: image has {reader.GetNumberOfComponents()} components per voxel; "
                        "expected a scalar (greyscale) volume")
    size = tuple(int(v) for v in reader.GetSize())
    geometry = Volume(np.empty((0, 0, 0), np.int16), reader.GetSpacing(), reader.GetOrigin(),
                      np.array(reader.GetDirection()))
    check_geometry(geometry, source, size[::-1])
    pixel = sitk.Image([1, 1, 1], reader.GetPixelID())
    itemsize = int(sitk.GetArrayViewFromImage(pixel).itemsize)
    return ScanHeader(p, "file", size[::-1], tuple(reader.GetSpacing()), itemsize)


def _last_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "unknown error")[:160]


def probe_scan(path: str | os.PathLike, series_uid: str | None = None) -> ScanHeader:
    """Every check a scan's headers allow, before any voxel is decoded: the file or DICOM series can be
    read, is 3D and scalar, has a plausible orthonormal geometry, (NIfTI) is complete with sane header
    values, (MetaImage/NRRD) keeps its data beside the header, (DICOM) is one evenly spaced series."""
    p = Path(path)
    if not p.exists():
        raise LnrtError(f"{p}: no such file or folder; expected a CT image file or a DICOM folder")
    if p.is_dir():
        from .dicom_in import probe_dicom_folder
        series = probe_dicom_folder(p, series_uid)
        return ScanHeader(p, "dicom", tuple(series.shape_zyx), tuple(series.spacing_xyz), 2, series)
    return _header_of_file(p)


def read_image_file(path: Path) -> Volume:
    """The voxels of an image file whose header `probe_scan` accepted (read once: the fast NIfTI path,
    or ITK)."""
    source = str(path)
    fast = read_nifti_fast(path)
    if fast is not None:
        return fast
    name = path.name.lower()
    if (name.endswith(".nii") or name.endswith(".nii.gz")) and not _nifti_raw_finite(path, _nifti_header(path)):
        raise LnrtError(f"{source}: image contains NaN or infinite values; expected CT in HU")
    try:
        with quiet_native():
            image = sitk.ReadImage(source)
    except RuntimeError as exc:
        raise LnrtError(
            f"{source}: cannot read the image ({_last_line(exc)}); "
            f"expected a readable 3D image ({', '.join(IMAGE_SUFFIXES)}) or a DICOM folder"
        ) from None
    return _from_sitk(image, source)


def read_scan(path: str | os.PathLike | ScanHeader, series_uid: str | None = None, check_hu: bool = True
              ) -> tuple[Volume, ScanInfo]:
    """Read and validate a CT scan: an image file or a DICOM folder (or the `ScanHeader` that
    `probe_scan` gave for one, whose checks are then not repeated). Every voxel is checked to be a
    finite value in a CT's Hounsfield range unless `check_hu` is False."""
    header = path if isinstance(path, ScanHeader) else probe_scan(path, series_uid)
    p = header.path
    if header.kind == "dicom":
        from .dicom_in import read_dicom_series
        vol, info = read_dicom_series(header.series)
    else:
        vol = read_image_file(p)
        info = ScanInfo(path=str(p), kind="file", stem=stem_of(p))
    if vol.shape != tuple(header.shape_zyx):
        raise LnrtError(f"{p}: the voxels read are {vol.shape[::-1]} (x, y, z) where the header said "
                        f"{tuple(header.shape_zyx)[::-1]}; expected a consistent image")
    check_geometry(vol, str(p))
    if check_hu:
        check_hounsfield(vol, str(p))
    return vol, info


# Largest instance id `measure` accepts: per-label statistics take memory in proportion to the largest id,
# and 16.7 million is far above any node count (an id of 2^40 asked for 8 TiB).
MAX_LABEL = 1 << 24


def read_labels(path: str | os.PathLike) -> Volume:
    """Read a label image (integer voxels) for measurement."""
    p = Path(path)
    if not p.exists():
        raise LnrtError(f"{p}: no such file; expected a label image")
    vol = read_scan(p, check_hu=False)[0]
    a = vol.array
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise LnrtError(f"{p}: voxel values are not whole numbers; expected integer labels")
    elif not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
        raise LnrtError(f"{p}: voxel type {a.dtype}; expected integer labels")
    if a.size and a.min() < 0:
        raise LnrtError(f"{p}: negative label {a.min()}; expected labels 0 (background) and up")
    if a.size and a.max() > MAX_LABEL:
        raise LnrtError(f"{p}: label {a.max():.0f} is above {MAX_LABEL}; expected instance ids (one per node) "
                        "or a binary mask")
    return vol


def write_image(image: sitk.Image, path: Path, compress: bool = True) -> None:
    with atomic_path(path) as tmp:
        with quiet_native():
            sitk.WriteImage(image, str(tmp), useCompression=compress)
