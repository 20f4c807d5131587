"""The shipped default model: a trained network that finds nodes, reproducible from its weights."""
import numpy as np
import pytest

import lnrt
from lnrt.evaluate import evaluate_scan
from lnrt.imageio import read_labels
from lnrt.package import ModelPackage


def test_default_package_is_the_trained_edge_unet():
    pkg = ModelPackage.load()
    prov = pkg.manifest["provenance"]
    assert "synthetic" in prov["trained_on"] and "not for clinical use" in prov["intended_use"]
    assert prov["export"]["max_abs_logit_diff"] < 1e-3


def test_default_model_finds_the_sample_nodes(tmp_path):
    """The bundled sample (a held-out phantom): nodes of 5 mm and more are found, few false positives."""
    res = lnrt.Session().run(lnrt.sample_path())
    truth_path = str(lnrt.sample_path()).replace(".nii.gz", ".truth.nii.gz")
    truth = read_labels(truth_path)
    r = evaluate_scan(truth.with_array(res.labels), truth)
    big = [n for n in r["nodes"] if n["short_axis_mm"] >= 5]
    assert len(big) >= 5
    assert sum(n["detected"] for n in big) >= len(big) - 1
    assert r["false_positives"] <= 3 and r["dice"] > 0.6


def test_default_model_reports_nothing_on_a_real_abdomen(shared_data):
    """The issue's wrong-region control, end to end: the network marks soft tissue in a real abdomen, and
    the package's neck-region rule reports none of it, with a warning; --all-regions shows it all."""
    scan = shared_data / "nifti" / "abdomen_3mm_30slices.nii.gz"
    with lnrt.Session() as s:
        res = s.run(scan)
    with lnrt.Session(neck_region=False) as s:
        every = s.run(scan)
    assert res.nodes == [] and not res.labels.any()
    assert any("no neck-sized body section" in w for w in res.warnings)
    rules = res.settings["rules"]
    assert rules["neck_region"]["neck_sized"] is False
    # the neck rule runs first, on every component's centroid, so nothing is left for the floor to drop;
    # without it, the floor drops the thin ones and the rest are reported
    assert rules["min_short_axis"]["dropped"] == 0
    floor = every.settings["rules"]["min_short_axis"]["dropped"]
    assert len(every.nodes) > 0 and len(every.nodes) + floor == rules["neck_region"]["dropped"]


def test_shipped_onnx_reproduces_from_the_committed_weights():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import onnxruntime as ort

    from pathlib import Path

    from lnrt.models.package_model import export_onnx, load_checkpoint

    weights = Path(__file__).resolve().parents[1] / "models" / "edge_weights.pt"
    net = load_checkpoint(weights)
    pkg = ModelPackage.load()
    x = np.random.default_rng(0).uniform(0, 1, (1, 1, *pkg.patch_zyx)).astype(np.float32)
    fresh = ort.InferenceSession(export_onnx(net, pkg.patch_zyx), providers=["CPUExecutionProvider"])
    shipped = ort.InferenceSession(str(pkg.onnx_path()), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(fresh.run(None, {"image": x})[0], shipped.run(None, {"image": x})[0], atol=1e-5)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(ref - shipped.run(None, {"image": x})[0]).max() < 1e-3
