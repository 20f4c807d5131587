"""The device-resident pipeline: the stages' code on a CUDA device, run in CI on the NumPy stand-in.

The stand-in (tests/cuda_emu.emulated_device) is a `Device` of kind "cuda" whose arrays are NumPy's and
whose `ndimage` is SciPy's, with lnrt's CUDA kernels (components, statistics, RECIST) run by the CPU
emulation of CUDA. So every line the GPU runs is exercised here but CuPy's own functions: the
resampling is `ndimage.affine_transform` (not SimpleITK), the body mask and the components are
`kernels/ccl.cu`, the statistics `kernels/stats.cu`, the axes `kernels/recist.cu`. Parity with the CPU
pipeline (the issue's bar): node-mask Dice >= 0.999, the same node count, short axes within 0.1 mm. On a
real GPU `benchmarks/gpu_suite.sh` runs the same comparison with CuPy.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import SLOW

import lnrt
from lnrt.device import CPU
from lnrt.imageio import ScanInfo
from lnrt.pipeline import Scan, orientation, run_stages

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module", params=["emulated", "cuda"])
def device(request):
    """The NumPy stand-in with the emulated kernels (everywhere), and the real GPU (where there is one)."""
    if request.param == "cuda":
        from lnrt.device import cuda_device, probe_gpu

        probe = probe_gpu()
        if not probe.ok:
            pytest.skip(f"device pipeline on a GPU: {probe.reason} (the stand-in runs the same stage code)")
        yield cuda_device()
        return
    import cuda_emu
    if not cuda_emu.available()[0]:
        pytest.skip("kernel emulation needs g++")
    from lnrt.kernels import cuda

    dev, cp = cuda_emu.emulated_device(seed=1, mode=1)
    with cuda.use(cp):
        yield dev


@pytest.fixture(scope="module")
def session():
    with lnrt.Session(backend="onnxruntime", threads=2) as s:
        yield s


def _on(session, dev, scan):
    session.device = dev
    try:
        return session.run(scan)
    finally:
        session.device = CPU


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    fa, fb = a > 0, b > 0
    total = int(fa.sum() + fb.sum())
    return 1.0 if total == 0 else 2.0 * int((fa & fb).sum()) / total


def _assert_parity(cpu, dev):
    assert dev.labels.shape == cpu.labels.shape and dev.labels.dtype == cpu.labels.dtype
    assert _dice(cpu.labels, dev.labels) >= 0.999
    assert len(dev.nodes) == len(cpu.nodes)
    for a, b in zip(cpu.nodes, dev.nodes):
        assert abs(a["short_axis_mm"] - b["short_axis_mm"]) <= 0.1, (a["id"], a["short_axis_mm"], b["short_axis_mm"])
        assert abs(a["long_axis_mm"] - b["long_axis_mm"]) <= 0.1
        assert a["class"] == b["class"] and a["recist"] == b["recist"]


@pytest.mark.parametrize("seed", [20000, pytest.param(20001, marks=SLOW)])
def test_device_pipeline_equals_the_cpu_pipeline_on_neck_phantoms(device, session, seed):
    """Held-out neck phantoms in their random storage orders and spacings (LPS, RAS, coronal and sagittal
    stacks): the device run's label map, nodes and axes are the CPU run's."""
    from lnrt.models.neck import random_scan

    vol = random_scan(seed, kind="neck")[0]
    cpu, dev = session.run(vol), _on(session, device, vol)
    assert cpu.nodes, "a phantom with nodes"
    _assert_parity(cpu, dev)
    assert dev.settings["body_box_zyx"] == cpu.settings["body_box_zyx"]
    assert dev.settings["tiles"] == cpu.settings["tiles"]


def test_device_pipeline_on_the_bundled_sample(device, session):
    """(A node-free abdomen also gives the CPU's answer, but its 26 components outside the neck region take
    the emulator 70 s: it is left to the GPU suite.)"""
    sample = lnrt.sample_path()
    cpu, dev = session.run(sample), _on(session, device, sample)
    _assert_parity(cpu, dev)
    assert dev.warnings == cpu.warnings and dev.settings == cpu.settings


class ThreeClasses:
    """The default network with a third class that takes the node voxels where the input is bright: a
    deterministic multi-class model (background, N, P), so that the class maps, votes and argmax of the
    device path meet the CPU's."""

    name, device = "three-classes", "cpu"

    def __init__(self, backend):
        self.backend = backend

    def run(self, batch):
        logits = self.backend.run(batch)
        p = logits[:, 1:2] + 8.0 * (batch[:, :1] - 0.36)  # 0.36: the median normalized value in nodes
        return np.concatenate([logits, p], axis=1).astype(np.float32)


def _stages(session, dev, vol, config, backend):
    info = ScanInfo(path="<memory>", kind="array", stem="scan")
    scan = Scan(vol, info, config, orientation(vol, info.path, []), backend)
    return run_stages(scan, dev)


def test_device_pipeline_with_nnunets_resampling_and_sums(device, session):
    """The path of an imported nnU-Net package (normalized on the scan's grid, spline-resampled, tiles
    summed in float16, logits brought back; lnrt.splines) runs on the device as on the CPU."""
    from lnrt.models.neck import random_scan
    from lnrt.splines import Resampling

    vol = random_scan(20000, kind="neck")[0]
    config = replace(session.config, resample_data=Resampling(3), resample_logits=Resampling(1))
    config = config.with_window(accumulate="float16")
    cpu, dev = (_stages(session, d, vol, config, session.backend) for d in (CPU, device))
    assert cpu.nodes and _dice(cpu.output, dev.output) >= 0.999 and len(cpu.nodes) == len(dev.nodes)
    for a, b in zip(cpu.nodes, dev.nodes):
        assert abs(a["short_axis_mm"] - b["short_axis_mm"]) <= 0.1
    plain = _stages(session, CPU, vol, session.config, session.backend)
    assert not np.array_equal(plain.output, cpu.output)  # it is another path, not the default's


def test_device_pipeline_with_the_touching_nodes_split(device, session):
    """The split (lnrt.touching) runs on the host: on the device the labels make one round trip, and the
    nodes are the CPU's."""
    from lnrt.models.neck import random_scan

    vol = random_scan(20014, kind="neck")[0]  # one of the components 1.2 marks there is cut in two
    config = replace(session.config, split_touching_mm=1.0)
    cpu, dev = (_stages(session, d, vol, config, session.backend) for d in (CPU, device))
    whole = _stages(session, CPU, vol, session.config, session.backend)
    assert cpu.rules["split_touching"]["split"] >= 1 and dev.rules["split_touching"] == cpu.rules["split_touching"]
    assert len(cpu.nodes) > len(whole.nodes)
    assert np.array_equal(cpu.output, dev.output) and len(cpu.nodes) == len(dev.nodes)
    for a, b in zip(cpu.nodes, dev.nodes):
        assert abs(a["short_axis_mm"] - b["short_axis_mm"]) <= 0.1


def test_device_pipeline_with_three_classes(device, session):
    from lnrt.models.neck import random_scan

    vol = random_scan(20002, kind="neck")[0]
    config = replace(session.config, classes=("background", "node_n", "node_p"))
    backend = ThreeClasses(session.backend)
    cpu, dev = _stages(session, CPU, vol, config, backend), _stages(session, device, vol, config, backend)
    assert cpu.nodes and {n["class"] for n in cpu.nodes} == {"node_n", "node_p"}
    assert _dice(cpu.output, dev.output) >= 0.999 and len(cpu.nodes) == len(dev.nodes)
    for a, b in zip(cpu.nodes, dev.nodes):
        assert a["class"] == b["class"] and abs(a["short_axis_mm"] - b["short_axis_mm"]) <= 0.1
        # the votes and the class probabilities summed on the device (a weighted count per class)
        assert set(a["class_fractions"]) == {"node_n", "node_p"} == set(b["class_fractions"])
        for key in ("class_fractions", "class_mean_prob"):
            for c in ("node_n", "node_p"):
                assert abs(a[key][c] - b[key][c]) <= 0.01, (key, c, a[key], b[key])
    assert any(0.05 < n["class_fractions"]["node_p"] < 0.95 for n in cpu.nodes)  # mixed nodes exist


@pytest.mark.parametrize("where", ["resampling", "tiles"])
def test_out_of_gpu_memory_in_a_stage_reruns_the_scan_on_the_cpu(device, session, where):
    """An allocation failure inside a stage (injected: the device's resampling, or the stacking of a tile
    batch in the window stage, raises CuPy's kind of MemoryError) never crashes the scan: it runs again on
    the CPU, the report says so and how long the failed attempt took, and the outputs are the CPU's."""
    import types

    import scipy.ndimage

    from lnrt.device import Device

    if device.name != "cuda:emulated":
        pytest.skip("the allocation failure is injected into the stand-in")
    calls = []

    def fail(*args, **kwargs):
        calls.append(1)
        raise MemoryError("Out of memory allocating 262,144,000 bytes (allocated so far: 0 bytes)")

    xp, nd = device.xp, scipy.ndimage
    if where == "resampling":
        nd = types.SimpleNamespace(affine_transform=fail)
    else:
        xp = types.ModuleType("cupy_failing")
        xp.__getattr__ = lambda name: getattr(device.xp, name)
        xp.stack = fail
    failing = Device("cuda:emulated", "cuda", xp, nd)
    sample = lnrt.sample_path()
    cpu, dev = session.run(sample), _on(session, failing, sample)
    assert calls and np.array_equal(cpu.labels, dev.labels) and cpu.nodes == dev.nodes
    assert any("out of memory in the stages on cuda:emulated" in w and "this scan ran on the CPU" in w
               for w in dev.warnings)
    assert dev.timings["failed_on_gpu"] > 0 and "network" in dev.timings
    assert dev.timings["total"] >= dev.timings["failed_on_gpu"] + dev.timings["network"]


@pytest.mark.parametrize("script, args, check", [
    ("kernels_bench.py", ["--shape", "40", "80", "80", "--blobs", "6", "--repeat", "1"],
     lambda r: r["same_result"] and r["axes"]["same_result"] and r["components"] > 0),
    ("device_stages.py", ["--size", "200x200x60", "--repeat", "1"],
     lambda r: r["parity"]["dice"] >= 0.999 and r["parity"]["nodes_cpu"] == r["parity"]["nodes_gpu"]),
])
def test_the_gpu_suite_benchmarks_run_on_the_emulator(script, args, check, tmp_path):
    """The GPU suite's two benchmark scripts, run with --emulate (the CUDA side on the CPU emulation): a
    borrowed GPU's minutes are not spent finding a typo in them. Their timings mean nothing here."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import cuda_emu
    if not cuda_emu.available()[0]:
        pytest.skip("kernel emulation needs g++")
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / script
    proc = subprocess.run([sys.executable, str(bench), "--emulate", "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert result["emulated"] is True and check(result), result
