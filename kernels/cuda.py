"""CuPy launchers for the CUDA kernels in this folder (`ccl.cu`, `stats.cu`).

The `.cu` sources ship with the package and are compiled by NVRTC through `cupy.RawModule` at first use
(CuPy caches the compiled binaries on disk; this module caches the loaded modules per index width).
Volumes of 2^31 voxels or more get 64-bit indices (`-DLNRT_INDEX=long long`). Launch configuration
errors raise at the launch; each public function synchronizes its stream before returning, so an error
inside a kernel surfaces there, with the kernel's name, rather than later. Results equal the CPU
oracles (cc3d for labels, in cc3d's raster numbering; NumPy for statistics): see tests/test_kernels.py.
"""
from __future__ import annotations

import os
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


# NVRTC options per source: the RECIST kernel repeats NumPy's arithmetic, which never fuses a multiply-add
OPTIONS = {"recist.cu": ("--fmad=false",)}


def module(name: str, wide: bool = False):
    cp = cupy()
    key = (name, wide)
    if key not in _modules:
        options = ("-std=c++14",) + OPTIONS.get(name, ()) + (("-DLNRT_INDEX=long long",) if wide else ())
        _modules[key] = cp.RawModule(code=source(name), options=options)
    return _modules[key]


def debug() -> bool:
    """LNRT_CUDA_DEBUG=1: synchronize after every launch, so a failing kernel is named by its own error
    (a launch returns before the kernel runs, and its fault otherwise surfaces at a later call)."""
    return os.environ.get("LNRT_CUDA_DEBUG", "") not in ("", "0")


def _launch(mod, kernel: str, n: int, *args) -> None:
    blocks = max(1, (int(n) + THREADS - 1) // THREADS)
    _run(mod, kernel, (blocks,), (THREADS,), args)


def _run(mod, kernel: str, grid: tuple, block: tuple, args: tuple) -> None:
    mod.get_function(kernel)(grid, block, args)
    if debug():
        _sync(f"kernel {kernel!r}")


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


RECIST_THREADS = 128  # one block per (node, slice): a node's slice holds a few hundred outline points
_ACC, _GEO, _OUT = 12, 24, 12  # per-task table widths of recist.cu
_A_MINS = (2, 3, 5, 7, 10)  # accumulators that start at the top (minimums and first keys)


def _recist_tasks(ids, bbox) -> np.ndarray:
    """(id, z, y0, x0, h, w) for every axial slice of every node's box (a connected node has voxels in
    each slice of its box; a slice without any gives no points and is left out, as the CPU twin does)."""
    rows = []
    for node_id, b in zip(np.asarray(ids).tolist(), np.asarray(bbox, dtype=np.int64)):
        for z in range(int(b[0]), int(b[3]) + 1):
            rows.append((node_id, z, b[1], b[2], b[4] - b[1] + 1, b[5] - b[2] + 1))
    return np.array(rows, dtype=np.int64).reshape(-1, 6)


def recist_slices(labels, ids, bbox, spacing_yx) -> tuple:
    """(tasks, out): the RECIST kernel's per-slice results for every slice of the nodes `ids` (label
    values in `labels`, with inclusive boxes `bbox` (n, 6)); out rows (points, long mm, width mm, short mm,
    long ends y0 x0 y1 x1 mm, short ends mm) on the host."""
    from lnrt.recist import _DIRS2

    cp = cupy()
    labels = cp.ascontiguousarray(cp.asarray(labels, dtype=cp.uint32))
    _, ny, nx = labels.shape
    tasks = _recist_tasks(ids, bbox)
    t = len(tasks)
    if t == 0:
        return tasks, np.zeros((0, _OUT))
    tasks_d = cp.asarray(tasks)
    mod = module("recist.cu")
    count = cp.zeros(t, dtype=cp.int32)
    _run(mod, "outline_count", (t,), (RECIST_THREADS,), (labels, np.int32(ny), np.int32(nx), tasks_d,
                                                          np.int32(t), count))
    sizes = cp.asnumpy(count).astype(np.int64)
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    total = max(int(sizes.sum()), 1)
    acc = cp.zeros((t, _ACC), dtype=cp.uint64)
    acc[:, list(_A_MINS)] = np.uint64(np.iinfo(np.uint64).max)
    dirs = cp.ascontiguousarray(cp.asarray(_DIRS2, dtype=cp.float64))
    sy, sx = (float(v) for v in spacing_yx)
    out = cp.zeros((t, _OUT), dtype=cp.float64)
    _run(mod, "recist_slices", (t,), (RECIST_THREADS,),
         (labels, np.int32(ny), np.int32(nx), tasks_d, np.int32(t), cp.asarray(base), dirs, np.int32(dirs.shape[1]),
          np.float64(sy), np.float64(sx), cp.zeros(2 * total, dtype=cp.float64), cp.zeros(total, dtype=cp.int64),
          cp.zeros(total, dtype=cp.int32), cp.zeros(2 * t, dtype=cp.int32), acc, cp.zeros((t, _GEO), dtype=cp.float64),
          cp.zeros((t, 2 * dirs.shape[1]), dtype=cp.float64), out))
    _sync("RECIST axes")
    return tasks, cp.asnumpy(out)


def recist_axes(labels, ids, bbox, spacing_zyx) -> list:
    """`lnrt.recist.recist_axes` of every node at once: a `SliceAxes` (or None) per id, slice indices
    relative to each node's box, ends in box-local (y, x) index coordinates: the contract of the CPU twin
    `lnrt.nodes.node_axes`. Every slice is measured on the
    device; the choice among a node's slices is the CPU twin's own rule (`lnrt.recist.choose_axes`)."""
    from lnrt.recist import choose_axes

    sp = np.asarray(spacing_zyx, dtype=np.float64)[1:]
    tasks, out = recist_slices(labels, ids, bbox, sp)
    found = {}
    for (node_id, z, *_), row in zip(tasks.tolist(), out):
        if row[0] > 0:  # (width, z, long mm, long ends, (short mm, short ends)): choose_axes' candidates
            found.setdefault(node_id, []).append((float(row[2]), z, float(row[1]), row[4:8].reshape(2, 2),
                                                  (float(row[3]), row[8:12].reshape(2, 2))))
    result = []
    for node_id, b in zip(np.asarray(ids).tolist(), np.asarray(bbox, dtype=np.int64)):
        rows = [(w, z - int(b[0]), *rest) for w, z, *rest in found.get(node_id, [])]
        result.append(choose_axes(rows, sp, lambda k, ends, short: short) if rows else None)
    return result
