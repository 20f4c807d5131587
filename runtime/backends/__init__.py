"""Backend selection: one interface, automatic choice with an explicit override.

Only ONNX Runtime on the CPU is built in so far; GPU backends (TensorRT, ONNX Runtime CUDA) and
OpenVINO plug in here. Each fallback is logged once with its reason.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import LnrtError
from .base import Backend

log = logging.getLogger("lnrt")
BACKENDS = ("auto", "onnxruntime")
DEVICES = ("auto", "cpu", "cuda")


def _cuda_available() -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return False, f"this onnxruntime build has no CUDA provider (has {', '.join(providers)})"
    return False, "the GPU backends are not built into this lnrt yet"


def available() -> list:
    """Backends usable on this machine (each importable), in automatic-selection order."""
    out = []
    try:
        import onnxruntime  # noqa: F401
        out.append("onnxruntime")
    except ImportError:
        pass
    return out


def create_backend(onnx_path: Path, backend: str = "auto", device: str = "auto",
                   threads: int | None = None) -> Backend:
    if backend not in BACKENDS:
        raise LnrtError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise LnrtError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cuda":
        ok, why = _cuda_available()
        if not ok:
            raise LnrtError(f"--device cuda: no usable CUDA GPU ({why}); use --device cpu")
    if device == "auto":
        ok, why = _cuda_available()
        if not ok:
            log.info("using the CPU: %s", why)
    from .onnxruntime_cpu import OrtCpuBackend

    return OrtCpuBackend(onnx_path, threads=threads)
