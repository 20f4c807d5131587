"""`Volume`: a 3D array with its place in patient space, and the canonical orientation.

Conventions (the same everywhere in lnrt):
- `array` is indexed (z, y, x), C order, as SimpleITK's `GetArrayFromImage` gives it.
- `spacing`, `origin` and the columns of `direction` are in SimpleITK (x, y, z) index order, in mm,
  in DICOM's LPS patient space.
- The canonical orientation is the one whose direction is (close to) the identity in LPS: array axis
  x runs to the patient's left, y to posterior, z to superior; axial slices are `array[k]`.

`Orientation` maps any axis-aligned input to canonical by a permutation and flips of the array axes,
which is exact (no interpolation), so results mapped back overlay the input voxel for voxel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import LnrtError

# Largest angle (degrees) between an image axis and the nearest patient axis that is treated as
# axis-aligned without comment, and the largest that is accepted at all (with a warning): beyond
# it the "axial" slice of the array is no longer an axial slice of the patient.
OBLIQUE_SILENT_DEG = 0.5
OBLIQUE_MAX_DEG = 20.0


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple  # (x, y, z) mm
    origin: tuple  # (x, y, z) mm, LPS
    direction: np.ndarray  # 3x3, columns are the x, y, z index axes in LPS

    def __post_init__(self):
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    @property
    def spacing_zyx(self) -> np.ndarray:
        return np.array(self.spacing[::-1], dtype=np.float64)

    def index_to_world(self, idx_zyx) -> np.ndarray:
        """World (x, y, z) mm of continuous array indices given as (..., 3) in (z, y, x) order."""
        idx = np.asarray(idx_zyx, dtype=np.float64)[..., ::-1]
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction.T

    def same_geometry(self, other: "Volume", tol: float = 1e-4) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, rtol=tol, atol=tol)
            and np.allclose(self.origin, other.origin, rtol=tol, atol=max(tol, 1e-3))
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def with_array(self, array: np.ndarray) -> "Volume":
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} != {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction)


@dataclass(frozen=True)
class Orientation:
    """How the array axes of an image map onto the canonical (z, y, x) axes.

    `perm[c]` is the input array axis that becomes canonical array axis c; `flip[c]` says whether it
    is reversed. `obliquity_deg` is the largest angle between an image axis and its patient axis.
    """

    perm: tuple
    flip: tuple
    obliquity_deg: float

    @classmethod
    def of(cls, direction: np.ndarray, source: str = "image") -> "Orientation":
        d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        # column i = index axis i (x, y, z); its dominant patient axis decides where it goes.
        dominant = np.argmax(np.abs(d), axis=0)
        if sorted(dominant.tolist()) != [0, 1, 2]:
            raise LnrtError(
                f"{source}: direction matrix {np.round(d, 3).tolist()} is too oblique to assign "
                "its axes to patient axes; expected axes within "
                f"{OBLIQUE_MAX_DEG:g} degrees of the patient's axes (resample it first)"
            )
        cosines = np.abs(d[dominant, [0, 1, 2]])
        angle = float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))
        if angle > OBLIQUE_MAX_DEG:
            raise LnrtError(
                f"{source}: image axes are {angle:.1f} degrees oblique to the patient's axes; "
                f"expected at most {OBLIQUE_MAX_DEG:g} degrees (resample it to an axial grid first)"
            )
        perm = [0, 0, 0]
        flip = [False, False, False]
        for index_axis in range(3):
            patient_axis = int(dominant[index_axis])
            # index axis i is numpy axis 2 - i; patient axis a is canonical numpy axis 2 - a
            perm[2 - patient_axis] = 2 - index_axis
            flip[2 - patient_axis] = bool(d[patient_axis, index_axis] < 0)
        return cls(tuple(perm), tuple(flip), angle)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """A view of `array` (input order) in canonical order (no copy)."""
        out = np.transpose(array, self.perm)
        slices = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        return out[slices]

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """A view of `array` (canonical order) in input order: the inverse of `to_canonical`."""
        slices = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        inverse = np.argsort(self.perm)
        return np.transpose(array[slices], inverse)

    def canonical_index_to_input(self, idx_zyx, input_shape) -> np.ndarray:
        """Map canonical (z, y, x) indices, shape (..., 3), to input array indices."""
        idx = np.asarray(idx_zyx, dtype=np.float64)
        out = np.empty_like(idx)
        for c in range(3):
            v = idx[..., c]
            if self.flip[c]:
                v = (input_shape[self.perm[c]] - 1) - v
            out[..., self.perm[c]] = v
        return out

    def input_index_to_canonical(self, idx_zyx, input_shape) -> np.ndarray:
        """Map input array (z, y, x) indices, shape (..., 3), to canonical indices (the inverse of
        `canonical_index_to_input`)."""
        idx = np.asarray(idx_zyx, dtype=np.float64)
        out = np.empty_like(idx)
        for c in range(3):
            v = idx[..., self.perm[c]]
            out[..., c] = (input_shape[self.perm[c]] - 1) - v if self.flip[c] else v
        return out

    def canonical_volume(self, vol: Volume) -> Volume:
        """The same voxels viewed in canonical order, with geometry that keeps every voxel's place."""
        arr = self.to_canonical(vol.array)
        spacing_zyx = np.array(vol.spacing[::-1])[list(self.perm)]
        # Canonical index axis (x, y, z) j corresponds to input numpy axis perm[2 - j].
        direction = np.zeros((3, 3))
        for j in range(3):
            in_np_axis = self.perm[2 - j]
            col = vol.direction[:, 2 - in_np_axis]
            direction[:, j] = -col if self.flip[2 - j] else col
        corner = self.canonical_index_to_input(np.zeros(3), vol.shape)
        origin = vol.index_to_world(corner)
        return Volume(arr, tuple(spacing_zyx[::-1]), tuple(origin), direction)


def world_to_index(vol: Volume, world_xyz) -> np.ndarray:
    """Continuous (z, y, x) array indices of world points (..., 3)."""
    w = np.asarray(world_xyz, dtype=np.float64) - np.asarray(vol.origin)
    idx_xyz = np.linalg.solve(vol.direction, w.T).T / np.asarray(vol.spacing)
    return idx_xyz[..., ::-1]


def voxel_volume_mm3(vol: Volume) -> float:
    return float(math.prod(vol.spacing))


def stored_as(array_c: np.ndarray, spacing_zyx, origin_xyz, direction) -> Volume:
    """A volume with the given (axis-aligned) direction holding `array_c`'s voxels at the same places.

    `array_c` is in canonical order with identity direction and corner voxel at `origin_xyz`; the
    result stores the same voxels, at the same world points, in the order `direction` implies. Used to
    write phantoms in any orientation and to test that orientation never changes a result.
    """
    o = Orientation.of(direction)
    arr = np.ascontiguousarray(o.from_canonical(array_c))
    sp_c = np.asarray(spacing_zyx, dtype=float)
    sp_in = np.empty(3)
    sp_in[list(o.perm)] = sp_c
    corner_c = np.array([(n - 1) if f else 0 for n, f in zip(array_c.shape, o.flip)], dtype=float)
    origin = np.asarray(origin_xyz, float) + (corner_c * sp_c)[::-1]
    return Volume(arr, tuple(sp_in[::-1]), tuple(origin), np.asarray(direction, float))
