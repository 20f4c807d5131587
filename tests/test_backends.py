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


SYNCS = []  # the fake device stream's synchronizations
DEVICE_XP = types.SimpleNamespace(
    float32=np.float32,
    ascontiguousarray=lambda a, dtype=None: np.ascontiguousarray(a, dtype=dtype).view(DeviceArray),
    empty=lambda shape, dtype=None: np.empty(shape, dtype).view(DeviceArray),
    cuda=types.SimpleNamespace(get_current_stream=lambda: types.SimpleNamespace(synchronize=lambda: SYNCS.append(1))))


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
    SYNCS.clear()
    out = dev.run(tiles.view(DeviceArray))
    assert isinstance(out, DeviceArray) and out.shape == ref.shape  # the output stays on the "device"
    assert SYNCS == [1]  # CuPy's stream is waited for before ONNX Runtime (on its own stream) reads the batch
    np.testing.assert_array_equal(np.asarray(out), ref)


def test_the_registry_serves_the_cli_and_says_why_a_backend_cannot_run():
    assert backends.names() == ("auto", "tensorrt", "onnxruntime-cuda", "openvino", "onnxruntime")
    assert [s.devices for s in backends.REGISTRY.values()][:2] == [("cuda",), ("cuda",)]  # GPU first
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


def fake_trt_runtime(version: str, compute, patch=(48, 96, 96), classes=2, profile=(1, 2, 4), stale=False):
    """A strict fake of TensorRT's 10.x/11.x runtime API: the name-based tensor API only (no bindings, no
    implicit batch), input shapes checked against the profile, execution refused before every I/O
    tensor has an address. "Device" pointers are host memory, so the fake can run `compute` on them."""
    import ctypes

    calls = []

    class Logger:
        WARNING = 2

        def __init__(self, level):
            calls.append("Logger")

    class TensorIOMode:
        INPUT, OUTPUT = 1, 2

    def view(ptr, shape):
        n = int(np.prod(shape))
        return np.ctypeslib.as_array((ctypes.c_float * n).from_address(ptr)).reshape(shape)

    class Context:
        def __init__(self):
            self.shape, self.addr = None, {}

        def set_input_shape(self, name, shape):
            assert name == "image"
            calls.append("set_input_shape")
            if not (profile[0] <= shape[0] <= profile[2] and tuple(shape[1:]) == (1, *patch)):
                return False
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            assert self.shape is not None, "get_tensor_shape before set_input_shape"
            return (self.shape[0], classes, *patch) if name == "logits" else self.shape

        def set_tensor_address(self, name, ptr):
            assert name in ("image", "logits") and isinstance(ptr, int) and ptr
            self.addr[name] = ptr

        def execute_async_v3(self, stream_handle):
            assert isinstance(stream_handle, int)
            assert set(self.addr) == {"image", "logits"}, "execute before every I/O tensor had an address"
            calls.append("execute_async_v3")
            out = view(self.addr["logits"], (self.shape[0], classes, *patch))
            out[...] = compute(view(self.addr["image"], self.shape).copy())
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("image", "logits")[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "image" else TensorIOMode.OUTPUT

        def get_tensor_profile_shape(self, name, profile_index):
            assert name == "image" and profile_index == 0
            return tuple((b, 1, *patch) for b in profile)

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            assert isinstance(logger, Logger)

        def deserialize_cuda_engine(self, data):
            calls.append("deserialize_cuda_engine")
            return None if stale or not data.startswith(b"engine") else Engine()

    return types.SimpleNamespace(__version__=version, Logger=Logger, Runtime=Runtime, TensorIOMode=TensorIOMode,
                                 calls=calls)


TRT_XP = types.SimpleNamespace(
    float32=np.float32, asarray=lambda a: np.ascontiguousarray(a).view(DeviceArray),
    asnumpy=lambda a: np.array(a), concatenate=lambda parts: np.concatenate(parts).view(DeviceArray),
    ascontiguousarray=DEVICE_XP.ascontiguousarray, empty=DEVICE_XP.empty,
    cuda=types.SimpleNamespace(get_current_stream=lambda: types.SimpleNamespace(ptr=7)))


@pytest.mark.parametrize("version", ["10.9.0", "11.3.0"])
def test_tensorrt_backend_against_a_strict_fake(tmp_path, pkg, version):
    from lnrt.backends.tensorrt import TensorRtBackend

    ort = backends.create_backend(pkg.onnx_path(), "onnxruntime", "cpu", threads=2)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    trt = fake_trt_runtime(version, ort.run)
    be = TensorRtBackend(engine, trt=trt, array_module=TRT_XP)
    assert be.max_batch == 4 and be.describe()["backend_version"] == version
    x = np.random.default_rng(1).random((6, 1, 48, 96, 96)).astype(np.float32)
    want = ort.run(x)
    np.testing.assert_array_equal(be.run(x), want)  # host arrays in and out, split at the profile's max
    assert trt.calls.count("execute_async_v3") == 2
    dev = be.run(x[:2].view(DeviceArray))  # device arrays stay on the device
    assert isinstance(dev, DeviceArray)
    np.testing.assert_array_equal(np.asarray(dev), want[:2])


def test_an_engine_for_another_gpu_or_tensorrt_says_rebuild(tmp_path, pkg):
    from lnrt.backends.tensorrt import TensorRtBackend

    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine bytes")
    with pytest.raises(LnrtError, match="rebuild it with lnrt build-engine --rebuild") as err:
        TensorRtBackend(engine, trt=fake_trt_runtime("10.9.0", None, stale=True), array_module=TRT_XP)
    assert "\n" not in str(err.value)
