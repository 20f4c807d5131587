"""What a batch worker does (issue 20): hold one `Session` and run the jobs the driver hands it.

The same class runs in a local worker process (`lnrt.batch_engines.LocalEngine`) and as a Ray actor
(`RayEngine`): jobs and results are small picklable values, and the worker writes a scan's outputs
itself (`Result.save`, all or nothing), so no volume ever travels back to the driver. A worker never
raises for a scan: every failure is a result with its one-line reason, and only its death (an OS kill,
a segfault, a lost node) is the driver's to notice.
"""
from __future__ import annotations

import hashlib
import os
import resource
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import LnrtError, described

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ScanJob:
    """One scan: an image file, or a DICOM folder with its series (None: the folder's largest CT)."""

    key: str  # the ledger's key: the input path, and `#series` for a series of a DICOM folder
    input: str
    series: str | None
    name: str  # the outputs' path under the batch folder, less the suffixes ("site/p1/ct")


@dataclass(frozen=True)
class ListJob:
    """A DICOM folder whose series are not known yet: a worker lists them (headers only)."""

    path: str
    name: str


def signature(path: str | os.PathLike) -> str:
    """A cheap fingerprint of an input: a file's size and modification time; a folder's file count,
    total size and latest modification time. A done scan whose input's fingerprint changed is run again."""
    p = Path(path)
    if p.is_dir():
        files = [e.stat() for e in os.scandir(p) if e.is_file()]
        return f"dir:{len(files)}:{sum(s.st_size for s in files)}:{max((s.st_mtime_ns for s in files), default=0)}"
    st = p.stat()
    return f"file:{st.st_size}:{st.st_mtime_ns}"


def _file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def input_sha256(header) -> str:
    """sha256 of what was read: the image file (its data file beside a `.mhd`/`.nhdr` header is not
    included), or a DICOM series as the sha256 of its slices' `name sha256` lines in slice order."""
    if header.kind != "dicom":
        return _file_sha256(header.path)
    lines = "".join(f"{Path(f).name} {_file_sha256(f)}\n" for f in header.series.files)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _peak_mb() -> float:
    """This process's peak resident memory (Linux reports kB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


def summarise(nodes: list) -> dict:
    """The ledger's per-scan numbers: node count, largest short axis, counts by RECIST 1.1 category."""
    counts = {c: sum(1 for n in nodes if n["recist"] == c) for c in ("normal", "pathological", "enlarged")}
    largest = max((n["short_axis_mm"] for n in nodes), default=None)
    return {"nodes": len(nodes), "largest_short_axis_mm": None if largest is None else round(largest, 2), **counts}


class Worker:
    """One model, loaded once; scans run one at a time (a Ray actor or a local worker process).

    `session_options` are `Session`'s keyword arguments; `save_options` those of `Result.save` (less
    the folder); `check_hu` is `Session.run`'s."""

    def __init__(self, out_dir: str, session_options: dict, save_options: dict, check_hu: bool = True):
        from .session import Session

        self.out_dir = Path(out_dir)
        self.save_options = dict(save_options)
        self.check_hu = check_hu
        self.session = Session(**session_options)
        self.id = f"{socket.gethostname()}:{os.getpid()}"

    def ident(self) -> str:
        """Who this worker is (host:pid), once its model is loaded: the ledger's `worker` column."""
        return self.id

    def handle(self, job):
        return self.list(job) if isinstance(job, ListJob) else self.scan(job)

    def list(self, job: ListJob) -> dict:
        """The image series of a DICOM folder, from the headers (no pixel decoded). No image series:
        `skipped` when every file was read (only non-image objects: SR, RTSTRUCT, SEG), else `failed`
        with the first unreadable file's reason."""
        from .dicom_in import scan_dicom_folder

        try:
            found, bad = scan_dicom_folder(Path(job.path))
            series = [{k: e[k] for k in ("uid", "modality", "slices", "orientation")} for e in found]
            if series:
                return {"path": job.path, "series": series, "error": None}
        except (LnrtError, OSError) as exc:
            return {"path": job.path, "series": [], "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 (a bug on one folder must not take the batch down)
            return {"path": job.path, "series": [],
                    "error": f"{job.path}: internal error listing its series: {described(exc, 200)}"}
        if bad:
            return {"path": job.path, "series": [], "error": f"{job.path}: no DICOM image series; {len(bad)} "
                    f"file(s) could not be read as DICOM, e.g. {bad[0][0]}: {bad[0][1]}"}
        return {"path": job.path, "series": [], "status": "skipped",
                "error": f"{job.path}: holds no DICOM image series (only non-image objects such as SR or RTSTRUCT)"}

    def scan(self, job: ScanJob) -> dict:
        """Run one scan and write its outputs; a failure is a result with its reason, never a raise."""
        from .imageio import probe_scan

        t0 = time.perf_counter()
        out = {"key": job.key, "worker": self.id, "status": "failed", "outputs": {}}
        try:
            header = probe_scan(job.input, job.series)  # a missing input is its one-line error
            out["signature"] = signature(job.input)
            out["sha256"] = input_sha256(header)
            result = self.session.run(header, check_hu=self.check_hu)
            name = Path(job.name)
            result.info = replace(result.info, stem=name.name)
            save = self.save_options
            if header.kind != "dicom":  # DICOM SEG/SR are made for the DICOM series of a batch only
                save = {**save, "dicom_seg": None, "dicom_sr": False}
            paths = result.save(self.out_dir / name.parent, overwrite=True, **save)
            out.update(summarise(result.nodes), status="done",
                       outputs={k: str(Path(p).relative_to(self.out_dir)) for k, p in paths.items()})
        except LnrtError as exc:
            out["error"] = str(exc)
        except OSError as exc:  # the input vanished or became unreadable while it was read
            out["error"] = f"{job.input}: cannot read it ({exc.strerror or exc}); expected a readable scan"
        except MemoryError:
            out["error"] = f"{job.input}: ran out of memory; expected a smaller scan or a machine with more memory"
        except Exception as exc:  # noqa: BLE001 (a bug on one scan must not take the batch down)
            out["error"] = f"internal error: {described(exc)}"
        out["seconds"] = round(time.perf_counter() - t0, 3)
        out["worker_peak_mb"] = _peak_mb()
        return out

    def close(self) -> None:
        self.session.close()
