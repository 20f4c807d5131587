"""`lnrt.batch`: run an archive of scans, resumably, on local worker processes or a Ray cluster (issue 20).

    import lnrt
    summary = lnrt.batch(["archive/"], "results/")          # every image file and DICOM series in it
    summary.counts                                         # {'done': 38, 'failed': 2, 'skipped': 1, ...}

Layers, one job each:
- discovery (`discover`): inputs -> scan jobs (image files, manifest rows) and DICOM folders to list;
- names (`output_name`, `unique`): each scan's outputs under the batch folder, mirroring the input tree,
  never colliding, and the same on every rerun (the ledger remembers them);
- the ledger (`lnrt.ledger`): SQLite, one row per scan, the only state a rerun needs;
- the engines (`lnrt.batch_engines`): where workers run, behind one small interface;
- the driver (`_drive`): hands jobs to idle workers, records results, retries scans whose worker died,
  stops taking scans on the first Ctrl-C (SIGINT or SIGTERM) and abandons the running ones on the second.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime, timezone
from pathlib import Path

from ._version import __version__
from .atomic import remove_stale
from .batch_engines import Cancelled, Died, LocalEngine, RayEngine, WorkerSpec, visible_gpus
from .batch_work import ListJob, ScanJob, signature
from .errors import LnrtError
from .imageio import IMAGE_SUFFIXES
from .ledger import LEDGER_NAME, Ledger

log = logging.getLogger("lnrt")

MANIFEST_SUFFIXES = (".csv", ".txt")
SUMMARY_SCHEMA = "lnrt.batch/1"
CSV_FIELDS = ("name", "input", "series", "status", "error", "attempts", "sha256", "nodes", "largest_short_axis_mm",
              "normal", "pathological", "enlarged", "seconds", "worker", "worker_peak_mb", "finished_at")
LOCK_NAME = ".lnrt-batch.lock"
MAX_ATTEMPTS = 3  # a scan whose worker died this many times is failed (a scan that kills every worker)
DICOM_PEEK = 3  # files read (132 bytes each) to decide whether a folder holds DICOM


# -- discovery ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Found:
    """What the inputs hold: (path, series, name or None) of each scan, DICOM folders to list, and the
    folder the default names are relative to."""

    scans: list
    folders: list
    base: Path


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _holds_dicom(folder: Path, files: list) -> bool:
    """A folder holds DICOM when one of its first files has a DICOM suffix or the `DICM` marker."""
    from .dicom_in import DICOM_SUFFIXES

    if any(f.lower().endswith(DICOM_SUFFIXES) for f in files):
        return True
    for f in [f for f in files if not _is_image(f)][:DICOM_PEEK]:
        try:
            with open(folder / f, "rb") as fh:
                if fh.read(132)[128:] == b"DICM":
                    return True
        except OSError:
            continue
    return False


def walk(folder: Path, skip: Path | None = None) -> tuple[list, list]:
    """(image files, folders holding DICOM) under `folder`, sorted; hidden entries and `skip` (the batch's
    own output folder) left out."""
    images, dicom = [], []
    for root, dirs, files in os.walk(canonical(folder)):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or (here / d).resolve() != skip))
        files = sorted(f for f in files if not f.startswith("."))
        images += [canonical(here / f) for f in files if _is_image(f) and (here / f).is_file()]
        if _holds_dicom(here, [f for f in files if not _is_image(f)]):
            dicom.append(here)
    return images, dicom


def _manifest_rows(path: Path) -> list:
    """[(line number, fields)] of a manifest: CSV with a `path` header (and optional `name`, `series`),
    or headerless CSV (path, name, series), or text with one path a line (a tab, then a name); `#` lines
    and blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LnrtError(f"{path}: cannot read the manifest ({exc}); expected a UTF-8 CSV or text file") from None
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip() and not ln.lstrip().startswith("#")]
    if path.suffix.lower() == ".txt":
        return [(i, ln.split("\t")) for i, ln in lines]
    rows = [(i, r) for (i, _), r in zip(lines, csv.reader(io.StringIO("\n".join(ln for _, ln in lines))))]
    header = [c.strip().lower() for c in rows[0][1]] if rows else []
    if not {"path", "name", "series"} & set(header):
        return rows  # headerless: path, name, series
    unknown = sorted(set(header) - {"path", "name", "series"})
    if unknown or "path" not in header:
        what = f"unknown column {unknown[0]!r}" if unknown else "no path column"
        raise LnrtError(f"{path}: line {rows[0][0]}: {what}; expected a header of path and optional name, "
                        "series columns")
    return [(i, [dict(zip(header, r)).get(k, "") for k in ("path", "name", "series")]) for i, r in rows[1:]]


def _check_name(name: str, where: str) -> str:
    parts = Path(name).parts
    if (not name or Path(name).is_absolute() or any(p in ("..", ".") or p.startswith(".") for p in parts)
            or "\0" in name):
        raise LnrtError(f"{where}: output name {name!r} is not a plain relative name; expected names such as "
                        "site1/patient7 (no '..', no leading '/', no hidden parts)")
    return name


def read_manifest(path: Path) -> list:
    """[(scan path, series or None, name or None)] of a manifest; relative paths are relative to it."""
    out, names = [], {}
    for line, fields in _manifest_rows(path):
        fields = [f.strip() for f in fields] + ["", ""]
        if not fields[0]:
            raise LnrtError(f"{path}: line {line}: no path; expected one scan path a line")
        name = _check_name(fields[1], f"{path}: line {line}") if fields[1] else None
        if name is not None and name.lower() in names:
            raise LnrtError(f"{path}: line {line}: name {name!r} is already used on line {names[name.lower()]}; "
                            "expected one name per scan")
        if name is not None:
            names[name.lower()] = line
        out.append((canonical(path.parent / fields[0]), fields[2] or None, name))
    if not out:
        raise LnrtError(f"{path}: the manifest lists no scan; expected one scan path a line")
    return out


def discover(inputs: list, skip: Path | None = None) -> Found:
    """The scans of the inputs: image files as they are, folders searched (image files and DICOM folders,
    recursively), manifests (`.csv`, `.txt`) read. A missing input is refused before any work; a missing
    file a manifest names becomes a failed scan (an archive's one bad row must not stop the rest)."""
    scans, folders, tops = [], [], []
    for raw in inputs:
        p = canonical(raw)
        if not p.exists():
            raise LnrtError(f"{raw}: no such file or folder; expected image files, folders or a manifest "
                            f"({', '.join(MANIFEST_SUFFIXES)})")
        if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            rows = read_manifest(p)
            scans += rows
            tops += [r[0] for r in rows]
        elif p.is_dir():
            images, dicom = walk(p, skip)
            scans += [(f, None, None) for f in images]
            folders += dicom
            tops.append(p)
        else:
            scans.append((p, None, None))
            tops.append(p)
    base = Path(os.path.commonpath([str(t.parent) for t in tops])) if tops else Path.cwd()
    return Found(_first_of_each(scans, lambda r: (r[0], r[1])), _first_of_each(folders, lambda f: f), base)


def canonical(path) -> Path:
    """The one spelling of a path (absolute, `..` and symbolic links resolved): the ledger's key, so a
    scan reached twice (a folder and a manifest, a link) is one scan."""
    return Path(os.path.realpath(path))


def _first_of_each(items: list, key) -> list:
    seen, out = set(), []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            out.append(item)
    return out


# -- names -------------------------------------------------------------------------------------------

def output_name(path: Path, base: Path) -> str:
    """A scan's default output name: its path relative to `base`, less the image suffix
    (`site/p1/ct.nii.gz` -> `site/p1/ct`; a DICOM folder `site/p1/ct/` -> `site/p1/ct`)."""
    rel = Path(os.path.relpath(path, base))
    name = rel.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return (rel.parent / (name or "scan")).as_posix()


def unique(name: str, used: set) -> str:
    """`name`, or `name-2`, `name-3` ... when taken (compared case-blind: two names that differ only in
    case would be one file on macOS and Windows)."""
    taken = {u.lower() for u in used}
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{name}-{n}"
    used.add(candidate)
    return candidate


def series_tag(uid: str) -> str:
    """A short, stable, file-safe tag for one series of a folder holding several: the end of its UID."""
    return re.sub(r"[^0-9A-Za-z]+", "-", uid)[-20:].strip("-") or "series"


def plan_jobs(found: Found, ledger: Ledger) -> tuple[list, list]:
    """(scan jobs, list jobs) with their names: a scan or folder the ledger knows keeps its name."""
    known, used = ledger.known(), ledger.names()
    scans, folders = [], []
    for path, series, name in found.scans:
        key = str(path) + (f"#{series}" if series else "")
        scans.append(ScanJob(key, str(path), series,
                             known.get(key) or unique(_inside(name or output_name(path, found.base)), used)))
    for path in found.folders:
        folders.append(ListJob(str(path), known.get(str(path)) or unique(_inside(output_name(path, found.base)), used)))
    return scans, folders


def _inside(name: str) -> str:
    """A name that stays inside the batch folder (default names always do: they are relative to a common
    parent of canonical paths; this is the check that it stays so)."""
    if name.startswith("/") or ".." in Path(name).parts:
        raise LnrtError(f"{name}: output name leaves the batch folder; expected a relative name")
    return name


def series_jobs(job: ListJob, listing: list, used: set) -> tuple[list, list]:
    """A listed DICOM folder's scan jobs and (job, reason) of its skipped series: one series is named
    after the folder; several get the folder's name and a tag from their UID."""
    several = len(listing) > 1
    scans, skipped = [], []
    for s in listing:
        name = unique(f"{job.name}.{series_tag(s['uid'])}", used) if several else job.name  # reserved
        scan = ScanJob(f"{job.path}#{s['uid']}", job.path, s["uid"], name)
        modality = (s.get("modality") or "").upper()
        if modality != "CT":
            skipped.append((scan, f"{job.path}: series {s['uid']} is {modality or 'of unknown modality'}, "
                                  "not CT; lnrt batch runs CT series"))
        elif s["slices"] < 2:
            skipped.append((scan, f"{job.path}: series {s['uid']} is a single image (a localizer?), not a volume"))
        else:
            scans.append(scan)
    return scans, skipped


# -- the driver --------------------------------------------------------------------------------------

class _Stop:
    """SIGINT/SIGTERM during a batch: the first stops taking new scans (the running ones finish and are
    recorded); the second abandons the running ones (they go back to pending in the ledger)."""

    def __init__(self):
        self.stopping = self.now = False
        self.saved = {}

    def __call__(self, signum, frame):
        if self.stopping:
            self.now = True
            log.warning("batch: stopping now; the running scans go back to pending")
        else:
            self.stopping = True
            log.warning("batch: stopping: no new scans; the running ones finish (interrupt again to stop now)")

    def __enter__(self):
        self.install()
        return self

    def install(self) -> None:
        """Take SIGINT and SIGTERM (again: `ray.init` installs its own SIGTERM handler)."""
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                previous = signal.signal(s, self)
                self.saved.setdefault(s, previous)

    def __exit__(self, *exc):
        for s, handler in self.saved.items():
            signal.signal(s, handler)


@dataclass(frozen=True)
class BatchProgress:
    """What a progress callback gets after each finished scan."""

    finished: int  # scans finished in this run
    remaining: int  # scans still to run (grows while DICOM folders are listed)
    counts: dict  # the ledger's counts by status
    elapsed_s: float
    name: str  # the scan just finished
    status: str
    error: str | None

    @property
    def eta_s(self) -> float | None:
        return self.elapsed_s / self.finished * self.remaining if self.finished else None


@dataclass
class _Run:
    """The driver's state for one run."""

    ledger: Ledger
    engine: object
    queue: deque
    used: set
    max_attempts: int
    progress: object
    t0: float
    finished: int = 0
    running: int = 0
    list_attempts: dict = None


def _settle(run: _Run, job, outcome) -> None:
    """Record what came back for a job: a folder's listing, a scan's result, or its worker's death."""
    if isinstance(job, ListJob):
        return _settle_listing(run, job, outcome)
    if isinstance(outcome, Died):
        if run.ledger.worker_died(job.key, outcome.reason, run.max_attempts):
            run.queue.append(job)
            return
        status, error = "failed", outcome.reason
    else:
        run.ledger.record(job.key, outcome)
        status, error = outcome["status"], outcome.get("error")
        if error:
            log.warning("%s", error)
    run.finished += 1
    if run.progress:
        run.progress(BatchProgress(run.finished, len(run.queue) + run.running, run.ledger.counts(),
                              time.perf_counter() - run.t0, job.name, status, error))


def _settle_listing(run: _Run, job: ListJob, outcome) -> None:
    if isinstance(outcome, Died):
        run.list_attempts[job.path] = run.list_attempts.get(job.path, 0) + 1
        if run.list_attempts[job.path] < run.max_attempts:
            run.queue.append(job)
            return
        outcome = {"series": [], "error": f"{job.path}: {outcome.reason}, while listing its DICOM series"}
    scans, skipped = series_jobs(job, outcome["series"], run.used)
    if outcome["error"]:  # the folder could not be listed, or holds no image series: its one row says so
        status = outcome.get("status", "failed")
        run.ledger.listed(job.path, [], [(ScanJob(job.path, job.path, None, job.name), status, outcome["error"])])
        if status == "failed":
            log.warning("%s", outcome["error"])
        return
    # only the new ones are queued: a manifest may have named one of these series too
    run.queue.extend(run.ledger.listed(job.path, scans, [(j, "skipped", why) for j, why in skipped]))


def _drive(run: _Run, stop: _Stop) -> None:
    """Hand jobs to idle workers until none is left (or a stop), recording every outcome."""
    while run.queue or run.running:
        if stop.now:
            run.engine.stop(now=True)
            run.running = 0
            break
        while run.queue and not stop.stopping and run.engine.free():
            job = run.queue.popleft()
            worker = run.engine.submit(job)
            if isinstance(job, ScanJob):
                run.ledger.running(job.key, worker)
            run.running += 1
        if stop.stopping and not run.running:
            break
        for job, outcome in run.engine.wait(0.25):
            run.running -= 1
            _settle(run, job, outcome)



# -- settings, lock, summary -------------------------------------------------------------------------

def _jsonable(value):
    return asdict(value) if is_dataclass(value) else value


def batch_settings(session_options: dict, save_options: dict, check_hu: bool) -> dict:
    """What decides a batch's outputs (recorded in the ledger; a rerun must match): the model package's
    identity and the options that change results or files. Backend, device, threads and batch size
    change neither beyond the parity gates, so a batch may resume on another machine."""
    import inspect

    from .package import ModelPackage
    from .session import Session

    defaults = {k: p.default for k, p in inspect.signature(Session).parameters.items()}
    session_options = {**defaults, **{k: v for k, v in session_options.items() if v is not None}}
    variant = session_options["variant"]
    package = ModelPackage.load(session_options.get("model"))
    file_variant = "fp32" if variant == "bf16" else variant
    decisive = ("variant", "mirror_axes", "overlap", "min_volume_mm3", "neck_region", "min_short_axis_px",
                "split_touching_mm")
    out = {k: _jsonable(session_options.get(k)) for k in decisive}
    out["mirror_axes"] = list(out["mirror_axes"]) if out["mirror_axes"] is not None else None
    out.update(model=package.verify_model(file_variant), package=package.package_sha256, check_hu=check_hu)
    for k, v in sorted(save_options.items()):  # flat, so a mismatch names the one option that differs
        v = _jsonable(v)
        out.update({f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    return out


def _lock(out_dir: Path) -> int:
    """The batch folder's lock for the driver's life: a second driver on the same folder is refused."""
    from .atomic import lock_file

    try:
        return lock_file(out_dir / LOCK_NAME)
    except BlockingIOError as exc:
        raise LnrtError(f"{out_dir}: another lnrt batch is writing this folder ({exc}); expected one batch "
                        "per folder: wait for it, or choose another --out") from None


def write_summary(out_dir: Path, ledger: Ledger, settings: dict, seconds: float, finished: int) -> dict:
    """batch.csv and batch.json from the ledger (written whole, atomically, at the end of every run)."""
    from .atomic import write_json, write_text

    rows = ledger.rows()
    for r in rows:  # ISO 8601 in UTC, to the second, for people and spreadsheets
        r["finished_at"] = (datetime.fromtimestamp(r["finished_at"], timezone.utc).isoformat(timespec="seconds")
                            if r["finished_at"] else None)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    peaks: dict = {}
    for r in rows:
        if r["worker"] and r["worker_peak_mb"]:
            peaks[r["worker"]] = max(peaks.get(r["worker"], 0.0), r["worker_peak_mb"])
    summary = {"schema": SUMMARY_SCHEMA, "lnrt_version": __version__, "out_dir": str(out_dir),
               "counts": ledger.counts(), "run": {"seconds": round(seconds, 3), "scans_finished": finished,
               "scans_per_minute": round(60.0 * finished / seconds, 2) if seconds > 0 else None},
               "worker_peak_mb": peaks, "settings": settings, "scans": rows}
    write_text(out_dir / "batch.csv", buf.getvalue())
    write_json(out_dir / "batch.json", summary)
    return summary


@dataclass(frozen=True)
class BatchSummary:
    """What `batch` returns: the ledger's counts, this run's time, where the summary files are."""

    out_dir: Path
    counts: dict
    seconds: float
    finished: int
    interrupted: bool
    summary: dict

    @property
    def ok(self) -> bool:
        """Every scan done or skipped, and the run not interrupted."""
        c = self.counts
        return not self.interrupted and c["failed"] == 0 and c["pending"] == 0 and c["running"] == 0

    def line(self) -> str:
        c = self.counts
        total = sum(c.values())
        rate = f", {60.0 * self.finished / self.seconds:.1f} scans/min" if self.seconds > 0 and self.finished else ""
        left = f", {c['pending'] + c['running']} left (rerun to finish)" if c["pending"] + c["running"] else ""
        return (f"{total} scan{'s' * (total != 1)}: {c['done']} done, {c['failed']} failed, {c['skipped']} skipped"
                f"{left}; {self.finished} run in {self.seconds:.1f} s{rate}; {self.out_dir / 'batch.csv'}")


# -- the API -----------------------------------------------------------------------------------------

def _local_gpus(device: str) -> list:
    """Indices of the usable CUDA GPUs here (none when the device is `cpu`): one local worker each."""
    if device == "cpu":
        return []
    from .device import probe_gpu

    gpus = []
    while len(gpus) < 64 and probe_gpu(len(gpus)).ok:
        gpus.append(len(gpus))
    return gpus


def _local_engine(spec: WorkerSpec, workers: int | None, options: dict) -> LocalEngine:
    gpus = visible_gpus(len(_local_gpus(spec.session_options.get("device", "auto"))))
    n = workers or len(gpus) or 1  # on a CPU one worker: the backend already uses every core
    if not gpus and spec.session_options.get("threads") is None:
        spec = WorkerSpec(spec.out_dir, {**spec.session_options, "threads": max(1, (os.cpu_count() or 1) // n)},
                          spec.save_options, spec.check_hu)
    return LocalEngine(spec, n, gpus)


def _ray_engine(spec: WorkerSpec, workers: int | None, options: dict) -> RayEngine:
    return RayEngine(spec, workers, options.get("address"), options.get("cpus_per_worker"),
                     use_gpus=spec.session_options.get("device", "auto") != "cpu")


ENGINES = {"local": _local_engine, "ray": _ray_engine}
SAVE_DEFAULTS = {"viewer": True, "qc": False, "dicom_seg": None, "dicom_sr": False, "seg_segments": "node",
                 "equipment": None}


def _check_out(out: Path, inputs: list) -> None:
    if out.exists() and not out.is_dir():
        raise LnrtError(f"{out}: exists and is not a folder; expected an output folder for the batch")
    resolved = out.resolve()
    for raw in inputs:
        p = Path(raw).resolve()
        if p.is_dir() and (resolved == p or p in resolved.parents):
            raise LnrtError(f"{out}: is inside the input folder {raw}; a batch never writes into its inputs: "
                            "choose an --out folder outside them")
        if resolved in p.parents:
            raise LnrtError(f"{raw}: is inside the batch folder {out}; its outputs would become inputs: "
                            "choose an --out folder outside the inputs")


def _changed(path: str, before: str | None) -> bool:
    """Whether a done scan's input changed since (a vanished or unreadable input did not: its row stays)."""
    try:
        return bool(before) and signature(path) != before
    except OSError:
        return False


def _prepare(out: Path, inputs: list, settings: dict, retry_failed: bool) -> tuple:
    """Lock the folder, open the ledger, record what was found; returns (lock fd, ledger, queue, used)."""
    found = discover(inputs, skip=out.resolve())
    if not found.scans and not found.folders:
        raise LnrtError(f"{', '.join(map(str, inputs))}: no scans found; expected image files "
                        f"({', '.join(IMAGE_SUFFIXES)}), folders of DICOM series, or a manifest")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LnrtError(f"{out}: cannot create the batch folder ({exc.strerror or exc}); expected a writable "
                        "--out folder") from None
    fd, ledger = _lock(out), None
    try:
        remove_stale(out)  # a killed worker's cut writes; only this batch writes here (the lock)
        ledger = Ledger(out / LEDGER_NAME)
        ledger.check_settings(settings)
        scans, folders = plan_jobs(found, ledger)
        ledger.add(scans, folders)
        ledger.resume(retry_failed)
        changed = [r["key"] for r in ledger.done_signatures() if _changed(r["input"], r["signature"])]
        if changed:
            log.warning("batch: %d done scan(s) changed on disk since; running them again", len(changed))
            ledger.redo(changed)
        pending, unlisted = ledger.todo()
    except BaseException:
        if ledger is not None:
            ledger.close()
        os.close(fd)
        raise
    queue = deque([ListJob(f["path"], f["name"]) for f in unlisted]
                  + [ScanJob(r["key"], r["input"], r["series"], r["name"]) for r in pending])
    return fd, ledger, queue, ledger.names()


def batch(inputs, out, *, engine: str = "local", workers: int | None = None, address: str | None = None,
          cpus_per_worker: int | None = None, retry_failed: bool = False, max_attempts: int = MAX_ATTEMPTS,
          check_hu: bool = True, progress=None, save_options: dict | None = None, **session_options) -> BatchSummary:
    """Run every scan of `inputs` (files, folders, manifests) into `out` (see the module docstring and
    the README's Batch section). `session_options` are `Session`'s (model, backend, variant, ...),
    `save_options` `Result.save`'s; `progress(BatchProgress)` is called after each finished scan. Returns a
    `BatchSummary`; a scan's failure is in the ledger, never raised. Raises `LnrtError` before any
    work for bad inputs, a busy or mismatched batch folder, or a model that does not load."""
    from .outputs import check_extras_installed, planned_extras

    if engine not in ENGINES:
        raise LnrtError(f"engine {engine!r} is unknown; expected one of {', '.join(ENGINES)}")
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    save = {**SAVE_DEFAULTS, **(save_options or {})}
    if session_options.get("model") is not None:
        model = session_options["model"]
        session_options["model"] = str(Path(getattr(model, "path", model)).absolute())
    out = Path(out).absolute()
    _check_out(out, inputs)
    check_extras_installed(planned_extras(True, save["viewer"], save["qc"], save["dicom_seg"], save["dicom_sr"]),
                           bool(save["dicom_seg"]) or save["dicom_sr"])
    settings = batch_settings(session_options, save, check_hu)
    fd, ledger, queue, used = _prepare(out, inputs, settings, retry_failed)
    t0 = time.perf_counter()
    run = _Run(ledger, None, queue, used, max_attempts, progress, t0, list_attempts={})
    stop = _Stop()
    try:
        if queue:
            run.engine = ENGINES[engine](WorkerSpec(str(out), session_options, save, check_hu), workers,
                                         {"address": address, "cpus_per_worker": cpus_per_worker})
            with stop:  # a Ctrl-C while the models load is a stop too
                try:
                    run.engine.start(cancelled=lambda: stop.stopping)
                    stop.install()
                    _drive(run, stop)
                except Cancelled:
                    pass
        return _finish(run, out, settings, stop)
    except BaseException:
        if run.engine is not None:  # a failure of the driver itself: the workers go now
            run.engine.stop(now=True)
            run.engine = None
        _summary_anyway(run, out, settings)
        raise
    finally:
        if run.engine is not None:
            run.engine.stop(now=stop.now)
        ledger.close()
        os.close(fd)


def _summary_anyway(run: _Run, out: Path, settings: dict) -> None:
    """The driver failed (a worker that cannot start, a bug): the running scans go back to pending and
    the summary files say where the batch stands, before the error reaches the caller."""
    try:
        run.ledger.resume(False)
        write_summary(out, run.ledger, settings, time.perf_counter() - run.t0, run.finished)
    except Exception:  # noqa: BLE001 (the original error is the one to report)
        log.debug("batch: could not write the summary after an error", exc_info=True)


def _finish(run: _Run, out: Path, settings: dict, stop: _Stop) -> BatchSummary:
    if stop.now or stop.stopping:
        run.ledger.resume(False)  # scans abandoned by a second interrupt go back to pending
    seconds = time.perf_counter() - run.t0
    summary = write_summary(out, run.ledger, settings, seconds, run.finished)
    return BatchSummary(out, summary["counts"], seconds, run.finished, stop.stopping or stop.now, summary)
