"""The backend interface: named tensors in, named tensors out.

A backend wraps one compiled network. `run` takes a float32 batch (B, C, z, y, x) and returns the
network's first output as float32 (B, K, z, y, x). Backends say who they are (`name`, `device`) so
every result can name the engine that produced it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    name: str = "abstract"
    device: str = "cpu"

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a batch."""

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device}

    def close(self) -> None:
        """Release native resources (sessions, engines)."""
