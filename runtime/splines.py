"""nnU-Net's resampling, reproduced: spline zooms of an array onto a new shape, axis by axis.

nnU-Net v2 resamples a normalized CT with `resample_data_or_seg_to_shape` (skimage's `resize`, order 3,
mode "edge", clipped to the input's range) and its logits back to the scan with order 1. A package
imported from nnU-Net runs its network on exactly those inputs only when lnrt resamples the same way:
linear interpolation of HU, then normalization (lnrt's own recipe) gives another input, and a cascade's
first stage amplified the few voxels that differ into a second stage 0.71 Dice away from nnU-Net's.

The algorithm (cubic B-spline interpolation, Unser, Aldroubi and Eden, "Fast B-spline transforms for
continuous image representation and interpolation", IEEE TPAMI 13(3), 1991):
1. Prefilter: the B-spline coefficients c of samples s solve s = (c[i-1] + 4 c[i] + c[i+1]) / 6; that is
   a gain of 6 and one causal and one anti-causal first-order recursion with the pole z = sqrt(3) - 2.
   The signal is first padded by 12 edge values on each side (what "edge" means for a spline:
   scipy.ndimage pads so for mode "nearest"), and the recursions start with the half-sample symmetric
   (reflect) initial values of the padded signal; the padding makes that start's influence z^12 = 1e-7
   of the edge value at the first real sample.
2. Evaluation at the output sample k of an axis of n inputs and m outputs, at the input coordinate
   (k + 0.5) n / m - 0.5 (the grids' edges coincide: lnrt's `model_grid` and nnU-Net's shapes agree):
   the four coefficients around it weighted by the cubic B-spline. Order 1 is the two neighbours
   weighted linearly, order 0 the nearest one (ties round up), without prefilter; indices beyond the
   input take the edge value.
Both steps are linear along one axis, so the 3D zoom is three 1D zooms in any order: the axis that
shrinks most goes first (least work). Computed in float64, then clipped to the input's range and stored
as float32, as nnU-Net stores it. The result agrees with nnU-Net's own function to float32 rounding
(tests/test_splines.py), not bit for bit: the sums are taken in another order.

nnU-Net resamples an anisotropic scan (largest spacing over smallest above 3, of the scan or of the
target) slice by slice in-plane with `order`, then along the coarse axis with `order_z` (0: nearest),
the in-plane zoom clipped to each slice's own range; `zoom_like_nnunet` does the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

POLE = math.sqrt(3.0) - 2.0
PAD = 12  # edge samples added on each side before the prefilter: POLE^12 = 1.4e-7
_TAIL = 40  # terms of the causal start's geometric sum kept: POLE^40 = 1e-23, below float64 resolution


@dataclass(frozen=True)
class Resampling:
    """How one array is resampled, nnU-Net's way: the `data` or `logits` part of a package's
    `resampling` section (nnU-Net's `resampling_fn_data_kwargs` / `resampling_fn_probabilities_kwargs`)."""

    order: int = 3  # in-plane (or 3D) spline order for the CT: 0, 1 or 3
    order_z: int = 0  # along the coarse axis of an anisotropic scan: 0 or 1
    force_separate_z: bool | None = None  # None: decided by the anisotropy threshold
    anisotropy_threshold: float = 3.0

    def __post_init__(self):
        if self.order not in (0, 1, 3) or self.order_z not in (0, 1):
            raise ValueError(f"order must be 0, 1 or 3 and order_z 0 or 1, got {self.order}, {self.order_z}")

    @classmethod
    def from_section(cls, section: dict, part: str) -> "Resampling | None":
        """The manifest's `resampling.<part>` (None: the section is absent, lnrt resamples its own way)."""
        if section.get("scheme") != "nnunet":
            return None
        kw = section[part]
        return cls(int(kw["order"]), int(kw.get("order_z", 0)), kw.get("force_separate_z"),
                   float(section.get("anisotropy_threshold", 3.0)))

    def separate_axis(self, src_spacing, dst_spacing) -> int | None:
        """The coarse axis resampled on its own, or None (nnU-Net's `determine_do_sep_z_and_axis`)."""
        if self.force_separate_z is False:
            return None
        if self.force_separate_z or _anisotropic(src_spacing, self.anisotropy_threshold):
            spacing = src_spacing
        elif _anisotropic(dst_spacing, self.anisotropy_threshold):
            spacing = dst_spacing
        else:
            return None
        coarse = [a for a, s in enumerate(spacing) if max(spacing) / s == 1]
        return coarse[0] if len(coarse) == 1 else None


def _anisotropic(spacing, threshold: float) -> bool:
    return max(spacing) / min(spacing) > threshold


def prefilter(c, xp=np):
    """Cubic B-spline coefficients of `c` along axis 0, in place (float64, already padded)."""
    n = c.shape[0]
    c *= (1.0 - POLE) * (1.0 - 1.0 / POLE)
    zn = POLE ** n
    k = min(n, _TAIL)
    powers = xp.asarray(POLE ** np.arange(k))  # z^0 .. z^(k-1)
    head = xp.tensordot(powers, c[:k], axes=1)  # sum z^i c[i]
    tail = xp.tensordot(powers, c[::-1][:k], axes=1)  # sum z^i c[n-1-i]
    c[0] = c[0] + (head + zn * tail) * POLE / (1.0 - zn * zn)
    for i in range(1, n):
        c[i] += POLE * c[i - 1]
    c[n - 1] *= POLE / (POLE - 1.0)
    for i in range(n - 2, -1, -1):
        c[i] = POLE * (c[i + 1] - c[i])
    return c


def taps(n: int, m: int, order: int, lo: int = 0, hi: int | None = None, offset: float = 0.0):
    """(first input index, weights (m', order + 1)) of outputs lo..hi of an n -> m zoom; `offset` is
    added to the input coordinate (the prefilter's padding)."""
    k = np.arange(lo, m if hi is None else hi, dtype=np.float64)
    cc = (k + 0.5) * (n / m) - 0.5 + offset
    if order == 0:
        return np.floor(cc + 0.5).astype(np.int64), np.ones((len(k), 1))
    start = np.floor(cc)
    t = cc - start
    if order == 1:
        return start.astype(np.int64), np.stack([1.0 - t, t], axis=1)
    u = 1.0 - t
    w = np.stack([u ** 3, 4.0 - 6.0 * t * t + 3.0 * t ** 3, 4.0 - 6.0 * u * u + 3.0 * u ** 3, t ** 3], axis=1) / 6.0
    return start.astype(np.int64) - 1, w


# Lines filtered at once: the float64 work arrays of one chunk stay near 64 MB whatever the scan's size
# (a 512 x 512 x 250 neck's whole float64 copy would be 0.5 GB, plus its padded copy)
CHUNK_VALUES = 8_000_000


def zoom_axis(x, axis: int, m: int, order: int, xp=np, n: int | None = None, lo: int = 0,
              hi: int | None = None, offset: float = 0.0):
    """`x` zoomed to `m` samples along `axis` (float64). `n`: the length of the whole input axis that `x`
    holds from index `offset` on (default: all of it); `lo`, `hi`: the outputs computed (default: all).
    The lines along `axis` are independent, so they are done in chunks (`CHUNK_VALUES`)."""
    n = x.shape[axis] if n is None else n
    src = xp.moveaxis(x, axis, 0)
    if n == m == src.shape[0] and lo == 0 and hi in (None, m) and offset == 0:
        return xp.array(x, dtype=xp.float64)
    start, w = taps(n, m, order, lo, hi, offset=(PAD if order == 3 else 0) - offset)
    out = xp.empty((len(start),) + src.shape[1:], dtype=xp.float64)
    flat_in, flat_out = src.reshape(src.shape[0], -1), out.reshape(len(start), -1)
    step = max(1, CHUNK_VALUES // max(1, src.shape[0] + 2 * PAD))
    for c0 in range(0, flat_in.shape[1], step):
        flat_out[:, c0:c0 + step] = _zoom_lines(flat_in[:, c0:c0 + step], start, w, order, xp)
    return xp.moveaxis(out, 0, axis)


def _zoom_lines(lines, start, w, order: int, xp):
    """(n, k) lines -> (len(start), k) samples: prefiltered (order 3, padded) and weighted."""
    c = xp.asarray(lines, dtype=xp.float64)
    if order == 3:  # the prefilter needs the whole axis
        c = prefilter(xp.concatenate([xp.repeat(c[:1], PAD, axis=0), c, xp.repeat(c[-1:], PAD, axis=0)]), xp)
    out = None
    for j in range(w.shape[1]):
        idx = xp.asarray(np.clip(start + j, 0, c.shape[0] - 1))
        term = c[idx] * xp.asarray(w[:, j])[:, None]
        out = term if out is None else out + term
    return out


def zoom(x, shape: tuple, order: int, axes=None, xp=np):
    """`x` zoomed to `shape` along `axes` (all by default), the most shrinking axis first; float64."""
    axes = range(x.ndim) if axes is None else axes
    for a in sorted(axes, key=lambda a: shape[a] / x.shape[a]):
        x = zoom_axis(x, a, shape[a], order, xp)
    return x


def zoom_like_nnunet(x, shape: tuple, src_spacing, dst_spacing, cfg: Resampling, xp=np):
    """A (z, y, x) array resampled to `shape` as nnU-Net resamples a CT channel; float32.

    Whole volume: a 3D zoom of `cfg.order`, clipped to the input's range (skimage's `clip=True`). An
    anisotropic scan: each slice across the coarse axis zoomed in-plane and clipped to its own range, then
    the coarse axis with `cfg.order_z`, unclipped (nnU-Net's `map_coordinates`)."""
    shape = tuple(int(s) for s in shape)
    if tuple(x.shape) == shape:
        return xp.array(x, dtype=xp.float32)
    coarse = cfg.separate_axis(src_spacing, dst_spacing)
    if coarse is None:
        out = zoom(x, shape, cfg.order, xp=xp)
        return xp.clip(out, x.min(), x.max()).astype(xp.float32)
    plane = [a for a in range(3) if a != coarse]
    out = zoom(x, tuple(shape[a] if a in plane else x.shape[a] for a in range(3)), cfg.order, plane, xp)
    lo = xp.expand_dims(x.min(axis=tuple(plane)), tuple(plane))
    hi = xp.expand_dims(x.max(axis=tuple(plane)), tuple(plane))
    out = xp.clip(out, lo, hi)
    return zoom_axis(out, coarse, shape[coarse], cfg.order_z, xp).astype(xp.float32)


def sample_box(x, src_shape: tuple, dst_shape: tuple, offset: tuple, box: tuple, src_spacing, dst_spacing,
               cfg: Resampling, xp=np):
    """The voxels `box` ((lo, hi) per axis) of a `src_shape` -> `dst_shape` (z, y, x) resampling with
    `cfg` (order 0 or 1: no prefilter, so only the input around the box is read), where `x` (z, y, x) or
    (C, z, y, x) holds the input from index `offset` on; float64. What nnU-Net computes for them when it
    brings its logits back to the scan's grid (`resampling_fn_probabilities`), without resampling the
    whole volume."""
    if cfg.order > 1:
        raise ValueError("sample_box interpolates with order 0 or 1")
    coarse = cfg.separate_axis(src_spacing, dst_spacing)
    lead = x.ndim - 3
    # only the input the box reads: its taps' range on each axis (a view, then zoomed axis by axis)
    window, offset = [slice(None)] * lead, list(offset)
    for a in range(3):
        start, w = taps(src_shape[a], dst_shape[a], cfg.order_z if a == coarse else cfg.order, *box[a])
        lo = int(np.clip(start.min() - offset[a], 0, x.shape[lead + a] - 1))
        hi = int(np.clip(start.max() + w.shape[1] - offset[a], lo + 1, x.shape[lead + a]))
        window.append(slice(lo, hi))
        offset[a] += lo
    x = x[tuple(window)]
    for a in sorted(range(3), key=lambda a: dst_shape[a] / src_shape[a]):
        x = zoom_axis(x, lead + a, dst_shape[a], cfg.order_z if a == coarse else cfg.order, xp, n=src_shape[a],
                      lo=box[a][0], hi=box[a][1], offset=offset[a])
    return x
