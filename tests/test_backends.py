"""The backends behind the registry, the I/O-binding path of the GPU backend (run here on ONNX Runtime's
CPU provider, with host memory and with a device-pointer array), and out-of-memory handling: halve the tile
batch, then fall back to the CPU, never crash."""
from __future__ import annotations

import types

import numpy as np
import pytest

import lnrt
from lnrt import backends
from lnrt.backends.base import Backend
from lnrt.backends.onnxruntime_cuda import OrtBoundBackend
from lnrt.errors import LnrtError

SAMPLE = lnrt.sample_path()


class DeviceArray(np.ndarray):
    """Host memory that presents itself as a CUDA array (`__cuda_array_interface__`), so the device-pointer
    binding code runs against ONNX Runtime's CPU provider."""

    @property
    def __cuda_array_interface__(self):
        return {"data": (self.ctypes.data, False), "shape": self.shape, "typestr": self.dtype.str, "version": 3}


DEVICE_XP = types.SimpleNamespace(
    float32=np.float32,
    ascontiguousarray=lambda a, dtype=None: np.ascontiguousarray(a, dtype=dtype).view(DeviceArray),
    empty=lambda shape, dtype=None: np.empty(shape, dtype).view(DeviceArray))


@pytest.fixture(scope="module")
def pkg():
    return lnrt.ModelPackage.load()


@pytest.fixture(scope="module")
def tiles():
    return np.random.default_rng(0).random((2, 1, 48, 96, 96)).astype(np.float32)


def test_io_binding_equals_the_plain_session_on_host_and_device_arrays(pkg, tiles):
    ref = backends.create_backend(pkg.onnx_path(), "onnxruntime", "cpu", threads=2).run(tiles)
    host = OrtBoundBackend(pkg.onnx_path(), threads=2, provider="CPUExecutionProvider")
    np.testing.assert_array_equal(host.run(tiles), ref)
    dev = OrtBoundBackend(pkg.onnx_path(), threads=2, provider="CPUExecutionProvider", array_module=DEVICE_XP)
    out = dev.run(tiles.view(DeviceArray))
    assert isinstance(out, DeviceArray) and out.shape == ref.shape  # the output stays on the "device"
    np.testing.assert_array_equal(np.asarray(out), ref)


def test_the_registry_serves_the_cli_and_says_why_a_backend_cannot_run():
    assert backends.names() == ("auto", "onnxruntime-cuda", "openvino", "onnxruntime")
    assert list(backends.REGISTRY)[:1] == ["onnxruntime-cuda"]  # GPU first in the automatic order
    ok, why = backends.REGISTRY["onnxruntime-cuda"].probe()
    if not ok:
        assert backends.available("cuda") == [] and why and "\n" not in why
        with pytest.raises(LnrtError, match="--device cuda"):
            backends.choose("onnxruntime-cuda", "cuda")
    from lnrt.cli import infer
    choices = next(p for p in infer.params if p.name == "backend").type.choices
    assert tuple(choices) == backends.names()


class Flaky(Backend):
    """A GPU backend that runs out of memory above `limit` tiles per batch (never, with limit=None: always)."""

    name, device = "fake-gpu", "cuda"

    def __init__(self, real, limit):
        self.real, self.limit, self.batches = real, limit, []

    def run(self, batch):
        self.batches.append(batch.shape[0])
        if self.limit is None or batch.shape[0] > self.limit:
            raise MemoryError("out of memory")
        return self.real.run(batch)


def _session(limit, device="cuda"):
    s = lnrt.Session(backend="onnxruntime", threads=2, batch_size=4)
    s.backend, s.backend_device = Flaky(s.backend, limit), device
    return s


def test_out_of_memory_halves_the_batch_and_gives_the_same_result():
    with lnrt.Session(backend="onnxruntime", threads=2, batch_size=1) as s:
        want = s.run(SAMPLE)
    s = _session(limit=1)
    got = s.run(SAMPLE)
    assert 4 in s.backend.batches and 2 in s.backend.batches and max(s.backend.batches[-3:]) == 1
    assert sum("retrying with 2" in w for w in got.warnings) == 1
    assert sum("retrying with 1" in w for w in got.warnings) == 1
    np.testing.assert_array_equal(got.labels, want.labels)
    assert got.nodes == want.nodes


def test_out_of_memory_with_one_tile_falls_back_to_the_cpu():
    with lnrt.Session(backend="onnxruntime", threads=2) as s:
        want = s.run(SAMPLE)
    s = _session(limit=None)
    got = s.run(SAMPLE)
    assert any("ran on the CPU" in w for w in got.warnings)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert s.run(SAMPLE).labels.any()  # the next scan tries the GPU again, and falls back again
    s.close()


def test_out_of_memory_on_the_cpu_is_one_line():
    s = _session(limit=None, device="cpu")
    with pytest.raises(LnrtError, match="ran out of memory with one tile") as err:
        s.run(SAMPLE)
    assert "\n" not in str(err.value)
