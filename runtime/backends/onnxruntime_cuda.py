"""ONNX Runtime on a CUDA GPU, with I/O binding: the GPU backend that installs from PyPI
(`pip install 'lnrt[gpu]'`: onnxruntime-gpu 1.27 or later, CUDA 13, with cupy-cuda13x).

`run` binds the batch where it already is: a device array (CuPy, `__cuda_array_interface__`) by its
pointer, with the output allocated on the device as well, so the tiles never visit the host; a NumPy array
as host memory, which ONNX Runtime copies to the GPU itself (the CPU pipeline with a GPU network). The same
binding code runs with ONNX Runtime's CPU provider, which is how CI tests it without a GPU
(`OrtBoundBackend(..., provider="CPUExecutionProvider")`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..device import OUT_OF_MEMORY as OOM_MARKERS
from ..errors import LnrtError
from .base import Backend


def _device_pointer(a) -> int | None:
    """The device pointer of a CUDA array (CuPy or any `__cuda_array_interface__`), None for host arrays."""
    iface = getattr(a, "__cuda_array_interface__", None)
    return None if iface is None else int(iface["data"][0])


def _cupy():
    import cupy
    return cupy


class OrtBoundBackend(Backend):
    """An ONNX Runtime session run through I/O binding on one execution provider."""

    name = "onnxruntime-cuda"
    device = "cuda"

    def __init__(self, onnx_path: Path, threads: int | None = None, provider: str = "CUDAExecutionProvider",
                 device_id: int = 0, array_module=None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.threads = threads or os.cpu_count() or 1
        opts.intra_op_num_threads = self.threads
        options = {"device_id": device_id, "arena_extend_strategy": "kSameAsRequested"}
        providers = [(provider, options)] if provider == "CUDAExecutionProvider" else [provider]
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception classes
            raise LnrtError(f"{onnx_path}: ONNX Runtime ({provider}) cannot load the model "
                            f"({str(exc)[:200]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 5:
            raise LnrtError(f"{onnx_path}: model input shapes {[i.shape for i in inputs]}; expected one input "
                            "of rank 5 (batch, channels, z, y, x)")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.classes = outputs[0].shape[1] if isinstance(outputs[0].shape[1], int) else None
        self.provider, self.device_id = provider, device_id
        self.bind_type = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
        self.version = ort.__version__
        self.array_module = array_module  # allocates device outputs (None: CuPy)

    def run(self, batch):
        io = self.session.io_binding()
        try:
            if _device_pointer(batch) is None:
                batch = np.ascontiguousarray(batch, dtype=np.float32)
                io.bind_input(self.input_name, "cpu", 0, np.float32, batch.shape, batch.ctypes.data)
                io.bind_output(self.output_name, "cpu")
                self.session.run_with_iobinding(io)
                return io.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)
            xp = self.array_module or _cupy()
            batch = xp.ascontiguousarray(batch, dtype=xp.float32)
            out = xp.empty((batch.shape[0], self.classes, *batch.shape[2:]), dtype=xp.float32)
            io.bind_input(self.input_name, self.bind_type, self.device_id, np.float32, batch.shape,
                          _device_pointer(batch))
            io.bind_output(self.output_name, self.bind_type, self.device_id, np.float32, out.shape,
                           _device_pointer(out))
            # ONNX Runtime runs on its own stream: the batch, written on CuPy's, must be complete before it
            # reads it, and the output complete before CuPy reads it
            xp.cuda.get_current_stream().synchronize()
            io.synchronize_inputs()
            self.session.run_with_iobinding(io)
            io.synchronize_outputs()
            return out
        except Exception as exc:  # onnxruntime's Fail / RuntimeException
            if any(m in str(exc).lower() for m in OOM_MARKERS):
                raise MemoryError(f"{self.name}: out of GPU memory for a batch of {batch.shape[0]}") from exc
            raise

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "provider": self.provider,
                "backend_version": self.version}

    def close(self) -> None:
        self.session = None
