"""CuPy launchers for the CUDA kernels in this folder (`ccl.cu`, `stats.cu`).

The `.cu` sources ship with the package and are compiled by NVRTC through `cupy.RawModule` at first use
(CuPy caches the compiled binaries on disk; this module caches the loaded modules per index width).
Volumes of 2^31 voxels or more get 64-bit indices (`-DLNRT_INDEX=long long`). Launch configuration
errors raise at the launch; each public function synchronizes its stream before returning, so an error
inside a kernel surfaces there, with the kernel's name, rather than later. Results equal the CPU
oracles (cc3d for labels, in cc3d's raster numbering; NumPy for statistics): see tests/test_kernels.py.
"""
from __future__ import annotations

from contextlib import contextmanager
from importlib import resources

import numpy as np

from lnrt.errors import LnrtError, missing_extra

THREADS = 256
_modules: dict = {}


_array_module = None  # a stand-in for CuPy (tests/cuda_emu), set with `use`


@contextmanager
def use(array_module):
    """Run the launchers on another module with CuPy's interface (the tests' CPU emulation of the
    kernels); the compiled-module cache is emptied on the way in and out."""
    global _array_module
    before = _array_module
    _array_module = array_module
    _modules.clear()
    try:
        yield array_module
    finally:
        _array_module = before
        _modules.clear()


def cupy():
    """CuPy, once lnrt.device's probe has found a usable GPU; a one-line error otherwise."""
    if _array_module is not None:
        return _array_module
    from lnrt.device import probe_gpu

    probe = probe_gpu()
    if not probe.ok:
        if "not installed" in probe.reason:
            raise missing_extra("cupy", "gpu")
        raise LnrtError(f"no usable CUDA GPU ({probe.reason}); use --device cpu")
    import cupy as cp
    return cp


def source(name: str) -> str:
    return (resources.files("lnrt.kernels") / name).read_text(encoding="utf-8")


def module(name: str, wide: bool = False):
    cp = cupy()
    key = (name, wide)
    if key not in _modules:
        options = ("-std=c++14",) + (("-DLNRT_INDEX=long long",) if wide else ())
        _modules[key] = cp.RawModule(code=source(name), options=options)
    return _modules[key]


def _launch(mod, kernel: str, n: int, *args) -> None:
    blocks = max(1, (int(n) + THREADS - 1) // THREADS)
    mod.get_function(kernel)((blocks,), (THREADS,), args)


def _sync(what: str) -> None:
    cp = cupy()
    try:
        cp.cuda.get_current_stream().synchronize()
    except Exception as exc:  # a fault inside a kernel
        raise RuntimeError(f"CUDA kernel failure in {what}: {exc}") from exc


def label_components(mask, connectivity: int = 26, min_voxels: int = 0):
    """(labels on the device, N): the contract of the CPU twin `lnrt.nodes.label_components` (ids 1..N
    in raster order of first voxels, components below `min_voxels` removed and the rest renumbered,
    uint16 or uint32 past 65 535, `LnrtError` for a bad connectivity or shape)."""
    from lnrt.nodes import check_connectivity, renumber

    cp = cupy()
    check_connectivity(connectivity)
    mask = cp.ascontiguousarray(cp.asarray(mask) != 0).view(cp.uint8)
    if mask.ndim != 3:
        raise LnrtError(f"mask of shape {mask.shape}: expected a 3D (z, y, x) volume")
    nz, ny, nx = mask.shape
    n = mask.size
    wide = n >= 2**31
    itype = cp.int64 if wide else cp.int32
    ntype = np.int64 if wide else np.int32
    mod = module("ccl.cu", wide)
    parent = cp.empty(n, dtype=itype)
    _launch(mod, "init", n, mask, parent, ntype(n))
    _launch(mod, "merge", n, mask, parent, np.int32(nz), np.int32(ny), np.int32(nx), np.int32(connectivity))
    _launch(mod, "compress", n, parent, ntype(n))
    is_root = cp.empty(n, dtype=cp.int32)
    _launch(mod, "roots", n, parent, is_root, ntype(n))
    rank = cp.cumsum(is_root, dtype=cp.int32)
    labels = cp.empty((nz, ny, nx), dtype=cp.uint32)
    _launch(mod, "relabel", n, parent, rank, labels, ntype(n))
    _sync("connected components")
    count = int(rank[-1]) if n else 0
    if count and min_voxels > 1:
        sizes = cp.bincount(labels.ravel(), minlength=count + 1)
        return renumber(labels, cp.asnumpy(sizes >= min_voxels))
    dtype = cp.uint16 if count <= np.iinfo(np.uint16).max else cp.uint32
    return labels.astype(dtype, copy=False), count


def component_stats(labels, n_labels: int, image=None, prob=None, classes=None, n_classes: int = 0,
                    first_map: tuple | None = None) -> dict:
    """The fields and dtypes of the CPU twin `lnrt.nodes.component_stats`, as NumPy arrays indexed by
    id - 1: count, bbox (z0, y0, x0, z1, y1, x1 inclusive), sums (z, y, x, intensity, probability),
    votes (or None), first."""
    cp = cupy()
    labels = cp.ascontiguousarray(cp.asarray(labels, dtype=cp.uint32))
    nz, ny, nx = labels.shape
    n = labels.size
    k = max(int(n_labels), 1)
    base, (sz, sy, sx) = first_map or (0, (ny * nx, nx, 1))
    count = cp.zeros(k, dtype=cp.uint64)
    bbox = cp.empty((k, 6), dtype=cp.int32)
    bbox[:, :3] = np.iinfo(np.int32).max
    bbox[:, 3:] = -1
    sums = cp.zeros((k, 5), dtype=cp.float64)
    with_votes = classes is not None and n_classes > 0
    votes = cp.zeros((k, max(n_classes, 1)), dtype=cp.uint64)
    first = cp.full(k, np.iinfo(np.uint64).max, dtype=cp.uint64)

    def dev(a, dtype):
        return None if a is None else cp.ascontiguousarray(cp.asarray(a, dtype=dtype))

    img, pr, cl = dev(image, cp.float32), dev(prob, cp.float32), dev(classes, cp.uint8)
    mod = module("stats.cu", n >= 2**31)
    null = np.uintp(0)
    _launch(mod, "component_stats", n, labels, img if img is not None else null, pr if pr is not None else null,
            cl if cl is not None else null, np.int32(nz), np.int32(ny), np.int32(nx), np.uint32(n_labels),
            np.int32(n_classes if with_votes else 0), np.int64(base), np.int64(sz), np.int64(sy), np.int64(sx),
            count, bbox, sums, votes, first)
    _sync("component statistics")
    m = int(n_labels)
    return {"count": cp.asnumpy(count)[:m], "bbox": cp.asnumpy(bbox)[:m], "sums": cp.asnumpy(sums)[:m],
            "votes": cp.asnumpy(votes)[:m] if with_votes else None, "first": cp.asnumpy(first)[:m]}
