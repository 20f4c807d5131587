"""Export: PyTorch and nnU-Net models to lnrt packages, precision variants and their gates."""
from __future__ import annotations

import ctypes
import gc
import logging
import time

log = logging.getLogger("lnrt")


class Progress:
    """Progress lines of an export, each with the seconds since the export began: a real-sized model's
    export takes minutes (issue 22), and a user must see which step it is in. `lnrt export` shows them on
    stderr; in the API they are INFO records of the "lnrt" logger."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        log.info("export: %s [%.0f s]", message, time.perf_counter() - self.t0)


def release_memory() -> None:
    """Give the memory of the sessions just closed back to the system. A closed ONNX Runtime or OpenVINO
    session frees its buffers, but glibc keeps the freed pages in its per-thread heaps, and an export
    runs torch, ONNX Runtime and OpenVINO one after another in one process: measured on the 16.5 M
    parameter model, resident memory rose from 2.5 GB to 7.8 GB over the export without this (each
    session's peak stayed resident after it closed)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
