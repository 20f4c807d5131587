"""Sliding-window inference over a 3D volume, configured by one frozen dataclass.

Tiles are spread evenly along each axis so the first starts at 0 and the last ends at the edge, with
a step of at most `patch * (1 - overlap)`. Each tile's logits are weighted by a Gaussian importance map
(sigma = patch * sigma_scale, as nnU-Net does: centre voxels are trusted more than tile borders),
accumulated, and divided by the summed weights. Volumes smaller than a patch are padded and cropped
back (a multi-channel image, a cascade's CT and first-stage masks: the masks with 0, as nnU-Net pads
them). Tiles that hold no voxel of the optional `mask` are not run; the voxels no tile covered are
reported in `covered` so the caller can decide what they are (background).

Slice models (2D, 2.5D; `lnrt.slices`) are the same window with a patch of one slice: every slice is a
tile row (a step of 1 along z), in-plane tiles overlap as in 3D, and the Gaussian is flat along z. A
2.5D model also sees `context` slices above and below the tile: its input tile is the output tile grown
by `context` along z. At the first and last slices the missing neighbours *replicate* the edge slice
(the scan is padded along z in "edge" mode). Replicating, not padding with air, because a slab of air
above the top slice would show the model a body surface where the scan goes on: a model trained on
slices with real neighbours has never seen that, and the nodes it would cut are the ones at the edge of
the field of view (nnU-Net's 2D models see no context, so nothing is padded for them).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

ACCUMULATE = ("float32", "float16")  # how tiles are summed (SlidingWindowConfig.accumulate; the manifest's)

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SlidingWindowConfig:
    patch: tuple  # (z, y, x) voxels
    overlap: float = 0.5  # share of a patch two neighbouring tiles overlap by (at least)
    sigma_scale: float = 0.125  # Gaussian sigma as a share of the patch size
    batch_size: int = 2  # tiles per predictor call
    mirror_axes: tuple = ()  # spatial axes (0 = z, 1 = y, 2 = x) to mirror for test-time augmentation
    pad_value: float | None = None  # None: the image minimum
    context: int = 0  # slices above and below each tile the network also sees (2.5D models), edge-replicated
    # "float16": logits and weights summed in half precision with the Gaussian peaking at 10, as nnU-Net
    # v2's predictor sums them (`_internal_predict_sliding_window_return_logits`), so that an imported
    # model's output is nnU-Net's; "float32": lnrt's own sums. Where tiles barely overlap (the scan's
    # edges, weights down to 1e-4) half precision rounds a logit to a few bits: on a random-weight 3d_lowres
    # network 0.1 % of the voxels changed class (measured against nnU-Net, tests/test_nnunet_cascade.py).
    accumulate: str = "float32"

    def __post_init__(self):
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be three positive sizes, got {self.patch}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if any(a not in (0, 1, 2) for a in self.mirror_axes):
            raise ValueError(f"mirror_axes must be among 0, 1, 2, got {self.mirror_axes}")
        if self.accumulate not in ACCUMULATE:
            raise ValueError(f"accumulate must be one of {', '.join(ACCUMULATE)}, got {self.accumulate!r}")
        if self.context < 0 or (self.context and self.patch[0] != 1):
            raise ValueError(f"context slices need a one-slice patch and a count >= 0, got {self.context} "
                             f"for patch {self.patch}")

    @property
    def input_patch(self) -> tuple:
        """The network input's patch: the tile plus the context slices above and below."""
        return (self.patch[0] + 2 * self.context, *self.patch[1:])


def tile_starts(size: int, patch: int, overlap: float) -> list:
    """Start offsets along one axis: first 0, last size - patch, evenly spread (size >= patch)."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    n = int(np.ceil((size - patch) / step)) + 1
    return [int(round(x)) for x in np.linspace(0, size - patch, n)]


def tiles(shape: tuple, cfg: SlidingWindowConfig) -> list:
    """Every tile as a tuple of three slices over a volume of `shape` (already >= patch)."""
    per_axis = [tile_starts(s, p, cfg.overlap) for s, p in zip(shape, cfg.patch)]
    return [tuple(slice(o, o + p) for o, p in zip(start, cfg.patch))
            for start in itertools.product(*per_axis)]


def gaussian_importance(patch: tuple, sigma_scale: float, dtype=np.float32) -> np.ndarray:
    """Separable Gaussian peaking at voxel p // 2 of each axis (nnU-Net's centre, so imported models
    reproduce its accumulation), peak 1, no zeros (so every voxel gets weight). float16: nnU-Net's half
    map, peak 10 (its `value_scaling_factor`), rounded from float64 and its zeros raised to its least
    nonzero value."""
    g = np.ones(patch, dtype=np.float64)
    for axis, p in enumerate(patch):
        x = np.arange(p) - float(p // 2)
        sigma = max(p * sigma_scale, 1e-6)
        shape = [1, 1, 1]
        shape[axis] = p
        g = g * np.exp(-0.5 * (x / sigma) ** 2).reshape(shape)
    g /= g.max()
    if dtype == np.float16:
        h = (g * 10.0).astype(np.float16)
        return np.where(h == 0, h[h > 0].min(), h)
    g = np.maximum(g, g[g > 0].min() if (g > 0).any() else 1.0)
    return g.astype(np.float32)


def _mirror_sets(axes: tuple) -> list:
    axes = tuple(sorted(set(axes)))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def _predict_tta(predict: Predictor, batch: np.ndarray, mirror_axes: tuple, xp=np) -> np.ndarray:
    sets = _mirror_sets(mirror_axes)
    total = None
    for flip in sets:
        spatial = tuple(a + 2 for a in flip)  # batch is (B, C, z, y, x)
        x = xp.flip(batch, spatial) if spatial else batch
        y = predict(xp.ascontiguousarray(x)).astype(np.float32, copy=False)
        y = xp.flip(y, spatial) if spatial else y
        total = y.copy() if total is None else total + y
    return total / np.float32(len(sets))


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def sliding_window(image: np.ndarray, predict: Predictor, cfg: SlidingWindowConfig,
                   mask: np.ndarray | None = None,
                   progress: Callable[[int, int], None] | None = None, xp=np) -> tuple:
    """Run `predict` over tiles of `image` ((C, z, y, x) or (z, y, x)), arrays of the namespace `xp`
    (NumPy, or CuPy: tiles, weights and sums then stay on the GPU).

    `predict` maps a float32 batch (B, C, pz + 2 * context, py, px) to logits (B, K, pz, py, px).
    Returns (logits (K, z, y, x) float32, covered (z, y, x) bool).
    """
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ValueError(f"image must be (C, z, y, x) or (z, y, x), got shape {image.shape}")
    spatial = image.shape[1:]
    if mask is not None and mask.shape != spatial:
        raise ValueError(f"mask shape {mask.shape} != image shape {spatial}")
    padded_shape = tuple(max(s, p) for s, p in zip(spatial, cfg.patch))
    if padded_shape != spatial:  # the CT with its minimum (or pad_value); a cascade's masks with 0, as nnU-Net
        pad_value = float(image[0].min()) if cfg.pad_value is None else cfg.pad_value
        pads = [(0, 0)] + [(0, ps - s) for ps, s in zip(padded_shape, spatial)]
        padded = xp.pad(image[:1], pads, constant_values=pad_value)
        image = padded if image.shape[0] == 1 else xp.concatenate([padded, xp.pad(image[1:], pads)])
        if mask is not None:
            mask = xp.pad(mask, pads[1:], constant_values=False)
    todo = tiles(padded_shape, cfg)
    if mask is not None:
        todo = [t for t in todo if bool(mask[t].any())]
    c = cfg.context
    if c:  # padded index z + c is slice z: the input tile of output tile t starts at t's own start
        image = xp.pad(image, [(0, 0), (c, c), (0, 0), (0, 0)], mode="edge")
    dtype = np.float16 if cfg.accumulate == "float16" else np.float32
    weight = xp.asarray(gaussian_importance(cfg.patch, cfg.sigma_scale, dtype))
    acc = None
    wsum = xp.zeros(padded_shape, dtype=dtype)
    done = 0
    if progress:
        progress(0, len(todo))
    for group in _batches(todo, cfg.batch_size):
        batch = xp.stack([image[(slice(None), slice(t[0].start, t[0].stop + 2 * c)) + t[1:]]
                          for t in group]).astype(np.float32, copy=False)
        logits = _predict_tta(predict, batch, cfg.mirror_axes, xp)
        if logits.shape[0] != len(group) or logits.shape[2:] != tuple(cfg.patch):
            raise ValueError(f"predictor returned {logits.shape} for a batch of {batch.shape}")
        if acc is None:
            acc = xp.zeros((logits.shape[1],) + padded_shape, dtype=dtype)
        for t, y in zip(group, logits):
            acc[(slice(None),) + t] += y * weight
            wsum[t] += weight
        done += len(group)
        if progress:
            progress(done, len(todo))
    crop = tuple(slice(0, s) for s in spatial)
    wsum = wsum[crop]
    covered = wsum > 0
    if acc is None:  # nothing to run: no tile touched the mask
        return None, covered
    acc = acc[(slice(None),) + crop]
    acc /= xp.where(covered, wsum, dtype(1.0))  # uncovered voxels hold 0 and keep it
    return acc.astype(np.float32, copy=False), covered
