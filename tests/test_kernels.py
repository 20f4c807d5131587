"""CUDA kernels against their CPU oracles (cc3d, NumPy). The nvcc compile check runs wherever nvcc is
installed (this project's machines and CI); the GPU comparisons skip cleanly without CuPy and a GPU."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

KERNELS = sorted((Path(__file__).resolve().parents[1] / "kernels").glob("*.cu"))


@pytest.mark.parametrize("cu", KERNELS, ids=[k.name for k in KERNELS])
@pytest.mark.parametrize("index", ["int", "long long"])
def test_every_kernel_compiles_with_nvcc(cu, index, tmp_path):
    nvcc = shutil.which("nvcc")
    if not nvcc:
        pytest.skip("nvcc not installed")
    proc = subprocess.run([nvcc, "-arch=sm_75", "--ptx", f"-DLNRT_INDEX={index}", str(cu), "-o",
                           str(tmp_path / "k.ptx")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "k.ptx").stat().st_size > 0


def test_kernel_files_open_with_their_algorithm_and_citation():
    assert KERNELS
    for cu in KERNELS:
        head = cu.read_text().split("\n\n")[0]
        assert "Algorithm" in head and ("IEEE" in head or "Gems" in head), cu.name


@pytest.fixture(scope="module")
def gpu():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA GPU")
    except Exception:
        pytest.skip("no CUDA GPU")
    from lnrt.kernels import cuda
    return cp, cuda


def _cases():
    rng = np.random.default_rng(0)
    cases = {f"random_{d}": rng.random((40, 50, 60)) < d for d in (0.05, 0.3, 0.5, 0.7)}
    cases["empty"] = np.zeros((8, 9, 10), bool)
    cases["full"] = np.ones((8, 9, 10), bool)
    single = np.zeros((7, 7, 7), bool)
    single[3, 3, 3] = True
    cases["single_voxel"] = single
    faces = np.zeros((10, 12, 14), bool)
    faces[0], faces[-1], faces[:, 0], faces[:, -1], faces[:, :, 0], faces[:, :, -1] = (True,) * 6
    faces[4:6, 5:7, 6:8] = True  # an inner blob that touches nothing
    cases["touching_every_face"] = faces
    diag = np.zeros((6, 6, 6), bool)
    for i in range(6):
        diag[i, i, i] = True  # connected only through corners (26), not faces or edges
    cases["corner_chain"] = diag
    return cases


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("name", list(_cases()))
def test_labels_equal_cc3d(gpu, name, connectivity):
    import cc3d

    cp, cuda = gpu
    mask = _cases()[name]
    want, n_want = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    got, n = cuda.label_components(cp.asarray(mask), connectivity)
    assert n == n_want
    np.testing.assert_array_equal(cp.asnumpy(got), want.astype(np.uint32))


def test_more_than_65535_components(gpu):
    import cc3d

    cp, cuda = gpu
    mask = np.zeros((64, 128, 128), bool)
    mask[::2, ::2, ::2] = True  # 131 072 isolated voxels
    got, n = cuda.label_components(cp.asarray(mask), 26)
    assert n == 64 * 64 * 32
    np.testing.assert_array_equal(cp.asnumpy(got), cc3d.connected_components(mask, connectivity=26))


def test_statistics_equal_numpy(gpu):
    import cc3d

    cp, cuda = gpu
    rng = np.random.default_rng(1)
    mask = rng.random((30, 40, 50)) < 0.3
    labels = cc3d.connected_components(mask, connectivity=26).astype(np.uint32)
    n = int(labels.max())
    image = rng.normal(40, 30, mask.shape).astype(np.float32)
    prob = rng.random(mask.shape).astype(np.float32)
    classes = rng.integers(0, 3, mask.shape).astype(np.uint8)
    st = cuda.component_stats(cp.asarray(labels), n, image, prob, classes, 3)
    for k in range(1, n + 1, max(1, n // 50)):
        zz, yy, xx = np.nonzero(labels == k)
        assert st["count"][k - 1] == zz.size
        np.testing.assert_array_equal(st["bbox"][k - 1], [zz.min(), yy.min(), xx.min(), zz.max(), yy.max(), xx.max()])
        np.testing.assert_allclose(st["centroid"][k - 1], [zz.mean(), yy.mean(), xx.mean()], rtol=1e-9)
        np.testing.assert_allclose(st["intensity_sum"][k - 1], image[labels == k].astype(np.float64).sum(), rtol=1e-6)
        np.testing.assert_allclose(st["probability_sum"][k - 1], prob[labels == k].astype(np.float64).sum(), rtol=1e-6)
        np.testing.assert_array_equal(st["votes"][k - 1], np.bincount(classes[labels == k], minlength=3))
