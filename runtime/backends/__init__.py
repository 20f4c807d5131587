"""Backend selection: one interface, automatic choice with an explicit override.

CPU backends: OpenVINO (fast, chosen automatically when `openvino` is installed) and ONNX Runtime
(always there, the universal fallback). GPU backends (TensorRT, ONNX Runtime CUDA) plug in here.
Each automatic choice or fallback is logged once per process with its reason.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import LnrtError
from .base import Backend

log = logging.getLogger("lnrt")
BACKENDS = ("auto", "openvino", "onnxruntime")
_logged: set = set()


def _log_once(msg: str, *args) -> None:
    text = msg % args
    if text not in _logged:
        _logged.add(text)
        log.info(text)


def _openvino_available() -> tuple[bool, str]:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False, "openvino is not installed (pip install 'lnrt[openvino]')"
    return True, "openvino is installed"
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
    out = ["openvino"] if _openvino_available()[0] else []
    try:
        import onnxruntime  # noqa: F401
        out.append("onnxruntime")
    except ImportError:
        pass
    return out


def create_backend(onnx_path: Path, backend: str = "auto", device: str = "auto",
                   threads: int | None = None, precision: str = "f32") -> Backend:
    """The backend to run `onnx_path`; `precision` "bf16" (OpenVINO only) sets the CPU precision hint."""
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
            _log_once("using the CPU: %s", why)
    if precision == "bf16" and backend == "onnxruntime":
        raise LnrtError("the bf16 variant runs on the OpenVINO backend only; use --backend openvino")
    if backend in ("auto", "openvino"):
        ok, why = _openvino_available()
        if ok:
            from .openvino_cpu import OpenVinoCpuBackend
            if backend == "auto":
                _log_once("CPU backend: OpenVINO (%s)", why)
            return OpenVinoCpuBackend(onnx_path, threads=threads, precision=precision)
        if backend == "openvino" or precision == "bf16":
            raise LnrtError(f"--backend openvino: {why}")
        _log_once("CPU backend: ONNX Runtime (%s)", why)
    from .onnxruntime_cpu import OrtCpuBackend

    return OrtCpuBackend(onnx_path, threads=threads)
