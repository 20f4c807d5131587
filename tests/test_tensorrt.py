"""The TensorRT engine builder against a strict fake of the 10.x/11.x Python API, plus a real build
where TensorRT and a GPU exist."""
from __future__ import annotations

import json
import shutil
import types

import pytest

from lnrt import engine_cache
from lnrt.errors import LnrtError
from lnrt.export.tensorrt import build_engine
from lnrt.package import default_package_path, write_manifest

EXPECTED = ["Logger", "Builder", "create_network", "OnnxParser", "parse_from_file", "create_builder_config",
            "set_memory_pool_limit", "get_input", "create_optimization_profile", "set_shape",
            "add_optimization_profile", "create_timing_cache", "set_timing_cache",
            "build_serialized_network", "get_timing_cache"]


def fake_trt(version="10.9.0", parse_ok=True, build_ok=True):
    """A fake `tensorrt` module: records calls and refuses anything out of the documented order."""
    calls, state = [], {}

    def rec(name, *args):
        calls.append(name)
        state.setdefault("args", {})[name] = args

    class Logger:
        WARNING = 2

        def __init__(self, level):
            rec("Logger", level)

    class Error:
        def __init__(self, msg):
            self.msg = msg

        def __str__(self):
            return self.msg

    class Input:
        name = "image"

    class Network:
        def get_input(self, i):
            assert state.get("parsed"), "get_input before the ONNX was parsed"
            rec("get_input", i)
            return Input()

    class Parser:
        def __init__(self, network, logger):
            assert isinstance(network, Network) and isinstance(logger, Logger)
            rec("OnnxParser")
            self.num_errors = 0 if parse_ok else 2

        def parse_from_file(self, path):
            rec("parse_from_file", path)
            state["parsed"] = parse_ok
            return parse_ok

        def get_error(self, i):
            return Error(f"node {i}: unsupported op FancyOp")

    class Profile:
        def set_shape(self, name, mn, opt, mx):
            rec("set_shape", name, mn, opt, mx)
            assert mn[0] <= opt[0] <= mx[0] and mn[1:] == opt[1:] == mx[1:]
            state["profile"] = (mn, opt, mx)

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"timing" + bytes(self.data)

    class Config:
        def set_memory_pool_limit(self, pool, size):
            rec("set_memory_pool_limit", pool, size)
            assert pool == "WORKSPACE" and size > 0

        def add_optimization_profile(self, profile):
            assert "profile" in state, "profile added before its shapes were set"
            rec("add_optimization_profile")

        def create_timing_cache(self, data):
            rec("create_timing_cache", data)
            assert isinstance(data, bytes)
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            rec("set_timing_cache", ignore_mismatch)
            assert isinstance(cache, Cache) and ignore_mismatch is False
            state["cache"] = cache

        def get_timing_cache(self):
            rec("get_timing_cache")
            return state["cache"]

    class Builder:
        def __init__(self, logger):
            assert isinstance(logger, Logger)
            rec("Builder")

        def create_network(self, flags):
            rec("create_network", flags)
            assert flags == 1 << 5, "network must be created strongly typed"
            return Network()

        def create_builder_config(self):
            assert state.get("parsed"), "config before a successful parse"
            rec("create_builder_config")
            return Config()

        def create_optimization_profile(self):
            rec("create_optimization_profile")
            return Profile()

        def build_serialized_network(self, network, config):
            assert "cache" in state, "build without a timing cache"
            rec("build_serialized_network")
            return b"ENGINE" if build_ok else None

    mod = types.SimpleNamespace(
        __version__=version, Logger=Logger, Builder=Builder, OnnxParser=Parser,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=5),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"))
    return mod, calls, state


H100 = ("NVIDIA H100 80GB HBM3", (9, 0))


@pytest.fixture
def pkg(tmp_path):
    dst = tmp_path / "pkg"
    shutil.copytree(default_package_path(), dst)
    return dst


@pytest.mark.parametrize("version", ["10.9.0", "11.4.1"])
def test_build_calls_the_api_in_order_and_caches(pkg, tmp_path, version):
    trt, calls, state = fake_trt(version)
    path, info = build_engine(pkg, "fp32", max_batch=4, cache_root=tmp_path / "c", trt=trt, gpu=H100)
    assert calls == EXPECTED
    assert state["profile"] == ((1, 1, 48, 96, 96), (2, 1, 48, 96, 96), (4, 1, 48, 96, 96))
    assert path.read_bytes() == b"ENGINE" and not info["cached"]
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["key"]["tensorrt"] == version and sidecar["key"]["compute_capability"] == "9.0"
    assert sidecar["key"]["batch_min_opt_max"] == [1, 2, 4] and sidecar["key"]["variant"] == "fp32"
    timing = next((tmp_path / "c").glob("timing-*.cache"))
    # second call: a cache hit, TensorRT untouched
    trt2, calls2, _ = fake_trt(version)
    path2, info2 = build_engine(pkg, "fp32", max_batch=4, cache_root=tmp_path / "c", trt=trt2, gpu=H100)
    assert path2 == path and info2["cached"] and calls2 == []
    # a rebuild reuses the saved timing cache
    saved = timing.read_bytes()
    trt3, calls3, state3 = fake_trt(version)
    build_engine(pkg, "fp32", max_batch=4, cache_root=tmp_path / "c", trt=trt3, gpu=H100, rebuild=True)
    assert state3["args"]["create_timing_cache"][0] == saved == b"timing"
    # another GPU or batch profile is another engine
    trt4, calls4, _ = fake_trt(version)
    path4, _ = build_engine(pkg, "fp32", max_batch=8, cache_root=tmp_path / "c", trt=trt4,
                            gpu=("NVIDIA L4", (8, 9)))
    assert path4 != path and calls4 == EXPECTED


@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_precision_variants_build_strongly_typed_from_their_own_onnx(pkg, tmp_path, variant):
    # the default package ships gated FP16 and INT8 ONNX: the engine is built from that file, with the
    # same calls (precision lives in the ONNX, so no precision flags), and keyed by the variant
    trt, calls, state = fake_trt("11.4.1")
    path, _ = build_engine(pkg, variant, max_batch=2, cache_root=tmp_path / "c", trt=trt, gpu=H100)
    assert calls == EXPECTED
    assert str(state["args"]["parse_from_file"][0]).endswith(f"model.{variant}.onnx")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["key"]["variant"] == variant
    assert sidecar["key"]["onnx_sha256"] == json.loads((pkg / "lnrt.json").read_text())["files"][
        f"model.{variant}.onnx"]["sha256"]


def test_stale_sidecar_is_a_miss(pkg, tmp_path):
    trt, _, _ = fake_trt()
    path, info = build_engine(pkg, "fp32", cache_root=tmp_path, trt=trt, gpu=H100)
    side = path.with_suffix(".json")
    data = json.loads(side.read_text())
    data["key"]["tensorrt"] = "9.0.0"
    side.write_text(json.dumps(data))
    assert engine_cache.lookup(info["key"], tmp_path) is None
    trt2, calls2, _ = fake_trt()
    build_engine(pkg, "fp32", cache_root=tmp_path, trt=trt2, gpu=H100)
    assert calls2 == EXPECTED


def test_clear_errors(pkg, tmp_path):
    trt, calls, _ = fake_trt(parse_ok=False)
    with pytest.raises(LnrtError, match="cannot parse the ONNX: node 0: unsupported op FancyOp; node 1"):
        build_engine(pkg, "fp32", cache_root=tmp_path, trt=trt, gpu=H100)
    assert "create_builder_config" not in calls
    trt, _, _ = fake_trt(build_ok=False)
    with pytest.raises(LnrtError, match="failed to build"):
        build_engine(pkg, "fp32", cache_root=tmp_path, trt=trt, gpu=H100)
    assert not list(tmp_path.glob("*.engine"))
    with pytest.raises(LnrtError, match=r"compute capability 6.1\) is not supported"):
        build_engine(pkg, "fp32", cache_root=tmp_path, trt=fake_trt()[0], gpu=("GTX 1080", (6, 1)))
    with pytest.raises(LnrtError, match="too old"):
        build_engine(pkg, "fp32", cache_root=tmp_path, trt=fake_trt("8.6.1")[0], gpu=H100)
    manifest = json.loads((pkg / "lnrt.json").read_text())
    manifest["files"].pop("model.int8.onnx", None)
    manifest.get("variants", {}).pop("int8", None)
    write_manifest(pkg, manifest)
    with pytest.raises(LnrtError, match="no int8 variant"):
        build_engine(pkg, "int8", cache_root=tmp_path, trt=fake_trt()[0], gpu=H100)
    with pytest.raises(LnrtError, match="max-batch"):
        build_engine(pkg, "fp32", max_batch=0, cache_root=tmp_path, trt=fake_trt()[0], gpu=H100)


def test_missing_tensorrt_is_one_clear_line(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_trt(name, *a, **k):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_trt)
    with pytest.raises(LnrtError, match="TensorRT is not installed"):
        build_engine(None, "fp32", gpu=H100)


def test_real_build_where_tensorrt_and_a_gpu_exist(tmp_path):
    pytest.importorskip("tensorrt")
    cupy = pytest.importorskip("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception:
        pytest.skip("no CUDA GPU")
    path, info = build_engine(None, "fp32", max_batch=2, cache_root=tmp_path)
    assert path.stat().st_size > 0 and not info["cached"]
