"""What the stages do differently on each device: a map from a device's kind to its operations.

Everything else a stage does is NumPy's interface on `device.xp` (CuPy shares it). What differs is where
the CPU has a library CuPy lacks or a GPU needs its own kernel:

    resampler   SimpleITK (linear, nearest-neighbour extrapolation) | `ndimage.affine_transform`, order 1,
                mode "nearest": the same interpolation (ITK clamps the neighbours at the edges, which is
                SciPy's and CuPy's "nearest" mode), computed in double, stored as float32
    label       cc3d (lnrt.nodes.label_components) | kernels/ccl.cu (lnrt.kernels.cuda.label_components)
    stats       NumPy's one sort (lnrt.nodes.component_stats) | kernels/stats.cu
    axes        lnrt.recist per node (lnrt.nodes.node_axes) | kernels/recist.cu, every node's slices at once

The twins keep one contract each (docs/ARCHITECTURE.md, "Twins"); statistics come back to the host as
NumPy arrays, one row per component, on both devices (they are the node table's raw material).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Ops:
    resampler: Callable  # (array, src Grid, linear=True, default=0.0) -> (dst Grid -> float32 array)
    label: Callable  # (mask, connectivity, min_voxels=0) -> (labels, n)
    stats: Callable  # (labels, n, image, prob, classes, n_classes, first_map=) -> dict of NumPy arrays
    axes: Callable  # (labels, ids, bbox, spacing_zyx) -> [SliceAxes | None]


def _cpu_ops(device) -> Ops:
    from .nodes import component_stats, label_components, node_axes
    from .preprocess import resampler

    return Ops(resampler, label_components, component_stats, node_axes)


def grid_resampler(device, array, src, linear: bool = True, default: float = 0.0):
    """The device twin of `lnrt.preprocess.resampler`: `dst -> array` on `device`, for axis-aligned grids
    of the canonical frame (a diagonal affine map from destination to source indices). `default` is
    never used: points outside the source take the nearest edge value, as SimpleITK's extrapolator does."""
    if tuple(array.shape) != tuple(src.shape):
        raise ValueError(f"array {tuple(array.shape)} does not match grid {src.shape}")
    xp, nd = device.xp, device.ndimage

    def onto(dst):
        scale = xp.asarray([d / s for d, s in zip(dst.spacing, src.spacing)], dtype=xp.float64)
        offset = [(do - so) / s for do, so, s in zip(dst.origin, src.origin, src.spacing)]
        out = xp.empty(tuple(int(n) for n in dst.shape), dtype=xp.float32)
        nd.affine_transform(array, scale, offset=offset, output_shape=out.shape, output=out,
                            order=1 if linear else 0, mode="nearest")
        return out
    return onto


def _cuda_ops(device) -> Ops:
    from lnrt.kernels import cuda

    return Ops(lambda array, src, linear=True, default=0.0: grid_resampler(device, array, src, linear, default),
               cuda.label_components, cuda.component_stats, cuda.recist_axes)


OPS = {"cpu": _cpu_ops, "cuda": _cuda_ops}


def ops_for(device) -> Ops:
    return OPS[device.kind](device)
