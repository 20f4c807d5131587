"""TensorRT on a CUDA GPU: an engine from the engine cache (`lnrt build-engine`, built on first use),
run with the name-based tensor API that TensorRT 10.x and 11.x share.

Per batch: `set_input_shape` (the batch must lie in the engine's optimisation profile, larger batches
are split at its maximum), `set_tensor_address` for the input and the output with device pointers, and
`execute_async_v3` on the current CUDA stream; nothing else (no bindings, no implicit batch: those APIs
are gone in 10.x). Device arrays (CuPy) are used where they are; host arrays are copied to the device
and back, for the CPU pipeline. An engine that TensorRT cannot deserialize (built for another GPU or
TensorRT version) is a one-line error that says to rebuild it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LnrtError
from .base import Backend


def _pointer(a) -> int:
    return int(a.__cuda_array_interface__["data"][0])


class TensorRtBackend(Backend):
    name = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path: Path, trt=None, array_module=None):
        if trt is None:
            from lnrt.export.tensorrt import import_tensorrt
            trt = import_tensorrt()
        self.trt, self.xp = trt, array_module
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise LnrtError(f"{engine_path}: TensorRT {trt.__version__} cannot load this engine (built for "
                            "another GPU or TensorRT version); rebuild it with lnrt build-engine --rebuild")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise LnrtError(f"{engine_path}: engine tensors {names}; expected one input and an output")
        self.input_name, self.output_name = inputs[0], outputs[0]
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.context = self.engine.create_execution_context()
        self.version = str(trt.__version__)

    def _module(self):
        if self.xp is None:
            import cupy
            self.xp = cupy
        return self.xp

    def _run_device(self, batch):
        xp = self._module()
        batch = xp.ascontiguousarray(batch, dtype=xp.float32)
        if not self.context.set_input_shape(self.input_name, tuple(batch.shape)):
            raise LnrtError(f"TensorRT engine: input shape {tuple(batch.shape)} is outside its optimisation "
                            f"profile (batch {self.min_batch}..{self.max_batch})")
        out = xp.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=xp.float32)
        self.context.set_tensor_address(self.input_name, _pointer(batch))
        self.context.set_tensor_address(self.output_name, _pointer(out))
        if not self.context.execute_async_v3(xp.cuda.get_current_stream().ptr):
            raise RuntimeError("TensorRT execute_async_v3 failed; see TensorRT's log above")
        return out

    def run(self, batch):
        host = getattr(batch, "__cuda_array_interface__", None) is None
        xp = self._module()
        dev = xp.asarray(batch) if host else batch
        parts = [self._run_device(dev[i:i + self.max_batch]) for i in range(0, dev.shape[0], self.max_batch)]
        out = parts[0] if len(parts) == 1 else xp.concatenate(parts)
        return np.asarray(xp.asnumpy(out)) if host else out

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device, "backend_version": self.version,
                "max_batch": self.max_batch}

    def close(self) -> None:
        self.context = self.engine = self.runtime = None
