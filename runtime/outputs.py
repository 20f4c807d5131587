"""The outputs of one scan (docs/ARCHITECTURE.md, "Contracts"), written all-or-nothing.

`DIR/<stem>.nodes.nii.gz` (uint16 instance labels on the input's grid), `DIR/<stem>.report.json`
and `DIR/<stem>.nodes.csv`. Existing files are not replaced unless `overwrite`; every file is written
to a temporary name in DIR first and renamed only when all of them are complete.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import SimpleITK as sitk

from .atomic import Staging
from .errors import LnrtError

SCHEMA = "lnrt.report/1"
SUFFIXES = {"labels": ".nodes.nii.gz", "report": ".report.json", "csv": ".nodes.csv"}
EXTRA_SUFFIXES = {"viewer_nrrd": ".nodes.seg.nrrd", "viewer_labels": ".nodes.label.txt",
                  "qc_html": ".qc.html", "qc_dir": ".qc", "dicom_seg": ".seg.dcm", "dicom_sr": ".sr.dcm"}
CSV_COLUMNS = [
    "id", "class", "volume_mm3", "voxels", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "long_axis_mm", "short_axis_mm", "axis_slice", "max_diameter_3d_mm", "mean_hu", "probability",
    "recist", "bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1",
]


def planned_extras(is_dicom: bool, viewer: bool = True, qc: bool = False, dicom_seg: bool | None = None,
                   dicom_sr: bool = False) -> tuple:
    """The optional outputs (EXTRA_SUFFIXES keys) a save writes; a DICOM SEG is automatic for DICOM
    input, and an SR always comes with the SEG it references."""
    seg = is_dicom if dicom_seg is None else dicom_seg
    out = (("viewer_nrrd", "viewer_labels") if viewer else ()) + (("qc_html", "qc_dir") if qc else ())
    if seg or dicom_sr:
        out += ("dicom_seg",)
    return out + (("dicom_sr",) if dicom_sr else ())


def output_paths(out_dir: str | os.PathLike, stem: str) -> dict:
    d = Path(out_dir)
    return {k: d / f"{stem}{s}" for k, s in SUFFIXES.items()}


def check_writable(out_dir: str | os.PathLike, stem: str, overwrite: bool,
                   inputs: tuple = (), extras: tuple = ()) -> dict:
    """Fail before any work if outputs exist (without overwrite) or would replace an input.

    `extras` names optional outputs (keys of EXTRA_SUFFIXES) that will be written too."""
    paths = output_paths(out_dir, stem)
    paths.update({k: Path(out_dir) / f"{stem}{EXTRA_SUFFIXES[k]}" for k in extras})
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise LnrtError(f"{d}: exists and is not a folder; expected an output folder")
    resolved_inputs = {Path(p).resolve() for p in inputs}
    for p in paths.values():
        if p.resolve() in resolved_inputs:
            raise LnrtError(f"{p}: output would replace an input; choose another --out folder")
        if p.exists() and not overwrite:
            raise LnrtError(f"{p}: already exists; pass --overwrite to replace it")
    return paths


@dataclass(frozen=True)
class OutputPlan:
    """What a save will write, checked before any work: the paths (the three contract files first,
    then the extras) and whether existing ones may be replaced."""

    out_dir: Path
    stem: str
    paths: dict
    extras: tuple
    overwrite: bool

    def without(self, *keys: str) -> "OutputPlan":
        """The same plan less some extras (an automatic DICOM SEG that cannot be built)."""
        return replace(self, paths={k: v for k, v in self.paths.items() if k not in keys},
                       extras=tuple(e for e in self.extras if e not in keys))


def plan(out_dir: str | os.PathLike, stem: str, overwrite: bool = False, inputs: tuple = (),
         is_dicom: bool = False, viewer: bool = True, qc: bool = False, dicom_seg: bool | None = None,
         dicom_sr: bool = False) -> OutputPlan:
    """The pre-flight of a save, done once by the CLI before any work and once by `Result.save`: which
    files, whether they may be written there, and whether the input can give what was asked."""
    extras = planned_extras(is_dicom, viewer, qc, dicom_seg, dicom_sr)
    if "dicom_seg" in extras and not is_dicom:
        raise LnrtError(f"{inputs[0] if inputs else stem}: DICOM SEG and SR need a DICOM series as input; "
                        "expected a DICOM folder (or drop --dicom-seg/--dicom-sr)")
    paths = check_writable(out_dir, stem, overwrite, inputs, extras)
    return OutputPlan(Path(out_dir), stem, paths, extras, overwrite)


def nodes_csv(nodes: list) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for n in nodes:
        c = n["centroid_mm"]
        b = n["bbox_voxels"]
        w.writerow([n["id"], n["class"], n["volume_mm3"], n["voxels"], c[0], c[1], c[2],
                    n["long_axis_mm"], n["short_axis_mm"], n["axis_slice"], n["max_diameter_3d_mm"],
                    "" if n["mean_hu"] is None else n["mean_hu"],
                    "" if n["probability"] is None else n["probability"], n["recist"], *b])
    return buf.getvalue()


def write_outputs(plan: OutputPlan, label_image: sitk.Image, report: dict) -> dict:
    """The three contract files, all or nothing (the plan was checked by `plan`)."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: plan.paths[k] for k in SUFFIXES}
    try:
        with Staging() as staged:
            sitk.WriteImage(label_image, str(staged.path(paths["labels"])), useCompression=True)
            staged.path(paths["report"]).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            staged.path(paths["csv"]).write_text(nodes_csv(report["nodes"]), encoding="utf-8")
            staged.commit()
    except OSError as exc:
        raise LnrtError(f"{plan.out_dir}: cannot write outputs ({exc.strerror or exc})") from None
    return paths
