"""`lnrt build-engine`: a strongly typed TensorRT engine from a package's ONNX variant, cached.

A thin layer over the TensorRT Python API as documented for 10.x and 11.x (both checked here):
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger); parser.parse_from_file(path)   # errors listed on failure
    config = builder.create_builder_config(); config.set_memory_pool_limit(WORKSPACE, bytes)
    profile = builder.create_optimization_profile(); profile.set_shape(input, min, opt, max)
    config.add_optimization_profile(profile)
    config.set_timing_cache(config.create_timing_cache(previous bytes), ignore_mismatch=False)
    builder.build_serialized_network(network, config)                       # None on failure
Strong typing is the only mode in 11.x (the flag is kept and ignored there) and the one lnrt uses on
10.x: precision comes from the ONNX file (FP16 casts, INT8 Q/DQ), never from builder flags, so one
variant file gives the same numerics on both. The timing cache is reused across builds for the same
TensorRT and GPU. Engines go to the engine cache (`lnrt.engine_cache`) with a sidecar of their key.
No torch here; TensorRT is imported lazily and can be injected (tests use a strict fake).
"""
from __future__ import annotations

import time
from pathlib import Path

from lnrt import engine_cache
from lnrt.atomic import write_bytes
from lnrt.errors import LnrtError
from lnrt.package import ModelPackage

MIN_COMPUTE_CAPABILITY = (7, 5)  # Turing: the oldest GPUs TensorRT 10.x and 11.x build for
MIN_TRT_MAJOR = 10


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise LnrtError("TensorRT is not installed; install NVIDIA TensorRT 10 or 11 for Python "
                        "(pip install tensorrt) on a machine with an NVIDIA GPU") from None
    return trt


def gpu_info(device: int = 0) -> tuple:
    """(name, (major, minor)) of the CUDA GPU (lnrt.device's probe); a clear error without one."""
    from lnrt.device import probe_gpu

    probe = probe_gpu(device)
    if probe.compute_capability is None:
        raise LnrtError(f"no usable CUDA GPU ({probe.reason}); TensorRT engines need an NVIDIA GPU")
    return probe.name, probe.compute_capability


def trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        raise LnrtError("cannot read the TensorRT version; expected TensorRT 10 or 11") from None


def build_engine(package, variant: str = "fp16", max_batch: int = 4, opt_batch: int | None = None,
                 workspace_gb: float = 4.0, cache_root: Path | None = None, rebuild: bool = False,
                 trt=None, gpu: tuple | None = None) -> tuple:
    """Build (or find in the cache) the engine for `variant`; returns (engine path, sidecar dict)."""
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    onnx_path = pkg.onnx_path(variant)
    if max_batch < 1:
        raise LnrtError(f"--max-batch {max_batch}: expected a positive batch size")
    opt_batch = min(max(1, opt_batch or pkg.section("sliding_window").get("batch_size", 2)), max_batch)
    trt = trt or import_tensorrt()
    major = trt_major(trt)
    if major < MIN_TRT_MAJOR:
        raise LnrtError(f"TensorRT {trt.__version__} is too old; expected 10.x or 11.x (strongly typed networks)")
    name, cc = gpu or gpu_info()
    if tuple(cc) < MIN_COMPUTE_CAPABILITY:
        raise LnrtError(f"GPU {name} (compute capability {cc[0]}.{cc[1]}) is not supported by TensorRT "
                        f"{major}; expected compute capability {MIN_COMPUTE_CAPABILITY[0]}."
                        f"{MIN_COMPUTE_CAPABILITY[1]} or newer")
    key = engine_cache.engine_key(pkg.sha256(variant), trt.__version__, name, f"{cc[0]}.{cc[1]}", variant,
                                  (1, opt_batch, max_batch))
    hit = None if rebuild else engine_cache.lookup(key, cache_root)
    if hit is not None:
        return hit, {"key": key, "cached": True}

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no details"
        raise LnrtError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse the ONNX: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    inp = network.get_input(0)
    channels = int(pkg.manifest["input"].get("channels", 1))
    patch = pkg.input_patch_zyx  # a 2.5D model also takes its context slices
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, channels, *patch), (opt_batch, channels, *patch),
                      (max_batch, channels, *patch))
    config.add_optimization_profile(profile)
    root = Path(cache_root) if cache_root else engine_cache.cache_dir()
    timing_path = root / f"timing-trt{trt.__version__}-sm{cc[0]}{cc[1]}.cache"
    previous = timing_path.read_bytes() if timing_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(previous), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LnrtError(f"{onnx_path}: TensorRT {trt.__version__} failed to build an engine on {name}; "
                        "see TensorRT's log above (workspace too small: raise --workspace-gb)")
    root.mkdir(parents=True, exist_ok=True)
    write_bytes(timing_path, bytes(config.get_timing_cache().serialize()))
    info = {"package": pkg.name, "package_version": pkg.version, "onnx": str(onnx_path),
            "build_seconds": round(time.perf_counter() - t0, 2), "workspace_gb": workspace_gb,
            "input": inp.name, "patch_zyx": list(patch), "timing_cache": str(timing_path),
            "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = engine_cache.store(key, bytes(serialized), info, cache_root)
    return path, {"key": key, "cached": False, **info}
