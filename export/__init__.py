"""Export: PyTorch and nnU-Net models to lnrt packages, precision variants and their gates."""
from __future__ import annotations

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
