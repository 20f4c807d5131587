"""Atomic writes: every output is written to a temporary name in its own folder and renamed into place
only when complete, so a reader (or a crash) never sees a half-written file. One helper for every
file lnrt writes (outputs, reports, engines, benchmark results, packages).

What "complete" means here (issue 15):
- a staged file is flushed to the disk (`fsync`) before it is renamed, and the folder after the renames,
  so a power cut after the rename cannot leave a final name on an empty file;
- the renames of a set of files (`Staging.commit`) run with SIGINT and SIGTERM held back: an interrupt
  during the write removes every staged file, and one that arrives during the renames takes effect
  after the last rename (a few system calls), so an interrupted run leaves the old set or the new set;
- files get the mode a plain `open()` would give them (0666 less the umask; folders 0777 less the umask),
  not `mkstemp`'s 0600, so colleagues on a shared server can read them where the umask lets them;
- temporary names are short and fixed in length (`.lnrt-<8 random>.part` plus the final name's last two
  suffixes, which writers such as SimpleITK read to choose the format), so a final name that fits the
  file system's limit always has a temporary name that fits too. A SIGKILL cannot be cleaned up after:
  it can leave such hidden `.lnrt-*.part` files beside the outputs, never a partial file under a final
  name.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_PREFIX = ".lnrt-"
TEMP_SUFFIX = ".part"


def umask() -> int:
    """The process's umask (read from /proc where it can be, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def temporary_name(final: Path, folder: bool = False) -> Path:
    """A fresh hidden name beside `final` that keeps its last two suffixes; a new empty folder when
    `folder`."""
    final = Path(final)
    tail = "".join(final.suffixes[-2:])
    if folder:
        return Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=final.parent))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX + tail, dir=final.parent)
    os.close(fd)
    return Path(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and folders on some platforms) refuse fsync: nothing to do
        pass
    finally:
        os.close(fd)


def finish(tmp: Path, mask: int | None = None) -> None:
    """Make a staged file or folder durable and give it the umask's mode (folders: every file inside)."""
    mask = umask() if mask is None else mask
    if tmp.is_dir():
        for root, dirs, files in os.walk(tmp):
            for name in files:
                p = Path(root) / name
                os.chmod(p, 0o666 & ~mask)
                _fsync_path(p)
            for name in dirs:
                os.chmod(Path(root) / name, 0o777 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        _fsync_path(tmp, directory=True)
    else:
        os.chmod(tmp, 0o666 & ~mask)
        _fsync_path(tmp)


def commit(tmp: Path, final: Path) -> None:
    """Rename a finished temporary file or folder onto `final`. An older folder there is first moved
    aside under a temporary name and removed after, so `final` is never a half-removed folder."""
    final = Path(final)
    if tmp.is_dir() and final.is_dir() and not final.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=final.parent))
        os.replace(final, aside / "old")
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
        return
    os.replace(tmp, final)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends. Python runs signal handlers in the main thread
    whichever thread the kernel delivered the signal to, so the handlers are swapped for a recorder
    (blocking the signal in one thread's mask would not stop a library's worker thread from taking it);
    a recorded signal is handed to the original handler after the block. Outside the main thread
    handlers cannot be changed, and the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = [s for s in (signal.SIGINT, signal.SIGTERM)]
    pending: list = []
    old = {s: signal.signal(s, lambda signum, frame: pending.append((signum, frame))) for s in held}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for signum, frame in pending[:1]:
            handler = old[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


@contextmanager
def atomic_path(final: str | os.PathLike, folder: bool = False, mkdir: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `final`, on any error it is removed."""
    with Staging() as staged:
        if mkdir:
            Path(final).parent.mkdir(parents=True, exist_ok=True)
        yield staged.path(final, folder)
        staged.commit()


class Staging:
    """Several files written all-or-nothing: `path(final)` gives each one's temporary name, `commit()`
    makes them durable and renames them all, and leaving the `with` block without commit (an error, an
    interrupt) removes every one."""

    def __init__(self):
        self.staged: dict = {}

    def path(self, final: str | os.PathLike, folder: bool = False) -> Path:
        final = Path(final)
        self.staged[final] = temporary_name(final, folder)
        return self.staged[final]

    def commit(self) -> None:
        mask = umask()  # read once for the set
        for tmp in self.staged.values():
            finish(tmp, mask)
        folders = {final.parent for final in self.staged}
        with _signals_held():
            for final, tmp in list(self.staged.items()):
                commit(tmp, final)
                del self.staged[final]
        for d in folders:
            _fsync_path(d, directory=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for tmp in self.staged.values():
            _remove(tmp)
        self.staged = {}


def write_bytes(path: str | os.PathLike, data: bytes, mkdir: bool = False) -> Path:
    with atomic_path(path, mkdir=mkdir) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, mkdir: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), mkdir=mkdir)


def write_json(path: str | os.PathLike, obj, mkdir: bool = False) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n", mkdir=mkdir)


def lock_file(path: str | os.PathLike) -> int:
    """Hold an exclusive flock on `path` (created if need be) for this process's life, with this pid
    written in it; raises `BlockingIOError` naming the holder's pid when another process holds it. The
    lock goes with the process, `kill -9` included (`lnrt batch`'s folder, `lnrt serve`'s spool)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise BlockingIOError(f"held by pid {holder}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def remove_stale(folder: str | os.PathLike) -> int:
    """Remove the temporary files and folders (`.lnrt-*.part*`) that writes cut short by a kill left
    under `folder`; only for a caller that holds the folder's lock (no write of its own is under way)."""
    import shutil

    folder, n = Path(folder), 0
    for p in (folder.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}*") if folder.is_dir() else ()):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    return n
