"""Reading a DICOM folder: its image series listed, one chosen, its geometry validated, its voxels read.

Split from `imageio` so the series' checks live in one module; `imageio.read_scan` calls
`read_dicom_folder` for a folder.

Two steps, so that nothing is decoded before the series is known to be sound:

* `probe_dicom_folder` reads every file's header with pydicom (`stop_before_pixels`: the pixel data
  element's header is parsed by hand for its declared length, its value is never read), groups the
  slices into series (one orientation per series), chooses one and checks its geometry. It returns a
  `DicomSeries`: header data only, enough to estimate memory or check SEG referencability.
* `read_dicom_series` hands the sorted file list to ITK's ImageSeriesReader, which reads the pixels
  once, and checks ITK's geometry agrees with the header's.

Every refusal is one `LnrtError` line naming the folder and the series, what was found and what was
expected. Input files are only ever opened for reading.
"""
from __future__ import annotations

import math
import struct
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import LnrtError
from .imageio import ScanInfo, _from_sitk, _last_line, quiet_native, stem_of
from .volume import Volume

# Slice spacing: two neighbouring slices are "evenly spaced" when their distance along the slice normal
# differs from the series' spacing by at most max(SLICE_SPACING_ATOL_MM, SLICE_SPACING_RTOL x spacing),
# and every slice lies within the same tolerance of the even grid from the first slice to the last.
# Why: positions are decimal strings (DS, at most 16 characters) that scanners round, typically to
# 0.01 mm or to float32 (about 1e-5 relative at 1 m from the isocentre), so exact equality would refuse
# sound series; 1 % of the spacing (0.03 mm at 3 mm) is under a tenth of a voxel, far below what a
# missing slice (+100 %), a duplicated slice (-100 %) or a reconstruction with a different increment
# causes, and the grid check keeps small per-slice errors from adding up along a long series.
SLICE_SPACING_ATOL_MM = 0.01
SLICE_SPACING_RTOL = 0.01
# ImageOrientationPatient: each direction cosine vector of unit length, the two orthogonal, within this.
# DS rounding to 6 decimals gives errors near 1e-6; 1e-3 (0.06 degrees) refuses only broken values.
ORIENTATION_TOL = 1e-3
# Slices whose six direction cosines all agree within this belong to one orientation group.
ORIENTATION_GROUP_TOL = 1e-3
# A slice normal is labelled axial / coronal / sagittal when its largest component (the cosine of its
# angle to that patient axis) is at least this: within about 26 degrees of the axis, so a gantry-tilted
# head CT (tilts up to about 25 degrees) is still "axial"; otherwise it is "oblique".
ORIENTATION_DOMINANCE = 0.9
# Pixel spacing of two slices agrees when the values differ by at most this fraction (5 micrometres
# for a 0.5 mm pixel: DS rounding, not a different reconstruction field of view).
PIXEL_SPACING_RTOL = 1e-4
# Slices must stack along their normal: the in-plane drift of a slice's position from the first slice's
# (a sheared, gantry-tilted stack that ITK would read as a box) may be at most this fraction of a pixel.
SHEAR_TOL_PX = 0.1
# A file with one of these suffixes, or with the DICM marker, is meant to be DICOM: if pydicom cannot
# read it the folder is refused (it may be a slice of the series). Other unreadable files are ignored.
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima")
NO_UID = "no-uid"  # the choice key of slices without a SeriesInstanceUID

_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"}
_DEFLATED = "1.2.840.10008.1.2.1.99"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
# single-frame image storage classes: a file of one of these without pixel data is a truncated slice
_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.481.1",  # RT image
}
_AXES = ("sagittal", "coronal", "axial")  # the patient axis (x L, y P, z S) a normal is closest to


@dataclass(frozen=True)
class DicomSeries:
    """A validated series, header data only: what `read_dicom_series` will read, and its geometry."""

    folder: str
    uid: str  # the choice key: the SeriesInstanceUID, or `UID:axial` when the series has two orientations
    series_uid: str | None
    study_uid: str | None
    modality: str | None
    files: tuple  # sorted along the slice normal, the order ITK reads them
    shape_zyx: tuple  # (slices, rows, columns)
    spacing_xyz: tuple  # (column spacing, row spacing, slice spacing) mm, as ITK will report them
    orientation: str  # "axial" / "coronal" / "sagittal" / "oblique"
    has_uids: bool  # StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID on every slice
    series_in_folder: int


@dataclass
class _Slice:
    path: Path
    series_uid: str | None
    study_uid: str | None
    sop_uid: str | None
    modality: str | None
    instance: float
    iop: object  # tuple of 6 floats, None when absent, or a str describing a bad value
    ipp: object  # tuple of 3 floats, None when absent, or a str
    rows: object
    columns: object
    pixel_spacing: object
    bits: object
    signed: object
    samples: object
    slope: object
    intercept: object
    pixel_problem: str | None  # the pixel data element is missing, short or truncated
    description: str | None = None  # SeriesDescription, for listing choices

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class _Entry:
    """One choice: the slices of one SeriesInstanceUID in one orientation."""

    uid: str
    series_uid: str | None
    slices: list
    orientation: str
    normal: np.ndarray | None = None
    problem: str | None = None  # a refusal found while grouping (bad orientation), raised if chosen

    @property
    def modality(self) -> str | None:
        return _most_common([s.modality for s in self.slices])

    @property
    def study_uid(self) -> str | None:
        return _most_common([s.study_uid for s in self.slices])


# -- reading headers ---------------------------------------------------------------------------------

def _text(ds, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed value reads as absent
        return None
    value = "" if value is None else str(value).strip()
    return value or None  # anonymised series may carry empty UIDs


def _numbers(ds, keyword: str):
    """A numeric attribute as a tuple of floats; None when absent or empty; a str when unparseable."""
    try:
        elem = ds.get(keyword)
        if elem is None or elem == "":
            return None
        if isinstance(elem, (str, bytes)) or not hasattr(elem, "__iter__"):
            values = [elem]
        else:
            values = list(elem)
        if not values:
            return None
        return tuple(float(v) for v in values)
    except Exception as exc:  # noqa: BLE001
        raw = ds.get(keyword) if hasattr(ds, "get") else None
        return f"an unreadable value {str(raw)[:40]!r} ({type(exc).__name__})"


def _scalar(ds, keyword: str):
    value = _numbers(ds, keyword)
    return value[0] if isinstance(value, tuple) and len(value) == 1 else value


def _pixel_problem(fp, size: int, ds, little: bool) -> str | None:
    """Check the pixel data element the file declares, from its header alone (no pixel is read).

    `fp` stands where pydicom's `stop_before_pixels` stopped: at the pixel data element's tag."""
    start = fp.tell()
    head = fp.read(8)
    if len(head) < 8:
        return "the file ends before its pixel data"
    end = "<" if little else ">"
    group, elem = struct.unpack(end + "HH", head[:4])
    if (group, elem) not in _PIXEL_TAGS:
        return "it has no pixel data element"
    if head[4:6] in _LONG_VRS:  # explicit VR: 2 reserved bytes, then a 4-byte length
        more = fp.read(4)
        if len(more) < 4:
            return "the file ends inside its pixel data element's header"
        length = struct.unpack(end + "I", more)[0]
    else:
        length = struct.unpack(end + "I", head[4:8])[0]
    value_at = fp.tell()
    if length == 0xFFFFFFFF:  # encapsulated (compressed) fragments, ended by a sequence delimiter
        pos, items = value_at, 0
        while True:
            if pos + 8 > size:
                return (f"the file ends inside its encapsulated pixel data (after {items} fragments, "
                        f"{size - start} bytes of pixel data element); the file is truncated")
            fp.seek(pos)
            g, e, n = struct.unpack(end + "HHI", fp.read(8))
            if (g, e) == (0xFFFE, 0xE0DD):
                return None
            if (g, e) != (0xFFFE, 0xE000) or n == 0xFFFFFFFF:
                return (f"its encapsulated pixel data is malformed (item tag ({g:04X},{e:04X}) at byte "
                        f"{pos}); the file may be truncated or corrupt")
            pos += 8 + n
            items += 1
            if pos > size:
                return (f"the file ends inside its encapsulated pixel data (fragment {items} needs "
                        f"{pos - size} more bytes); the file is truncated")
    if value_at + length > size:
        return (f"the file is {size} bytes but its pixel data ({length} bytes from byte {value_at}) needs "
                f"{value_at + length}; the file is truncated")
    rows, cols = _scalar(ds, "Rows"), _scalar(ds, "Columns")
    bits, samples = _scalar(ds, "BitsAllocated"), _scalar(ds, "SamplesPerPixel") or 1.0
    frames = _scalar(ds, "NumberOfFrames") or 1.0
    if all(isinstance(v, float) for v in (rows, cols, bits, samples, frames)):
        count = int(rows) * int(cols) * int(samples) * int(frames)
        expected = (count + 7) // 8 if int(bits) == 1 else count * int(math.ceil(bits / 8))
        if length < expected:
            return (f"its pixel data holds {length} bytes where {int(rows)} x {int(cols)} pixels of "
                    f"{int(bits)} bits need {expected}; the file is truncated or corrupt")
    return None


class _Unreadable(Exception):
    """A file meant to be DICOM (DICM marker or a DICOM suffix) that pydicom cannot read."""


def _may_be_raw_dicom(path: Path) -> bool:
    """Worth reading without the DICM marker (pydicom's force): a DICOM suffix, none, or a numeric one
    (scanner exports such as `CT.1.3.12.2.1107.5.1.4.60064.3000002212080811342800001657`)."""
    suffix = path.suffix.lower()
    return suffix in DICOM_SUFFIXES or suffix == "" or suffix[1:].isdigit()


def _read_header(path: Path, pydicom) -> _Slice | None:
    """The slice's header; None for a readable non-image DICOM object or a file that is not DICOM.

    Raises _Unreadable (with the reason) for a file meant to be DICOM that pydicom cannot read."""
    size = path.stat().st_size
    with open(path, "rb") as fp:
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:  # no DICM marker: maybe a data set without a preamble
            if not _may_be_raw_dicom(path):
                return None  # notes.txt, LICENSE.md, a NIfTI beside the slices: not DICOM, ignored
            fp.seek(0)
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            except Exception:  # noqa: BLE001 - pydicom raises many types for non-DICOM bytes
                ds = None
            if ds is None or _text(ds, "SOPClassUID") is None:
                if path.name.lower().endswith(DICOM_SUFFIXES):
                    raise _Unreadable("not a DICOM file: no DICM marker and no DICOM data set") from None
                return None
        except Exception as exc:  # noqa: BLE001 - it has the DICM marker, so it is a broken DICOM file
            raise _Unreadable(f"{type(exc).__name__}: {str(exc).strip()[:100]}") from None
        try:
            meta = getattr(ds, "file_meta", None)
            ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
            if len(ds) == 0:  # pydicom stops quietly at the end of a file cut inside its header
                raise _Unreadable("the file ends before its data set: truncated")
            sop = _text(ds, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta is not None else None)
            at = fp.tell()
            at_pixels = fp.read(4)[:2] in (b"\xe0\x7f", b"\x7f\xe0")
            fp.seek(at)
            image = at_pixels or sop in _IMAGE_SOP_CLASSES or any(
                ds.get(k) is not None for k in ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient"))
            if not image:
                return None  # not an image (RTSTRUCT, SR, DICOMDIR, ...)
            frames = _scalar(ds, "NumberOfFrames")
            if isinstance(frames, float) and frames > 1:
                return None  # a multi-frame object (a SEG, an enhanced CT), not a slice of a series
            problem = None if ts == _DEFLATED else _pixel_problem(fp, size, ds, ts != _BIG_ENDIAN)
        except _Unreadable:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _Unreadable(f"{type(exc).__name__}: {str(exc).strip()[:100]}") from None
    if problem and ds.get("Rows") is None:
        raise _Unreadable(problem)  # cut inside its header: its series may be unknown, it may be any slice
    instance = _scalar(ds, "InstanceNumber")
    return _Slice(
        path=path, series_uid=_text(ds, "SeriesInstanceUID"), study_uid=_text(ds, "StudyInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"), modality=_text(ds, "Modality"),
        instance=instance if isinstance(instance, float) else math.inf,
        iop=_numbers(ds, "ImageOrientationPatient"), ipp=_numbers(ds, "ImagePositionPatient"),
        rows=_scalar(ds, "Rows"), columns=_scalar(ds, "Columns"), pixel_spacing=_numbers(ds, "PixelSpacing"),
        bits=_scalar(ds, "BitsAllocated"), signed=_scalar(ds, "PixelRepresentation"),
        samples=_scalar(ds, "SamplesPerPixel"), slope=_scalar(ds, "RescaleSlope"),
        intercept=_scalar(ds, "RescaleIntercept"), pixel_problem=problem, description=_text(ds, "SeriesDescription"),
    )


def _scan_folder(folder: Path) -> tuple[list, list]:
    """(image slices, unreadable files as (name, reason)) of the folder's files (not recursive). Hidden
    files are not slices (`.DS_Store`, a writer's temporary `.lnrt-*.part.dcm`)."""
    try:
        import pydicom
        import pydicom.errors
    except ImportError:
        raise LnrtError("pydicom is not installed; lnrt needs it to check DICOM folders: "
                        "pip install 'pydicom>=2.4'") from None
    slices, unreadable = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            with warnings.catch_warnings():  # pydicom's warnings on odd values: the checks below decide
                warnings.simplefilter("ignore")
                s = _read_header(path, pydicom)
        except _Unreadable as exc:
            unreadable.append((path.name, str(exc)))
            continue
        except OSError as exc:
            unreadable.append((path.name, f"cannot open it ({exc.strerror or exc})"))
            continue
        if s is not None:
            slices.append(s)
    return slices, unreadable


# -- grouping into series ----------------------------------------------------------------------------

def _most_common(values):
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


def _iop_problem(s: _Slice) -> str | None:
    v = s.iop
    if v is None:
        return f"slice file {s.name} has no ImageOrientationPatient"
    if isinstance(v, str):
        return f"slice file {s.name} has ImageOrientationPatient {v}"
    if len(v) != 6 or not all(math.isfinite(x) for x in v):
        return f"slice file {s.name} has ImageOrientationPatient {_fmt_list(v)}, not 6 finite numbers"
    row, col = np.array(v[:3]), np.array(v[3:])
    nr, nc, dot = np.linalg.norm(row), np.linalg.norm(col), float(row @ col)
    if abs(nr - 1) > ORIENTATION_TOL or abs(nc - 1) > ORIENTATION_TOL:
        return (f"slice file {s.name} has ImageOrientationPatient {_fmt_list(v)} whose direction vectors have "
                f"lengths {nr:.4g} and {nc:.4g}, not unit length")
    if abs(dot) > ORIENTATION_TOL:
        return (f"slice file {s.name} has ImageOrientationPatient {_fmt_list(v)} whose direction vectors are "
                f"not orthogonal (dot product {dot:.4g})")
    return None


def _normal(iop) -> np.ndarray:
    n = np.cross(np.array(iop[:3]), np.array(iop[3:]))
    return n / np.linalg.norm(n)


def _label(normal: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(normal)))
    return _AXES[axis] if abs(normal[axis]) >= ORIENTATION_DOMINANCE else "oblique"


def _group(slices: list) -> list:
    """Choices: one per SeriesInstanceUID, or one per orientation where a series holds several."""
    by_series: dict = {}
    for s in slices:
        by_series.setdefault(s.series_uid, []).append(s)
    entries = []
    for series_uid, members in by_series.items():
        key = series_uid or NO_UID
        bad = next((p for p in map(_iop_problem, members) if p), None)
        if bad:
            entries.append(_Entry(key, series_uid, members, "unknown", problem=bad))
            continue
        groups: list = []  # [representative iop, members]
        for s in members:
            for g in groups:
                if max(abs(a - b) for a, b in zip(g[0], s.iop)) <= ORIENTATION_GROUP_TOL:
                    g[1].append(s)
                    break
            else:
                groups.append([s.iop, [s]])
        if len(groups) == 1:
            entries.append(_Entry(key, series_uid, members, _label(_normal(members[0].iop)),
                                  _normal(members[0].iop)))
            continue
        groups.sort(key=lambda g: -len(g[1]))
        labels = [_label(_normal(g[0])) for g in groups]
        counts, seen = Counter(labels), Counter()
        group_entries = []
        for (iop, group), label in zip(groups, labels):
            seen[label] += 1
            name = f"{label}{seen[label]}" if counts[label] > 1 else label
            group_entries.append(_Entry(f"{key}:{name}", series_uid, group, label, _normal(iop)))
        entries.extend(group_entries)
    return entries


def _sorted_along_normal(entry: _Entry) -> list:
    if entry.normal is None or any(not _valid_position(s.ipp) for s in entry.slices):
        return sorted(entry.slices, key=lambda s: (s.instance, s.name))
    return sorted(entry.slices, key=lambda s: (float(entry.normal @ np.array(s.ipp)), s.instance, s.name))


def _valid_position(v) -> bool:
    return isinstance(v, tuple) and len(v) == 3 and all(math.isfinite(x) for x in v)


def list_dicom_series(folder: Path) -> list[dict]:
    """Image series in a folder: uid (the choice key), files (sorted along the slice normal), modality,
    study uid, series uid, orientation, slices. Non-image and non-DICOM files are ignored; a series with
    slices in two orientations is listed once per orientation (uid `<SeriesInstanceUID>:axial`, ...)."""
    return scan_dicom_folder(folder)[0]


def scan_dicom_folder(folder: Path) -> tuple[list, list]:
    """(`list_dicom_series`'s list, (name, reason) of the files that could not be read as DICOM), from
    one read of the folder's headers (not recursive)."""
    slices, unreadable = _scan_folder(Path(folder))
    return [_as_dict(e) for e in _group(slices)], unreadable


def _as_dict(e: _Entry) -> dict:
    return {"uid": e.uid, "files": [str(s.path) for s in _sorted_along_normal(e)], "modality": e.modality,
            "study_uid": e.study_uid, "series_uid": e.series_uid, "orientation": e.orientation,
            "slices": len(e.slices)}


# -- choosing and validating -------------------------------------------------------------------------

def _mm(x: float) -> str:
    text = f"{x:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _fmt_list(values) -> str:
    return "\\".join(f"{v:.6g}" for v in values)


def _choices(entries: list) -> str:
    return "; ".join(f"{e.uid} ({e.modality or 'unknown modality'}, {e.orientation}, {len(e.slices)} slices)"
                     for e in entries)


def _choose(source: str, entries: list, series_uid: str | None) -> _Entry:
    if series_uid is not None:
        exact = [e for e in entries if e.uid == series_uid]
        if exact:
            return exact[0]
        same = [e for e in entries if e.series_uid == series_uid]
        if len(same) == 1:
            return same[0]
        if not same:
            raise LnrtError(f"{source}: no series with UID {series_uid}; the folder holds: {_choices(entries)}")
    else:
        ct = [e for e in entries if (e.modality or "").upper() == "CT"]
        if not ct:
            found = ", ".join(sorted({e.modality or "unknown" for e in entries}))
            raise LnrtError(f"{source}: no CT series (found modality {found}); expected a CT series")
        totals = Counter()
        for e in ct:
            totals[e.series_uid] += len(e.slices)
        best = max(ct, key=lambda e: (totals[e.series_uid], len(e.slices)))
        same = [e for e in ct if e.series_uid == best.series_uid]
        if len(same) == 1:
            return best
    uid = same[0].series_uid or NO_UID
    raise LnrtError(
        f"{source}: series {uid} holds slices in {len(same)} orientations: {_choices(same)}; expected one "
        f"orientation per series: choose one with --series {same[0].uid}")


def _consistent(prefix: str, ordered: list, attr: str, label: str, close=None) -> None:
    values = [getattr(s, attr) for s in ordered]
    usual = Counter(repr(v) for v in values).most_common(1)[0][0]
    reference = next(v for v in values if repr(v) == usual)
    for i, (s, v) in enumerate(zip(ordered, values), 1):
        same = repr(v) == usual or (close is not None and v is not None and reference is not None
                                    and not isinstance(v, str) and not isinstance(reference, str)
                                    and close(v, reference))
        if not same:
            raise LnrtError(
                f"{prefix}slice {i} of {len(ordered)} (file {s.name}) has {label} {_show(v)} where the other "
                f"slices have {_show(reference)}; expected the same {label} on every slice")


def _show(v) -> str:
    if v is None:
        return "absent"
    if isinstance(v, tuple):
        return _fmt_list(v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _spacing_close(a, b) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= PIXEL_SPACING_RTOL * max(abs(x), abs(y)) for x, y in zip(a, b))


def slice_spacing_tolerance(spacing_mm: float) -> float:
    """The largest deviation from even spacing accepted for slices `spacing_mm` apart (see the constants)."""
    return max(SLICE_SPACING_ATOL_MM, SLICE_SPACING_RTOL * spacing_mm)


def _check_positions(prefix: str, ordered: list, normal: np.ndarray, pixel: float) -> float:
    """The slice spacing of slices sorted along `normal`; refuses duplicates, gaps, uneven spacing, shear."""
    pos = np.array([s.ipp for s in ordered])
    d = pos @ normal
    steps = np.diff(d)
    n = len(ordered)

    def files(i):
        return f"slices {i + 1} and {i + 2} of {n} (files {ordered[i].name}, {ordered[i + 1].name})"

    for i, step in enumerate(steps):
        if step <= SLICE_SPACING_ATOL_MM:
            raise LnrtError(
                f"{prefix}{files(i)} are at the same position ({_fmt_list(ordered[i].ipp)}, {_mm(step)} mm apart "
                f"along the slice normal): a duplicated slice; expected each position once")
    spacing = float(np.median(steps))
    tol = slice_spacing_tolerance(spacing)
    bad = [i for i, step in enumerate(steps) if abs(step - spacing) > tol]
    if bad:
        i, step = bad[0], float(steps[bad[0]])
        more = f" ({len(bad) - 1} more uneven steps)" if len(bad) > 1 else ""
        k = round(step / spacing)
        if k >= 2 and abs(step - k * spacing) <= tol * k:
            raise LnrtError(
                f"{prefix}gap of {_mm(step)} mm between {files(i)} where the spacing is {_mm(spacing)} mm "
                f"({k - 1} slice{'s' if k > 2 else ''} missing){more}; expected evenly spaced slices with none missing")
        raise LnrtError(
            f"{prefix}uneven slice spacing: {_mm(step)} mm between {files(i)} where the spacing is {_mm(spacing)} "
            f"mm{more}; expected evenly spaced slices (within {_mm(tol)} mm)")
    spacing = float((d[-1] - d[0]) / (n - 1))
    drift = np.abs(d - (d[0] + spacing * np.arange(n)))
    if drift.max() > tol:
        i = int(np.argmax(drift))
        raise LnrtError(
            f"{prefix}slice {i + 1} of {n} (file {ordered[i].name}) lies {_mm(float(drift[i]))} mm off the even "
            f"grid of {_mm(spacing)} mm from the first slice to the last; expected evenly spaced slices")
    in_plane = (pos - pos[0]) - np.outer(d - d[0], normal)
    shear = np.linalg.norm(in_plane, axis=1)
    if shear.max() > SHEAR_TOL_PX * pixel:
        i = int(np.argmax(shear))
        raise LnrtError(
            f"{prefix}slice {i + 1} of {n} (file {ordered[i].name}) is shifted {_mm(float(shear[i]))} mm within "
            f"the slice plane from the first slice (a sheared stack, as from a gantry tilt); expected slices "
            f"stacked along their normal")
    return spacing


def _unique_instances(prefix: str, slices: list) -> None:
    """Each slice its own SOP Instance UID, and the series in one study: a SEG or SR references
    instances by UID, so a copied slice or a series spliced from two studies would be ambiguous."""
    seen: dict = {}
    for s in sorted(slices, key=lambda s: s.name):
        if s.sop_uid and s.sop_uid in seen:
            raise LnrtError(f"{prefix}slice files {seen[s.sop_uid]} and {s.name} share SOPInstanceUID {s.sop_uid}; "
                            "expected each slice once, with its own UID")
        seen.setdefault(s.sop_uid, s.name)
    studies = {s.study_uid for s in slices if s.study_uid}
    if len(studies) > 1:
        raise LnrtError(f"{prefix}its slices belong to {len(studies)} studies ({', '.join(sorted(studies)[:2])}); "
                        "expected one series of one study")


def _validate(source: str, entry: _Entry, unreadable: list, series_in_folder: int) -> DicomSeries:
    prefix = f"{source}: series {entry.uid}: "
    if entry.problem:
        raise LnrtError(f"{prefix}{entry.problem}; expected 6 finite direction cosines, two orthogonal unit "
                        "vectors, on every slice")
    if unreadable:
        name, reason = unreadable[0]
        more = f" (and {len(unreadable) - 1} more such files)" if len(unreadable) > 1 else ""
        raise LnrtError(f"{prefix}file {name} in the folder cannot be read as DICOM ({reason}){more}, so a slice "
                        "may be missing; expected every DICOM file in the folder to be readable (remove or "
                        "replace it)")
    if len(entry.slices) < 2:
        raise LnrtError(f"{prefix}has one slice; expected a 3D series")
    for s in sorted(entry.slices, key=lambda s: s.name):
        if s.pixel_problem:
            raise LnrtError(f"{prefix}slice file {s.name}: {s.pixel_problem}; expected complete slice files")
    for s in entry.slices:
        if s.ipp is None:
            raise LnrtError(f"{prefix}slice file {s.name} has no ImagePositionPatient; expected the position "
                            "of every slice")
        if not _valid_position(s.ipp):
            shown = s.ipp if isinstance(s.ipp, str) else _fmt_list(s.ipp)
            raise LnrtError(f"{prefix}slice file {s.name} has ImagePositionPatient {shown}; expected 3 finite "
                            "numbers")
    _unique_instances(prefix, entry.slices)
    ordered = _sorted_along_normal(entry)
    for attr, label in (("rows", "Rows"), ("columns", "Columns"), ("samples", "SamplesPerPixel"),
                        ("bits", "BitsAllocated"), ("signed", "PixelRepresentation")):
        _consistent(prefix, ordered, attr, label)
    _consistent(prefix, ordered, "pixel_spacing", "PixelSpacing", _spacing_close)
    _consistent(prefix, ordered, "slope", "RescaleSlope", lambda a, b: True)  # presence; values may vary
    _consistent(prefix, ordered, "intercept", "RescaleIntercept", lambda a, b: True)
    first = ordered[0]
    for label, value in (("Rows", first.rows), ("Columns", first.columns)):
        if not isinstance(value, float) or value < 1:
            raise LnrtError(f"{prefix}slices have {label} {_show(value)}; expected a positive number")
    ps = first.pixel_spacing
    if not isinstance(ps, tuple) or len(ps) != 2 or not all(math.isfinite(x) and x > 0 for x in ps):
        raise LnrtError(f"{prefix}slices have PixelSpacing {_show(ps)}; expected two positive numbers (mm)")
    for i, s in enumerate(ordered, 1):
        where = f"{prefix}slice {i} of {len(ordered)} (file {s.name}) has"
        if s.slope is not None and (not isinstance(s.slope, float) or not math.isfinite(s.slope) or s.slope <= 0):
            raise LnrtError(f"{where} RescaleSlope {_show(s.slope)}; expected a positive finite slope")
        if s.intercept is not None and (not isinstance(s.intercept, float) or not math.isfinite(s.intercept)):
            raise LnrtError(f"{where} RescaleIntercept {_show(s.intercept)}; expected a finite intercept")
    spacing = _check_positions(prefix, ordered, entry.normal, min(ps))
    has_uids = all(s.study_uid and s.series_uid and s.sop_uid for s in ordered)
    return DicomSeries(
        folder=source, uid=entry.uid, series_uid=entry.series_uid, study_uid=entry.study_uid,
        modality=entry.modality, files=tuple(str(s.path) for s in ordered),
        shape_zyx=(len(ordered), int(first.rows), int(first.columns)),
        spacing_xyz=(float(ps[1]), float(ps[0]), spacing), orientation=entry.orientation,
        has_uids=bool(has_uids), series_in_folder=series_in_folder,
    )


def probe_dicom_folder(folder: Path, series_uid: str | None = None) -> DicomSeries:
    """Choose a series in `folder` and check its geometry from the headers alone: no pixel is decoded.

    Without `series_uid` the largest CT series is chosen; with it, the series whose choice key or
    SeriesInstanceUID it is. Raises `LnrtError` (one line) for anything that would read wrongly."""
    folder = Path(folder)
    source = str(folder)
    if not any(p.is_file() for p in folder.iterdir()):
        raise LnrtError(f"{source}: {_nothing_here(folder) or 'folder is empty'}; expected a DICOM series "
                        "or give an image file")
    slices, unreadable = _scan_folder(folder)
    entries = _group(slices)
    if not entries:
        hint = _nothing_here(folder)
        if hint:
            raise LnrtError(f"{source}: no DICOM slices in this folder: {hint}")
        hint = ""
        if unreadable:
            hint = f" ({len(unreadable)} files could not be read as DICOM, e.g. {unreadable[0][0]}: {unreadable[0][1]})"
        raise LnrtError(f"{source}: no DICOM image series found{hint}; expected a folder of CT DICOM slices")
    entry = _choose(source, entries, series_uid)
    return _validate(source, entry, unreadable, len(entries))


IMAGE_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
SUBFOLDERS_LISTED = 8  # series named in the one-line hint; the rest are counted


def _nothing_here(folder: Path) -> str | None:
    """What a folder without DICOM slices of its own holds instead, as a hint (None: nothing useful):
    image files (give one), or DICOM series in its subfolders (give one subfolder), each with its
    SeriesInstanceUID, modality, slice count and SeriesDescription."""
    images = sorted(p.name for p in folder.iterdir()
                    if p.is_file() and p.name.lower().endswith(IMAGE_FILE_SUFFIXES))
    if images:
        shown = ", ".join(images[:3]) + (", ..." if len(images) > 3 else "")
        return (f"it holds {len(images)} image file{'s' * (len(images) > 1)} ({shown}), not a DICOM series; "
                f"give one file (lnrt infer {folder / images[0]}), or run them all with "
                f"lnrt batch {folder} --out DIR")
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        slices, _ = _scan_folder(sub)
        for entry in _group(slices):
            desc = _most_common([s.description for s in entry.slices])
            found.append(f"{sub.name} ({entry.uid}, {entry.modality or 'unknown'}, {len(entry.slices)} slices"
                         + (f", '{desc}'" if desc else "") + ")")
    if not found:
        return None
    listed = "; ".join(found[:SUBFOLDERS_LISTED]) + (f"; and {len(found) - SUBFOLDERS_LISTED} more"
                                                     if len(found) > SUBFOLDERS_LISTED else "")
    return (f"{len(found)} DICOM series in its subfolders: {listed}; give one subfolder "
            f"(lnrt infer {folder / found[0].split(' (')[0]}), or run them all with "
            f"lnrt batch {folder} --out DIR")


def read_dicom_series(series: DicomSeries) -> tuple[Volume, ScanInfo]:
    """Read a probed series' voxels (ITK reads each file's pixels once) and check ITK's geometry."""
    source = series.folder
    prefix = f"{source}: series {series.uid}: "
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    try:
        with quiet_native():  # ITK's and GDCM's messages to the debug log, not the terminal
            # GDCM applies Rescale Slope / Intercept: values come back in HU.
            image = reader.Execute()
    except RuntimeError as exc:
        raise LnrtError(f"{prefix}cannot read the DICOM series ({_last_line(exc)})") from None
    size = tuple(image.GetSize())
    expected = tuple(series.shape_zyx[::-1])
    if len(size) != 3 or size != expected:
        raise LnrtError(f"{prefix}ITK read {size} voxels (x, y, z) where the headers declare {expected}; expected "
                        "the headers' shape")
    spacing = image.GetSpacing()
    tol = slice_spacing_tolerance(series.spacing_xyz[2])
    if abs(spacing[2] - series.spacing_xyz[2]) > tol:
        raise LnrtError(f"{prefix}ITK reads a slice spacing of {_mm(spacing[2])} mm where the slice positions are "
                        f"{_mm(series.spacing_xyz[2])} mm apart; expected the two to agree")
    vol = _from_sitk(image, source)
    info = ScanInfo(
        path=source, kind="dicom", stem=stem_of(source), series_uid=series.series_uid,
        study_uid=series.study_uid, modality=series.modality,
        extra={"slices": len(series.files), "series_in_folder": series.series_in_folder,
               "slice_spacing_mm": round(float(series.spacing_xyz[2]), 6), "orientation": series.orientation,
               "series_choice": series.uid},
        files=list(series.files),
    )
    return vol, info


def read_dicom_folder(folder: Path, series_uid: str | None = None) -> tuple[Volume, ScanInfo]:
    """Probe the folder (all checks on the headers), then read the chosen series' voxels once."""
    return read_dicom_series(probe_dicom_folder(Path(folder), series_uid))


__all__ = ["DicomSeries", "list_dicom_series", "probe_dicom_folder", "read_dicom_folder", "read_dicom_series",
           "slice_spacing_tolerance", "SLICE_SPACING_ATOL_MM", "SLICE_SPACING_RTOL"]
