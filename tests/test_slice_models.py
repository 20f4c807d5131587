"""Slice models (2D and 2.5D, issue 18): the manifest's input kind, the window over axial slices with
edge-replicated context, and an exported PyTorch 2.5D module against PyTorch run slice by slice."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lnrt.errors import LnrtError
from lnrt.package import check_manifest, make_manifest
from lnrt.preprocess import Grid, model_grid
from lnrt.sliding_window import SlidingWindowConfig, sliding_window

NORM = {"scheme": "window", "window_hu": [-160.0, 240.0]}


def _slab_model(weights):
    """A network that is pointwise in-plane: logit 1 = sum_j w_j * (slice j of its slab), logit 0 = 0.
    In-plane tiling cannot change a pointwise model, so the window must give exactly the direct sum."""
    w = np.asarray(weights, np.float32)

    def predict(batch):  # (B, 1, 2c + 1, py, px) -> (B, 2, 1, py, px)
        assert batch.shape[2] == w.size
        fg = np.tensordot(batch[:, 0], w, axes=([1], [0]))[:, None, None]
        return np.concatenate([np.zeros_like(fg), fg], axis=1)
    return predict


@pytest.mark.parametrize("context", [0, 1, 3])
def test_window_gives_each_slice_its_neighbours_with_replicated_edges(context):
    rng = np.random.default_rng(context)
    image = rng.normal(size=(7, 40, 37)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, 2 * context + 1)
    cfg = SlidingWindowConfig(patch=(1, 16, 16), batch_size=5, context=context)
    logits, covered = sliding_window(image, _slab_model(w), cfg)
    assert covered.all()
    z = np.arange(image.shape[0])
    want = sum(wj * image[np.clip(z + j - context, 0, z.size - 1)] for j, wj in enumerate(w))
    np.testing.assert_allclose(logits[1], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(logits[0], 0)


def test_window_runs_only_slices_with_body():
    image = np.zeros((6, 20, 20), np.float32)
    mask = np.zeros(image.shape, bool)
    mask[2:4, 5:8, 5:8] = True
    seen = []

    def predict(batch):
        seen.append(batch.shape[0])
        return np.zeros((batch.shape[0], 2, 1) + batch.shape[3:], np.float32)
    _, covered = sliding_window(image, predict, SlidingWindowConfig(patch=(1, 20, 20), context=2), mask=mask)
    assert sum(seen) == 2 and covered[2:4].all() and not covered[[0, 1, 4, 5]].any()


def test_context_needs_a_one_slice_patch():
    with pytest.raises(ValueError, match="one-slice patch"):
        SlidingWindowConfig(patch=(8, 16, 16), context=2)


def test_model_grid_keeps_the_scans_spacing_where_the_model_says_none():
    native = Grid((30, 100, 90), (2.5, 0.7, 0.7))
    g = model_grid(native, (None, 1.4, 1.4))
    assert g.shape == (30, 50, 45) and g.spacing[0] == 2.5 and g.origin[0] == 0.0


def _manifest(**inp):
    m = make_manifest("s", "1", (None, 1.0, 1.0), (1, 64, 64), NORM, {}, input_kind="2.5d", context_slices=7)
    m["input"].update(inp)
    return m


def test_manifest_slice_kinds_are_checked():
    check_manifest(_manifest(), "lnrt.json", files=False)
    cases = [({"kind": "4d"}, "input.kind is \"4d\""),
             ({"context_slices": 0}, "input.context_slices is 0"),
             ({"context_slices": 99}, "input.context_slices is 99"),
             ({"patch_size_zyx": [3, 64, 64]}, r"\[1, y, x\]"),
             ({"patch_size_zyx": [1, 4, 64]}, r"\[1, y, x\]"),
             ({"kind": "2d"}, "input.context_slices is 7; expected 0 or absent")]
    for change, msg in cases:
        with pytest.raises(LnrtError, match=msg):
            check_manifest(_manifest(**change), "lnrt.json", files=False)
    three_d = make_manifest("s", "1", (2.0, 1.0, 1.0), (8, 16, 16), NORM, {})
    assert "kind" not in three_d["input"]  # 3D manifests stay as they were
    three_d["input"]["spacing_zyx_mm"][0] = None
    with pytest.raises(LnrtError, match=r"spacing_zyx_mm\[0\] is null; expected three finite spacings"):
        check_manifest(three_d, "lnrt.json", files=False)


# --- an exported 2.5D PyTorch module, end to end ----------------------------------------------------
torch = pytest.importorskip("torch")
pytest.importorskip("onnx")


class SlabNet(torch.nn.Module):
    """A small 2D network on 2c + 1 channels (the test's 2.5D model)."""

    def __init__(self, channels: int = 5):
        super().__init__()
        self.a = torch.nn.Conv2d(channels, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    from lnrt.export.builder import build_package

    torch.manual_seed(0)
    net = SlabNet()
    with torch.no_grad():
        net.b.bias[1] -= 0.3
    out = tmp_path_factory.mktemp("slice") / "pkg"
    return net, build_package(net, out, name="slab", version="1", spacing_zyx=(None, 1.0, 1.0),
                              patch_zyx=(1, 48, 48), normalization=NORM, classes=["background", "node"],
                              provenance={}, input_kind="2.5d", context_slices=2)


def test_exported_25d_module_matches_pytorch_slice_by_slice(package):
    """The window's logits equal PyTorch run on whole slices with their neighbours (edges replicated),
    channel j being slice z - c + j: the input layout is what the exporter's module saw. One in-plane
    tile per slice (the patch holds the body box) so the Gaussian cancels."""
    import lnrt
    from lnrt.models.neck import random_scan
    from lnrt.package import ModelPackage

    net, path = package
    pkg = ModelPackage.load(path)
    m = pkg.manifest["input"]
    assert (m["kind"], m["context_slices"], m["spacing_zyx_mm"][0]) == ("2.5d", 2, None)
    assert pkg.manifest["sliding_window"]["batch_size"] == 16
    vol = random_scan(41000)[0]
    with lnrt.Session(pkg, backend="onnxruntime") as s:
        prep = s.prepare(vol)
        x = prep.image[:, :40, :40]  # one tile per slice, inside the 48 x 48 patch once padded
        logits, _ = sliding_window(x, s.backend.run, s.config.window)
    # the window pads in-plane up to the patch with the image minimum, then replicates the edge slices
    pad = np.pad(np.pad(x, [(0, 0), (0, 8), (0, 8)], constant_values=x.min()), [(2, 2), (0, 0), (0, 0)], mode="edge")
    slabs = np.stack([pad[z:z + 5] for z in range(x.shape[0])])
    with torch.no_grad():
        want = net(torch.from_numpy(slabs)).numpy()[:, :, :40, :40].transpose(1, 0, 2, 3)
    np.testing.assert_allclose(logits, want, atol=1e-4)


def test_25d_package_runs_with_the_scans_geometry(package, tmp_path):
    import lnrt
    from lnrt.models.neck import random_scan

    _, path = package
    vol = random_scan(41001)[0]
    res = lnrt.Session(path).run(vol)
    assert res.labels.shape == vol.array.shape
    assert res.report()["settings"]["sliding_window"]["context"] == 2
    assert res.report()["settings"]["tiles"] > 0


def test_cli_exports_a_slice_model(tmp_path, run_cli):
    weights = tmp_path / "w.pt"
    torch.save(SlabNet(3).state_dict(), weights)
    out = tmp_path / "pkg"
    assert run_cli("export", "torch", str(out), "--class", "tests.test_slice_models:SlabNet", "--kwargs",
            '{"channels": 3}', "--weights", str(weights), "--spacing", "scan", "0.8", "0.8", "--patch", "1", "32",
            "32", "--input-kind", "2.5d", "--context-slices", "1", "--window", "-160", "240", "--name", "s",
             "--trained-on", "nothing", "--variants", "") == 0
    m = json.loads((out / "lnrt.json").read_text())
    assert m["input"]["spacing_zyx_mm"] == [None, 0.8, 0.8] and m["input"]["context_slices"] == 1
    code = run_cli("export", "torch", str(tmp_path / "bad"), "--class", "tests.test_slice_models:SlabNet",
                    "--weights", str(weights), "--spacing", "scan", "1", "1", "--patch", "4", "32", "32",
                    "--input-kind", "2.5d", "--context-slices", "1", "--window", "-160", "240", "--name", "s",
                    "--trained-on", "x")
    assert code == 2 and not (tmp_path / "bad").exists()


def test_slice_trainer_learns_and_packages_a_25d_model(tmp_path):
    """`python -m lnrt.models.train_slices` in miniature: a few iterations of a small SNet-like network
    lower the loss, and the package it writes is a 2.5D lnrt package that runs."""
    pytest.importorskip("torch")
    import argparse

    import lnrt
    from lnrt.models import train_slices
    from lnrt.models.neck import make_spec, render

    args = argparse.Namespace(out=str(tmp_path / "run"), cls="lnrt.models.attention:SNet25D",
                              kwargs=json.dumps({"features": [8, 16, 16, 16], "aspp_growth": 8, "heads": 2}),
                              context=1, patch=32, iterations=30, batch_size=4, lr=3e-3, node_fraction=0.9,
                              pool=2, refresh_every=1000, log_every=10, seed=0, threads=1, variants="")
    model = train_slices.train(args)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [10, 20, 30]
    assert log[-1]["loss"] < log[0]["loss"]
    pkg = train_slices.package(model, tmp_path / "pkg", args)
    manifest = json.loads((pkg / "lnrt.json").read_text())
    assert manifest["input"]["kind"] == "2.5d" and manifest["input"]["context_slices"] == 1
    assert manifest["input"]["spacing_zyx_mm"] == [2.0, 1.0, 1.0] and manifest["input"]["patch_size_zyx"] == [1, 32, 32]
    hu, _, origin = render(make_spec(30002), (2.0, 1.0, 1.0), fov_xy=(60.0, 60.0))
    vol = lnrt.Volume(hu.astype(np.float32), spacing=(1.0, 1.0, 2.0), origin=tuple(origin), direction=np.eye(3))
    with lnrt.Session(pkg, neck_region=False, threads=1) as s:
        res = s.run(vol)
    assert res.labels.shape == hu.shape
