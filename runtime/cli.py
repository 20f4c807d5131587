"""The `lnrt` command line: a thin layer over the Python API (`Session`, `measure`).

User errors (`LnrtError`) are printed on one line, without a traceback, with exit status 2.
"""
from __future__ import annotations

import json
import logging
import sys
import time

import click

from ._version import __version__
from .backends import NAMES as BACKEND_NAMES
from .device import DEVICES
from .errors import LnrtError, one_line


class Finite(click.FloatRange):
    """A float option that must be a finite number in its range (click lets `nan` through a range,
    which would turn a check off)."""

    def convert(self, value, param, ctx):
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Progress:
    """Stage progress on stderr: every stage (reading, resampling, writing ...) with its time, the
    network's tiles with the elapsed time and an estimate of the time left. On a terminal one redrawn
    line; otherwise one line per finished stage (so a run refused while reading prints only its error)
    and the network's start and end."""

    LABELS = {"read": "reading", "preprocess": "resampling to the model grid", "postprocess": "resampling back",
              "components": "components", "rules": "rules", "measure": "measuring", "output": "label map",
              "write": "writing outputs"}
    active = None  # the drawn progress line, cleared before an error is printed

    def __init__(self, enabled: bool, tty: bool | None = None):
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.t0 = time.perf_counter()
        self.stage_t0 = self.t0
        self.pending = None  # a started stage whose line is printed when it ends (not a terminal)

    def _elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _end_pending(self) -> None:
        if self.pending is not None:
            click.echo(f"{self.pending}: {time.perf_counter() - self.stage_t0:.1f} s", err=True)
            self.pending = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if total == 0:  # a stage without steps, starting
            if not self.tty:
                self._end_pending()
            self.stage_t0 = time.perf_counter()
            label = self.LABELS.get(stage, stage)
            if self.tty:
                self._draw(f"{label} ({self._elapsed():.1f} s)")
            else:
                self.pending = label
            return
        if done == 0:
            if not self.tty:
                self._end_pending()
            self.stage_t0 = time.perf_counter()
        spent = time.perf_counter() - self.stage_t0
        eta = f", about {spent / done * (total - done):.0f} s left" if 0 < done < total else ""
        if self.tty:
            fill = int(30 * done / total)
            self._draw(f"{stage:>10} [{'#' * fill}{'.' * (30 - fill)}] {done}/{total} tiles, "
                       f"{self._elapsed():.1f} s{eta}")
        elif done == 0 or done >= total:
            click.echo(f"{stage}: {done}/{total} tiles ({self._elapsed():.1f} s)", err=True)

    def _draw(self, text: str) -> None:
        click.echo(f"\r{text:<79}", err=True, nl=False)
        Progress.active = self

    def finish(self) -> None:
        """The run's last line: the total time (a terminal's redrawn line ends here)."""
        if not self.enabled:
            return
        if self.tty:
            click.echo(f"\r{'done in ' + format(self._elapsed(), '.1f') + ' s':<79}", err=True)
            Progress.active = None
        else:
            self._end_pending()
            click.echo(f"done in {self._elapsed():.1f} s", err=True)

    @classmethod
    def clear(cls) -> None:
        """Wipe a drawn progress line, so an error starts its own clean line."""
        if cls.active is not None:
            click.echo("\r" + " " * 79 + "\r", err=True, nl=False)
            cls.active = None


def _echo_table(nodes: list) -> None:
    if not nodes:
        click.echo("no nodes found")
        return
    # "image": the DICOM Instance Number a PACS shows (when the input has one), "slice": the array index,
    # "at mm": the slice's position along its normal (lnrt.references)
    images = any(n.get("instance_number") is not None for n in nodes)
    classes = any(n.get("class_fractions") for n in nodes)  # a multi-class model: the voted class too
    head = f"{'image':>6} " if images else ""
    cls_head = f"{'class (voxel share)':<22} " if classes else ""
    click.echo(f"{'id':>4} {'short mm':>9} {'long mm':>8} {'vol mm3':>9} {head}{'slice':>6} {'at mm':>8} "
               f"{'side':<8} {'recist':<12} {cls_head}centroid (x, y, z) mm")

    def text(value, fmt=""):
        return "-" if value is None else format(value, fmt)

    for n in sorted(nodes, key=lambda n: -n["short_axis_mm"]):
        c = ", ".join(f"{v:.1f}" for v in n["centroid_mm"])
        image = f"{text(n.get('instance_number')):>6} " if images else ""
        share = (n.get("class_fractions") or {}).get(n["class"])
        cls = f"{n['class'] + ('' if share is None else f' ({share:.0%})'):<22} " if classes else ""
        click.echo(f"{n['id']:>4} {n['short_axis_mm']:>9.1f} {n['long_axis_mm']:>8.1f} "
                   f"{n['volume_mm3']:>9.0f} {image}{text(n['axis_slice']):>6} "
                   f"{text(n.get('slice_position_mm'), '.1f'):>8} {text(n.get('side')):<8} {n['recist']:<12} "
                   f"{cls}({c})")


def _finish(result, out, overwrite: bool, as_json: bool, quiet: bool, save: dict,
            progress: Progress | None = None) -> None:
    progress = progress or Progress(False)
    progress("write", 0, 0)
    paths = result.save(out, overwrite=overwrite, **save)
    progress.finish()
    if as_json:
        click.echo(json.dumps(result.report(), indent=2))
        return
    _echo_table(result.nodes)  # the warnings were logged once, as they arose (and are in the report)
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lnrt")
@click.option("-v", "--verbose", is_flag=True, help="Log backend choices and fallbacks.")
@click.option("--debug", is_flag=True, help="Print the traceback of an internal error (and debug logs).")
def cli(verbose: bool, debug: bool) -> None:
    """lnrt: find and measure lymph nodes in head-and-neck CT."""
    _configure_logging(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)


def _configure_logging(level: int | None) -> None:
    """One stderr handler on the "lnrt" logger, replaced at every invocation (main() may run many times
    in one process); other libraries' logging is left as it is."""
    logger = logging.getLogger("lnrt")
    for h in [h for h in logger.handlers if getattr(h, "lnrt_cli", False)]:
        logger.removeHandler(h)
    if level is None:
        logger.setLevel(logging.NOTSET)
        return
    handler = _StderrHandler()
    handler.lnrt_cli = True
    handler.setFormatter(_LogFormat())
    logger.addHandler(handler)
    logger.setLevel(level)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record arrives (not the stream of the moment the CLI
    started: a caller or a test may have swapped it since)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _LogFormat(logging.Formatter):
    """`lnrt: warning: ...` for warnings, `lnrt: ...` for the rest: every warning is logged once, as it
    arises, and the report's `warnings` holds the same text."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = "lnrt: warning: " if record.levelno == logging.WARNING else "lnrt: "
        return prefix + record.getMessage()


def _quiet_logs(quiet: bool) -> None:
    """--quiet and --json: lnrt's warnings stay in the report (and --json's stdout), off stderr."""
    if quiet:
        logging.getLogger("lnrt").setLevel(logging.ERROR)


out_option = click.option("--out", "out", type=click.Path(file_okay=False), default=".",
                          show_default=True, help="Output folder.")
common = [
    click.option("--overwrite", is_flag=True, help="Replace existing outputs."),
    click.option("--quiet", "-q", is_flag=True, help="No progress or warnings on stderr."),
    click.option("--json", "as_json", is_flag=True, help="Print only the JSON report on stdout."),
]


clinical = [
    click.option("--viewer/--no-viewer", default=True, show_default=True,
                 help="Also write <stem>.nodes.seg.nrrd (3D Slicer) and <stem>.nodes.label.txt (ITK-SNAP)."),
    click.option("--qc", is_flag=True, help="Write QC pictures (<stem>.qc/) and a self-contained <stem>.qc.html."),
    click.option("--dicom-seg/--no-dicom-seg", default=None,
                 help="Write a DICOM SEG (default: on for DICOM input)."),
    click.option("--dicom-sr", is_flag=True, help="Write a DICOM SR (TID 1500) with each node's axes."),
    click.option("--seg-segments", type=click.Choice(["node", "class"]), default="node", show_default=True,
                 help="One SEG segment per node or per class."),
    click.option("--manufacturer", default="lnrt", show_default=True, help="DICOM Manufacturer."),
    click.option("--manufacturer-model", default="lnrt", show_default=True, help="DICOM Manufacturer's Model Name."),
    click.option("--device-serial", default="0", show_default=True, help="DICOM Device Serial Number."),
    click.option("--institution", default=None, help="DICOM Institution Name."),
]


def with_common(f):
    for opt in reversed(common + clinical):
        f = opt(f)
    return out_option(f)


def clinical_options(f):
    for opt in reversed(clinical):
        f = opt(f)
    return f


def _check_out(out: str) -> None:
    if not str(out).strip():
        raise LnrtError("--out is empty; expected an output folder (--out . for the current one)")


def _save_options(kw: dict) -> dict:
    from .dicom_out import Equipment

    return {"viewer": kw.pop("viewer"), "qc": kw.pop("qc"), "dicom_seg": kw.pop("dicom_seg"),
            "dicom_sr": kw.pop("dicom_sr"), "seg_segments": kw.pop("seg_segments"),
            "equipment": Equipment(kw.pop("manufacturer"), kw.pop("manufacturer_model"),
                                   kw.pop("device_serial"), kw.pop("institution"))}


def _multiclass(model) -> bool:
    """Whether the package (its manifest only, no file hashed) has more than two classes, so that the
    pre-flight also checks the class map's name."""
    from .nodes import is_multiclass
    from .package import ModelPackage

    return is_multiclass(ModelPackage.load(model, verify=False).classes)


def _flags(save: dict) -> tuple:
    return tuple(save[k] for k in ("viewer", "qc", "dicom_seg", "dicom_sr"))


model_options = [
    click.option("--model", type=click.Path(), default=None, help="Model package folder (default: embedded)."),
    click.option("--backend", type=click.Choice(BACKEND_NAMES), default="auto",
                 show_default=True, help="auto: the first usable of " + ", ".join(BACKEND_NAMES[1:]) + "."),
    click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
    click.option("--variant", type=click.Choice(["fp32", "fp16", "int8", "bf16"]), default="fp32", show_default=True,
                 help="Model precision; bf16 is the fp32 model with OpenVINO's bf16 hint (CPUs with bf16)."),
    click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads (default: all cores)."),
    click.option("--batch-size", type=click.IntRange(1, 256), default=None, help="Tiles per network call."),
    click.option("--tta/--no-tta", default=None, help="Mirroring test-time augmentation (default: model's)."),
    click.option("--max-memory-gb", type=Finite(0.1), default=None,
                 help="Refuse volumes whose estimated peak memory is above this (default: 80% of RAM)."),
    click.option("--no-hu-check", is_flag=True, help="Skip the check that the scan is CT in HU."),
    click.option("--all-regions", is_flag=True,
                 help="Report findings outside the neck too (turns off the model's neck-region rule)."),
    click.option("--min-short-axis-px", type=Finite(0), default=None,
                 help="Drop findings with a short axis below this many in-plane pixels (default: model's)."),
    click.option("--split-touching-mm", type=Finite(0), default=None,
                 help="Cut touching nodes apart at waists this deep in mm, 0 to keep components whole "
                      "(default: model's)."),
]


def with_model(f):
    for opt in reversed(model_options):
        f = opt(f)
    return f


def _session_options(kw: dict) -> dict:
    """`Session`'s keyword arguments from the model options (removed from `kw`)."""
    tta = kw.pop("tta")
    return {"model": kw.pop("model"), "backend": kw.pop("backend"), "device": kw.pop("device"),
            "variant": kw.pop("variant"), "threads": kw.pop("threads"), "batch_size": kw.pop("batch_size"),
            "mirror_axes": None if tta is None else ((0, 1, 2) if tta else ()),
            "memory_limit_gb": kw.pop("max_memory_gb"), "neck_region": not kw.pop("all_regions"),
            "min_short_axis_px": kw.pop("min_short_axis_px"), "split_touching_mm": kw.pop("split_touching_mm")}


@cli.command()
@click.argument("scan", type=click.Path(exists=False))
@with_model
@click.option("--series", "series_uid", default=None,
              help="DICOM SeriesInstanceUID to use from a folder (UID:axial, UID:coronal, ... when one series "
                   "mixes orientations; the error lists the choices).")
@with_common
def infer(scan, series_uid, no_hu_check, out, overwrite, quiet, as_json, **kw):
    """Segment and measure the lymph nodes of SCAN (an image file or a DICOM folder)."""
    from pathlib import Path

    from .imageio import probe_scan, stem_of
    from .outputs import plan
    from .session import Session

    save = _save_options(kw)
    options = _session_options(kw)
    _quiet_logs(quiet or as_json)
    _check_out(out)
    if series_uid is not None and Path(scan).is_file():
        raise LnrtError(f"{scan}: --series chooses a series in a DICOM folder, and this is a file; expected a "
                        "DICOM folder (or drop --series)")
    header = probe_scan(scan, series_uid)  # every check the headers allow, before the model is loaded
    plan(out, stem_of(scan), overwrite, (scan,), header.kind == "dicom", *_flags(save), has_uids=header.has_uids,
         multiclass=_multiclass(options["model"]))
    with Session(**options) as session:
        progress = Progress(not (quiet or as_json))
        result = session.run(header, check_hu=not no_hu_check, progress=progress)
    _finish(result, out, overwrite, as_json, quiet, save, progress)


class BatchPrinter:
    """A batch's progress on stderr: after each finished scan, the counts, the throughput and the time
    left (a redrawn line on a terminal; one line per scan otherwise, so a log keeps every scan)."""

    def __init__(self, enabled: bool, tty: bool | None = None):
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        c = p.counts
        rate = f"{60.0 * p.finished / p.elapsed_s:.1f} scans/min" if p.elapsed_s > 0 else ""
        eta = f", about {p.eta_s:.0f} s left" if p.eta_s is not None and p.remaining else ""
        counts = f"{c['done']} done, {c['failed']} failed, {c['skipped']} skipped"
        if self.tty:
            text = f"[{p.finished}/{p.finished + p.remaining}] {counts}; {rate}{eta}"
            click.echo(f"\r{text:<79}", err=True, nl=False)
            Progress.active = self
        else:
            click.echo(f"batch: [{p.finished}/{p.finished + p.remaining}] {p.name}: {p.status}; {counts}; "
                       f"{rate}{eta}", err=True)

    def finish(self) -> None:
        if self.enabled and self.tty:
            Progress.clear()


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=False))
@click.option("--out", "out", type=click.Path(file_okay=False), required=True,
              help="The batch folder: per-scan outputs, the ledger (batch.sqlite), batch.csv and batch.json.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: worker processes here; ray: Ray actors (pip install 'lnrt[ray]').")
@click.option("--workers", type=click.IntRange(1, 4096), default=None,
              help="Workers, each holding one loaded model (default: one per GPU, else one).")
@click.option("--address", default=None, help="Ray: join this cluster (HEAD:PORT; default: a local Ray instance).")
@click.option("--cpus-per-worker", type=click.IntRange(1), default=None,
              help="Ray: CPUs per actor on a CPU cluster (default: this machine's cores, or CPUs / workers).")
@click.option("--retry-failed", is_flag=True, help="Run the failed scans of an earlier run again.")
@click.option("--max-attempts", type=click.IntRange(1, 100), default=3, show_default=True,
              help="Workers that may die on one scan before it is failed.")
@click.option("--quiet", "-q", is_flag=True, help="No progress or warnings on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print batch.json's summary (without the rows) on stdout.")
@with_model
@clinical_options
def batch(inputs, out, engine, workers, address, cpus_per_worker, retry_failed, max_attempts, quiet, as_json,
          no_hu_check, **kw):
    """Run every scan of INPUTS (image files, folders searched recursively for image files and DICOM
    series, manifests .csv/.txt) into OUT, resumably. Exit status 0 when every scan is done or skipped,
    3 when some failed, 130 when stopped."""
    from .batch import batch as run_batch

    save = _save_options(kw)
    options = _session_options(kw)
    _quiet_logs(quiet or as_json)
    _check_out(out)
    printer = BatchPrinter(not (quiet or as_json))
    summary = run_batch(list(inputs), out, engine=engine, workers=workers, address=address,
                        cpus_per_worker=cpus_per_worker, retry_failed=retry_failed, max_attempts=max_attempts,
                        check_hu=not no_hu_check, progress=printer, save_options=save, **options)
    printer.finish()
    if as_json:
        click.echo(json.dumps({k: v for k, v in summary.summary.items() if k != "scans"}, indent=2))
    elif not quiet or summary.interrupted:
        click.echo(("stopped: " if summary.interrupted else "") + summary.line())
    return 130 if summary.interrupted else 0 if summary.ok else 3


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML configuration ([node], [model], [[destinations]]; see docs/serve.toml).")
@click.option("--spool", type=click.Path(file_okay=False), default=None,
              help="Folder for received instances, results and the job store.")
@click.option("--ae-title", default=None, help="This node's AE title (default LNRT).")
@click.option("--host", default=None, help="Address to listen on (default 0.0.0.0).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="DICOM port (default 11112).")
@click.option("--allow", "allowed", multiple=True, help="A calling AE title allowed to connect (repeat; default any).")
@click.option("--destination", "destinations", multiple=True, help="Where results go, AE@HOST:PORT (repeat).")
@click.option("--quiet-seconds", type=Finite(0), default=None,
              help="A series is complete after this long without a new instance (default 10).")
@click.option("--spool-quota-gb", type=Finite(0.001), default=None,
              help="Refuse new instances above this much spooled data (default 50).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=None,
              help="Serve /health, /ready and /metrics on 127.0.0.1 at this port (default: off).")
@click.option("--model", type=click.Path(), default=None, help="Model package folder (default: embedded).")
@click.option("--variant", type=click.Choice(["fp32", "fp16", "int8", "bf16"]), default=None)
@click.option("--backend", type=click.Choice(BACKEND_NAMES), default=None)
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads (default: all cores).")
@click.option("--quiet", "-q", is_flag=True, help="Warnings only on stderr (default: a line per event).")
def serve(config_path, spool, ae_title, host, port, allowed, destinations, quiet_seconds, spool_quota_gb,
          http_port, model, variant, backend, threads, quiet):
    """Run a DICOM node: receive CT series (C-STORE), send their DICOM SEG and SR to the destinations."""
    from .serve import ServeConfig, serve as run_serve

    if not quiet:
        logging.getLogger("lnrt").setLevel(logging.INFO)
    cfg = ServeConfig.load(config_path, spool=spool, ae_title=ae_title, host=host, port=port,
                           allowed_calling_aes=tuple(allowed), destinations=tuple(destinations),
                           quiet_seconds=quiet_seconds, spool_quota_gb=spool_quota_gb, http_port=http_port)
    options = {k: v for k, v in {"model": model, "variant": variant, "backend": backend, "threads": threads}.items()
               if v is not None}
    if options:
        cfg = ServeConfig(**{**cfg.__dict__, "session_options": {**cfg.session_options, **options}})
    run_serve(cfg)


@cli.command()
@click.argument("labels", type=click.Path(exists=False))
@click.option("--image", type=click.Path(exists=False), default=None,
              help="The CT the labels belong to (for mean HU).")
@click.option("--connectivity", type=click.Choice(["6", "18", "26"]), default="26", show_default=True,
              help="Neighbourhood for splitting a binary mask into nodes.")
@click.option("--min-volume-mm3", type=Finite(0), default=0.0, show_default=True,
              help="Drop components smaller than this (binary masks only).")
@with_common
def measure(labels, image, connectivity, min_volume_mm3, out, overwrite, quiet, as_json, **kw):
    """Measure the nodes of an existing segmentation LABELS (instance ids or a binary mask)."""
    from .outputs import plan
    from .session import measure as run_measure, measure_stem

    save = _save_options(kw)
    _quiet_logs(quiet or as_json)
    _check_out(out)
    if save["dicom_seg"] or save["dicom_sr"]:
        raise LnrtError("lnrt measure writes no DICOM SEG or SR (it has no source series); use lnrt infer "
                        "on the DICOM folder")
    if save["qc"] and image is None:
        raise LnrtError("--qc needs the CT: give it with --image")
    plan(out, measure_stem(labels), overwrite, tuple(p for p in (labels, image) if p), False, *_flags(save))
    result = run_measure(labels, image=image, connectivity=int(connectivity),
                         min_volume_mm3=min_volume_mm3)
    _finish(result, out, overwrite, as_json, quiet, save)


@cli.command()
@click.argument("report", type=click.Path(exists=False))
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: the report's own).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--quiet", "-q", is_flag=True, help="No warnings on stderr.")
@click.option("--viewer", is_flag=True, help="Add <stem>.nodes.seg.nrrd and <stem>.nodes.label.txt.")
@click.option("--qc", is_flag=True, help="Add the QC pictures (<stem>.qc/) and <stem>.qc.html.")
@click.option("--dicom-seg", is_flag=True, help="Add a DICOM SEG (DICOM input only).")
@click.option("--dicom-sr", is_flag=True, help="Add a DICOM SR (TID 1500), with its SEG.")
@click.option("--seg-segments", type=click.Choice(["node", "class"]), default="node", show_default=True)
@click.option("--manufacturer", default="lnrt", show_default=True, help="DICOM Manufacturer.")
@click.option("--manufacturer-model", default="lnrt", show_default=True, help="DICOM Manufacturer's Model Name.")
@click.option("--device-serial", default="0", show_default=True, help="DICOM Device Serial Number.")
@click.option("--institution", default=None, help="DICOM Institution Name.")
def report(report, out, overwrite, quiet, viewer, qc, dicom_seg, dicom_sr, **kw):
    """Add outputs to a finished lnrt infer run from its REPORT (.report.json), without running the model
    again: the scan and the label map are read back and checked against the report."""
    from pathlib import Path

    from .reload import load_result

    _quiet_logs(quiet)
    if not (viewer or qc or dicom_seg or dicom_sr):
        raise LnrtError("lnrt report: nothing to add; expected --qc, --viewer, --dicom-seg or --dicom-sr")
    save = _save_options({**kw, "viewer": viewer, "qc": qc, "dicom_seg": dicom_seg or None, "dicom_sr": dicom_sr})
    save["dicom_seg"] = True if dicom_seg else (None if dicom_sr else False)
    result = load_result(report)
    out = out or str(Path(report).parent)
    result.plan(out, overwrite, *_flags(save), contract=False)
    paths = result.save(out, overwrite=overwrite, contract=False, **save)
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@cli.command()
@click.argument("pred", type=click.Path(exists=False))
@click.argument("truth", type=click.Path(exists=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Also write the JSON result to this file.")
def evaluate(pred, truth, as_json, out_file):
    """Score predicted node masks PRED against ground truth TRUTH (two files or two folders)."""
    from .evaluate import evaluate as run_evaluate, format_table

    from pathlib import Path

    if out_file:  # checked before any work: never an input, and a folder that can take it
        from .outputs import check_writable
        target = Path(out_file)
        if target.resolve() in {Path(p).resolve() for p in (pred, truth)} or any(
                Path(p).is_dir() and Path(p).resolve() in target.resolve().parents for p in (pred, truth)):
            raise LnrtError(f"{out_file}: would replace or land inside an input; expected another --out file")
        check_writable(target.parent, target.name, True, (pred, truth), (), contract=False)
    result = run_evaluate(pred, truth)
    if out_file:
        from .atomic import write_json
        try:
            write_json(out_file, result, mkdir=True)
        except OSError as exc:
            raise LnrtError(f"{out_file}: cannot write the result ({exc.strerror or exc})") from None
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


@cli.command()
def sample():
    """Print the path of the bundled sample scan."""
    from . import sample_path

    click.echo(str(sample_path()))


def _export_module(name: str):
    """lnrt.export.<name>, or a one-line error naming the extra when torch/onnx are missing."""
    import importlib

    try:
        import onnx  # noqa: F401  (every export command reads or writes ONNX)
        return importlib.import_module(f"lnrt.export.{name}")
    except ImportError as exc:
        from .errors import missing_extra
        raise missing_extra(exc.name or "onnx", "export") from None


def _variants(value: str) -> tuple:
    return tuple(v for v in value.split(",") if v) if value else ()


export_options = [
    click.option("--variants", default="fp16,int8", show_default=True,
                 help="Precision variants to build and gate (comma list of fp16, int8; '' for none)."),
    click.option("--calib", type=click.Path(exists=True), default=None,
                 help="Folder of CT scans for INT8 calibration (default: generated neck phantoms)."),
    click.option("--keep", multiple=True, help="Node name to keep in FP32 in the variants (repeatable)."),
    click.option("--force", is_flag=True, help="Write variants that fail their parity gate."),
    click.option("--threads", type=int, default=None, help="CPU threads for the gates."),
]


def with_export(f):
    """The export options, and progress lines on stderr: an export of a real-sized model takes minutes."""
    import functools

    @functools.wraps(f)
    def run(*args, **kwargs):
        logger = logging.getLogger("lnrt")
        level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        try:
            return f(*args, **kwargs)
        finally:
            logger.setLevel(level)

    for opt in reversed(export_options):
        run = opt(run)
    return run


def _report_variants(root) -> None:
    from pathlib import Path

    for report in sorted(Path(root).glob("parity.*.json")):
        r = json.loads(report.read_text())
        state = "passed" if r["passed"] else "FAILED (" + "; ".join(r["failures"]) + ")"
        written = "written" if r.get("written", r["passed"]) else "not written"
        click.echo(f"{r['variant']}: gate {state}; Dice {r['dice']:.4f}, max short-axis difference "
                   f"{r['short_axis_max_diff_mm']:.2f} mm; {written}")
        if r.get("advice") and not r["passed"]:
            click.echo(f"  advice: {r['advice']}")
        for backend, line in r.get("gate_backends", {}).items():
            verdict = "passed" if line["passed"] else "FAILED (" + "; ".join(line["failures"]) + "); not run there"
            if line["dice"] is None:  # not gated there
                click.echo(f"  on {backend}: " + "; ".join(line["failures"]))
                continue
            click.echo(f"  on {backend}: {verdict}; Dice {line['dice']:.4f}, "
                       f"max short-axis difference {line['short_axis_max_diff_mm']:.2f} mm")


class _Spacing(click.ParamType):
    """A spacing in mm, or `scan`: the scan's own spacing on that axis (None in the manifest)."""

    name = "mm|scan"

    def convert(self, value, param, ctx):
        if value is None or value == "scan":
            return None
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is not a spacing in mm or 'scan'", param, ctx)


SPACING = _Spacing()


@cli.group()
def export():
    """Make lnrt model packages: from PyTorch, from nnU-Net v2, and precision variants."""


@export.command("torch")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--class", "class_path", default="lnrt.models.unet:UNet", show_default=True,
              help="Importable module class, package.module:Class.")
@click.option("--kwargs", "kwargs_json", default="{}", help="JSON keyword arguments for the class.")
@click.option("--weights", type=click.Path(exists=True), required=True,
              help="State dict (.pt, loaded with weights_only=True) or .safetensors.")
@click.option("--spacing", nargs=3, type=SPACING, required=True,
              help="Model spacing z y x in mm; `scan` on an axis keeps the scan's spacing (slice models).")
@click.option("--patch", nargs=3, type=int, required=True, help="Patch size z y x in voxels (1 Y X for slice models).")
@click.option("--input-kind", type=click.Choice(["3d", "2d", "2.5d"]), default="3d", show_default=True,
              help="A volume model, or a slice model run along the axial axis.")
@click.option("--context-slices", type=click.IntRange(0, 32), default=0, show_default=True,
              help="2.5d: slices above and below the target slice (the model takes 2K+1 channels).")
@click.option("--batch-size", type=click.IntRange(1, 256), default=None,
              help="Tiles per network call (default 2; 16 slices for slice models).")
@click.option("--window", nargs=2, type=float, default=None, help="Normalization: HU window lo hi -> [0, 1].")
@click.option("--zscore", nargs=4, type=float, default=None,
              help="Normalization: clip lo hi, then (x - mean) / std: LO HI MEAN STD.")
@click.option("--classes", default="background,lymph_node", show_default=True, help="Class names, comma list.")
@click.option("--name", required=True, help="Package name.")
@click.option("--version", "pkg_version", default="1.0.0", show_default=True)
@click.option("--trained-on", required=True, help="Provenance: what data trained the model.")
@click.option("--intended-use", default="research; not validated for clinical use", show_default=True)
@click.option("--overwrite", is_flag=True)
@with_export
def export_torch(out, class_path, kwargs_json, weights, spacing, patch, input_kind, context_slices, batch_size,
                 window, zscore, classes, name, pkg_version, trained_on, intended_use, overwrite, variants, calib,
                 keep, force, threads):
    """Export a PyTorch module with its weights to an lnrt package OUT."""
    te, builder = _export_module("torch_export"), _export_module("builder")
    if (window is None) == (zscore is None):
        raise LnrtError("give exactly one normalization: --window LO HI or --zscore LO HI MEAN STD")
    try:
        kwargs = json.loads(kwargs_json)
    except json.JSONDecodeError as exc:
        raise LnrtError(f"--kwargs: not valid JSON ({exc})") from None
    norm = ({"scheme": "window", "window_hu": list(window)} if window else
            {"scheme": "ct_zscore", "clip_hu": list(zscore[:2]), "mean": zscore[2], "std": zscore[3]})
    module = te.load_module(class_path, kwargs, weights)
    prov = {"trained_on": trained_on, "intended_use": intended_use,
            "network": {"class": class_path, "kwargs": kwargs, "weights": str(weights)}}
    path = builder.build_package(module, out, name=name, version=pkg_version, spacing_zyx=spacing,
                                 patch_zyx=patch, normalization=norm, classes=classes.split(","),
                                 provenance=prov, variants=_variants(variants), calib=calib, keep=keep,
                                 force=force, overwrite=overwrite, threads=threads, input_kind=input_kind,
                                 context_slices=context_slices, batch_size=batch_size)
    _report_variants(path)
    click.echo(f"wrote {path}")


@export.command("nnunet")
@click.argument("folder", type=click.Path())
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--configuration", default=None, help="nnU-Net configuration (default: the checkpoint's).")
@click.option("--folds", default=None, help="Comma list of folds (default: every fold with a checkpoint).")
@click.option("--checkpoint", default="checkpoint_final.pth", show_default=True)
@click.option("--name", default=None, help="Package name (default: from the dataset).")
@click.option("--previous-stage", type=click.Path(), default=None,
              help="A cascade's first-stage results folder (default: the sibling Trainer__Plans__3d_lowres).")
@click.option("--overwrite", is_flag=True)
@with_export
def export_nnunet(folder, out, configuration, folds, checkpoint, name, previous_stage, overwrite, variants, calib,
                  keep, force, threads):
    """Import an nnU-Net v2 results FOLDER as an lnrt package OUT (folds averaged; a 3d_cascade_fullres
    configuration with its first stage nested in the package)."""
    nn = _export_module("nnunet")
    path = nn.import_nnunet(folder, out, configuration=configuration,
                            folds=folds.split(",") if folds else None, checkpoint=checkpoint, name=name,
                            previous_stage=previous_stage, variants=_variants(variants), calib=calib, keep=keep,
                            force=force, overwrite=overwrite, threads=threads)
    _report_variants(path)
    click.echo(f"wrote {path}")


@export.command("variants")
@click.argument("package", type=click.Path(exists=True, file_okay=False))
@click.option("--calibration", type=click.Choice(["percentile", "minmax"]), default="percentile",
              show_default=True, help="INT8 activation range calibration.")
@with_export
def export_variants(package, calibration, variants, calib, keep, force, threads):
    """Add gated FP16/INT8 variants to an existing PACKAGE (e.g. the default model)."""
    va = _export_module("variants")
    va.add_variants(package, _variants(variants), calib=calib, keep=keep, force=force, threads=threads,
                    calibration=calibration)
    _report_variants(package)


@cli.group("package")
def package_group():
    """Check or seal a model package (its manifest's hash, lnrt.json.sha256)."""


@package_group.command("check")
@click.argument("folder", type=click.Path())
@click.option("--expect-sha256", default=None, help="Refuse unless the package's sha256 is this (a pin).")
def package_check(folder, expect_sha256):
    """Verify FOLDER (seal, schema, every file's size and sha256); print the package's sha256."""
    from .package import MANIFEST, ModelPackage

    pkg = ModelPackage.load(folder, expect_sha256=expect_sha256)
    click.echo(f"{pkg.package_sha256}  {pkg.path / MANIFEST}")


@package_group.command("seal")
@click.argument("folder", type=click.Path())
def package_seal(folder):
    """Seal FOLDER's lnrt.json after an edit made on purpose (every listed file is verified first)."""
    from pathlib import Path

    from .package import MANIFEST, seal

    click.echo(f"{seal(folder)}  {Path(folder) / MANIFEST}")


@cli.command("build-engine")
@click.argument("package", type=click.Path(), required=False)
@click.option("--variant", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True)
@click.option("--max-batch", type=int, default=4, show_default=True)
@click.option("--opt-batch", type=int, default=None, help="Batch TensorRT tunes for (default: the package's).")
@click.option("--workspace-gb", type=float, default=4.0, show_default=True)
@click.option("--rebuild", is_flag=True, help="Build even when the cache has a matching engine.")
def build_engine(package, variant, max_batch, opt_batch, workspace_gb, rebuild):
    """Build a TensorRT engine for PACKAGE (default: embedded model) into the engine cache."""
    from lnrt.export.tensorrt import build_engine as build

    path, info = build(package, variant, max_batch, opt_batch, workspace_gb, rebuild=rebuild)
    click.echo(f"{'cached' if info['cached'] else 'built'}: {path}")


@cli.command()
@click.argument("package", type=click.Path())
@click.argument("scan", type=click.Path())
@click.option("--variant", "variants", multiple=True, type=click.Choice(["fp32", "fp16", "int8", "bf16"]),
              help="Variants to compare (default: all in the package).")
@click.option("--backend", "backends", multiple=True, help="Backends to compare (default: all available).")
@click.option("--threads", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON result.")
def compare(package, scan, variants, backends, threads, as_json):
    """Run PACKAGE's variants and backends on SCAN and print the parity table against FP32."""
    from .compare import compare as run_compare, format_compare

    result = run_compare(package, scan, variants or None, backends or None, threads)
    click.echo(json.dumps(result, indent=2) if as_json else format_compare(result))


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1, type=click.Path())
@click.option("--synthetic", default=None, help="Benchmark a generated neck phantom of X x Y x Z voxels "
              "(0.5 x 0.5 x 1 mm), e.g. 512x512x250.")
@click.option("--model", type=click.Path(), default=None, help="Model package (default: embedded).")
@click.option("--backend", type=click.Choice(BACKEND_NAMES), default="auto", show_default=True)
@click.option("--variant", type=click.Choice(["fp32", "fp16", "int8", "bf16"]), default="fp32", show_default=True)
@click.option("--repeat", type=click.IntRange(1), default=5, show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=1, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None)
@click.option("--batch-size", type=click.IntRange(1), default=None)
@click.option("--save", "save_dir", type=click.Path(file_okay=False), default=None,
              help="Write the result as <host>-<date>-bench-<backend>-<variant>.json in this folder.")
@click.option("--chart", type=click.Path(dir_okay=False), default=None, help="compare: write a PNG chart here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench(args, synthetic, model, backend, variant, repeat, warmup, threads, batch_size, save_dir, chart, as_json):
    """Per-stage latency of SCAN (or --synthetic SIZE); `lnrt bench compare FILES...` tabulates results."""
    from . import bench as b

    if args and args[0] == "compare":
        results = b.load_results(args[1:])
        click.echo(b.compare_table(results))
        if chart:
            click.echo(f"wrote {b.compare_chart(results, chart)}")
        return
    if len(args) > 1:
        raise LnrtError(f"bench takes one SCAN, got {len(args)}; expected SCAN or --synthetic SIZE")

    def progress(i, n, wall):
        if not as_json:
            click.echo(f"run {i}/{n}: {wall:.2f} s", err=True)

    result = b.bench(args[0] if args else None, synthetic, model, backend, variant, repeat, warmup, threads,
                     batch_size, progress=progress)
    if save_dir:
        path = b.save_result(result, save_dir)
        click.echo(f"wrote {path}", err=True)
    click.echo(json.dumps(result, indent=2) if as_json else b.format_result(result))


def _internal_error(exc: BaseException, debug: bool) -> int:
    """A bug, not a user error: one line and where the traceback is (`--debug` prints it instead)."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if debug:
        click.echo(text.rstrip(), err=True)
        return 1
    where = "(the traceback could not be saved)"
    try:
        fd, path = tempfile.mkstemp(prefix="lnrt-traceback-", suffix=".txt")
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        where = f"traceback in {path}"
    except OSError:
        pass
    click.echo(f"lnrt: internal error: {type(exc).__name__}: {one_line(exc)[:300]} ({where}; rerun with "
               "--debug to print it, and please report it)", err=True)
    return 1


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt("terminated")


def _terminate_like_interrupt() -> None:
    """SIGTERM (a service manager stopping lnrt, `kill`) cleans up like Ctrl-C: staged outputs are
    removed instead of the process dying with them on the disk."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def main(argv=None) -> int:
    """Run the CLI: 0 on success, 2 for a user error (one line on stderr), 130 when interrupted, 1 for
    an internal error (one line and the traceback's file)."""
    args = list(sys.argv[1:] if argv is None else argv)
    _terminate_like_interrupt()
    debug = "--debug" in args[: next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))]
    try:
        return _run(args, debug)
    finally:
        _configure_logging(None)  # the CLI's handler leaves with it (main() may run again in this process)


def _run(args: list, debug: bool) -> int:
    try:
        status = cli.main(args=[str(a) for a in args], prog_name="lnrt", standalone_mode=False)
    except LnrtError as exc:
        Progress.clear()
        click.echo(f"lnrt: error: {exc}", err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        Progress.clear()
        click.echo("lnrt: aborted", err=True)
        return 130
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "lnrt"
        click.echo(f"lnrt: error: {one_line(exc.format_message())} (see {command} --help)", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"lnrt: error: {one_line(exc.format_message())}", err=True)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 (the last line of defence: a bug prints one line, not a trace)
        Progress.clear()
        return _internal_error(exc, debug)
    return status if isinstance(status, int) else 0  # a command's own status (lnrt batch: 3, 130)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
