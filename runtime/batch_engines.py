"""Where a batch's workers run (issue 20): local processes, or Ray actors on a cluster.

Both engines give the driver (`lnrt.batch`) the same small interface, so the driver loop (the ledger,
retries, interrupts, progress) exists once:

    engine.start(cancelled)        start the workers; each loads the model once (a failure is fatal)
    engine.free()                  how many workers can take a job (idle, or dead and to be replaced)
    engine.submit(job) -> worker   hand a job to a free worker; returns the worker's id (host:pid)
    engine.wait(timeout)           [(job, result dict | Died), ...] that finished or died meanwhile
    engine.stop(now)               let the workers go (now: kill them, the running jobs are abandoned)

A worker holds one job at a time, so the queue in the workers is bounded by their number and the rest
waits in the ledger. A worker that dies has its job reported as `Died`; its slot gets a fresh worker at
the next `submit`, so `wait` never fails and no outcome is lost. Deaths are bounded by the scans'
attempts (each death costs the scan it ran one); a fresh worker that cannot start ends the batch.
`cancelled()` is polled while workers load, so an interrupt then is not a wait for a slow model.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass

from .batch_work import Worker
from .errors import LnrtError, described, one_line

log = logging.getLogger("lnrt")

# How long a worker may take to load its model before the batch gives up on it: the default model loads
# in about 2 s here, an nnU-Net-sized OpenVINO model compiles in under a minute.
START_TIMEOUT_S = 600.0
POLL_S = 0.25


class Cancelled(KeyboardInterrupt):
    """The batch was interrupted while its workers were starting."""


@dataclass(frozen=True)
class Died:
    """The worker running a job died before answering."""

    reason: str


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker is made with (picklable: it travels to worker processes and Ray actors)."""

    out_dir: str
    session_options: dict
    save_options: dict
    check_hu: bool = True


def _never() -> bool:
    return False


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the driver dies (`kill -9` of the driver takes its local
    workers along, and the rerun is the only writer). Elsewhere the worker exits at its next job."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _quiet_logs() -> None:
    """A worker's warnings are in each scan's report (and its failures in the ledger, printed by the
    driver): at archive scale a line per warning per scan on the terminal would bury the progress."""
    logging.getLogger("lnrt").setLevel(logging.ERROR)


def start_worker(spec: WorkerSpec) -> tuple:
    """(the `Worker`, None), or (None, the one-line reason it could not load its model)."""
    try:
        return Worker(spec.out_dir, spec.session_options, spec.save_options, spec.check_hu), None
    except LnrtError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 (reported to the driver as one line)
        return None, f"internal error starting a worker: {described(exc)}"


def local_worker_main(fd: int) -> None:
    """A local worker process (`python -m lnrt._batch_worker FD`): its spec arrives first on the socket
    `fd`; it loads the model, then answers jobs until told to stop or the driver goes."""
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle (it stops the batch)
    _die_with_parent()
    _quiet_logs()
    conn = Connection(fd)
    try:
        spec = conn.recv()
    except (EOFError, OSError):
        return
    worker, error = start_worker(spec)
    if worker is None:
        conn.send(("fatal", error))
        return
    conn.send(("ready", worker.ident()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            break
        if job is None:
            break
        conn.send(("result", worker.handle(job)))
    worker.close()


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"the worker was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"the worker was killed by signal {-code}"
    return f"the worker exited with status {code}"


def visible_gpus(count: int) -> list:
    """The CUDA_VISIBLE_DEVICES value for each of `count` usable GPUs: the parent's own list where it has
    one (`CUDA_VISIBLE_DEVICES=2,3 lnrt batch` keeps workers on GPUs 2 and 3), else 0..count-1."""
    parent = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return parent[:count] if parent else [str(i) for i in range(count)]


class LocalEngine:
    """Worker processes on this machine: each a fresh `python -m lnrt._batch_worker` talking to the
    driver over a socket pair, in its own session (a Ctrl-C or SIGTERM to the terminal's process group
    is the driver's alone). Not multiprocessing's spawn, which would run the caller's main script again
    in every worker (a script calling `lnrt.batch` without a `__main__` guard), and not fork, which would
    copy a driver that may hold threads of loaded libraries."""

    name = "local"

    def __init__(self, spec: WorkerSpec, workers: int, gpus: list | None = None):
        self.spec, self.n, self.gpus = spec, workers, gpus or []
        self.slots: list = []  # per slot: {"proc", "conn", "id", "job"}, or None when its worker died
        self.cancelled = _never

    def _spawn(self, slot: int) -> dict:
        import socket
        import subprocess
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        proc = subprocess.Popen([sys.executable, "-m", "lnrt._batch_worker", str(theirs.fileno())],
                                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        theirs.close()
        conn = Connection(ours.detach())
        conn.send(self.spec)
        return {"proc": proc, "conn": conn, "id": None, "job": None}

    def _ready(self, w: dict) -> dict:
        """Wait for a worker's model to load (polling `cancelled`); a worker that cannot start is fatal."""
        import time

        end = time.monotonic() + START_TIMEOUT_S
        while not w["conn"].poll(POLL_S):
            if self.cancelled():
                raise Cancelled()
            if time.monotonic() > end:
                raise LnrtError(f"batch: a worker did not load the model within {START_TIMEOUT_S:.0f} s")
        try:
            kind, value = w["conn"].recv()
        except (EOFError, OSError):
            kind, value = "fatal", f"batch: a worker could not start ({_exit_reason(_wait(w['proc']))})"
        if kind != "ready":
            raise LnrtError(value)
        w["id"] = value
        return w

    def start(self, cancelled=_never) -> None:
        self.cancelled = cancelled
        self.slots = [self._spawn(i) for i in range(self.n)]
        for w in self.slots:
            self._ready(w)

    def free(self) -> int:
        return sum(1 for w in self.slots if w is None or w["job"] is None)

    def submit(self, job) -> str:
        i = next(i for i, w in enumerate(self.slots) if w is None or w["job"] is None)
        w = self.slots[i]
        try:
            if w is None:
                raise BrokenPipeError
            w["conn"].send(job)
        except OSError:  # dead (since its last job, or earlier): a fresh worker takes this one
            if w is not None:
                log.warning("batch: a worker died while idle (%s); starting another", _exit_reason(_wait(w["proc"])))
                w["conn"].close()
            w = self.slots[i] = self._ready(self._spawn(i))
            w["conn"].send(job)
        w["job"] = job
        return w["id"]

    def wait(self, timeout: float) -> list:
        from multiprocessing.connection import wait

        busy = [w["conn"] for w in self.slots if w is not None and w["job"] is not None]
        if not busy:
            return []
        ready = wait(busy, timeout)  # a dead worker's socket reads as ready (end of file)
        return [self._collect(i, w) for i, w in enumerate(self.slots) if w is not None and w["conn"] in ready]

    def _collect(self, i: int, w: dict) -> tuple:
        job = w["job"]
        try:
            _, result = w["conn"].recv()
            w["job"] = None
            return job, result
        except (EOFError, OSError):
            pass
        died = Died(f"{_exit_reason(_wait(w['proc']))} while running it ({w['id']})")
        log.warning("batch: %s: %s", getattr(job, "name", job), died.reason)
        w["conn"].close()
        self.slots[i] = None  # replaced at the next submit
        return job, died

    def stop(self, now: bool = False) -> None:
        live = [w for w in self.slots if w is not None]
        for w in live:
            try:
                w["proc"].kill() if now else w["conn"].send(None)
            except (OSError, ValueError):
                pass
        for w in live:
            if _wait(w["proc"], 5 if now else 30) is None:
                w["proc"].kill()
                _wait(w["proc"], 5)
            w["conn"].close()
        self.slots = []


def _wait(proc, timeout: float = 5.0) -> int | None:
    """The process's exit status after at most `timeout` seconds (None: still running)."""
    import subprocess

    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


class ActorWorker:
    """A `Worker` as a Ray actor: a model that does not load is reported by `ident`, not raised from the
    actor's constructor (Ray would wrap it in an actor-death error and a traceback)."""

    def __init__(self, spec: WorkerSpec):
        if _main_thread():  # Ctrl-C on the driver's terminal is the driver's to handle
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        _quiet_logs()
        self.worker, self.error = start_worker(spec)

    def ident(self) -> tuple:
        return ("fatal", self.error) if self.worker is None else ("ready", self.worker.ident())

    def handle(self, job):
        return self.worker.handle(job)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class RayEngine:
    """Ray actors, each holding a `Session`: `num_gpus=1` per actor where the cluster has GPUs and the
    session may use one, else `cpus` CPUs per actor. `address` joins a running cluster (`ray start
    --head` on one machine, `ray start --address HEAD:PORT` on the others); None starts a local one.
    Ray's start-up on this 2-core VM: a local instance in about 2.7 s, an actor with the model loaded
    about 2 s later; an actor's death reaches the driver within a few seconds."""

    name = "ray"

    def __init__(self, spec: WorkerSpec, workers: int | None, address: str | None = None,
                 cpus_per_worker: int | None = None, use_gpus: bool = True):
        self.spec, self.n, self.address = spec, workers, address
        self.cpus, self.use_gpus = cpus_per_worker, use_gpus
        self.ray, self.actors, self.inflight, self.started_here = None, [], {}, False
        self.cancelled = _never

    def _init(self):
        from .optional import require

        ray = require("ray", "ray")
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a local Ray instance"
                raise LnrtError(f"batch: cannot start or join {where} ({one_line(exc, 200)}); "
                                "expected a running Ray cluster at --address (ray start --head), or none "
                                "for a local one") from None
            self.started_here = True
        return ray

    def _placement(self, resources: dict) -> tuple[int, dict]:
        """(workers, actor options) from the cluster's resources."""
        gpus = int(resources.get("GPU", 0))
        if self.use_gpus and gpus:
            return self.n or gpus, {"num_gpus": 1, "num_cpus": 1}
        cpus_total = max(1, int(resources.get("CPU", 1)))
        cpus = self.cpus or max(1, min(os.cpu_count() or 1, cpus_total // (self.n or 1)))
        return self.n or max(1, cpus_total // cpus), {"num_cpus": cpus}

    def start(self, cancelled=_never) -> None:
        self.cancelled = cancelled
        self.ray = ray = self._init()
        self.n, options = self._placement(ray.cluster_resources())
        spec = self.spec
        if "num_gpus" not in options and spec.session_options.get("threads") is None:
            spec = WorkerSpec(spec.out_dir, {**spec.session_options, "threads": options["num_cpus"]},
                              spec.save_options, spec.check_hu)
        self.actor_class = ray.remote(max_restarts=0, max_task_retries=0, **options)(ActorWorker)
        self.actor_spec = spec
        fresh = [self._new_actor() for _ in range(self.n)]
        self.actors = [self._ready(a) for a in fresh]

    def _new_actor(self) -> dict:
        actor = self.actor_class.remote(self.actor_spec)
        return {"actor": actor, "ident": actor.ident.remote(), "id": None, "job": None}

    def _ready(self, a: dict) -> dict:
        """Wait for an actor to be placed and load its model (polling `cancelled`); failure is fatal."""
        import time

        end = time.monotonic() + START_TIMEOUT_S
        while not self.ray.wait([a["ident"]], timeout=POLL_S)[0]:
            if self.cancelled():
                raise Cancelled()
            if time.monotonic() > end:
                raise LnrtError(f"batch: a Ray worker was not placed or did not load the model within "
                                f"{START_TIMEOUT_S:.0f} s; expected free resources for --workers and "
                                "--cpus-per-worker")
        try:
            kind, value = self.ray.get(a["ident"])
        except self.ray.exceptions.RayError as exc:
            kind, value = "fatal", f"batch: a Ray worker could not start ({_first_line(exc)})"
        if kind != "ready":
            raise LnrtError(value)
        a["id"] = value
        return a

    def free(self) -> int:
        return sum(1 for a in self.actors if a is None or a["job"] is None)

    def submit(self, job) -> str:
        slot = next(i for i, a in enumerate(self.actors) if a is None or a["job"] is None)
        if self.actors[slot] is None:  # its actor died: a fresh one takes this job
            self.actors[slot] = self._ready(self._new_actor())
        a = self.actors[slot]
        a["job"] = job
        self.inflight[a["actor"].handle.remote(job)] = slot
        return a["id"]

    def wait(self, timeout: float) -> list:
        if not self.inflight:
            return []
        ready, _ = self.ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=timeout)
        return [self._collect(ref) for ref in ready]

    def _collect(self, ref) -> tuple:
        slot = self.inflight.pop(ref)
        a = self.actors[slot]
        job, a["job"] = a["job"], None
        try:
            return job, self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # handle() raised: a bug, reported for this job
            error = f"internal error: {_first_line(exc)}"
            if hasattr(job, "path") and not hasattr(job, "key"):  # a listing
                return job, {"path": job.path, "series": [], "error": f"{job.path}: {error}"}
            return job, {"status": "failed", "error": error, "worker": a["id"]}
        except self.ray.exceptions.RayError as exc:
            died = Died(f"the Ray worker died while running it ({a['id']}: {type(exc).__name__})")
            log.warning("batch: %s: %s", getattr(job, "name", job), died.reason)
            self._kill(a)  # an unavailable actor may still be alive: it must not write beside the retry
            self.actors[slot] = None
            return job, died

    def _kill(self, a: dict) -> None:
        try:
            self.ray.kill(a["actor"])
        except Exception:  # noqa: BLE001 (an actor already gone)
            pass

    def stop(self, now: bool = False) -> None:
        if self.ray is None:
            return
        for a in self.actors:
            if a is not None:
                self._kill(a)
        self.actors, self.inflight = [], {}
        if self.started_here:  # a local instance stops; a cluster (or the caller's own Ray) keeps running
            self.ray.shutdown()
        self.ray = None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]
