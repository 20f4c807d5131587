"""Atomic writes: every output is written to a temporary name in its own folder and renamed into place
only when complete, so a reader (or a crash) never sees a half-written file. One helper for every
file lnrt writes (outputs, reports, engines, benchmark results, packages)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temporary_name(final: Path, folder: bool = False) -> Path:
    """A fresh hidden name beside `final` that keeps its suffixes (writers such as SimpleITK choose the
    format by the name); a new empty folder when `folder`."""
    final = Path(final)
    if folder:
        return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part" + "".join(final.suffixes),
                               dir=final.parent)
    os.close(fd)
    return Path(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def commit(tmp: Path, final: Path) -> None:
    """Rename a finished temporary file or folder onto `final` (an older folder there is replaced)."""
    if tmp.is_dir() and final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)


@contextmanager
def atomic_path(final: str | os.PathLike, folder: bool = False, mkdir: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `final`, on any error it is removed."""
    final = Path(final)
    if mkdir:
        final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final, folder)
    try:
        yield tmp
        commit(tmp, final)
    finally:
        _remove(tmp)


class Staging:
    """Several files written all-or-nothing: `path(final)` gives each one's temporary name, `commit()`
    renames them all, and leaving the `with` block without commit (an error) removes every one."""

    def __init__(self):
        self.staged: dict = {}

    def path(self, final: str | os.PathLike, folder: bool = False) -> Path:
        final = Path(final)
        self.staged[final] = temporary_name(final, folder)
        return self.staged[final]

    def commit(self) -> None:
        for final, tmp in self.staged.items():
            commit(tmp, final)
        self.staged = {}

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
