"""Backends behind one registry: name -> factory, availability probe with its reason, devices served.

The automatic choice walks `REGISTRY` in its order (the GPU backends first when they are registered, then
OpenVINO, the fast CPU backend, then ONNX Runtime, the universal fallback) and takes the first backend
that serves the device and whose probe passes; each skip and each choice is logged once per process,
with its reason. The CLI's `--backend` choices are `NAMES`, read from here, so a new backend is one
`register` call, not an edit of every if-chain (docs/ARCHITECTURE.md, "Backends").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..device import check_device_name, probe_gpu
from ..errors import LnrtError
from ..optional import available as _importable
from .base import Backend

log = logging.getLogger("lnrt")
_logged: set = set()


def _log_once(msg: str, *args) -> None:
    text = msg % args
    if text not in _logged:
        _logged.add(text)
        log.info(text)


@dataclass(frozen=True)
class BackendSpec:
    """One backend: how to make it, whether it can run here (and why not), what it serves."""

    name: str
    devices: tuple  # the devices it runs on: "cpu", "cuda"
    probe: Callable[[], tuple]  # () -> (usable here, reason)
    factory: Callable[..., Backend]  # (onnx_path, threads=, precision=, package=, variant=) -> Backend
    precisions: tuple = ("f32",)  # precision hints it accepts ("bf16": OpenVINO's CPU hint)
    label: str = ""  # how messages name it ("OpenVINO")


def _probe_openvino() -> tuple:
    if not _importable("openvino"):
        return False, "openvino is not installed (pip install 'lnrt[openvino]')"
    return True, "openvino is installed"


def _probe_onnxruntime() -> tuple:
    if not _importable("onnxruntime"):
        return False, "onnxruntime is not installed (pip install lnrt)"
    return True, "onnxruntime is installed"


def _probe_tensorrt() -> tuple:
    if not _importable("tensorrt"):
        return False, "TensorRT is not installed (NVIDIA TensorRT 10 or 11 for Python; see the README)"
    gpu = probe_gpu()
    return (True, f"TensorRT on {gpu.name}") if gpu.ok else (False, gpu.reason)


def _make_tensorrt(onnx_path, threads=None, precision="f32", package=None, variant="fp32", **_) -> Backend:
    """The engine of the package's variant from the engine cache (built there on first use)."""
    from lnrt.export.tensorrt import build_engine

    from .tensorrt import TensorRtBackend
    if package is None:
        raise LnrtError("the tensorrt backend needs a model package (lnrt.Session builds its engine)")
    path, _ = build_engine(package, variant)
    return TensorRtBackend(path)


def _probe_onnxruntime_cuda() -> tuple:
    if not _importable("onnxruntime"):
        return False, "onnxruntime is not installed"
    import onnxruntime as ort
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return False, ("this onnxruntime has no CUDA provider (has " + ", ".join(providers)
                       + "); pip install 'lnrt[gpu]' for onnxruntime-gpu")
    gpu = probe_gpu()
    return (True, f"CUDA provider on {gpu.name}") if gpu.ok else (False, gpu.reason)


def _make_onnxruntime_cuda(onnx_path, threads=None, precision="f32", **_) -> Backend:
    from .onnxruntime_cuda import OrtBoundBackend
    return OrtBoundBackend(onnx_path, threads=threads)


def _make_openvino(onnx_path, threads=None, precision="f32", **_) -> Backend:
    from .openvino_cpu import OpenVinoCpuBackend
    return OpenVinoCpuBackend(onnx_path, threads=threads, precision=precision)


def _make_onnxruntime(onnx_path, threads=None, precision="f32", **_) -> Backend:
    from .onnxruntime_cpu import OrtCpuBackend
    return OrtCpuBackend(onnx_path, threads=threads)


REGISTRY: dict = {}  # name -> BackendSpec, in the automatic choice's order


def register(spec: BackendSpec, before: str | None = None) -> None:
    """Add a backend; `before` places it ahead of another in the automatic order."""
    items = [(k, v) for k, v in REGISTRY.items() if k != spec.name]
    at = next((i for i, (k, _) in enumerate(items) if k == before), len(items))
    items.insert(at, (spec.name, spec))
    REGISTRY.clear()
    REGISTRY.update(items)


register(BackendSpec("tensorrt", ("cuda",), _probe_tensorrt, _make_tensorrt, ("f32",), "TensorRT"))
register(BackendSpec("onnxruntime-cuda", ("cuda",), _probe_onnxruntime_cuda, _make_onnxruntime_cuda, ("f32",),
                     "ONNX Runtime CUDA"))
register(BackendSpec("openvino", ("cpu",), _probe_openvino, _make_openvino, ("f32", "bf16"), "OpenVINO"))
register(BackendSpec("onnxruntime", ("cpu",), _probe_onnxruntime, _make_onnxruntime, ("f32",), "ONNX Runtime"))
NAMES = ("auto", *REGISTRY)


def names() -> tuple:
    """The `--backend` choices: auto and every registered backend."""
    return ("auto", *REGISTRY)


def available(device: str = "cpu") -> list:
    """Registered backends usable here for `device`, in automatic-selection order."""
    return [n for n, s in REGISTRY.items() if device in s.devices and s.probe()[0]]


def _resolve_device(device: str) -> str:
    """auto -> cuda when the GPU probe passes and a GPU backend can run, else cpu (logged once)."""
    if device != "auto":
        return device
    probe = probe_gpu()
    if not probe.ok:
        _log_once("using the CPU: %s", probe.reason)
        return "cpu"
    if not available("cuda"):
        _log_once("using the CPU: %s found, but no GPU backend is installed", probe.name)
        return "cpu"
    return "cuda"


def choose(backend: str = "auto", device: str = "auto", precision: str = "f32") -> tuple:
    """(backend name, device) that `create_backend` would use, or a one-line error."""
    if backend not in REGISTRY and backend != "auto":
        raise LnrtError(f"unknown backend {backend!r}; expected one of {', '.join(names())}")
    check_device_name(device)
    if device == "cuda":
        probe = probe_gpu()
        if not probe.ok:
            raise LnrtError(f"--device cuda: no usable CUDA GPU ({probe.reason}); use --device cpu")
    device = _resolve_device(device)
    if backend != "auto":
        spec = REGISTRY[backend]
        if precision not in spec.precisions:
            who = [s for s in REGISTRY.values() if precision in s.precisions]
            raise LnrtError(f"the {precision} variant runs on the {' or '.join(s.label for s in who)} backend "
                            f"only; use --backend {' or '.join(s.name for s in who)}")
        if device not in spec.devices:
            raise LnrtError(f"--backend {backend} runs on {', '.join(spec.devices)}, not {device}; "
                            f"expected --device {spec.devices[0]}")
        ok, why = spec.probe()
        if not ok:
            raise LnrtError(f"--backend {backend}: {why}")
        return backend, device
    for name, spec in REGISTRY.items():
        if device not in spec.devices or precision not in spec.precisions:
            continue
        ok, why = spec.probe()
        if ok:
            _log_once("%s backend: %s (%s)", device.upper(), name, why)
            return name, device
        _log_once("skipping %s: %s", name, why)
    if precision != "f32":
        who = [n for n, s in REGISTRY.items() if precision in s.precisions]
        raise LnrtError(f"the {precision} variant needs the {' or '.join(who)} backend: "
                        + "; ".join(REGISTRY[n].probe()[1] for n in who))
    if device == "cuda":
        why = "; ".join(f"{n}: {s.probe()[1]}" for n, s in REGISTRY.items() if "cuda" in s.devices)
        raise LnrtError(f"--device cuda: no GPU backend is usable here ({why}); use --device cpu")
    raise LnrtError("no backend can run on the CPU here; expected onnxruntime (pip install lnrt)")


def create_backend(onnx_path: Path, backend: str = "auto", device: str = "auto",
                   threads: int | None = None, precision: str = "f32", package=None,
                   variant: str = "fp32") -> Backend:
    """The backend to run `onnx_path`; `precision` "bf16" (OpenVINO only) sets the CPU precision hint.
    TensorRT needs the `package` (its engine is cached per package variant)."""
    name, _ = choose(backend, device, precision)
    return REGISTRY[name].factory(onnx_path, threads=threads, precision=precision, package=package,
                                  variant=variant)


__all__ = ["Backend", "BackendSpec", "REGISTRY", "NAMES", "names", "register", "available", "choose",
           "create_backend"]
