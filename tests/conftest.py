"""Shared helpers: phantoms placed in any orientation, the real-data folder, CLI runner."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lnrt.volume import Orientation, Volume

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def signed_permutations():
    """All 48 axis-aligned directions (columns = index axes x, y, z in LPS)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = np.zeros((3, 3))
            for i, (p, s) in enumerate(zip(perm, signs)):
                d[p, i] = s
            out.append(d)
    return out


def place(array_c: np.ndarray, spacing_zyx, origin_xyz, direction) -> Volume:
    """A volume with the given direction whose voxels are `array_c` seen canonically.

    `array_c` is in canonical order with identity direction and origin `origin_xyz`; the returned
    volume holds the same voxels at the same world positions, stored in the order `direction` implies.
    """
    o = Orientation.of(direction)
    arr = np.ascontiguousarray(o.from_canonical(array_c))
    sp_c = np.asarray(spacing_zyx, dtype=float)
    sp_in = np.empty(3)
    sp_in[list(o.perm)] = sp_c
    # input index 0 is canonical index (n - 1) along flipped axes
    corner_c = np.array([(n - 1) if f else 0 for n, f in zip(array_c.shape, o.flip)], dtype=float)
    origin = np.asarray(origin_xyz, float) + (corner_c * sp_c)[::-1]
    return Volume(arr, tuple(sp_in[::-1]), tuple(origin), np.asarray(direction, float))


def save(vol: Volume, path: Path, array=None) -> Path:
    img = sitk.GetImageFromArray(vol.array if array is None else array)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(tuple(np.asarray(vol.direction).ravel()))
    sitk.WriteImage(img, str(path), useCompression=str(path).endswith(".gz"))
    return path


def geometry_of(path) -> "Geometry":
    img = sitk.ReadImage(str(path))
    return Geometry(img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())


class Geometry(tuple):
    """Size, spacing, origin, direction; equal when the size matches exactly and the rest to float32
    precision (NIfTI stores geometry as float32, NRRD and MHA as double)."""

    def __new__(cls, *parts):
        return super().__new__(cls, parts)

    def __eq__(self, other):
        if tuple(self[0]) != tuple(other[0]):
            return False
        return all(np.allclose(a, b, rtol=2e-7, atol=1e-6) for a, b in zip(self[1:], other[1:]))

    __hash__ = tuple.__hash__


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT samples not present ({SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def session():
    import lnrt

    s = lnrt.Session(threads=2)
    yield s
    s.close()


@pytest.fixture
def run_cli():
    from lnrt.cli import main

    def run(*args):
        return main([str(a) for a in args])
    return run
