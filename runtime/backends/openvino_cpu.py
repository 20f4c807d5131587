"""OpenVINO on the CPU: the fast CPU backend when `openvino` is installed (`pip install 'lnrt[openvino]'`).

The precision hint is always set explicitly (docs/ARCHITECTURE.md, "Backends"): OpenVINO's CPU default can be bf16 on CPUs
that have it, which changes the numerics. `f32` runs the fp32, fp16 and int8 variants as their ONNX
files say (an int8 Q/DQ model still runs its quantized layers in int8); `bf16` is its own variant
(the fp32 file with the bf16 hint) and is refused on CPUs without bf16 support. Measured on this
project's 2-core AMD EPYC VM per 48x96x96 tile of the default model: ONNX Runtime 0.273 s, OpenVINO
f32 0.161 s (benchmarks/results/vm-2026-11-22-variant-speed.json).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import LnrtError
from .base import Backend

PRECISIONS = ("f32", "bf16")


class OpenVinoCpuBackend(Backend):
    name = "openvino"
    device = "cpu"

    def __init__(self, onnx_path: Path, threads: int | None = None, precision: str = "f32"):
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        if precision not in PRECISIONS:
            raise LnrtError(f"unknown OpenVINO precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        core = ov.Core()
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if precision == "bf16" and "BF16" not in caps:
            raise LnrtError(f"the bf16 variant needs a CPU with bf16 support; this CPU offers "
                            f"{', '.join(caps)} (use fp32 or int8)")
        self.threads = threads or os.cpu_count() or 1
        try:
            model = core.read_model(str(onnx_path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long texts
            raise LnrtError(f"{onnx_path}: OpenVINO cannot read the model ({str(exc)[:200]})") from None
        if len(model.inputs) != 1 or model.inputs[0].partial_shape.rank.get_length() != 5:
            raise LnrtError(f"{onnx_path}: model inputs {[str(i.partial_shape) for i in model.inputs]}; "
                            "expected one input of rank 5 (batch, channels, z, y, x)")
        config = {hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
                  props.inference_num_threads: self.threads,
                  hints.performance_mode: hints.PerformanceMode.LATENCY}
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.version = ov.__version__.split("-")[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(batch, np.float32)})
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "threads": self.threads,
                "backend_version": self.version, "precision_hint": self.precision}

    def close(self) -> None:
        self.request = None
        self.compiled = None
