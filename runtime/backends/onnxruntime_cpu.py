"""ONNX Runtime on the CPU: the universal fallback backend."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import LnrtError
from .base import Backend


class OrtCpuBackend(Backend):
    name = "onnxruntime"
    device = "cpu"

    def __init__(self, onnx_path: Path, threads: int | None = None):
        import onnxruntime as ort

        self.threads = threads or os.cpu_count() or 1
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception classes
            raise LnrtError(f"{onnx_path}: ONNX Runtime cannot load the model ({str(exc)[:200]})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 5:
            shapes = [i.shape for i in inputs]
            raise LnrtError(
                f"{onnx_path}: model input shapes {shapes}; expected one input of rank 5 "
                "(batch, channels, z, y, x)"
            )
        self.input_name = inputs[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.version = ort.__version__

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})
        return out[0].astype(np.float32, copy=False)

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "threads": self.threads,
                "backend_version": self.version}

    def close(self) -> None:
        self.session = None
