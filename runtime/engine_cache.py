"""The TensorRT engine cache (docs/ARCHITECTURE.md, "Contracts"): engines live outside packages, keyed by what makes them valid.

An engine is only valid for the ONNX it was built from, the TensorRT version that built it, the GPU
model and compute capability, the precision variant and the batch profile. The key is a dict of
those; its sha256 names the files `<key>.engine` and `<key>.json` (the sidecar, which repeats the key
in clear). A lookup whose sidecar disagrees with the wanted key is a miss: the caller rebuilds instead
of crashing on a stale engine. The folder is `$LNRT_CACHE/engines`, default `~/.cache/lnrt/engines`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .atomic import write_bytes, write_json


def cache_dir() -> Path:
    root = os.environ.get("LNRT_CACHE") or Path.home() / ".cache" / "lnrt"
    return Path(root) / "engines"


def engine_key(onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: str, variant: str,
               batch: tuple) -> dict:
    return {"onnx_sha256": onnx_sha256, "tensorrt": str(trt_version), "gpu": gpu_name,
            "compute_capability": str(compute_capability), "variant": variant,
            "batch_min_opt_max": [int(b) for b in batch]}


def key_id(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def paths(key: dict, root: Path | None = None) -> tuple:
    root = Path(root) if root else cache_dir()
    kid = key_id(key)
    return root / f"{kid}.engine", root / f"{kid}.json"


def lookup(key: dict, root: Path | None = None) -> Path | None:
    """The cached engine for `key`, or None (missing, or its sidecar records another key)."""
    engine, sidecar = paths(key, root)
    if not (engine.is_file() and sidecar.is_file()):
        return None
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8")).get("key")
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    return engine if recorded == key else None


def store(key: dict, engine_bytes: bytes, info: dict, root: Path | None = None) -> Path:
    """Write engine and sidecar atomically (temp names, then rename; the sidecar last)."""
    engine, sidecar = paths(key, root)
    engine.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(engine, engine_bytes)
    write_json(sidecar, {"key": key, **info})
    return engine
