"""The outputs of one scan (docs/ARCHITECTURE.md, "Contracts"), written all-or-nothing.

`DIR/<stem>.nodes.nii.gz` (uint16 instance labels on the input's grid), `DIR/<stem>.report.json`
and `DIR/<stem>.nodes.csv`; for a multi-class model (more than two classes) also
`DIR/<stem>.classes.nii.gz` (uint8: each node's voxels hold its voted class index). Existing files are
not replaced unless `overwrite`; every file is written to a temporary name in DIR first and renamed only
when all of them are complete.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import SimpleITK as sitk

from .atomic import Staging
from .errors import LnrtError
from .nodes import is_multiclass

SCHEMA = "lnrt.report/1"
SUFFIXES = {"labels": ".nodes.nii.gz", "report": ".report.json", "csv": ".nodes.csv"}
EXTRA_SUFFIXES = {"classes": ".classes.nii.gz",
                  "viewer_nrrd": ".nodes.seg.nrrd", "viewer_labels": ".nodes.label.txt",
                  "qc_html": ".qc.html", "qc_dir": ".qc", "dicom_seg": ".seg.dcm", "dicom_sr": ".sr.dcm"}
CSV_COLUMNS = [
    "id", "class", "volume_mm3", "voxels", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "long_axis_mm", "short_axis_mm", "axis_slice", "max_diameter_3d_mm", "mean_hu", "probability",
    "recist", "bbox_z0", "bbox_y0", "bbox_x0", "bbox_z1", "bbox_y1", "bbox_x1",
    "slice_position_mm", "instance_number", "sop_instance_uid", "side",  # lnrt.references
]


def planned_extras(is_dicom: bool, viewer: bool = True, qc: bool = False, dicom_seg: bool | None = None,
                   dicom_sr: bool = False, multiclass: bool = False) -> tuple:
    """The optional outputs (EXTRA_SUFFIXES keys) a save writes; a DICOM SEG is automatic for DICOM
    input, and an SR always comes with the SEG it references; a multi-class model's class map always."""
    seg = is_dicom if dicom_seg is None else dicom_seg
    out = (("classes",) if multiclass else ()) + (("viewer_nrrd", "viewer_labels") if viewer else ())
    out += ("qc_html", "qc_dir") if qc else ()
    if seg or dicom_sr:
        out += ("dicom_seg",)
    return out + (("dicom_sr",) if dicom_sr else ())


def output_paths(out_dir: str | os.PathLike, stem: str) -> dict:
    d = Path(out_dir)
    return {k: d / f"{stem}{s}" for k, s in SUFFIXES.items()}


NAME_MAX = 255  # bytes in one file name on ext4, xfs, btrfs, tmpfs (os.pathconf says where it can)


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return NAME_MAX


def _existing_ancestor(d: Path) -> Path:
    """The nearest folder of `d` (itself or a parent) that exists; a file on the way is an error."""
    for p in (d, *d.parents):
        if p.exists():
            if not p.is_dir():
                raise LnrtError(f"{d}: {p} is a file, not a folder; expected an output folder that can be created")
            return p
    return Path(".")


def _probe_write(folder: Path, out_dir: Path) -> None:
    """Create and remove a file in `folder`: the one test of writability that also holds for root and
    for read-only mounts (os.access answers yes to root on a read-only folder)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lnrt-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise LnrtError(f"{out_dir}: cannot write there ({exc.strerror or exc}); expected a writable output "
                        "folder (choose another --out)") from None


def check_writable(out_dir: str | os.PathLike, stem: str, overwrite: bool,
                   inputs: tuple = (), extras: tuple = (), contract: bool = True) -> dict:
    """Fail before any work if outputs exist (without overwrite), would replace an input or land inside
    an input DICOM folder, have names too long for the file system, or cannot be written at all.

    `extras` names optional outputs (keys of EXTRA_SUFFIXES) that will be written too; `contract=False`
    plans the extras alone (outputs added to a finished run, `lnrt report`)."""
    paths = output_paths(out_dir, stem) if contract else {}
    paths.update({k: Path(out_dir) / f"{stem}{EXTRA_SUFFIXES[k]}" for k in extras})
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise LnrtError(f"{d}: exists and is not a folder; expected an output folder")
    base = _existing_ancestor(d)
    resolved_inputs = {Path(p).resolve() for p in inputs}
    out_resolved = d.resolve()
    for folder in (p for p in resolved_inputs if p.is_dir()):
        if out_resolved == folder or folder in out_resolved.parents:
            raise LnrtError(f"{d}: is inside the input folder {folder}; outputs there would mix with the "
                            "input series: choose another --out folder")
    limit = _name_max(base)
    for p in paths.values():
        if len(os.fsencode(p.name)) > limit:
            raise LnrtError(f"{p.name[:60]}...: output file name is {len(os.fsencode(p.name))} bytes, longer "
                            f"than the file system's {limit}; expected a shorter input name")
        if p.resolve() in resolved_inputs:
            raise LnrtError(f"{p}: output would replace an input; choose another --out folder")
        if p.exists() and not overwrite:
            raise LnrtError(f"{p}: already exists; expected a new output name (--overwrite on the command "
                            "line, overwrite=True in Python, replaces it)")
    _probe_write(base, d)
    return paths


def check_extras_installed(extras: tuple, explicit_dicom: bool) -> None:
    """The optional packages the outputs need, found before any work: Pillow for QC pictures, highdicom
    and pydicom for a DICOM SEG/SR that was asked for (an automatic SEG is skipped with a warning)."""
    from importlib.util import find_spec

    from .errors import missing_extra

    if "qc_html" in extras and find_spec("PIL") is None:
        raise missing_extra("Pillow", "qc")
    if explicit_dicom and "dicom_seg" in extras:
        for module in ("pydicom", "highdicom"):
            if find_spec(module) is None:
                raise missing_extra(module, "clinical")


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
         dicom_sr: bool = False, has_uids: bool | None = None, contract: bool = True,
         multiclass: bool = False) -> OutputPlan:
    """The pre-flight of a save, done once by the CLI before any work and once by `Result.save`: which
    files, whether they may be written there, whether the packages they need are installed, and
    whether the input can give what was asked (`has_uids`: the DICOM series carries the UIDs a SEG
    references; None when not known yet; `multiclass`: the model has more than two classes, so the class
    map is written too)."""
    extras = planned_extras(is_dicom, viewer, qc, dicom_seg, dicom_sr, multiclass and contract)
    source = inputs[0] if inputs else stem
    if "dicom_seg" in extras and not is_dicom:
        raise LnrtError(f"{source}: DICOM SEG and SR need a DICOM series as input; "
                        "expected a DICOM folder (or drop --dicom-seg/--dicom-sr)")
    explicit = bool(dicom_seg) or dicom_sr
    check_extras_installed(extras, explicit)
    if explicit and has_uids is False:
        raise LnrtError(f"{source}: the series lacks Study, Series or SOP Instance UIDs (anonymised without "
                        "UIDs), which a DICOM SEG must reference; expected a series with UIDs (or --no-dicom-seg)")
    paths = check_writable(out_dir, stem, overwrite, inputs, extras, contract)
    return OutputPlan(Path(out_dir), stem, paths, extras, overwrite)


def class_columns(classes: list | None) -> list:
    """The multi-class CSV columns (none for a binary model): `fraction_<class>` then `mean_prob_<class>`
    for each foreground class, in the manifest's order."""
    if not is_multiclass(classes):
        return []
    fg = list(classes)[1:]
    return [f"fraction_{c}" for c in fg] + [f"mean_prob_{c}" for c in fg]


def _class_cells(n: dict, classes: list) -> list:
    fg = list(classes)[1:]
    cells = []
    for key in ("class_fractions", "class_mean_prob"):
        values = n.get(key) or {}
        cells += ["" if values.get(c) is None else values[c] for c in fg]
    return cells


def nodes_csv(nodes: list, classes: list | None = None) -> str:
    """The node table as CSV: CSV_COLUMNS, then `class_columns(classes)` for a multi-class model."""
    extra = class_columns(classes)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS + extra)
    for n in nodes:
        c = n["centroid_mm"]
        b = n["bbox_voxels"]
        w.writerow([n["id"], n["class"], n["volume_mm3"], n["voxels"], c[0], c[1], c[2],
                    n["long_axis_mm"], n["short_axis_mm"], n["axis_slice"], n["max_diameter_3d_mm"],
                    "" if n["mean_hu"] is None else n["mean_hu"],
                    "" if n["probability"] is None else n["probability"], n["recist"], *b,
                    *("" if n.get(k) is None else n[k]
                      for k in ("slice_position_mm", "instance_number", "sop_instance_uid", "side")),
                    *(_class_cells(n, classes) if extra else ())])
    return buf.getvalue()


@dataclass(frozen=True)
class Output:
    """One file (or folder) of a save: `write(path)` writes it complete at a temporary path."""

    write: Callable[[Path], object]
    folder: bool = False


def write_outputs(plan: OutputPlan, outputs: dict) -> dict:
    """Every file of a save, all or nothing: each `Output` is written under a temporary name in the
    output folder, and only when all are complete and on the disk are they renamed into place (see
    `lnrt.atomic`). A failure or an interrupt removes the staged files and leaves older outputs as they
    were. `outputs` maps plan keys to `Output`s; returns {key: final path}."""
    unplanned = set(outputs) - set(plan.paths)
    if unplanned:
        raise ValueError(f"outputs not in the plan: {sorted(unplanned)}")
    created = not plan.out_dir.exists()
    try:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        with Staging() as staged:
            for key, out in outputs.items():
                out.write(staged.path(plan.paths[key], folder=out.folder))
            with folder_lock(plan.out_dir):  # two runs into one folder: one commits, then the other checks
                if not plan.overwrite:
                    taken = [plan.paths[k] for k in outputs if plan.paths[k].exists()]
                    if taken:
                        raise LnrtError(f"{taken[0]}: appeared while this run worked (another run writing into "
                                        f"{plan.out_dir}?); nothing was written; expected a new output name "
                                        "(--overwrite replaces it)")
                staged.commit()
    except OSError as exc:
        if created:
            _remove_empty(plan.out_dir)
        raise LnrtError(f"{plan.out_dir}: cannot write outputs ({exc.strerror or exc}); nothing was written"
                        ) from None
    except BaseException:
        if created:
            _remove_empty(plan.out_dir)
        raise
    return {k: plan.paths[k] for k in outputs}


@contextmanager
def folder_lock(folder: Path):
    """An exclusive flock on the output folder itself (no lock file is left behind) while a run checks
    that its names are free and renames its files into place; where flock does not exist, nothing."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def write_image_file(image: sitk.Image, path: Path) -> None:
    """SimpleITK's writer, its failures (a full disk) as the OSError they are."""
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise OSError(f"cannot write {path.name}: {(lines[-1] if lines else 'unknown error')[:160]}") from None


def contract_outputs(label_image: sitk.Image, report: dict) -> dict:
    """The three contract files as `Output`s."""
    return {
        "labels": Output(lambda p: write_image_file(label_image, p)),
        "report": Output(lambda p: p.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")),
        "csv": Output(lambda p: p.write_text(nodes_csv(report["nodes"], (report.get("model") or {}).get("classes")),
                                             encoding="utf-8")),
    }
