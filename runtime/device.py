"""Where one scan's arrays live: a `Device` (NumPy on the CPU, CuPy on a CUDA GPU), and the project's one
GPU probe.

Every pipeline stage is a function of (context, device) that uses only `device.xp` (NumPy's interface,
which CuPy shares) and the helpers here, so the same stage code serves both devices; only the label map
and the node table come back to the host (`to_host`). Stage timings come from `clock()`, which waits for
the device's queued work first: a GPU launch returns before the work is done, so an unsynchronised host
clock would charge a stage's time to the next one.

`probe_gpu()` is the single answer to "is there a usable CUDA GPU here, and which": the backends, the
engine builder, the kernels' launchers and the benchmarks all ask it (docs/ARCHITECTURE.md, "Device").
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import LnrtError

log = logging.getLogger("lnrt")
DEVICES = ("auto", "cpu", "cuda")
# double-precision atomicAdd (kernels/stats.cu) needs compute capability 6.0 (Pascal) or newer
MIN_COMPUTE_CAPABILITY = (6, 0)


@dataclass(frozen=True)
class GpuProbe:
    """What the probe found: `ok` with the GPU's properties, or the one-line reason there is none."""

    ok: bool
    reason: str
    name: str | None = None
    compute_capability: tuple | None = None
    memory_gb: float | None = None
    driver: int | None = None
    runtime: int | None = None

    def to_dict(self) -> dict | None:
        if not self.ok:
            return None
        return {"name": self.name, "compute_capability": ".".join(map(str, self.compute_capability)),
                "memory_gb": self.memory_gb, "driver": self.driver, "cuda_runtime": self.runtime}


@functools.lru_cache(maxsize=None)
def probe_gpu(index: int = 0) -> GpuProbe:
    """Is CUDA GPU `index` usable (CuPy installed, a driver, the device, compute capability >= 6.0)?
    Cached: the answer does not change within a process."""
    try:
        import cupy
    except ImportError:
        return GpuProbe(False, "CuPy is not installed (pip install 'lnrt[gpu]')")
    except Exception as exc:  # a CuPy build for another CUDA major fails to load its libraries
        return GpuProbe(False, f"CuPy cannot load ({str(exc)[:120]})")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        if count <= index:
            return GpuProbe(False, f"found {count} CUDA GPU(s), need device {index}")
        props = cupy.cuda.runtime.getDeviceProperties(index)
        driver, runtime = cupy.cuda.runtime.driverGetVersion(), cupy.cuda.runtime.runtimeGetVersion()
    except Exception as exc:  # CUDARuntimeError: no driver, no device, driver too old
        return GpuProbe(False, f"no usable CUDA driver or device ({str(exc)[:120]})")
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    cc = (int(props["major"]), int(props["minor"]))
    if cc < MIN_COMPUTE_CAPABILITY:
        return GpuProbe(False, f"{name} has compute capability {cc[0]}.{cc[1]}; lnrt's kernels need "
                        f"{MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]} or newer", name, cc)
    return GpuProbe(True, f"{name} (compute capability {cc[0]}.{cc[1]})", name, cc,
                    round(int(props["totalGlobalMem"]) / 2**30, 1), int(driver), int(runtime))


# how an allocation failure reads where it is not a MemoryError (CUDA runtime errors, ONNX Runtime's arena)
OUT_OF_MEMORY = ("out of memory", "failed to allocate", "cudaerrormemoryallocation", "bfcarena")


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a device running out of memory (CuPy's OutOfMemoryError is a MemoryError)."""
    return isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in OUT_OF_MEMORY)


def host(a) -> np.ndarray:
    """A NumPy array of `a`, wherever it lives (a device array is copied; a NumPy array is itself)."""
    if hasattr(a, "__cuda_array_interface__") and hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


@dataclass(frozen=True)
class Device:
    """An array namespace (`xp`, with its `ndimage`) and how to move data to it, wait for it and time it;
    `ops`, what the stages do differently on it (lnrt.device_ops)."""

    name: str  # "cpu", "cuda:0"
    kind: str  # "cpu" or "cuda"
    xp: Any = field(repr=False)
    ndimage: Any = field(default=None, repr=False)  # scipy.ndimage's interface on this device

    @functools.cached_property
    def ops(self):
        from .device_ops import ops_for
        return ops_for(self)

    def asarray(self, a, dtype=None):
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a) -> np.ndarray:
        return None if a is None else host(a)

    def sync(self) -> None:
        if self.kind == "cuda":
            self.xp.cuda.get_current_stream().synchronize()

    def clock(self) -> float:
        """Seconds, after the device's queued work is done."""
        self.sync()
        return time.perf_counter()

    def release(self) -> None:
        """Hand the memory the array module keeps for reuse back to the device (CuPy's pools), so that a
        scan after an out-of-memory failure starts from what is really in use."""
        if self.kind == "cuda":
            for pool in ("get_default_memory_pool", "get_default_pinned_memory_pool"):
                if hasattr(self.xp, pool):  # not the tests' NumPy stand-in
                    getattr(self.xp, pool)().free_all_blocks()

    def describe(self) -> dict:
        out = {"device": self.kind}
        if self.kind == "cuda":
            out["gpu"] = probe_gpu().to_dict()
        return out


CPU = Device("cpu", "cpu", np)


def cuda_device(index: int = 0) -> Device:
    """The CUDA GPU as a `Device`, or a one-line error saying why there is none."""
    probe = probe_gpu(index)
    if not probe.ok:
        raise LnrtError(f"--device cuda: no usable CUDA GPU ({probe.reason}); use --device cpu")
    import cupy
    import cupyx.scipy.ndimage

    cupy.cuda.Device(index).use()
    return Device(f"cuda:{index}", "cuda", cupy, cupyx.scipy.ndimage)


def check_device_name(device: str) -> None:
    if device not in DEVICES:
        raise LnrtError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
