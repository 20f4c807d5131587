"""The CUDA sources themselves: every kernel compiles with nvcc (wherever nvcc is installed: this project's
machines and CI) at both index widths, and opens with its algorithm and citation. What the kernels compute
is tested against their CPU twins and independent oracles in tests/test_twins.py."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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
