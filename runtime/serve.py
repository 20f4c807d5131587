"""`lnrt serve`: a resident DICOM node (issue 21). A scanner or a PACS sends a CT series, lnrt sends
back its DICOM SEG and SR.

    lnrt serve --config serve.toml          # or flags: --ae-title, --port, --allow, --destination ...

Threads, one job each, sharing nothing but the SQLite store (`lnrt.serve_store`) and the spool folder:
- the Storage SCP (pynetdicom): CT Image Storage and Verification; calling AE titles checked; each
  instance written to the spool and fsynced, then recorded, then acknowledged (a refusal when the spool
  is over its quota: accepted data is never dropped);
- the scheduler (the main thread): a series quiet for `quiet_seconds` becomes a job;
- the worker: one loaded `Session`, jobs in order, results (SEG, SR, JSON report) written into the
  outbox with UIDs derived from the source series UID and the model's sha256, so a result made again is
  re-stored at the PACS, not duplicated;
- the sender: C-STORE of each result to each destination, tried again with doubling waits while a
  destination is down;
- the HTTP endpoint on 127.0.0.1 (`/health`, `/ready`, `/metrics` in Prometheus' text format).
SIGTERM or Ctrl-C: stop accepting associations, let the running job finish (or leave it to be re-run at
the next start), exit.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .atomic import remove_stale
from .errors import LnrtError, described

log = logging.getLogger("lnrt")

DEFAULT_QUIET_S = 10.0  # Orthanc's StableAge is 60 s: the conservative choice for slow modalities
MAX_JOB_ATTEMPTS = 3
# CT Image Storage: the instances lnrt runs; other classes are recorded as a failed series with the
# reason (the sender gets success: retrying would not change the answer)
CT_STORAGE = ("1.2.840.10008.5.1.4.1.1.2",)  # Enhanced CT (multi-frame, ...1.2.1) is not read yet
STORE_REFUSED_OUT_OF_RESOURCES = 0xA700
STORE_FAILED_CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        """`AE@HOST:PORT`."""
        try:
            ae, rest = text.split("@", 1)
            host, port = rest.rsplit(":", 1)
            if not host or not 1 <= int(port) <= 65535:
                raise ValueError
            return cls(_ae_title(ae, text), host, int(port))
        except ValueError:
            raise LnrtError(f"destination {text!r}: expected AE@HOST:PORT with a port from 1 to 65535 "
                            "(e.g. PACS@10.0.0.5:104)") from None

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def _ae_title(value: str, where: str) -> str:
    value = str(value).strip()
    if not value or len(value) > 16 or "\\" in value or not value.isprintable():
        raise LnrtError(f"{where}: AE title {value!r} is not valid; expected 1 to 16 printable characters")
    return value


@dataclass(frozen=True)
class ServeConfig:
    """What `lnrt serve` runs with: the node, the spool, the destinations, the model."""

    spool: Path
    ae_title: str = "LNRT"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aes: tuple = ()  # empty: any calling AE title
    destinations: tuple = ()
    quiet_seconds: float = DEFAULT_QUIET_S
    spool_quota_gb: float = 50.0
    http_port: int = 0  # 0: no HTTP endpoint
    session_options: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike | None, **overrides) -> "ServeConfig":
        """A TOML file ([node], [model], [[destinations]]; see docs/serve.toml) and flags over it."""
        values: dict = {}
        if path is not None:
            values = _read_toml(Path(path))
        values.update({k: v for k, v in overrides.items() if v not in (None, ())})
        if "spool" not in values:
            raise LnrtError("serve: no spool folder; expected --spool DIR or spool = \"DIR\" in [node]")
        values["spool"] = Path(values["spool"]).absolute()
        values["ae_title"] = _ae_title(values.get("ae_title", "LNRT"), "serve")
        allowed = values.get("allowed_calling_aes", ())
        if isinstance(allowed, str) or not isinstance(allowed, (list, tuple)):
            raise LnrtError(f"{path or 'serve'}: allowed_calling_aes = {allowed!r}; expected a list of AE titles, "
                            'e.g. ["CT01"]')
        values["allowed_calling_aes"] = tuple(_ae_title(a, "allowed_calling_aes") for a in allowed)
        _check_session_options(values.get("session_options", {}), path or "serve")
        values["destinations"] = tuple(d if isinstance(d, Destination) else Destination.parse(d)
                                       for d in values.get("destinations", ()))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise LnrtError(f"{path}: unknown setting {unknown[0]!r}; expected one of {', '.join(sorted(known))}")
        _check_numbers(values, path or "serve")
        return cls(**values)


def _check_session_options(options: dict, where) -> None:
    """[model] holds `lnrt.Session`'s keyword arguments, nothing else."""
    import inspect

    from .session import Session

    known = set(inspect.signature(Session).parameters)
    unknown = sorted(set(options) - known)
    if unknown:
        raise LnrtError(f"{where}: [model] has no setting {unknown[0]!r}; expected some of {', '.join(sorted(known))}")


def _check_numbers(values: dict, where) -> None:
    """Ports are integers in 1..65535 (the HTTP port may be 0: off), times and quotas non-negative numbers."""
    for key, low in (("port", 1), ("http_port", 0)):
        v = values.get(key, low or 1)
        if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= 65535:
            raise LnrtError(f"{where}: {key} = {v!r}; expected a whole number from {low} to 65535")
    for key, low in (("quiet_seconds", 0.0), ("spool_quota_gb", 0.001)):
        v = values.get(key, 1.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not low <= v < float("inf"):
            raise LnrtError(f"{where}: {key} = {v!r}; expected a number of at least {low:g}")


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from .optional import require

        tomllib = require("tomli", "serve")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LnrtError(f"{path}: cannot read the configuration ({exc}); expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise LnrtError(f"{path}: not valid TOML ({exc}); expected a file like docs/serve.toml") from None
    values = dict(data.get("node", {}))
    if "spool" in values and not Path(str(values["spool"])).is_absolute():  # relative to the file, not the cwd
        values["spool"] = path.parent / str(values["spool"])
    if "model" in data:
        values["session_options"] = dict(data["model"])
        model = values["session_options"].get("model")
        if model and not Path(str(model)).is_absolute():  # relative to the file, like the spool
            values["session_options"]["model"] = str(path.parent / str(model))
    values["destinations"] = tuple(
        Destination.parse(f"{d.get('ae_title', '')}@{d.get('host', '')}:{d.get('port', 104)}")
        for d in data.get("destinations", []))
    extra = sorted(set(data) - {"node", "model", "destinations"})
    if extra:
        raise LnrtError(f"{path}: unknown section [{extra[0]}]; expected [node], [model], [[destinations]]")
    return values


# -- receiving --------------------------------------------------------------------------------------

def _spool_path(cfg: ServeConfig, series_uid: str, sop_uid: str) -> Path:
    return cfg.spool / "incoming" / _safe(series_uid) / f"{_safe(sop_uid)}.dcm"


def _safe(uid: str) -> str:
    """A UID as a file name (UIDs are digits and dots; anything else is replaced)."""
    return "".join(c if c.isdigit() or c == "." else "_" for c in str(uid))[:64] or "_"


class SpoolUsage:
    """The bytes in the spool as the disk holds them: measured by walking it (every `REFRESH_S`, by the
    scheduler) plus what arrived since, so files an operator removes lift the quota at the next walk."""

    REFRESH_S = 10.0

    def __init__(self, spool: Path, quota_bytes: int):
        self.spool, self.quota, self.lock = spool, quota_bytes, threading.Lock()
        self.bytes, self.walked = 0, 0.0
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.walked < self.REFRESH_S:
            return
        total = sum(f.stat().st_size for d in ("incoming", "outbox") for f in (self.spool / d).rglob("*")
                    if f.is_file()) if self.spool.is_dir() else 0
        with self.lock:
            self.bytes, self.walked = total, time.monotonic()

    def add(self, n: int) -> None:
        with self.lock:
            self.bytes += n

    @property
    def full(self) -> bool:
        return self.bytes >= self.quota


def make_store_handler(cfg: ServeConfig, store, usage: SpoolUsage):
    """The C-STORE handler: spool quota, then the file (atomic, fsynced), then the row, then success."""
    from .atomic import write_bytes

    def on_store(event) -> int:
        series_uid = "(series not read)"
        try:
            ds = event.dataset
            series_uid, sop_uid = str(ds.SeriesInstanceUID), str(event.request.AffectedSOPInstanceUID)
            if usage.full:
                log.warning("serve: %s: spool over its %g GB quota; refusing an instance from %s", series_uid,
                            cfg.spool_quota_gb, event.assoc.requestor.ae_title)
                return STORE_REFUSED_OUT_OF_RESOURCES
            if str(event.request.AffectedSOPClassUID) not in CT_STORAGE:
                return _not_ct(store, event, ds, series_uid)
            data = bytes(event.encoded_dataset())
            path = _spool_path(cfg, series_uid, sop_uid)
            write_bytes(path, data, mkdir=True)
            usage.add(len(data))
            if store.received(sop_uid, series_uid, str(ds.get("StudyInstanceUID", "") or ""),
                              event.assoc.requestor.ae_title, str(path), len(data)):
                log.debug("serve: %s: instance %s", series_uid, sop_uid)
            return 0x0000
        except Exception as exc:  # noqa: BLE001 (the sender is told; nothing is acknowledged that is not stored)
            log.warning("serve: %s: an instance could not be stored (%s: %s)", series_uid, type(exc).__name__, exc)
            return STORE_FAILED_CANNOT_UNDERSTAND

    return on_store


def _not_ct(store, event, ds, series_uid: str) -> int:
    """A series lnrt does not run: received and recorded as failed once (a sender must not retry it)."""
    sop_class = str(event.request.AffectedSOPClassUID)
    what = ("Enhanced CT (multi-frame), which lnrt does not read yet" if sop_class == "1.2.840.10008.5.1.4.1.1.2.1"
            else f"{ds.get('Modality', '') or 'of unknown modality'} (SOP class {sop_class}), not CT")
    reason = f"series {series_uid} is {what}; lnrt serve runs CT Image Storage series"
    if store.not_ct(series_uid, str(ds.get("StudyInstanceUID", "") or ""), event.assoc.requestor.ae_title, reason):
        log.warning("serve: %s: %s", series_uid, reason)
    return 0x0000


def start_scp(cfg: ServeConfig, store, usage: SpoolUsage):
    """The Storage SCP, serving in its own threads; returns pynetdicom's server (call `shutdown()`)."""
    from .optional import require

    pynetdicom = require("pynetdicom", "serve")
    from pynetdicom import ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    ae = pynetdicom.AE(ae_title=cfg.ae_title)
    for context in StoragePresentationContexts:  # every storage class: a non-CT series is recorded, not bounced
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    if cfg.allowed_calling_aes:
        ae.require_calling_aet = list(cfg.allowed_calling_aes)
    handlers = [(evt.EVT_C_STORE, make_store_handler(cfg, store, usage)), (evt.EVT_C_ECHO, lambda event: 0x0000)]
    try:
        return ae.start_server((cfg.host, cfg.port), block=False, evt_handlers=handlers)
    except OSError as exc:
        raise LnrtError(f"serve: cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc}); expected a free "
                        "port (--port)") from None


def gate_associations(scp, full: bool) -> None:
    """Over the spool quota, new associations are rejected as transient with "local limit exceeded"
    (A-ASSOCIATE-RJ result 2, source 3, reason 2): the sender keeps its data and tries later. pynetdicom
    rejects an association when its acceptors outnumber `maximum_associations`, whose setter will not go
    below 1, hence its attribute; `tests/test_serve.py` holds this to the rejection a client sees."""
    ae = scp.ae
    if full and ae._maximum_associations != 0:
        ae._lnrt_maximum = ae._maximum_associations
        ae._maximum_associations = 0
        log.warning("serve: the spool is over its quota; new associations are refused until it is not")
    elif not full and ae._maximum_associations == 0:
        ae._maximum_associations = getattr(ae, "_lnrt_maximum", 10)
        log.info("serve: the spool is under its quota again; accepting associations")


# -- the job worker and the sender -------------------------------------------------------------------

def uid_seed(series_uid: str, sop_uids: list, model_sha256: str) -> str:
    """The seed of a result's UIDs: the series, the instances it was made from and the model. The same
    inputs give the same UIDs (a re-run after a crash re-stores, idempotently); a series that grew gives
    new ones (new content is a new instance, never an old UID with other content)."""
    import hashlib

    digest = hashlib.sha256("\n".join(sorted(sop_uids)).encode("ascii", "replace")).hexdigest()[:32]
    return f"{series_uid}/{digest}/{model_sha256}"


def run_job(cfg: ServeConfig, store, session, series_uid: str) -> None:
    """One series through the session; its results into the outbox and their sends queued, in one step."""
    folder = cfg.spool / "incoming" / _safe(series_uid)
    out = cfg.spool / "outbox" / _safe(series_uid)
    t0 = time.perf_counter()
    log.info("serve: %s: running", series_uid)
    try:
        seed = uid_seed(series_uid, store.instances_of(series_uid), session.model_sha256)
        result = session.run(folder, series_uid=series_uid)
        result.info = replace(result.info, stem="lnrt")
        paths = result.save(out, overwrite=True, viewer=False, dicom_sr=True, uid_seed=seed)
    except LnrtError as exc:
        store.finished(series_uid, False, str(exc), None, time.perf_counter() - t0, [])
        log.warning("serve: %s: failed: %s", series_uid, exc)
        return
    except (OSError, MemoryError) as exc:  # transient (a full disk, memory): tried again, a few times
        reason = described(exc)
        again = store.retry_later(series_uid, reason, MAX_JOB_ATTEMPTS)
        log.warning("serve: %s: %s; %s", series_uid, reason, "trying again" if again else "failed")
        return
    except Exception as exc:  # noqa: BLE001 (one series' bug must not stop the node)
        reason = f"internal error: {described(exc)}"
        store.finished(series_uid, False, reason, None, time.perf_counter() - t0, [])
        log.warning("serve: %s: failed: %s", series_uid, reason)
        return
    sends = [(str(d), str(paths[k])) for d in cfg.destinations for k in ("dicom_seg", "dicom_sr") if k in paths]
    seconds = time.perf_counter() - t0
    store.finished(series_uid, True, None, len(result.nodes), seconds, sends)
    log.info("serve: %s: done, %d node(s) in %.1f s; %d send(s) queued", series_uid, len(result.nodes), seconds,
             len(sends))


def work(cfg: ServeConfig, store, session, stop: threading.Event) -> None:
    """The worker thread: queued series in order until `stop` (the running one is finished first). A
    failure of the store itself (locked, disk full) is logged and the loop goes on after a pause; the job
    it interrupted is re-run at the next start."""
    while not stop.is_set():
        try:
            series_uid = store.next_job()
            if series_uid is None:
                stop.wait(0.2)
                continue
            run_job(cfg, store, session, series_uid)
        except Exception as exc:  # noqa: BLE001 (the worker must outlive a bad moment of its disk)
            log.warning("serve: the worker could not use its store (%s: %s); trying again", type(exc).__name__, exc)
            stop.wait(2.0)


def c_store(ae_title: str, dest: Destination, path: str, timeout_s: float = 30.0) -> tuple[bool, str | None]:
    """Send one file to a destination: (delivered, the reason it was not)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

    ae = AE(ae_title=ae_title)
    ae.add_requested_context(SegmentationStorage)
    ae.add_requested_context(Comprehensive3DSRStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        return False, f"{dest}: no association (down, or it rejected {ae_title})"
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        return False, f"{dest}: no C-STORE response"
    if code == 0x0000 or 0xB000 <= code <= 0xBFFF:  # success, or a warning (stored anyway)
        return True, None
    return False, f"{dest}: C-STORE status 0x{code:04X}"


def deliver(cfg: ServeConfig, store, send: dict) -> None:
    """One delivery attempt, whatever happens recorded: a result file that is gone fails for good; any
    other failure (down, refused, a context the destination lacks) is tried again later."""
    final = not Path(send["path"]).is_file()
    try:
        ok, reason = (False, f"{send['path']}: the result file is gone") if final else \
            c_store(cfg.ae_title, Destination.parse(send["destination"]), send["path"])
    except Exception as exc:  # noqa: BLE001 (a send must never take the sender down)
        ok, reason = False, f"{send['destination']}: {described(exc, 200)}"
    store.sent(send, ok, reason, final=final)
    if ok:
        log.info("serve: %s: sent %s to %s", send["series_uid"], Path(send["path"]).name, send["destination"])
    else:
        log.warning("serve: %s: not sent (%s); %s", send["series_uid"], reason,
                    "not tried again" if final else "trying again later")


def send_loop(cfg: ServeConfig, store, stop: threading.Event) -> None:
    """The sender thread: due sends delivered, failures tried again later (`Store.sent`'s backoff)."""
    while not stop.is_set():
        try:
            for send in store.due_sends():
                deliver(cfg, store, send)
        except Exception as exc:  # noqa: BLE001 (the store busy or the disk full: the next round tries again)
            log.warning("serve: the sender could not use its store (%s: %s)", type(exc).__name__, exc)
        stop.wait(0.5)


# -- health and metrics --------------------------------------------------------------------------------

def metrics_text(m: dict, now: float | None = None) -> str:
    """Prometheus' text exposition format of `Store.metrics()`."""
    now = time.time() if now is None else now
    lines = ["# HELP lnrt_received_instances_total DICOM instances received and stored in the spool.",
             "# TYPE lnrt_received_instances_total counter", f"lnrt_received_instances_total {m['instances']}",
             "# HELP lnrt_jobs Series by job state.", "# TYPE lnrt_jobs gauge"]
    lines += [f'lnrt_jobs{{state="{s}"}} {n}' for s, n in m["jobs"].items()]
    lines += ["# HELP lnrt_sends Results by delivery state.", "# TYPE lnrt_sends gauge"]
    lines += [f'lnrt_sends{{state="{s}"}} {n}' for s, n in m["sends"].items()]
    age = now - m["oldest_queued_at"] if m["oldest_queued_at"] else 0.0
    lines += ["# HELP lnrt_send_failures_total Failed delivery attempts.", "# TYPE lnrt_send_failures_total counter",
              f"lnrt_send_failures_total {m['send_failures']}",
              "# HELP lnrt_inference_seconds_total Seconds spent running jobs.",
              "# TYPE lnrt_inference_seconds_total counter",
              f"lnrt_inference_seconds_total {m['inference_seconds']:.3f}",
              "# HELP lnrt_queue_age_seconds Age of the oldest queued job.", "# TYPE lnrt_queue_age_seconds gauge",
              f"lnrt_queue_age_seconds {age:.3f}"]
    return "\n".join(lines) + "\n"


def start_http(port: int, store, ready):
    """/health (the process answers), /ready (`ready()`: the model is loaded and the worker and sender
    are running), /metrics, on 127.0.0.1 only."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path == "/health":
                code, body = 200, "ok\n"
            elif self.path == "/ready":
                code, body = (200, "ready\n") if ready() else (503, "not ready (loading the model, or stopped)\n")
            elif self.path == "/metrics":
                code, body = 200, metrics_text(store.metrics())
            else:
                code, body = 404, "not found; expected /health, /ready or /metrics\n"
            data = body.encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # no access log on stderr
            pass

    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    except OSError as exc:
        raise LnrtError(f"serve: cannot listen for HTTP on 127.0.0.1:{port} ({exc.strerror or exc}); expected a "
                        "free --http-port") from None
    threading.Thread(target=server.serve_forever, name="lnrt-serve-http", daemon=True).start()
    return server


# -- the node ------------------------------------------------------------------------------------------

def _lock_spool(spool: Path) -> int:
    from .atomic import lock_file

    try:
        return lock_file(spool / ".lnrt-serve.lock")
    except BlockingIOError as exc:
        raise LnrtError(f"{spool}: another lnrt serve uses this spool ({exc}); expected one server per "
                        "spool") from None


def serve(cfg: ServeConfig, stop: threading.Event | None = None) -> None:
    """Run the node until `stop` is set (or KeyboardInterrupt: SIGINT, and SIGTERM through the CLI)."""
    from .outputs import check_extras_installed

    check_extras_installed(("dicom_seg",), True)
    stop = stop or threading.Event()
    try:
        cfg.spool.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LnrtError(f"{cfg.spool}: cannot create the spool ({exc.strerror or exc}); expected a writable "
                        "folder") from None
    node = _Node(cfg)
    try:
        node.start()
        while not stop.is_set():
            node.tick()
            stop.wait(0.2)
    except KeyboardInterrupt:
        log.info("serve: stopping (the running job finishes first)")
    finally:
        node.shutdown()


class _Node:
    """The running parts of one node, started in order and stopped in the reverse order."""

    def __init__(self, cfg: ServeConfig):
        self.cfg, self.lock, self.store, self.http, self.scp, self.session = cfg, None, None, None, None, None
        self.done, self.threads, self.loaded = threading.Event(), [], threading.Event()

    def ready(self) -> bool:
        return self.loaded.is_set() and bool(self.threads) and all(t.is_alive() for t in self.threads)

    def start(self) -> None:
        from .serve_store import Store
        from .session import Session

        cfg = self.cfg
        self.lock = _lock_spool(cfg.spool)
        remove_stale(cfg.spool / "incoming")  # writes a kill -9 cut short; the lock makes this safe
        self.store = Store(cfg.spool / "serve.sqlite")
        requeued = self.store.recover(MAX_JOB_ATTEMPTS)
        self.usage = SpoolUsage(cfg.spool, int(cfg.spool_quota_gb * 1e9))
        self.http = start_http(cfg.http_port, self.store, self.ready) if cfg.http_port else None
        self.session = Session(**cfg.session_options)
        self.loaded.set()
        self.scp = start_scp(cfg, self.store, self.usage)
        log.info("serve: %s listening on %s:%d (%d job(s) re-queued, %d destination(s))", cfg.ae_title, cfg.host,
                 cfg.port, requeued, len(cfg.destinations))
        self.threads = [
            threading.Thread(target=work, args=(cfg, self.store, self.session, self.done), name="lnrt-serve-worker"),
            threading.Thread(target=send_loop, args=(cfg, self.store, self.done), name="lnrt-serve-sender")]
        for t in self.threads:
            t.start()

    def tick(self) -> None:
        """The scheduler's round: quiet series become jobs; the spool's use measured, the quota gate set."""
        try:
            self.store.queue_quiet(self.cfg.quiet_seconds)
        except Exception as exc:  # noqa: BLE001 (the store busy: the next round tries again)
            log.warning("serve: the scheduler could not use its store (%s: %s)", type(exc).__name__, exc)
        self.usage.refresh()
        gate_associations(self.scp, self.usage.full)

    def shutdown(self) -> None:
        """Stop accepting and end the open associations (an instance not acknowledged is the sender's to
        send again), let the worker finish its job, then the rest; the spool's lock goes last."""
        if self.scp is not None:
            self.scp.shutdown()
            for assoc in list(self.scp.active_associations):
                assoc.abort()
        self.done.set()
        for t in self.threads:
            t.join()
        if self.session is not None:
            self.session.close()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.lock is not None:
            os.close(self.lock)
