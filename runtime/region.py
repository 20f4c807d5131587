"""Where the neck is: the axial slices in which a neck model's findings are reported.

A neck lymph-node model sees 96 mm cubes. A bowel loop, a mesenteric vessel or a slip of shoulder muscle
looks, in such a cube, like a node in neck fat, so a neck model run on an abdomen marks them. A reader
never would: the anatomy says where the neck is. This module gives the runtime the same rule, from the
body outline alone.

The rule, per axial slice of the body mask (the body crop's mask, -500 HU):
1. Erode the mask by 4 mm and keep its largest 2D part, so that thin shells touching the body (the
   couch's carbon skin, a thermoplastic mask, a sheet) do not widen it, and separate parts (the arms
   beside an abdomen, the couch) do not count.
2. The slice's width is the left-right extent of that part plus the 4 mm eroded on each side.
3. A slice is *neck-sized* when its width lies in `width_mm` (60-200 mm by default) and the body is not
   cut by a side edge of the image. A cut body's true width is unknown: a thorax reconstructed with a
   200 mm field of view is 200 mm "wide" in the image. So is a neck that the field of view cuts, and then
   nothing is reported for it; the warning says so.
4. Findings are reported in every slice within `margin_mm` (100 mm) of a neck-sized slice, and within
   `lateral_margin_mm` (60 mm) of the neck's sides: the neck's left and right edges are the medians over
   its neck-sized slices. This only bites below the neck, where the shoulders widen the slices.

Why these numbers (anatomy):
- An adult neck is 30-45 cm round (neck circumference; ANSUR II, Gordon et al. 2014), an ellipse
  about 10-16 cm across; a thick neck reaches about 18 cm. The head above it is 14-16 cm wide
  (maximum head breadth) and counts as neck-sized too: parotid and submandibular nodes (levels I and
  II) lie at the mandible, in head-width slices.
- The trunk is wider: the shoulders 33-42 cm (biacromial breadth), the chest and abdomen at least
  about 25 cm in adults. 200 mm is between the two with room on both sides.
- Below 60 mm nothing is a neck: such slices hold only noise, the top of the skull or blanked-out air
  (radiotherapy exports, as in OpenKBP, blank everything outside a slab).
- The lowest neck nodes lie at the clavicles and the sternal notch, and below them in the upper
  mediastinum (level IV and Vb down to the clavicle, level VI to the manubrium, level VII below it;
  Gregoire et al., "Delineation of the neck node levels for head and neck tumors: a 2013 update",
  Radiother Oncol 2014). The slices stop being neck-sized higher up, where the trapezius slopes out
  to the shoulders. How far below that the nodal levels reach was measured on the six OpenKBP planning
  CTs: their elective nodal target volumes (PTV56 to PTV70, drawn by radiation oncologists over the
  node levels at risk, margins included) end at most 82 mm below the last neck-sized slice. 100 mm
  keeps all of them, with room to spare.
- Sideways, the lowest levels (IV, Vb and Vc, the supraclavicular fossa) lie above the medial two
  thirds of the clavicle, bounded by the trapezius, and not in the shoulder or the arm. On the same six
  CTs the nodal target volumes reach at most 46 mm beyond the neck's sides. 60 mm keeps them all.
A scan with no neck-sized slice (an abdomen, a thorax) reports no findings, and says so.
"""
from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np

from .device import host

OPEN_RADIUS_MM = 4.0  # thicker than a couch skin or a thermoplastic mask (2-3 mm), thinner than a neck
SAMPLE_MM = 2.0  # in-plane sampling of the width measurement (the limits are 60 and 200 mm)


@dataclass(frozen=True)
class NeckRegionConfig:
    width_mm: tuple = (60.0, 200.0)  # left-right width of a neck-sized slice
    margin_mm: float = 100.0  # findings are reported this far above and below neck-sized slices
    lateral_margin_mm: float = 60.0  # ... and this far beyond the neck's left and right sides

    def __post_init__(self):
        lo, hi = self.width_mm
        if not 0 <= lo < hi:
            raise ValueError(f"width_mm must be (low, high) with 0 <= low < high, got {self.width_mm}")
        if self.margin_mm < 0 or self.lateral_margin_mm < 0:
            raise ValueError(f"margin_mm and lateral_margin_mm must be >= 0, got {self.margin_mm} and "
                             f"{self.lateral_margin_mm}")

    @classmethod
    def from_manifest(cls, section: dict | None) -> "NeckRegionConfig | None":
        if not section:
            return None
        return cls(width_mm=tuple(float(w) for w in section.get("width_mm", cls.width_mm)),
                   margin_mm=float(section.get("margin_mm", cls.margin_mm)),
                   lateral_margin_mm=float(section.get("lateral_margin_mm", cls.lateral_margin_mm)))

    def to_dict(self) -> dict:
        return {"width_mm": list(self.width_mm), "margin_mm": self.margin_mm,
                "lateral_margin_mm": self.lateral_margin_mm}


@dataclass(frozen=True)
class NeckRegion:
    """Where findings are reported, on the grid it was measured on (canonical z, y, x). Positions across
    are millimetres along canonical x from the outer edge of the grid's first voxel column: the same for
    every grid over the same extent (the model grid and the scan's own)."""

    slices: np.ndarray  # bool per axial slice: within the margin of a neck-sized slice
    x_mm: tuple | None  # (left, right) limits across; None when no slice is neck-sized
    widths: np.ndarray  # body width per slice (mm; 0 where there is no body)

    @property
    def found(self) -> bool:
        return bool(self.slices.any())

    def contains(self, z_index, x_mm) -> np.ndarray:
        """Whether points (axial slice index on this grid, mm across) lie in the region."""
        if not self.found:
            return np.zeros(np.shape(z_index), dtype=bool)
        z = np.clip(np.asarray(z_index, dtype=int), 0, self.slices.size - 1)
        x = np.asarray(x_mm, dtype=np.float64)
        return self.slices[z] & (x >= self.x_mm[0]) & (x <= self.x_mm[1])


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Erosion of each 2D slice of a (z, y, x) mask by a (2r+1) square."""
    if r == 0:
        return mask.copy()
    ny, nx = mask.shape[1:]
    pad = np.pad(mask, ((0, 0), (r, r), (r, r)), constant_values=False)
    out = np.ones_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out &= pad[:, dy:dy + ny, dx:dx + nx]
    return out


def slice_extents(body: np.ndarray, spacing_zyx) -> tuple:
    """(left, right, cut) per axial slice of a canonical (z, y, x) mask: the body's edges across (mm
    along x from the grid's edge, low and high; NaN where there is no body) and whether it reaches a
    side edge of the image there."""
    step = [max(1, int(round(SAMPLE_MM / s))) for s in spacing_zyx[1:]]
    m = host(body[:, ::step[0], ::step[1]]).astype(bool, copy=False)  # 2 mm in-plane: small, on the host
    sy, sx = spacing_zyx[1] * step[0], spacing_zyx[2] * step[1]
    r = int(round(OPEN_RADIUS_MM / min(sy, sx)))
    core = _erode(m, r)
    left = np.full(m.shape[0], np.nan)
    right = np.full(m.shape[0], np.nan)
    cut = np.zeros(m.shape[0], dtype=bool)
    for z in range(m.shape[0]):
        if not core[z].any():
            continue
        labels = cc3d.connected_components(np.ascontiguousarray(core[z]), connectivity=8)
        counts = np.bincount(labels.ravel())
        counts[0] = 0
        cols = np.flatnonzero((labels == counts.argmax()).any(axis=0))
        # the eroded part plus the r pixels eroded on each side
        left[z], right[z] = (cols[0] - r) * sx, (cols[-1] + 1 + r) * sx
        cut[z] = cols[0] <= r or cols[-1] >= m.shape[2] - 1 - r  # eroded from the edge: the body met it
    return left, right, cut


def slice_widths(body: np.ndarray, spacing_zyx) -> tuple:
    """(widths, cut): the body's left-right width (mm; 0: no body) per axial slice, and whether it
    reaches a side edge of the image there."""
    left, right, cut = slice_extents(body, spacing_zyx)
    return np.nan_to_num(right - left, nan=0.0), cut


def find_neck_region(body: np.ndarray, spacing_zyx, cfg: NeckRegionConfig) -> NeckRegion:
    """The region of a canonical body mask where a neck model's findings are reported."""
    left, right, cut = slice_extents(body, spacing_zyx)
    widths = np.nan_to_num(right - left, nan=0.0)
    lo, hi = cfg.width_mm
    neck = np.flatnonzero((widths >= lo) & (widths <= hi) & ~cut)
    if neck.size == 0:
        return NeckRegion(np.zeros(widths.size, dtype=bool), None, widths)
    z = np.arange(widths.size) * float(spacing_zyx[0])
    # distance from each slice to the nearest neck-sized slice
    nearest = np.min(np.abs(z[:, None] - z[neck][None, :]), axis=1)
    x_mm = (float(np.median(left[neck])) - cfg.lateral_margin_mm,
            float(np.median(right[neck])) + cfg.lateral_margin_mm)
    return NeckRegion(nearest <= cfg.margin_mm + 1e-6, x_mm, widths)
