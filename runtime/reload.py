"""A finished run read back from its outputs, so outputs can be added later without recomputing
(`lnrt report REPORT.json --qc`, issue 17): the report, the label map beside it and the scan it names.

Nothing is trusted blindly: the scan must still be where the report says, with the same geometry (size,
spacing, origin, direction), the label map must have that geometry too, and its labels must be exactly
the report's node ids. A run on an in-memory volume, or a `measure` report, has no scan to read back.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import LnrtError
from .imageio import read_image_file, read_scan
from .outputs import SCHEMA, SUFFIXES

GEOMETRY_RTOL = 1e-5  # NIfTI keeps spacing and origin as float32: 1e-7 relative, with margin


def _close(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=GEOMETRY_RTOL, atol=1e-4))


def read_report(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise LnrtError(f"{path}: cannot read the report ({exc}); expected an lnrt report (.report.json)") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise LnrtError(f"{path}: not an lnrt report (schema {report.get('schema') if isinstance(report, dict) else None!r}); "
                        f"expected {SCHEMA!r}")
    return report


def _numbers(v, n: int) -> bool:
    return (isinstance(v, list) and len(v) == n
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v))


def check_report(report: dict, path: Path) -> None:
    """The fields a reload reads, with their types (a hand-edited report is refused in one line)."""
    def bad(key, value, expected):
        raise LnrtError(f"{path}: {key} is {json.dumps(value)[:80]}; expected {expected}")

    inp = report.get("input")
    if not isinstance(inp, dict):
        bad("input", inp, "an object")
    for key in ("path", "stem", "kind"):
        if not isinstance(inp.get(key), str) or not inp.get(key):
            bad(f"input.{key}", inp.get(key), "a non-empty string")
    for key, n in (("size_xyz", 3), ("spacing_xyz_mm", 3), ("origin_xyz_mm", 3), ("direction", 9)):
        if not _numbers(inp.get(key), n):
            bad(f"input.{key}", inp.get(key), f"{n} finite numbers")
    nodes = report.get("nodes")
    if not isinstance(nodes, list):
        bad("nodes", nodes, "a list of node objects")
    seen = set()
    for i, n in enumerate(nodes):
        if not isinstance(n, dict):
            bad(f"nodes[{i}]", n, "a node object")
        nid = n.get("id")
        if not isinstance(nid, int) or isinstance(nid, bool) or nid < 1 or nid in seen:
            bad(f"nodes[{i}].id", nid, "a positive integer id, once")
        seen.add(nid)
        for key in ("short_axis_mm", "long_axis_mm", "volume_mm3"):
            v = n.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
                bad(f"nodes[{i}].{key}", v, "a finite number >= 0")
        if not _numbers(n.get("centroid_mm"), 3):
            bad(f"nodes[{i}].centroid_mm", n.get("centroid_mm"), "3 finite numbers")
        s = n.get("axis_slice")
        if s is not None and (not isinstance(s, int) or isinstance(s, bool) or s < 0):
            bad(f"nodes[{i}].axis_slice", s, "null or a slice index >= 0")
        for key in ("long_axis_ends_mm", "short_axis_ends_mm"):
            ends = n.get(key)
            if (s is None) != (ends is None) or (ends is not None and not (
                    isinstance(ends, list) and len(ends) == 2 and all(_numbers(e, 3) for e in ends))):
                bad(f"nodes[{i}].{key}", ends, "two 3D points (null exactly when axis_slice is null)")
        if n.get("recist") not in ("normal", "pathological", "enlarged"):
            bad(f"nodes[{i}].recist", n.get("recist"), "normal, pathological or enlarged")


def _check_slices(report: dict, vol, path: Path) -> None:
    from .volume import Orientation

    axis = int(Orientation.of(vol.direction).perm[0])
    for n in report["nodes"]:
        if n.get("axis_slice") is not None and n["axis_slice"] >= vol.shape[axis]:
            raise LnrtError(f"{path}: node {n['id']} was measured on slice {n['axis_slice']}, outside the scan's "
                            f"{vol.shape[axis]} slices; expected the report of this scan")


def _check_geometry(what: str, vol, inp: dict, report_path: Path) -> None:
    same = (list(vol.shape[::-1]) == list(inp["size_xyz"]) and _close(vol.spacing, inp["spacing_xyz_mm"])
            and _close(vol.origin, inp["origin_xyz_mm"]) and _close(np.ravel(vol.direction), inp["direction"]))
    if not same:
        raise LnrtError(f"{report_path}: {what} has size {vol.shape[::-1]}, spacing {tuple(round(v, 4) for v in vol.spacing)} "
                        f"where the report records {tuple(inp['size_xyz'])}, {tuple(round(v, 4) for v in inp['spacing_xyz_mm'])}; "
                        "expected the scan and label map of this run (run lnrt infer again)")


def load_result(report_path: str | os.PathLike):
    """The `Result` of a finished `lnrt infer` run, from its report (checked against the scan and the
    label map, see the module's docstring)."""
    from .session import Result

    report_path = Path(report_path)
    report = read_report(report_path)
    check_report(report, report_path)
    inp = report["input"]
    if inp.get("kind") not in ("file", "dicom"):
        raise LnrtError(f"{report_path}: the run's input was {inp.get('kind')!r}, not a scan file or DICOM folder; "
                        "expected the report of lnrt infer on a file or folder")
    scan = Path(inp["path"])
    labels_path = report_path.parent / f"{inp['stem']}{SUFFIXES['labels']}"
    if not labels_path.is_file():
        raise LnrtError(f"{labels_path}: missing; expected the label map beside its report")
    vol, info = read_scan(scan, series_uid=inp.get("series_choice") or inp.get("series_uid"), check_hu=False)
    _check_geometry(f"the scan {scan}", vol, inp, report_path)
    _check_slices(report, vol, report_path)
    lab = read_image_file(labels_path)
    _check_geometry(f"the label map {labels_path.name}", lab, inp, report_path)
    ids = {int(n["id"]) for n in report.get("nodes", [])}
    found = set(np.unique(lab.array).tolist()) - {0}
    if found != ids:
        raise LnrtError(f"{labels_path}: holds labels {sorted(found)[:10]} where the report lists nodes "
                        f"{sorted(ids)[:10]}; expected the label map of this report")
    return Result(labels=np.ascontiguousarray(lab.array, dtype=np.uint16), geometry=vol, nodes=report["nodes"],
                  timings={}, info=info, model=report.get("model"), settings=report.get("settings", {}),
                  warnings=list(report.get("warnings", [])))
