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
    inp = report.get("input") or {}
    if inp.get("kind") not in ("file", "dicom"):
        raise LnrtError(f"{report_path}: the run's input was {inp.get('kind')!r}, not a scan file or DICOM folder; "
                        "expected the report of lnrt infer on a file or folder")
    scan = Path(inp["path"])
    labels_path = report_path.parent / f"{inp['stem']}{SUFFIXES['labels']}"
    if not labels_path.is_file():
        raise LnrtError(f"{labels_path}: missing; expected the label map beside its report")
    vol, info = read_scan(scan, series_uid=inp.get("series_choice") or inp.get("series_uid"), check_hu=False)
    _check_geometry(f"the scan {scan}", vol, inp, report_path)
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
