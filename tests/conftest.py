"""Shared helpers: phantoms placed in any orientation, the real-data folder, CLI runner."""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from lnrt.volume import Volume, stored_as

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# The second case of a check that already runs on another case, kept out of the default run to hold CI
# under 25 minutes on 2 cores; LNRT_SLOW=1 runs them too (README, "Tests").
SLOW = pytest.mark.skipif(os.environ.get("LNRT_SLOW") != "1",
                          reason="a slow second case of a check that ran on another case; LNRT_SLOW=1 runs it")


def dciodvfy_errors(path) -> list:
    """dicom3tools' `dciodvfy` error lines for a file (its warnings are not errors); skips the test
    where dicom3tools is not installed."""
    if not shutil.which("dciodvfy"):
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]


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
    return stored_as(array_c, spacing_zyx, origin_xyz, direction)


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
def placeholder_package(tmp_path_factory):
    """The fast hand-weighted placeholder package, for tests where the network does not matter
    (readers, geometry, the CLI contract): the trained default is slower on large scans."""
    pytest.importorskip("onnx")
    from lnrt.models.placeholder import build_package

    return build_package(tmp_path_factory.mktemp("placeholder"))


@pytest.fixture(scope="session")
def session(placeholder_package):
    import lnrt

    s = lnrt.Session(placeholder_package, threads=2)
    yield s
    s.close()


@pytest.fixture
def run_cli():
    from lnrt.cli import main

    def run(*args):
        return main([str(a) for a in args])
    return run
