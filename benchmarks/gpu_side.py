"""What the GPU benchmarks share (`kernels_bench.py`, `device_stages.py`): whether there is a GPU to
measure, and the CPU emulation of CUDA that checks a script where there is none (`--emulate`)."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path


def usable(emulate: bool) -> bool:
    """A usable GPU, or `--emulate`; otherwise say why nothing is measured (the caller exits 0)."""
    from lnrt.device import probe_gpu

    probe = probe_gpu()
    if not probe.ok and not emulate:
        print(f"no usable GPU here ({probe.reason}); nothing measured")
        return False
    return True


@contextlib.contextmanager
def emulation():
    """The stand-in device (tests/cuda_emu), with lnrt's kernel launchers on the emulated CuPy meanwhile."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import cuda_emu

    from lnrt.kernels import cuda
    device, cp = cuda_emu.emulated_device(0, 1)
    with cuda.use(cp):
        yield device
