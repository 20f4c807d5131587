"""Twins: each CUDA kernel's launcher and its CPU twin in `lnrt.nodes` keep one contract (fields, dtypes,
numbering, errors), tested twin against twin and each against an independent oracle (cc3d for labels,
per-label NumPy for statistics) across connectivities, dtypes and worst cases.

The CUDA twin runs on a real GPU where `lnrt.device.probe_gpu()` finds one, and everywhere under the CPU
emulation of the kernels (tests/cuda_emu), in one sequential and two racing schedules.
"""
from __future__ import annotations

import cc3d
import numpy as np
import pytest

from lnrt import nodes
from lnrt.device import probe_gpu
from lnrt.errors import LnrtError
from lnrt.volume import Orientation

from conftest import signed_permutations


class CpuTwin:
    label_components = staticmethod(nodes.label_components)
    component_stats = staticmethod(nodes.component_stats)

    @staticmethod
    def host(a):
        return np.asarray(a)


class CudaTwin:
    """The launchers of lnrt.kernels.cuda, on a real GPU (CuPy) or under the CPU emulation of the kernels
    (tests/cuda_emu: the unchanged .cu sources compiled with g++, blocks and threads in seeded random
    orders, threads switching at every atomic in mode 1)."""

    def __init__(self, cp):
        from lnrt.kernels import cuda
        self.cp, self.cuda = cp, cuda

    def label_components(self, mask, connectivity=26, min_voxels=0):
        return self.cuda.label_components(self.cp.asarray(mask), connectivity, min_voxels)

    def component_stats(self, labels, *args, **kwargs):
        return self.cuda.component_stats(self.cp.asarray(labels), *args, **kwargs)

    def host(self, a):
        return self.cp.asnumpy(a)


# (seed, mode) of the emulated schedules: one sequential (each thread runs to its end, in random order),
# two with a switch at every atomic
EMULATED = {"emulated-sequential": (1, 0), "emulated-atomics-a": (2, 1), "emulated-atomics-b": (3, 1)}


@pytest.fixture(params=["cpu", *EMULATED, "cuda"], scope="module")
def twin(request):
    if request.param == "cpu":
        yield CpuTwin()
        return
    if request.param == "cuda":
        probe = probe_gpu()
        if not probe.ok:
            pytest.skip(f"cuda twin on a GPU: {probe.reason} (the emulated twins run the same kernels)")
        import cupy
        yield CudaTwin(cupy)
        return
    import cuda_emu
    ok, why = cuda_emu.available()
    if not ok:
        pytest.skip(f"kernel emulation: {why}")
    from lnrt.kernels import cuda
    with cuda.use(cuda_emu.emulated_cupy(*EMULATED[request.param])) as cp:
        yield CudaTwin(cp)


def _cases():
    rng = np.random.default_rng(0)
    cases = {f"random_{d}": rng.random((30, 40, 50)) < d for d in (0.05, 0.3, 0.5, 0.7)}
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
    comb = np.zeros((6, 40, 40), bool)
    comb[:, ::2, :] = True
    comb[:, :, 0] = True  # one component whose first voxel is reached last by many merges
    cases["comb"] = comb
    return cases


CASES = _cases()


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("name", list(CASES))
def test_labels_equal_cc3d(twin, name, connectivity):
    mask = CASES[name]
    want, n_want = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    got, n = twin.label_components(mask, connectivity)
    got = twin.host(got)
    assert n == n_want and got.dtype == np.uint16
    np.testing.assert_array_equal(got, want)


def test_min_voxels_and_wide_labels(twin):
    mask = np.zeros((64, 128, 128), bool)
    mask[::2, ::2, ::2] = True  # 131 072 isolated voxels: past uint16
    mask[40:44, 40:44, 40:44] = True  # and one 64-voxel block
    got, n = twin.label_components(mask, 26)
    want = cc3d.connected_components(mask, connectivity=26)
    assert n == int(want.max()) and twin.host(got).dtype == np.uint32
    np.testing.assert_array_equal(twin.host(got), want)
    big, n_big = twin.label_components(mask, 26, min_voxels=2)
    big = twin.host(big)
    sizes = np.bincount(want.ravel())
    assert n_big == 1 and big.dtype == np.uint16 and big[41, 41, 41] == 1
    np.testing.assert_array_equal(big, (want == want[41, 41, 41]).astype(np.uint16))
    assert sizes[want[41, 41, 41]] > 64 and np.sort(sizes[1:])[-2] == 1  # the block and isolated voxels


@pytest.mark.parametrize("bad", [4, 8, 27])
def test_bad_connectivity_is_a_user_error(twin, bad):
    with pytest.raises(LnrtError, match="expected one of 6, 18, 26"):
        twin.label_components(np.ones((3, 3, 3), bool), bad)


def _oracle(labels, n, image, prob, classes, n_classes, first_map):
    """Per-label NumPy: the definition of every field, one label at a time."""
    base, strides = first_map
    out = {"count": [], "bbox": [], "sums": [], "votes": [], "first": []}
    for k in range(1, n + 1):
        z, y, x = np.nonzero(labels == k)
        m = labels == k
        out["count"].append(z.size)
        out["bbox"].append([z.min(), y.min(), x.min(), z.max(), y.max(), x.max()] if z.size else nodes.BBOX_EMPTY)
        out["sums"].append([z.sum(), y.sum(), x.sum(), image[m].astype(np.float64).sum(),
                            prob[m].astype(np.float64).sum()])
        out["votes"].append(np.bincount(classes[m][classes[m] < n_classes], minlength=n_classes))
        flat = base + z.astype(np.int64) * strides[0] + y * strides[1] + x * strides[2]
        out["first"].append(flat.min() if z.size else nodes.NO_INDEX)
    return out


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_statistics_equal_the_oracle_and_the_cpu_twin(twin, dtype):
    rng = np.random.default_rng(1)
    mask = rng.random((20, 30, 40)) < 0.3
    labels = cc3d.connected_components(mask, connectivity=26).astype(dtype)
    n = int(labels.max())
    labels[labels == 5] = 0  # an id with no voxel
    labels[0, 0, 0] = n + 3  # a label above n_labels is ignored
    image = rng.normal(40, 30, mask.shape).astype(np.float32)
    prob = rng.random(mask.shape).astype(np.float32)
    classes = rng.integers(0, 4, mask.shape).astype(np.uint8)  # class 3 is beyond a 3-class table
    # a canonical view (20, 30, 40) of an input stored (30, 40, 20): canonical axis c is input axis perm[c]
    fmap = nodes.index_map(Orientation((2, 0, 1), (True, False, True), 0.0), (30, 40, 20), (0, 0, 0))
    got = twin.component_stats(labels, n, image, prob, classes, 3, first_map=fmap)
    cpu = nodes.component_stats(labels, n, image, prob, classes, 3, first_map=fmap)
    want = _oracle(labels, n, image, prob, classes, 3, fmap)
    assert set(got) == set(cpu) == {"count", "bbox", "sums", "votes", "first"}
    for key in got:
        assert got[key].dtype == cpu[key].dtype and got[key].shape == cpu[key].shape, key
    np.testing.assert_array_equal(got["count"], want["count"])
    np.testing.assert_array_equal(got["bbox"], np.array(want["bbox"], np.int32))
    np.testing.assert_array_equal(got["votes"], want["votes"])
    np.testing.assert_array_equal(got["first"], np.array(want["first"], np.uint64))
    np.testing.assert_array_equal(got["sums"][:, :3], np.array(want["sums"])[:, :3])  # integers: exact
    np.testing.assert_allclose(got["sums"][:, 3:], np.array(want["sums"])[:, 3:], rtol=1e-9)
    np.testing.assert_allclose(got["sums"], cpu["sums"], rtol=1e-9)
    assert got["count"][4] == 0 and got["first"][4] == nodes.NO_INDEX


@pytest.mark.parametrize("direction", signed_permutations(), ids=lambda d: str(np.argmax(np.abs(d), 0)) + str(
    np.sign(d.sum(0)).astype(int)))
def test_first_voxel_in_the_input_order_from_a_canonical_view(direction):
    """Labelling the canonical view and ordering by `first` numbers components as labelling the input
    array itself does (cc3d's raster order), for each of the 48 axis-aligned storage orders."""
    rng = np.random.default_rng(7)
    shape = (9, 11, 13)
    fg_in = rng.random(shape) < 0.25
    o = Orientation.of(direction)
    fg_c = np.ascontiguousarray(o.to_canonical(fg_in))
    lab_c, n = nodes.label_components(fg_c, 26)
    first = nodes.component_stats(lab_c, n, first_map=nodes.index_map(o, shape))["first"]
    keep = np.ones(n + 1, bool)
    order = np.zeros(n + 1, np.uint64)
    order[1:] = first
    renumbered, _ = nodes.renumber(lab_c, keep, order=order)
    got = np.zeros(shape, renumbered.dtype)
    o.to_canonical(got)[...] = renumbered
    np.testing.assert_array_equal(got, cc3d.connected_components(fg_in, connectivity=26))


def test_the_emulator_catches_a_union_find_race_a_sequential_run_misses(monkeypatch):
    """The harness is worth its keep: a merge that ignores atomicMin's result (so a hook that lost a race
    is taken as done) labels correctly when threads run one after another, and wrongly once threads
    switch at atomics."""
    import cuda_emu
    if not cuda_emu.available()[0]:
        pytest.skip("kernel emulation needs g++")
    from lnrt.kernels import cuda

    good = cuda.source("ccl.cu")
    bad = good.replace("done = (old == b);", "done = true;").replace("done = (old == a);", "done = true;")
    assert bad != good
    monkeypatch.setattr(cuda, "source", lambda name: bad if name == "ccl.cu" else good)
    mask = np.random.default_rng(11).random((12, 24, 24)) < 0.15  # sparse: few redundant links repair a lost hook
    want = cc3d.connected_components(mask, connectivity=26)
    wrong = {}
    for mode in (0, 1):
        wrong[mode] = 0
        for seed in range(6):
            with cuda.use(cuda_emu.emulated_cupy(seed, mode)):
                got, _ = cuda.label_components(mask, 26)
            wrong[mode] += not np.array_equal(got, want)
    assert wrong[0] == 0 and wrong[1] > 0, wrong


def test_switching_at_plain_loads_and_stores_catches_a_non_atomic_minimum(monkeypatch):
    """Mode 2 also switches threads at every plain load and store (GCC's -fsanitize=thread hooks, served by
    the emulator): a hook written as a plain read-then-write minimum is wrong there, while the sequential
    and the atomics-only schedules miss it; the real kernel stays right under mode 2."""
    import cuda_emu
    if not cuda_emu.available()[0]:
        pytest.skip("kernel emulation needs g++")
    from lnrt.kernels import cuda

    mask = np.random.default_rng(11).random((12, 24, 24)) < 0.15
    want = cc3d.connected_components(mask, connectivity=26)
    for seed in range(3):
        with cuda.use(cuda_emu.emulated_cupy(seed, 2)):
            np.testing.assert_array_equal(cuda.label_components(mask, 26)[0], want)
    good = cuda.source("ccl.cu")
    bad = (good.replace("idx_t old = atomicMin(&parent[b], a);", "idx_t old = parent[b]; if (a < old) parent[b] = a;")
               .replace("idx_t old = atomicMin(&parent[a], b);", "idx_t old = parent[a]; if (b < old) parent[a] = b;"))
    assert bad != good
    monkeypatch.setattr(cuda, "source", lambda name: bad if name == "ccl.cu" else good)
    wrong = {}
    for mode in (0, 1, 2):
        wrong[mode] = 0
        for seed in range(6):
            with cuda.use(cuda_emu.emulated_cupy(seed, mode)):
                wrong[mode] += not np.array_equal(cuda.label_components(mask, 26)[0], want)
    assert wrong[0] == 0 and wrong[2] > 0, wrong


def _blobs(seed: int, shape=(10, 64, 72), k: int = 7) -> np.ndarray:
    """Rotated ellipsoids of many sizes, with 3 % of voxels flipped: lobulated nodes, holes, specks, nodes
    touching in their boxes (the worst cases of the axes: one-voxel slices, ties, thin shells)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    m = np.zeros(shape, bool)
    for _ in range(k):
        c, r, th = rng.uniform(0, shape), rng.uniform([1, 2, 2], [5, 14, 14]), rng.uniform(0, np.pi)
        u = (y - c[1]) * np.cos(th) + (x - c[2]) * np.sin(th)
        v = (x - c[2]) * np.cos(th) - (y - c[1]) * np.sin(th)
        m |= ((z - c[0]) / r[0]) ** 2 + (u / r[1]) ** 2 + (v / r[2]) ** 2 <= 1
    return m ^ (rng.random(shape) < 0.03)


def _axes_equal(got, want, tol_mm=1e-4):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if w is None:
            continue
        assert g.slice_index == w.slice_index
        assert abs(g.long_mm - w.long_mm) <= tol_mm and abs(g.short_mm - w.short_mm) <= tol_mm
        np.testing.assert_allclose(g.long_ends, w.long_ends, atol=tol_mm)
        np.testing.assert_allclose(g.short_ends, w.short_ends, atol=tol_mm)


class _Recist:
    def __init__(self, twin):
        self.twin = twin

    def __call__(self, labels, ids, bbox, spacing):
        if isinstance(self.twin, CpuTwin):
            return nodes.node_axes(labels, ids, bbox, spacing)
        return self.twin.cuda.recist_axes(self.twin.cp.asarray(labels.astype(np.uint32)), ids, bbox, spacing)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recist_axes_equal_the_cpu_twin(twin, seed):
    """Every node's axes (slice, long and short axis, their ends) equal lnrt.recist's within 1e-4 mm, on
    about 1,200 components a volume at anisotropic spacings (in practice they are equal to the bit)."""
    labels, n = nodes.label_components(_blobs(seed), 26)
    bbox = nodes.component_stats(labels, n)["bbox"]
    spacing = np.random.default_rng(seed + 100).uniform([0.5, 0.3, 0.3], [3.0, 1.2, 1.2])
    ids = np.arange(1, n + 1)
    assert n > 500
    _axes_equal(_Recist(twin)(labels, ids, bbox, spacing), nodes.node_axes(labels, ids, bbox, spacing))


def test_recist_axes_of_a_large_structure_and_of_absent_ids(twin):
    """A 160 x 270 mm structure, where the chord caps bind (256 lines, 512 samples: the steps grow past
    0.25 px), and an id with no voxel in its box (None, as the CPU twin)."""
    yy, xx = np.mgrid[:420, :400]
    labels = np.zeros((3, 420, 400), np.uint16)
    labels[:, ((yy - 210) / 200.0) ** 2 + ((xx - 200) / 150.0) ** 2 <= 1] = 1
    labels[1, 5, 5] = 2
    bbox = np.array([[0, 10, 50, 2, 410, 350], [1, 5, 5, 1, 5, 5], [0, 0, 0, 1, 3, 3]], np.int32)
    ids = [1, 2, 3]
    spacing = (2.0, 0.4, 0.9)
    got = _Recist(twin)(labels, ids, bbox, spacing)
    want = nodes.node_axes(labels, ids, bbox, spacing)
    _axes_equal(got, want)
    assert got[2] is None and want[0].short_mm > 150 and want[1].long_mm == pytest.approx(0.5 * 0.9)


def test_recist_kernel_under_plain_load_and_store_switches():
    """Mode 2 (a thread switch at every plain load and store too) on a smaller volume: the barriers and
    atomics of the RECIST kernel hold under the finest interleaving the emulator has."""
    import cuda_emu
    if not cuda_emu.available()[0]:
        pytest.skip("kernel emulation needs g++")
    from lnrt.kernels import cuda

    labels, n = nodes.label_components(_blobs(4, shape=(6, 40, 40), k=4), 26)
    bbox = nodes.component_stats(labels, n)["bbox"]
    ids = np.arange(1, n + 1)
    with cuda.use(cuda_emu.emulated_cupy(5, 2)):
        got = cuda.recist_axes(labels.astype(np.uint32), ids, bbox, (1.5, 0.6, 0.8))
    _axes_equal(got, nodes.node_axes(labels, ids, bbox, (1.5, 0.6, 0.8)))


def test_the_emulator_honours_barriers_a_missing_one_breaks_the_long_axis(monkeypatch):
    """__syncthreads is a real barrier in the emulator: without the one between the largest squared
    distance and the search for its first pair, threads read a maximum that is not final yet and the
    long axes come out wrong, in every schedule; with it they are right."""
    import cuda_emu
    if not cuda_emu.available()[0]:
        pytest.skip("kernel emulation needs g++")
    from lnrt.kernels import cuda

    good = cuda.source("recist.cu")
    marker = "    __syncthreads();\n    double top = unordered(a[A_TOP]);"
    assert marker in good
    bad = good.replace(marker, "    double top = unordered(a[A_TOP]);")
    monkeypatch.setattr(cuda, "source", lambda name: bad if name == "recist.cu" else good)
    labels, n = nodes.label_components(_blobs(3, shape=(4, 40, 40), k=5), 26)
    bbox = nodes.component_stats(labels, n)["bbox"]
    ids = np.arange(1, n + 1)
    want = [a.long_mm for a in nodes.node_axes(labels, ids, bbox, (1.0, 0.7, 0.7))]
    for mode in (0, 1):
        with cuda.use(cuda_emu.emulated_cupy(mode, mode)):
            got = [a.long_mm for a in cuda.recist_axes(labels.astype(np.uint32), ids, bbox, (1.0, 0.7, 0.7))]
        assert got != want, mode


_ASAN_CHILD = """
import sys
import numpy as np
import cuda_emu
from lnrt import nodes
from lnrt.kernels import cuda

source = cuda.source
if sys.argv[1] == "unchecked":  # the merge's neighbour loop without its x >= 0 bound: the first voxel's left
    # neighbour is mask[-1], one byte before the array (elsewhere x - 1 wraps onto the row before: in bounds)
    cuda.source = lambda name: source(name).replace("yy >= ny || xx < 0 ||", "yy >= ny ||")
mask = np.random.default_rng(0).random((6, 24, 24)) < 0.4
mask[0, 0, 0] = True
with cuda.use(cuda_emu.emulated_cupy(1, 1)):
    labels, n = cuda.label_components(mask, 26)
    stats = cuda.component_stats(labels, n, image=mask.astype(np.float32), prob=mask.astype(np.float32))
    axes = cuda.recist_axes(labels.astype(np.uint32), np.arange(1, n + 1), stats["bbox"], (1.0, 0.7, 0.7))
want, _ = nodes.label_components(mask, 26)
assert np.array_equal(labels, want)
print("ok", n, sum(a is not None for a in axes))
"""


@pytest.mark.parametrize("variant", ["unchanged", "unchecked"])
def test_address_sanitizer_mode_passes_the_kernels_and_finds_an_out_of_bounds_read(variant, tmp_path):
    """The emulator's AddressSanitizer mode (kernels built with -fsanitize=address, its runtime preloaded in
    a child process): the unchanged kernels run clean, and a neighbour loop that lost its bounds check is
    stopped at its first read outside the mask (one byte before it), with ASan's report naming the kernel."""
    import os
    import subprocess
    import sys

    import cuda_emu
    if cuda_emu.asan_runtime() is None:
        pytest.skip("g++ has no AddressSanitizer runtime")
    script = tmp_path / "child.py"
    script.write_text(_ASAN_CHILD, encoding="utf-8")
    env = cuda_emu.asan_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(cuda_emu.HERE.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(script), variant], env=env, capture_output=True, text=True,
                          timeout=600)
    if variant == "unchanged":
        assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-3000:]
    else:
        assert proc.returncode == 86, (proc.returncode, proc.stderr[-3000:])
        assert "heap-buffer-overflow" in proc.stderr and " merge" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("debug", ["0", "1"])
def test_debug_mode_names_the_kernel_that_failed(debug, monkeypatch):
    """LNRT_CUDA_DEBUG=1 synchronizes after every launch, so a fault is reported with the kernel's own name
    (`merge`); without it the fault surfaces at the end of the launcher, named by what the launcher does.
    The fault is injected: the stand-in's stream raises at the first synchronization after `merge` ran."""
    import cuda_emu
    if not cuda_emu.available()[0]:
        pytest.skip("kernel emulation needs g++")
    from lnrt.kernels import cuda

    monkeypatch.setenv("LNRT_CUDA_DEBUG", debug)
    cp = cuda_emu.emulated_cupy(0, 0)
    faulted = []
    make = cp.RawModule

    def raw_module(code, options=()):
        mod = make(code, options)
        get = mod.get_function

        def get_function(name):
            kernel = get(name)
            return lambda grid, block, args: (kernel(grid, block, args), name == "merge" and faulted.append(name))
        mod.get_function = get_function
        return mod

    def synchronize():
        if faulted:
            raise RuntimeError("cudaErrorIllegalAddress: an illegal memory access was encountered")

    cp.RawModule = raw_module
    cp.cuda.get_current_stream = lambda: type("S", (), {"synchronize": staticmethod(synchronize)})
    with cuda.use(cp), pytest.raises(RuntimeError) as err:
        cuda.label_components(np.ones((4, 4, 4), bool), 26)
    want = "kernel 'merge'" if debug == "1" else "connected components"
    assert str(err.value).startswith(f"CUDA kernel failure in {want}: cudaErrorIllegalAddress"), str(err.value)
