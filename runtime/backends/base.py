"""The backend interface: the device's arrays in, the device's arrays out.

A backend wraps one compiled network. `run` takes a float32 batch (B, C, z, y, x) as an array of the device
it serves (`device`: NumPy arrays for "cpu"; CuPy arrays for "cuda", whose pointers a GPU backend binds
without a host copy) and returns the network's first output as float32 (B, K, z, y, x) on the same device.
Backends say who they are (`name`, `device`) so every result can name the engine that produced it; the
registry in `lnrt.backends` says where each can run (docs/ARCHITECTURE.md, "Backends").
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
