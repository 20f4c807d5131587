"""Resampling between the scan grid and the model grid, normalization, and the body crop.

All resampling happens in the canonical array frame where voxel (z, y, x) of the native grid sits at
(z, y, x) * spacing. The model grid covers exactly the same extent (edge to edge) as the native grid,
so mapping model-space scores back lands on the native voxels without drift (nnU-Net's convention).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .device import CPU, host
from .errors import LnrtError
from .package import TILINGS


@dataclass(frozen=True)
class Grid:
    """An axis-aligned grid in the canonical frame: voxel i of axis a sits at origin[a] + i * spacing[a]."""

    shape: tuple  # (z, y, x)
    spacing: tuple  # (z, y, x) mm
    origin: tuple = (0.0, 0.0, 0.0)  # (z, y, x) mm

    def crop(self, box: tuple) -> "Grid":
        """The sub-grid of `box` = ((z0, z1), (y0, y1), (x0, x1))."""
        return Grid(tuple(b - a for a, b in box), self.spacing,
                    tuple(o + a * s for o, (a, _), s in zip(self.origin, box, self.spacing)))


def target_spacing_on(native: Grid, target_spacing: tuple) -> list:
    """The model's spacing with each None (a slice model's unresampled axis) the scan's own."""
    return [n if t is None else t for t, n in zip(target_spacing, native.spacing)]


def model_grid(native: Grid, target_spacing: tuple) -> Grid:
    """The model-spacing grid over the same extent as `native` (spacing adjusted to fit exactly). A
    target of None on an axis keeps the native spacing there (a slice model that is not resampled across
    slices: nnU-Net's 2d configurations)."""
    target = target_spacing_on(native, target_spacing)
    extent = np.array(native.shape) * np.array(native.spacing)
    shape = np.maximum(1, np.round(extent / np.array(target)).astype(int))
    spacing = extent / shape
    origin = np.array(native.origin) - 0.5 * np.array(native.spacing) + 0.5 * spacing
    return Grid(tuple(int(s) for s in shape), tuple(float(s) for s in spacing),
                tuple(float(o) for o in origin))


# Voxel types SimpleITK resamples as they are: its linear interpolator computes in double whatever the
# input type, so an int16 CT gives the same float32 output as its float32 copy, without making that copy
# (262 MB for a 512 x 512 x 250 scan).
_NATIVE_TYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64)


def _image(array: np.ndarray, grid: Grid) -> sitk.Image:
    if array.dtype.type not in _NATIVE_TYPES:
        array = array.astype(np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(grid.spacing[::-1])
    image.SetOrigin(grid.origin[::-1])
    return image


def resampler(array: np.ndarray, src: Grid, linear: bool = True, default: float = 0.0):
    """A function `dst -> array` resampling `array` (on grid `src`) onto any grid `dst`: the source is
    converted once, so many small destination boxes cost only their own voxels."""
    if array.shape != tuple(src.shape):
        raise ValueError(f"array {array.shape} does not match grid {src.shape}")
    image = _image(array, src)

    def onto(dst: Grid) -> np.ndarray:
        out = sitk.Resample(
            image, [int(s) for s in dst.shape[::-1]], sitk.Transform(),
            sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
            dst.origin[::-1], dst.spacing[::-1], (1, 0, 0, 0, 1, 0, 0, 0, 1),
            float(default), sitk.sitkFloat32, True,  # useNearestNeighborExtrapolator: edges keep values
        )
        return sitk.GetArrayFromImage(out)
    return onto


def resample(array: np.ndarray, src: Grid, dst: Grid, linear: bool = True,
             default: float = 0.0, dev=CPU) -> np.ndarray:
    """Resample a (z, y, x) array from grid `src` onto grid `dst` (a new float32 array, never a view:
    callers normalize it in place, and the input must stay untouched), on the array's device `dev`."""
    if tuple(array.shape) != tuple(src.shape):
        raise ValueError(f"array {tuple(array.shape)} does not match grid {src.shape}")
    if src == dst:
        return dev.xp.array(array, dtype=dev.xp.float32)
    return dev.ops.resampler(array, src, linear, default)(dst)


def normalize(hu: np.ndarray, recipe: dict) -> np.ndarray:
    """Apply the manifest's normalization recipe to HU values, in place on a float32 array."""
    scheme = recipe.get("scheme")
    out = hu if hu.dtype == np.float32 else hu.astype(np.float32)
    if scheme == "ct_zscore":
        lo, hi = recipe["clip_hu"]
        out.clip(lo, hi, out=out)
        out -= np.float32(recipe["mean"])
        out /= np.float32(recipe["std"])
    elif scheme == "window":
        lo, hi = recipe["window_hu"]
        out.clip(lo, hi, out=out)
        out -= np.float32(lo)
        out /= np.float32(hi - lo)
    else:
        raise LnrtError(f"unknown normalization scheme {scheme!r}; expected ct_zscore or window")
    return out


@dataclass(frozen=True)
class BodyCropConfig:
    threshold_hu: float = -500.0
    margin_mm: float = 10.0
    min_part: float = 0.05  # body parts kept: components at least this share of the largest
    # False: the whole scan is "body" (every tile runs).
    enabled: bool = True
    # "body_box": the scan is cropped to the body's box and the box is tiled (fewest tiles). "whole_scan":
    # the whole model grid is tiled, as nnU-Net's predictor tiles it, and only the tiles that hold a body
    # voxel run. Models with instance normalization need "whole_scan": a tile's output depends on the
    # tile's own statistics, so its logits equal the reference's only at the reference's tile positions;
    # every tile that covers a body voxel runs, so body voxels get exactly the reference's accumulation.
    tiling: str = "body_box"

    def __post_init__(self):
        if self.tiling not in TILINGS:
            raise ValueError(f"tiling must be one of {', '.join(TILINGS)}, got {self.tiling!r}")


def body_mask(hu: np.ndarray, cfg: BodyCropConfig, dev=CPU) -> np.ndarray:
    """Voxels of the body: above the threshold and in a large connected part (drops noise, specks)."""
    xp = dev.xp
    if not cfg.enabled:
        return xp.ones(hu.shape, dtype=bool)
    mask = hu > cfg.threshold_hu
    if not bool(mask.any()):
        return mask
    labels, n = dev.ops.label(mask, 6)
    counts = xp.bincount(labels.ravel(), minlength=n + 1)
    counts[0] = 0
    keep = counts >= max(1, cfg.min_part * int(counts.max()))
    return keep[labels]


def bounding_box(mask: np.ndarray, margin_vox=(0, 0, 0)) -> tuple | None:
    """((z0, z1), (y0, y1), (x0, x1)) half-open box of the mask plus a margin, clipped; None if empty."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(host(mask.any(axis=other)))
        if hit.size == 0:
            return None
        lo = max(0, int(hit[0]) - int(margin_vox[axis]))
        hi = min(mask.shape[axis], int(hit[-1]) + 1 + int(margin_vox[axis]))
        box.append((lo, hi))
    return tuple(box)


def box_slices(box: tuple) -> tuple:
    return tuple(slice(a, b) for a, b in box)
