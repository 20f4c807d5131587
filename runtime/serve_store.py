"""The durable state of `lnrt serve` (issue 21): SQLite in WAL mode in the spool folder.

Every received instance is a file in the spool (written and fsynced before the C-STORE response says
success) and a row here; every series is a job with a state; every result to deliver is a send with its
attempts and next try. Whatever instant the process dies at, a restart finds: instances acknowledged
(their rows and files), jobs `receiving` or `queued` (their quiet time runs again), jobs `running`
(queued again, the attempt counted), results not delivered (`pending` sends, tried again).

Series states: receiving -> queued (quiet for `quiet_seconds`) -> running -> done or failed. An instance
that arrives for a series already queued, done or failed sends it back to receiving (run again when
quiet); one that arrives while it runs marks it to run again when it ends.
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

STATES = ("receiving", "queued", "running", "done", "failed")
SEND_STATES = ("pending", "sent", "failed")

_TABLES = [
    "CREATE TABLE IF NOT EXISTS instances (sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL, path TEXT NOT NULL, "
    "bytes INTEGER NOT NULL, received_at REAL NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS series (series_uid TEXT PRIMARY KEY, study_uid TEXT, calling_ae TEXT, "
    f"state TEXT NOT NULL CHECK (state IN ({', '.join(map(repr, STATES))})), again INTEGER NOT NULL DEFAULT 0, "
    "attempts INTEGER NOT NULL DEFAULT 0, interrupted INTEGER NOT NULL DEFAULT 0, reason TEXT, first_at REAL, "
    "last_at REAL, instances INTEGER DEFAULT 0, nodes INTEGER, seconds REAL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS sends (series_uid TEXT NOT NULL, destination TEXT NOT NULL, path TEXT NOT NULL, "
    f"state TEXT NOT NULL CHECK (state IN ({', '.join(map(repr, SEND_STATES))})), attempts INTEGER NOT NULL DEFAULT 0, "
    "next_at REAL NOT NULL, reason TEXT, PRIMARY KEY (series_uid, destination, path))",
]

# A send that keeps failing is tried again with doubling waits, up to this (a PACS down for a night is
# tried every 5 minutes, never given up: delivery is the point).
MAX_BACKOFF_S = 300.0


class Store:
    """The server's SQLite state; one connection per thread (sqlite3 objects are not shared)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with self.transaction() as db:
            for statement in _TABLES:
                db.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    @contextmanager
    def reading(self):
        """A read (no write lock: readers never wait for the receiving threads)."""
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self):
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def received(self, sop_uid: str, series_uid: str, study_uid: str | None, calling_ae: str, path: str,
                 size: int) -> bool:
        """Record an instance whose file is already in the spool; False when it was there already (a
        resend of the same SOP Instance: the series' state does not change)."""
        now = time.time()
        with self.transaction() as db:
            if not db.execute("INSERT OR IGNORE INTO instances VALUES (?, ?, ?, ?, ?)",
                              (sop_uid, series_uid, path, size, now)).rowcount:
                return False
            db.execute("INSERT OR IGNORE INTO series (series_uid, study_uid, calling_ae, state, first_at, last_at) "
                       "VALUES (?, ?, ?, 'receiving', ?, ?)", (series_uid, study_uid, calling_ae, now, now))
            db.execute("UPDATE series SET instances = instances + 1, last_at = ?, interrupted = 0, "
                       "again = CASE WHEN state = 'running' THEN 1 ELSE again END, "
                       "state = CASE WHEN state = 'running' THEN state ELSE 'receiving' END WHERE series_uid = ?",
                       (now, series_uid))
        return True

    def not_ct(self, series_uid: str, study_uid: str | None, calling_ae: str, reason: str) -> bool:
        """A series that is not CT: failed with the reason, once (True the first time)."""
        now = time.time()
        with self.transaction() as db:
            return bool(db.execute("INSERT OR IGNORE INTO series (series_uid, study_uid, calling_ae, state, reason, "
                                   "first_at, last_at) VALUES (?, ?, ?, 'failed', ?, ?, ?)",
                                   (series_uid, study_uid, calling_ae, reason, now, now)).rowcount)

    def queue_quiet(self, quiet_s: float) -> int:
        """Series with no new instance for `quiet_s` become jobs."""
        with self.transaction() as db:
            return db.execute("UPDATE series SET state = 'queued' WHERE state = 'receiving' AND last_at <= ?",
                              (time.time() - quiet_s,)).rowcount

    def recover(self, max_interruptions: int) -> int:
        """At start-up: jobs left running by a process that died are queued again, or failed once they
        were interrupted `max_interruptions` times in a row (a series that kills the server must not kill
        it forever; ordinary re-runs of a series that grew do not count)."""
        with self.transaction() as db:
            db.execute("UPDATE series SET interrupted = interrupted + 1 WHERE state = 'running'")
            db.execute("UPDATE series SET state = 'failed', reason = 'the server stopped while running it ' || "
                       "interrupted || ' times; not tried again' WHERE state = 'running' AND interrupted >= ?",
                       (max_interruptions,))
            return db.execute("UPDATE series SET state = 'queued' WHERE state = 'running'").rowcount

    def retry_later(self, series_uid: str, reason: str, max_interruptions: int) -> bool:
        """A job stopped by a transient error (the disk full, a device error): queued again, counted like an
        interruption. Returns False when it is failed instead."""
        with self.transaction() as db:
            db.execute("UPDATE series SET interrupted = interrupted + 1, reason = ? WHERE series_uid = ?",
                       (reason, series_uid))
            failed = db.execute("UPDATE series SET state = 'failed' WHERE series_uid = ? AND interrupted >= ?",
                                (series_uid, max_interruptions)).rowcount
            if not failed:
                db.execute("UPDATE series SET state = CASE WHEN again THEN 'receiving' ELSE 'queued' END "
                           "WHERE series_uid = ?", (series_uid,))
        return not failed

    def instances_of(self, series_uid: str) -> list:
        with self.reading() as db:
            return sorted(r[0] for r in db.execute("SELECT sop_uid FROM instances WHERE series_uid = ?", (series_uid,)))

    def next_job(self) -> str | None:
        """The oldest queued series, now running (its attempt counted before any work)."""
        with self.transaction() as db:
            row = db.execute("SELECT series_uid FROM series WHERE state = 'queued' ORDER BY last_at LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE series SET state = 'running', attempts = attempts + 1, again = 0 WHERE series_uid = ?",
                       (row[0],))
            return row[0]

    def finished(self, series_uid: str, ok: bool, reason: str | None, nodes: int | None, seconds: float,
                 sends: list) -> None:
        """A job's end, and its results to deliver ((destination, path) pairs), in one step. A series that
        received instances while it ran goes back to receiving and sends nothing: its result was made
        from part of the series."""
        now = time.time()
        with self.transaction() as db:
            again = db.execute("SELECT again FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
            again = bool(again and again[0])
            db.execute("UPDATE series SET state = ?, reason = ?, nodes = ?, seconds = ?, interrupted = 0, "
                       "last_at = CASE WHEN ? THEN ? ELSE last_at END WHERE series_uid = ?",
                       ("receiving" if again else "done" if ok else "failed", reason, nodes, seconds, again, now,
                        series_uid))
            _bump(db, "inference_seconds", seconds)
            if not again:
                db.executemany("INSERT OR REPLACE INTO sends VALUES (?, ?, ?, 'pending', 0, ?, NULL)",
                               [(series_uid, dest, path, now) for dest, path in sends])

    def due_sends(self) -> list:
        with self.reading() as db:
            return [dict(r) for r in db.execute("SELECT * FROM sends WHERE state = 'pending' AND next_at <= ? "
                                                "ORDER BY next_at", (time.time(),)).fetchall()]

    def sent(self, send: dict, ok: bool, reason: str | None = None, final: bool = False) -> None:
        """A delivery attempt: sent; or tried again later with doubling waits (`final`: failed for good, when
        there is nothing left to send, such as a result file that is gone)."""
        key = (send["series_uid"], send["destination"], send["path"])
        with self.transaction() as db:
            if ok:
                db.execute("UPDATE sends SET state = 'sent', attempts = attempts + 1, reason = NULL WHERE "
                           "series_uid = ? AND destination = ? AND path = ?", key)
                return
            _bump(db, "send_failures", 1)
            wait = min(MAX_BACKOFF_S, 2.0 ** min(send["attempts"], 16))
            db.execute("UPDATE sends SET attempts = attempts + 1, next_at = ?, reason = ?, state = ? WHERE "
                       "series_uid = ? AND destination = ? AND path = ?",
                       (time.time() + wait, reason, "failed" if final else "pending", *key))

    def series(self, series_uid: str) -> dict | None:
        with self.reading() as db:
            row = db.execute("SELECT * FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        return dict(row) if row else None

    def metrics(self) -> dict:
        """Counts for /metrics: instances, jobs by state, sends by state, the counters (send failures,
        inference seconds: they only grow), the oldest queued job's time."""
        with self.reading() as db:
            jobs = dict(db.execute("SELECT state, COUNT(*) FROM series GROUP BY state").fetchall())
            sends = dict(db.execute("SELECT state, COUNT(*) FROM sends GROUP BY state").fetchall())
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
            return {
                "instances": db.execute("SELECT COUNT(*) FROM instances").fetchone()[0],
                "jobs": {s: jobs.get(s, 0) for s in STATES},
                "sends": {s: sends.get(s, 0) for s in SEND_STATES},
                "send_failures": int(counters.get("send_failures", 0)),
                "inference_seconds": counters.get("inference_seconds", 0.0),
                "oldest_queued_at": db.execute("SELECT MIN(last_at) FROM series WHERE state = 'queued'").fetchone()[0],
            }


def _bump(db, name: str, amount: float) -> None:
    db.execute("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
               (name, amount))
