"""The batch ledger: one SQLite file in a batch's output folder, one row per scan (issue 20).

Only the batch's driver writes it, one short transaction per event (a scan handed to a worker, a result,
a worker's death), so a `kill -9` at any moment leaves it at the last committed event: a rerun finds
every finished scan `done` or `failed` and every scan that was running back to `pending`. SQLite in WAL
mode with `synchronous=FULL`: a committed row survives the process (and the machine) dying, and readers
(`sqlite3 DIR/batch.sqlite`, a dashboard, the tests) never block the driver.

Statuses: `pending` (to do), `running` (handed to a worker), `done`, `failed` (with its one-line
error), `skipped` (found but not a scan lnrt runs: a non-CT series, a single localizer image).
`attempts` counts the workers that died while running the scan; a scan whose run fails cleanly (an
`LnrtError`: bad input) is failed at once, since running it again gives the same answer.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import LnrtError

LEDGER_NAME = "batch.sqlite"
LEDGER_SCHEMA = 1
STATUSES = ("pending", "running", "done", "failed", "skipped")
RESULT_FIELDS = ("status", "error", "sha256", "signature", "nodes", "largest_short_axis_mm", "normal",
                 "pathological", "enlarged", "seconds", "worker", "worker_peak_mb", "outputs")
ROW_FIELDS = ("name", "input", "series", "status", "error", "attempts", "sha256", "nodes",
              "largest_short_axis_mm", "normal", "pathological", "enlarged", "seconds", "worker",
              "worker_peak_mb", "finished_at", "outputs", "key")

_TABLES = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS folders (path TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                                    listed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS scans (
    key TEXT PRIMARY KEY, input TEXT NOT NULL, series TEXT, name TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    attempts INTEGER NOT NULL DEFAULT 0, error TEXT, sha256 TEXT, signature TEXT, nodes INTEGER,
    largest_short_axis_mm REAL, normal INTEGER, pathological INTEGER, enlarged INTEGER, seconds REAL,
    worker TEXT, worker_peak_mb REAL, started_at REAL, finished_at REAL, outputs TEXT);
"""


class Ledger:
    """The SQLite ledger of one batch folder (the driver's; see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            with self.transaction():
                for statement in _statements():  # not executescript: it commits on its own
                    self.db.execute(statement)
                self._schema()
        except sqlite3.DatabaseError as exc:
            raise LnrtError(f"{self.path}: not a usable batch ledger ({exc}); expected the batch.sqlite an "
                            "earlier lnrt batch wrote, or a new --out folder") from None

    def _schema(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(LEDGER_SCHEMA),))
        elif row[0] != str(LEDGER_SCHEMA):
            raise LnrtError(f"{self.path}: ledger schema {row[0]}, this lnrt reads schema {LEDGER_SCHEMA}; "
                            "expected a ledger of this lnrt version, or a new --out folder")

    @contextmanager
    def transaction(self):
        """One immediate transaction: committed whole or rolled back whole (an interrupt included)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def check_settings(self, settings: dict) -> None:
        """The first run records what decides the outputs (model, variant, options); a rerun with other
        settings is refused: its scans would mix two models' results in one folder."""
        text = json.dumps(settings, sort_keys=True)
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('settings', ?)", (text,))
                return
        before = json.loads(row[0])
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            shown = "; ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in changed[:4])
            raise LnrtError(f"{self.path}: this batch folder was made with other settings ({shown}); expected "
                            "the same model and options to resume it, or a new --out folder")

    def add(self, scans: list, folders: list) -> None:
        """New scans (pending) and DICOM folders (to list); ones already in the ledger keep their rows."""
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO scans (key, input, series, name, status) VALUES (?, ?, ?, ?, "
                           "'pending')", [(j.key, j.input, j.series, j.name) for j in scans])
            db.executemany("INSERT OR IGNORE INTO folders (path, name) VALUES (?, ?)",
                           [(f.path, f.name) for f in folders])

    def listed(self, folder: str, scans: list, closed: list) -> list:
        """A DICOM folder's listing, found by a worker, in one step: its scans (pending) and the rows that
        are settled already, as (job, status, reason): series skipped, or the folder failed. Returns the
        scans that are new (a series a manifest also named already has its row)."""
        new = []
        with self.transaction() as db:
            for j in scans:
                if db.execute("INSERT OR IGNORE INTO scans (key, input, series, name, status) VALUES (?, ?, ?, ?, "
                              "'pending')", (j.key, j.input, j.series, j.name)).rowcount:
                    new.append(j)
            db.executemany("INSERT OR IGNORE INTO scans (key, input, series, name, status, error, finished_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(j.key, j.input, j.series, j.name, status, why, time.time()) for j, status, why in closed])
            db.execute("UPDATE folders SET listed = 1 WHERE path = ?", (folder,))
        return new

    def names(self) -> set:
        """Every output name taken (scans and DICOM folders), so a new one never collides."""
        rows = self.db.execute("SELECT name FROM scans UNION SELECT name FROM folders").fetchall()
        return {r[0] for r in rows}

    def known(self) -> dict:
        """{key: name} of the scans and {path: name} of the folders already recorded."""
        rows = self.db.execute("SELECT key, name FROM scans UNION ALL SELECT path, name FROM folders")
        return {r[0]: r[1] for r in rows.fetchall()}

    def resume(self, retry_failed: bool) -> int:
        """Before a run: scans left `running` by a driver that died go back to `pending` (their worker
        died with it: not counted as an attempt); with `retry_failed`, failed scans too. Returns how
        many were reset."""
        with self.transaction() as db:
            n = db.execute("UPDATE scans SET status = 'pending', worker = NULL WHERE status = 'running'").rowcount
            if retry_failed:  # a folder whose listing failed is listed again, not run as one scan
                relist = "key IN (SELECT path FROM folders)"
                n += db.execute(f"DELETE FROM scans WHERE status = 'failed' AND {relist}").rowcount
                db.execute("UPDATE folders SET listed = 0 WHERE path NOT IN (SELECT key FROM scans) AND path NOT IN "
                           "(SELECT input FROM scans)")
                n += db.execute("UPDATE scans SET status = 'pending', attempts = 0, error = NULL "
                                "WHERE status = 'failed'").rowcount
        return n

    def redo(self, keys: list) -> None:
        """Done scans whose input changed since (size or modification time): run again."""
        with self.transaction() as db:
            db.executemany("UPDATE scans SET status = 'pending' WHERE key = ?", [(k,) for k in keys])

    def todo(self) -> tuple[list, list]:
        """(pending scans as rows, DICOM folders not listed yet as rows), in name order."""
        scans = self.db.execute("SELECT key, input, series, name FROM scans WHERE status = 'pending' "
                                "ORDER BY name").fetchall()
        folders = self.db.execute("SELECT path, name FROM folders WHERE listed = 0 ORDER BY name").fetchall()
        return scans, folders

    def done_signatures(self) -> list:
        """(key, input, signature) of the done scans, to find inputs changed since."""
        return self.db.execute("SELECT key, input, signature FROM scans WHERE status = 'done'").fetchall()

    def running(self, key: str, worker: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE scans SET status = 'running', worker = ?, started_at = ? WHERE key = ?",
                       (worker, time.time(), key))

    def record(self, key: str, result: dict) -> None:
        """A worker's result for a scan (done or failed)."""
        values = [result.get(f) for f in RESULT_FIELDS]
        values[RESULT_FIELDS.index("outputs")] = json.dumps(result.get("outputs") or {})
        sets = ", ".join(f"{f} = ?" for f in RESULT_FIELDS)
        with self.transaction() as db:
            db.execute(f"UPDATE scans SET {sets}, finished_at = ? WHERE key = ?", (*values, time.time(), key))

    def worker_died(self, key: str, reason: str, max_attempts: int) -> bool:
        """The worker running `key` died: count the attempt; True when the scan is to be tried again,
        False when it has failed `max_attempts` times (it is then recorded as failed)."""
        with self.transaction() as db:
            row = db.execute("SELECT attempts FROM scans WHERE key = ?", (key,)).fetchone()
            attempts = (row[0] if row else 0) + 1
            again = attempts < max_attempts
            if again:
                db.execute("UPDATE scans SET status = 'pending', attempts = ?, error = ?, worker = NULL "
                           "WHERE key = ?", (attempts, reason, key))
            else:
                db.execute("UPDATE scans SET status = 'failed', attempts = ?, error = ?, finished_at = ? "
                           "WHERE key = ?", (attempts, f"{reason}, {attempts} times; not tried again",
                                             time.time(), key))
        return again

    def rows(self) -> list[dict]:
        """Every scan's row, in name order (what batch.csv and batch.json hold)."""
        cur = self.db.execute(f"SELECT {', '.join(ROW_FIELDS)} FROM scans ORDER BY name")
        out = []
        for r in cur.fetchall():
            row = dict(r)
            row["outputs"] = json.loads(row["outputs"]) if row["outputs"] else {}
            out.append(row)
        return out

    def counts(self) -> dict:
        rows = self.db.execute("SELECT status, COUNT(*) FROM scans GROUP BY status").fetchall()
        found = {r[0]: r[1] for r in rows}
        return {s: found.get(s, 0) for s in STATUSES}

    def close(self) -> None:
        self.db.close()


def _statements() -> list:
    return [s.strip() for s in _TABLES.split(";") if s.strip()]
