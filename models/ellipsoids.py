"""Known-answer phantoms: isolated ellipsoid nodes in a simple neck (numpy only).

Used by the geometry and measurement tests, where every node must be isolated and exact (the
realistic training and evaluation phantoms are `lnrt.models.neck`). The layout: an elliptic neck of fat under skin, two paraspinal muscle masses, a
vertebral body with spinal canal, an airway, contrast-filled carotids and jugulars, and lymph nodes
as ellipsoids in the fat planes where nodal levels II-IV lie (lateral to the vessels). Each node has
one axis along z (superior-inferior) and a random in-plane rotation, so its true RECIST axes are
known exactly: long = 2a, short = 2b at its centre slice.

Values are HU: fat -100, muscle 50, node 40, vessel (contrast) 220, bone 700, air -1000.
The phantom is in the canonical orientation (identity direction, LPS).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HU = {"air": -1000.0, "fat": -100.0, "skin": 20.0, "muscle": 50.0, "node": 40.0,
      "vessel": 220.0, "bone": 700.0, "canal": 10.0}


@dataclass(frozen=True)
class NodeSpec:
    center_mm: tuple  # (z, y, x) in the phantom's frame (origin at voxel 0)
    semi_axes_mm: tuple  # (a, b, c): in-plane long, in-plane short, along z
    angle_rad: float  # in-plane rotation of the long axis from the x axis

    @property
    def long_axis_mm(self) -> float:
        return 2.0 * self.semi_axes_mm[0]

    @property
    def short_axis_mm(self) -> float:
        return 2.0 * self.semi_axes_mm[1]


def _grid(shape, spacing):
    return [np.arange(n, dtype=np.float32) * s for n, s in zip(shape, spacing)]


def ellipsoid_box(shape, spacing, node: NodeSpec) -> tuple:
    """(slices, mask) of the ellipsoid within its bounding box (clipped to the volume)."""
    r = max(node.semi_axes_mm[:2])
    half = (node.semi_axes_mm[2], r, r)
    sl = []
    for c, h, s, n in zip(node.center_mm, half, spacing, shape):
        lo = max(0, int(np.floor((c - h) / s)) - 1)
        hi = min(n, int(np.ceil((c + h) / s)) + 2)
        sl.append(slice(lo, max(lo, hi)))
    z, y, x = [np.arange(t.start, t.stop, dtype=np.float64) * s for t, s in zip(sl, spacing)]
    cz, cy, cx = node.center_mm
    a, b, c = node.semi_axes_mm
    ca, sa = np.cos(node.angle_rad), np.sin(node.angle_rad)
    dz = ((z - cz) / c)[:, None, None] ** 2
    dx = (x - cx)[None, None, :]
    dy = (y - cy)[None, :, None]
    u = dx * ca + dy * sa
    v = -dx * sa + dy * ca
    return tuple(sl), (u / a) ** 2 + (v / b) ** 2 + dz <= 1.0


def ellipsoid_phantom(shape=(64, 160, 160), spacing=(2.5, 1.0, 1.0), seed=0, n_nodes=5,
                 noise_hu=12.0):
    """(hu int16 (z, y, x), instance labels uint16, [NodeSpec]) for one phantom."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    z, y, x = _grid(shape, spacing)
    cy, cx = y[-1] / 2, x[-1] / 2
    ry, rx = 0.40 * y[-1], 0.45 * x[-1]
    Y, X = y[:, None] - cy, x[None, :] - cx
    ell = (Y / ry) ** 2 + (X / rx) ** 2
    plane = np.full(shape[1:], HU["air"], np.float32)
    plane[ell <= 1.0] = HU["skin"]
    plane[ell <= 0.93] = HU["fat"]
    def disc(py, px, r):
        return (Y - py) ** 2 + (X - px) ** 2 <= r * r
    # posterior (+y in LPS) muscle masses and vertebra, anterior airway
    for side in (-1, 1):
        plane[((Y - 0.45 * ry) / (0.35 * ry)) ** 2 + ((X - side * 0.35 * rx) / (0.3 * rx)) ** 2 <= 1] = HU["muscle"]
    plane[disc(0.15 * ry, 0, 0.22 * ry)] = HU["bone"]
    plane[disc(0.15 * ry, 0, 0.08 * ry)] = HU["canal"]
    plane[disc(-0.45 * ry, 0, 0.14 * ry)] = HU["air"]
    vessels = [(-0.15 * ry, s * 0.38 * rx, 0.07 * rx) for s in (-1, 1)] + \
              [(-0.05 * ry, s * 0.55 * rx, 0.09 * rx) for s in (-1, 1)]
    vol = np.repeat(plane[None], shape[0], axis=0)
    for vy, vx, vr in vessels:
        # vessels drift slightly along z so they are tubes, not identical discs
        for k in range(shape[0]):
            shift = 2.0 * np.sin(k / max(1, shape[0]) * np.pi)
            vol[k][disc(vy, vx + shift, vr)] = HU["vessel"]
    labels = np.zeros(shape, np.uint16)
    nodes = []
    tries = 0
    while len(nodes) < n_nodes and tries < 500:
        tries += 1
        b = rng.uniform(2.5, 9.0)
        a = b * rng.uniform(1.0, 1.8)
        c = rng.uniform(b, a)
        side = rng.choice([-1, 1])
        py = cy + rng.uniform(-0.45, 0.1) * ry
        px = cx + side * rng.uniform(0.62, 0.8) * rx
        k = rng.integers(int(c / spacing[0]) + 2, shape[0] - int(c / spacing[0]) - 2) if \
            shape[0] * spacing[0] > 2 * c + 4 * spacing[0] else shape[0] // 2
        node = NodeSpec((float(k * spacing[0]), float(py), float(px)), (float(a), float(b), float(c)),
                        float(rng.uniform(0, np.pi)))
        sl, m = ellipsoid_box(shape, spacing, node)
        if not m.any() or m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any():
            continue
        grown = m | np.roll(m, 2, 1) | np.roll(m, -2, 1) | np.roll(m, 2, 2) | np.roll(m, -2, 2)
        if (labels[sl][grown] > 0).any() or (vol[sl][grown] != HU["fat"]).any():
            continue  # nodes sit in fat, apart from each other
        labels[sl][m] = len(nodes) + 1
        vol[sl][m] = HU["node"]
        nodes.append(node)
    for k in range(shape[0]):  # slice by slice: no second full-size float64 array
        vol[k] += rng.normal(0.0, noise_hu, shape[1:]).astype(np.float32)
    return np.round(vol).astype(np.int16), labels, nodes


def ellipse(a_mm: float, b_mm: float, theta: float, spacing, offset=(0.0, 0.0)) -> np.ndarray:
    """A rasterised 2D ellipse (semi-axes a >= b in mm, long axis at `theta` from x, centre `offset` px
    from the grid's middle) on a (y, x) grid of the given pixel spacing: the known answer of the RECIST
    bias measurements (long axis 2a, short axis 2b)."""
    n = int(2 * a_mm / min(spacing)) + 8
    y, x = np.mgrid[0:n, 0:n].astype(float)
    y = (y - n // 2 - offset[0]) * spacing[0]
    x = (x - n // 2 - offset[1]) * spacing[1]
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    return (u / a_mm) ** 2 + (v / b_mm) ** 2 <= 1.0


def ellipse_errors(spacing: float, n: int) -> tuple:
    """(long, short) axis errors in pixels of `recist_axes` on n random ellipses at one pixel size
    (a 4-18 mm, b 2.5 mm to a, any angle and sub-pixel position; seeded by the pixel size)."""
    from lnrt.recist import recist_axes

    rng = np.random.default_rng(int(spacing * 10))
    long_err, short_err = [], []
    for _ in range(n):
        a = rng.uniform(4, 18)
        b = rng.uniform(2.5, a)
        m = ellipse(a, b, rng.uniform(0, np.pi), (spacing, spacing), rng.uniform(0, 1, 2))
        axes = recist_axes(m[None], (3.0, spacing, spacing))
        long_err.append((axes.long_mm - 2 * a) / spacing)
        short_err.append((axes.short_mm - 2 * b) / spacing)
    return np.array(long_err), np.array(short_err)

