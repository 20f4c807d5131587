"""The export path: PyTorch -> ONNX, precision variants with their parity gates, packages, compare."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, numpy_helper  # noqa: E402

from lnrt.errors import LnrtError  # noqa: E402
from lnrt.export import gate, precision  # noqa: E402
from lnrt.export.torch_export import export_module, load_module, load_state_dict  # noqa: E402
from lnrt.models.unet import UNet, UNetConfig  # noqa: E402
from lnrt.package import ModelPackage  # noqa: E402

TINY = UNetConfig(features=(4, 8), kernel_sizes=((3, 3, 3), (3, 3, 3)), strides=((1, 1, 1), (2, 2, 2)),
                  n_conv_per_stage=(1, 1), n_conv_per_stage_decoder=(1,), norm="instance")


class NormNet(torch.nn.Module):
    """Conv -> InstanceNorm -> LeakyReLU -> pool -> Resize -> Conv -> Softmax: every op kind the FP16
    converter must treat differently."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv3d(1, 6, 3, padding=1)
        self.norm = torch.nn.InstanceNorm3d(6, affine=True)
        self.c2 = torch.nn.Conv3d(6, 2, 1)

    def forward(self, x):
        y = torch.nn.functional.leaky_relu(self.norm(self.c1(x)), 0.01)
        y = torch.nn.functional.max_pool3d(y, 2)
        y = torch.nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")
        return torch.softmax(self.c2(y), dim=1)


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_fp16_keeps_normalization_and_softmax_in_fp32_and_io_in_fp32():
    torch.manual_seed(0)
    model, check = export_module(NormNet().eval(), (8, 16, 16))
    assert check["opset"] == 17 and "InstanceNormalization" in check["onnx_ops"]
    half = precision.to_fp16(model)
    types = precision.tensor_types(half)
    by_op = {}
    for n in half.graph.node:
        by_op.setdefault(n.op_type, []).append(n)
    for n in by_op["Conv"]:
        assert types[n.output[0]] == TensorProto.FLOAT16
        assert types[n.input[1]] == TensorProto.FLOAT16  # weights stored as fp16
    for op in ("InstanceNormalization", "Softmax"):
        for n in by_op[op]:
            assert all(types[i] == TensorProto.FLOAT for i in n.input if i), op
            assert types[n.output[0]] == TensorProto.FLOAT
    for n in by_op["Resize"]:  # scales stay float32, data goes fp16
        assert types[n.input[0]] == TensorProto.FLOAT16
        assert all(types[i] != TensorProto.FLOAT16 for i in n.input[1:] if i)
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = np.random.default_rng(1).normal(size=(2, 1, 8, 16, 16)).astype(np.float32)
    ref, got = _run(model, x), _run(half, x)
    assert got.dtype == np.float32 and np.abs(ref - got).max() < 5e-3
    assert set(precision.fp32_nodes(half)) >= {n.name for n in by_op["InstanceNormalization"]}


def test_fp16_keep_list_leaves_named_nodes_in_fp32():
    model, _ = export_module(NormNet().eval(), (8, 16, 16))
    first = next(n.name for n in model.graph.node if n.op_type == "Conv")
    half = precision.to_fp16(model, keep=[first])
    types = precision.tensor_types(half)
    node = next(n for n in half.graph.node if n.name == first)
    assert types[node.output[0]] == TensorProto.FLOAT and types[node.input[1]] == TensorProto.FLOAT


def test_int8_is_symmetric_qdq_per_channel_and_keeps_the_input_layer():
    torch.manual_seed(0)
    net = UNet(TINY).eval()
    model, _ = export_module(net, (16, 16, 16))
    rng = np.random.default_rng(0)
    tiles = [rng.normal(size=(1, 1, 16, 16, 16)).astype(np.float32) for _ in range(3)]
    q = precision.to_int8(model, tiles)
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    qnodes = [n for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert qnodes
    for n in qnodes:  # symmetric int8: zero point 0 of type int8
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
    conv_weights = {n.input[1] for n in q.graph.node if n.op_type == "Conv"}
    producers = {o: n for n in q.graph.node for o in n.output}
    per_channel = [producers[w] for w in conv_weights if w in producers
                   and producers[w].op_type == "DequantizeLinear"]
    assert per_channel and all(inits[d.input[1]].size > 1 for d in per_channel)
    first = precision.input_layers(model)[0]
    first_node = next(n for n in q.graph.node if n.name == first)
    assert first_node.input[0] == q.graph.input[0].name  # raw float input, no Q/DQ in front
    # Q/DQ only on the inputs of weighted layers: every activation DequantizeLinear feeds a Conv or
    # ConvTranspose (a skip tensor also reaches its Concat through it), none feeds a LeakyReLU, and no
    # weighted layer's output is quantized
    consumers = {}
    for n in q.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    act_dq = [n for n in q.graph.node if n.op_type == "DequantizeLinear"
              and producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == "QuantizeLinear"]
    assert len(act_dq) == len(qnodes)
    for dq in act_dq:
        ops = {c.op_type for c in consumers[dq.output[0]]}
        assert ops & {"Conv", "ConvTranspose"} and ops <= {"Conv", "ConvTranspose", "Concat"}, ops
        upstream = producers[producers[dq.input[0]].input[0]]
        assert upstream.op_type not in ("Conv", "ConvTranspose"), upstream.name
    n_weighted = sum(n.op_type in ("Conv", "ConvTranspose") for n in model.graph.node)
    assert len(qnodes) == n_weighted - 1  # every weighted layer but the kept input layer
    assert producers[q.graph.output[0].name].op_type == "Conv"  # float logits
    x = tiles[0]
    ref, got = _run(model, x), _run(q, x)
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.95
    with pytest.raises(LnrtError, match="calibration"):
        precision.to_int8(model, [])


def _calib_model_and_tiles(n: int, seed: int = 0):
    torch.manual_seed(0)
    model, _ = export_module(UNet(TINY).eval(), (16, 16, 16))
    rng = np.random.default_rng(seed)
    # growing scales, so later tiles widen the ranges (the histogram must re-bin, not restart)
    return model, [(1.0 + i) * rng.normal(size=(1, 1, 16, 16, 16)).astype(np.float32) for i in range(n)]


def _ort_ranges(model, tiles, method, tmp_path):
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    src = tmp_path / f"m_{method}.onnx"
    onnx.save(model, str(src))
    extra = ({"symmetric": True, "percentile": precision.PERCENTILE, "num_bins": 2048}
             if method == "percentile" else {})
    cal = create_calibrator(src, precision.WEIGHTED_OPS, augmented_model_path=str(tmp_path / f"aug_{method}.onnx"),
                            calibrate_method=CalibrationMethod.Percentile if method == "percentile"
                            else CalibrationMethod.MinMax, extra_options=extra)

    class Reader:
        it = iter(tiles)

        def get_next(self):
            t = next(self.it, None)
            return None if t is None else {model.graph.input[0].name: t}

    cal.collect_data(Reader())
    data = cal.compute_data()
    return {k: tuple(float(np.asarray(v).reshape(-1)[0]) for v in data[k].range_value)
            for k in precision.calibrated_tensors(model, outputs=True)}


def test_streaming_calibration_gives_onnxruntimes_ranges(tmp_path, capsys):
    """lnrt's tile-by-tile ranges against ONNX Runtime's own calibrators on the same tiles: min/max
    exactly, the PERCENTILE of |x| within 3 bins of the final histogram (ONNX Runtime keeps
    every tile's activations and takes a bin's lower edge, lnrt the upper edge of a bin up to twice as
    wide)."""
    model, tiles = _calib_model_and_tiles(4)
    ours = precision.calibration_ranges(model, iter(tiles), "minmax", outputs=True)
    theirs = _ort_ranges(model, tiles, "minmax", tmp_path)
    assert set(ours) == set(theirs) and len(ours) > 4
    for t in ours:
        assert np.float32(ours[t][0]) == np.float32(theirs[t][0]) and np.float32(ours[t][1]) == np.float32(
            theirs[t][1]), t
    ours = precision.calibration_ranges(model, iter(tiles), "percentile", outputs=True)
    theirs = _ort_ranges(model, tiles, "percentile", tmp_path)
    capsys.readouterr()  # ONNX Runtime's histogram collector prints its settings
    for t in ours:
        lo, hi = ours[t]
        assert lo == -hi and hi > 0, t
        # ONNX Runtime clamps each end to the signed extreme; the symmetric quantizer takes the larger
        assert abs(hi - max(map(abs, theirs[t]))) <= 3 * hi / 2048 + 1e-6, (t, hi, theirs[t])


def test_int8_file_is_the_same_without_the_ranges_of_weighted_outputs(monkeypatch):
    model, tiles = _calib_model_and_tiles(3)
    lean = precision.to_int8(model, iter(tiles))
    ranges = precision.calibration_ranges
    monkeypatch.setattr(precision, "calibration_ranges", lambda *a, **k: ranges(*a, **k, outputs=True))
    full = precision.to_int8(model, iter(tiles))
    assert len(precision.calibrated_tensors(model, outputs=True)) > len(precision.calibrated_tensors(model))
    assert lean.SerializeToString() == full.SerializeToString()


def test_abs_histogram_is_exact_under_rebinning():
    rng = np.random.default_rng(3)
    parts = [rng.normal(scale=s, size=5000).astype(np.float32) for s in (0.5, 1.0, 4.0, 16.0)]
    h = precision.AbsHistogram(bins=64)
    for p in parts:
        h.add(p)
    allx = np.abs(np.concatenate(parts))
    assert h.counts.sum() == allx.size and h.hi == max(p.max() for p in parts)
    # every value lies in the bin the final width puts it in: the merges lost nothing
    want = np.bincount(np.minimum((allx / np.float32(h.width)).astype(np.int64), 63), minlength=64)
    assert np.array_equal(h.counts, want)
    t = h.threshold(50.0)
    assert abs(t - np.median(allx)) <= h.width
    with pytest.raises(ValueError, match="even"):
        precision.AbsHistogram(bins=3)
    for bad, word in ((np.inf, "inf"), (np.nan, "NaN")):  # a loop that would never end, a negative index
        with pytest.raises(LnrtError, match=word):
            precision.AbsHistogram().add(np.array([1.0, bad], np.float32))


def test_calibration_memory_does_not_grow_with_the_number_of_tiles():
    """Peak traced memory with 12 tiles is that of 2 (ONNX Runtime's percentile calibrator holds every
    tile's activations: about 6x here)."""
    import tracemalloc

    model, _ = _calib_model_and_tiles(0)

    def peak(n):
        rng = np.random.default_rng(0)
        tiles = (rng.normal(size=(1, 1, 16, 16, 16)).astype(np.float32) for _ in range(n))
        tracemalloc.start()
        seen = []
        precision.calibration_ranges(model, tiles, "percentile", progress=seen.append)
        p = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert seen == list(range(1, n + 1))
        return p

    small, large = peak(2), peak(12)
    assert large < 1.3 * small, (small, large)


def test_weights_loading_and_refusals(tmp_path):
    net = UNet(TINY)
    kwargs = {"cfg": TINY.to_dict()}
    torch.save(net.state_dict(), tmp_path / "w.pt")
    torch.save({"model": net.state_dict(), "step": 3}, tmp_path / "nested.pt")
    from safetensors.torch import save_file
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    for f in ("w.pt", "nested.pt", "w.safetensors"):
        m = load_module("lnrt.models.unet:UNet", kwargs, tmp_path / f)
        assert not m.training
        for k, v in net.state_dict().items():
            assert torch.equal(m.state_dict()[k], v)
    torch.save(net, tmp_path / "module.pt")  # a pickled module, not a state dict
    with pytest.raises(LnrtError, match="not a state dict"):
        load_state_dict(tmp_path / "module.pt")
    torch.save({"a": 1}, tmp_path / "nothing.pt")
    with pytest.raises(LnrtError, match="not a state dict of tensors"):
        load_state_dict(tmp_path / "nothing.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(LnrtError, match="safetensors"):
        load_state_dict(tmp_path / "junk.safetensors")
    other = UNet(UNetConfig(features=(4, 16), kernel_sizes=TINY.kernel_sizes, strides=TINY.strides,
                            n_conv_per_stage=(1, 1), n_conv_per_stage_decoder=(1,)))
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(LnrtError, match="do not fit"):
        load_module("lnrt.models.unet:UNet", kwargs, tmp_path / "other.pt")
    with pytest.raises(LnrtError, match="cannot import"):
        load_module("lnrt.models.nothing:Net", {}, None)


def test_deep_supervision_heads_are_dropped():
    cfg = UNetConfig(**{**TINY.__dict__, "deep_supervision": True})
    net = UNet(cfg)
    net.train()  # even a module left in training mode exports its full-resolution head only
    model, check = export_module(net, (16, 16, 16), probe=[np.zeros((1, 1, 16, 16, 16), np.float32)])
    assert len(model.graph.output) == 1
    out = _run(model, np.zeros((3, 1, 16, 16, 16), np.float32))
    assert out.shape == (3, 2, 16, 16, 16)  # dynamic batch, full resolution
    assert check["max_abs_logit_diff"] < 1e-4 and check["argmax_dice"] >= 0.999


def test_gate_passes_fp16_and_fails_a_broken_variant(placeholder_package, tmp_path):
    pkg_dir = tmp_path / "pkg"
    shutil.copytree(placeholder_package, pkg_dir)
    from lnrt.export import variants as va

    reports = va.add_variants(pkg_dir, ["fp16"], n_gate=1)
    assert reports["fp16"]["passed"] and reports["fp16"]["written"]
    pkg = ModelPackage.load(pkg_dir)  # sha256 of the new file verified
    assert "fp16" in pkg.variants() and pkg.manifest["variants"]["fp16"]["gate_passed"]
    # gated on every CPU backend installed here, ONNX Runtime (the reference) first
    from lnrt.backends import available

    recorded = pkg.manifest["variants"]["fp16"]["gate_backends"]
    assert list(recorded) == va.gate_backends() and set(recorded) == set(available())
    assert all(line["passed"] and line["dice"] >= 0.99 for line in recorded.values())
    assert pkg.gate_failed_on("fp16") == {}
    assert json.loads((pkg_dir / "parity.fp16.json").read_text())["dice"] >= 0.99

    def broken(model, keep=()):
        for init in model.graph.initializer:  # flip every weight's sign: a variant that is wrong
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.ndim > 1:
                init.CopyFrom(numpy_helper.from_array(-arr, init.name))
        return model

    original = va.to_fp16
    va.to_fp16 = broken
    try:
        pkg_dir2 = tmp_path / "pkg2"
        shutil.copytree(placeholder_package, pkg_dir2)
        reports = va.add_variants(pkg_dir2, ["fp16"], n_gate=2)
        r = reports["fp16"]
        assert not r["passed"] and not r["written"] and r["failures"]
        # it cannot pass after its first volume, so the second is not run; nor is any other backend
        assert r["stopped_early"]["after_volumes"] == 1 and len(r["volumes"]) == 1, r.get("stopped_early")
        for b, line in r["gate_backends"].items():
            assert b == "onnxruntime" or line["failures"] == ["not gated: the variant failed on onnxruntime"]
        assert not (pkg_dir2 / "model.fp16.onnx").exists()
        assert "fp16" not in ModelPackage.load(pkg_dir2).variants()
        saved = json.loads((pkg_dir2 / "parity.fp16.json").read_text())
        assert saved["advice"].startswith("keep these layers") and saved["most_sensitive_layers"]
        # a layer kept already is not advised again: the advice keeps it and adds the next ones
        first = saved["advice"].split("--keep ")[1].strip()
        again_kept = va.add_variants(pkg_dir2, ["fp16"], n_gate=1, keep=(first,))["fp16"]
        advised = [a.strip() for a in again_kept["advice"].split("--keep ")[1:]]
        ranked = [r["node"] for r in again_kept["most_sensitive_layers"]]
        assert advised == [first] + [n for n in ranked if n != first][:3], (advised, ranked)
        forced = va.add_variants(pkg_dir2, ["fp16"], n_gate=1, force=True)
        assert forced["fp16"]["written"] and "fp16" in ModelPackage.load(pkg_dir2).variants()
    finally:
        va.to_fp16 = original
    # exporting again gates the new file: the failures recorded for the old one (here on every
    # backend) must not make the gate's own session refuse to run it
    assert ModelPackage.load(pkg_dir2).gate_failed_on("fp16")
    again = va.add_variants(pkg_dir2, ["fp16"], n_gate=1)
    assert again["fp16"]["passed"] and ModelPackage.load(pkg_dir2).gate_failed_on("fp16") == {}
    with pytest.raises(LnrtError, match="cannot build variant"):
        va.add_variants(pkg_dir, ["fp8"])


def test_best_dice_bounds_what_the_remaining_volumes_can_give():
    class R:
        def __init__(self, n):
            self.labels = np.zeros(10, np.uint8)
            self.labels[:n] = 1

    per = [{"intersection": 5, "total": 20}]  # Dice 0.5 on the first volume
    assert gate.best_dice(per, []) == 0.5
    assert gate.best_dice(per, [R(10)]) == pytest.approx((10 + 20) / (20 + 20))
    assert gate.best_dice([], [R(3)]) == 1.0


def _tiny_module():
    torch.manual_seed(0)
    return UNet(TINY).eval()


def test_export_removes_a_stale_staging_folder_refuses_a_live_one_and_shows_progress(tmp_path, caplog):
    import logging
    import os

    from lnrt.atomic import lock_file
    from lnrt.export.builder import build_package

    out = tmp_path / "pkg"
    stale = tmp_path / ".pkg.staging"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"x" * 1000)  # what an export killed by the OOM killer leaves
    (stale / ".lock").write_text("12345")
    kw = dict(name="t", version="1.0.0", spacing_zyx=(2.0, 2.0, 2.0), patch_zyx=(16, 16, 16),
              normalization={"scheme": "window", "window_hu": [-200, 400]}, classes=["background", "node"],
              provenance={"trained_on": "nothing"})
    with caplog.at_level(logging.INFO, logger="lnrt"):
        build_package(_tiny_module(), out, **kw)
    assert not stale.exists() and ModelPackage.load(out).path == out
    assert not (out / ".lock").exists()
    lines = [r.getMessage() for r in caplog.records]
    assert any("removing" in m and ".pkg.staging" in m for m in lines)
    assert any(m.startswith("export: exporting the network to ONNX [") for m in lines)
    assert any(m.startswith("export: package written to") for m in lines)
    assert (tmp_path / ".pkg.lock").exists()  # the lock file stays (empty of meaning once unlocked)
    live = tmp_path / ".pkg2.staging"
    live.mkdir()
    (live / "model.onnx").write_bytes(b"half written")
    fd = lock_file(tmp_path / ".pkg2.lock")  # an export still running
    try:
        with pytest.raises(LnrtError, match="another export is writing"):
            build_package(_tiny_module(), tmp_path / "pkg2", **kw)
        assert (live / "model.onnx").read_bytes() == b"half written"  # the running export's folder is untouched
    finally:
        os.close(fd)
    build_package(_tiny_module(), tmp_path / "pkg2", **kw)  # once it is gone, the next export proceeds
    assert not live.exists() and ModelPackage.load(tmp_path / "pkg2")


def test_match_nodes_pairs_by_overlap():
    ref = np.zeros((4, 10, 10), np.uint16)
    got = np.zeros_like(ref)
    ref[1:3, 1:4, 1:4] = 1
    ref[1:3, 6:9, 6:9] = 2
    got[1:3, 6:9, 6:8] = 1  # the candidate numbers them the other way round and misses node 1
    nodes = [{"id": 1, "bbox_voxels": [1, 1, 1, 2, 3, 3]}, {"id": 2, "bbox_voxels": [1, 6, 6, 2, 8, 8]}]
    pairs = gate.match_nodes(ref, nodes, got, [{"id": 1}])
    assert pairs[0][1] is None and pairs[1][1] == {"id": 1}
    # what a gate report says of the same pair of results: Dice, the lost node and its size
    nodes[0]["short_axis_mm"], nodes[1]["short_axis_mm"] = 4.0, 6.5
    got_nodes = [{"id": 1, "bbox_voxels": [1, 6, 6, 2, 8, 7], "short_axis_mm": 5.75}]
    from types import SimpleNamespace as NS

    row = gate.compare_results(NS(labels=ref, nodes=nodes), NS(labels=got, nodes=got_nodes))
    assert row["intersection"] == 12 and row["total"] == 36 + 12
    assert row["nodes_ref"] == 2 and row["nodes"] == 1 and row["unmatched"] == 1
    assert row["unmatched_short_axes_mm"] == [4.0]
    assert row["short_axis_max_diff_mm"] == pytest.approx(0.75)


def test_export_torch_cli_builds_a_working_package(tmp_path, run_cli, capsys):
    net = UNet(TINY).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "pkg"
    args = ["export", "torch", str(out), "--kwargs", json.dumps({"cfg": TINY.to_dict()}),
            "--weights", str(tmp_path / "w.pt"), "--spacing", "2", "1", "1", "--patch", "16", "32", "32",
            "--window", "-200", "400", "--name", "tiny", "--trained-on", "random weights", "--variants", ""]
    assert run_cli(*args) == 0, capsys.readouterr().err
    pkg = ModelPackage.load(out)
    exp = pkg.manifest["provenance"]["export"]
    assert exp["argmax_dice"] >= 0.999 and exp["max_abs_logit_diff"] < 1e-3
    assert not list(tmp_path.glob(".pkg.staging*"))
    capsys.readouterr()
    assert run_cli(*args) == 2
    assert "already exists" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    torch.save(net, bad)  # a pickled module: refused in one line
    args[args.index("--weights") + 1] = str(bad)
    args[2] = str(tmp_path / "pkg2")
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a state dict" in err


def test_compare_and_infer_with_a_variant(run_cli, capsys, tmp_path):
    import lnrt
    from lnrt.compare import compare, format_compare

    sample = lnrt.sample_path()
    result = compare(None, sample, variants=["fp32", "fp16"], backends=["onnxruntime"])
    rows = {(r["backend"], r["variant"]): r for r in result["rows"]}
    assert rows[("onnxruntime", "fp32")]["reference"]
    fp16 = rows[("onnxruntime", "fp16")]
    assert fp16["dice"] >= 0.99 and fp16["nodes"] == result["reference"]["nodes"] > 0
    assert fp16["max_abs_logit_diff"] < 0.5 and fp16["argmax_agreement"] > 0.999
    assert fp16["short_axis_max_diff_mm"] <= 0.5
    table = format_compare(result)
    assert "fp16" in table and "(reference)" in table
    assert run_cli("infer", sample, "--variant", "fp16", "--out", tmp_path, "--quiet", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"]["variant"] == "fp16"
    assert report["model"]["sha256"] == ModelPackage.load().sha256("fp16")


def test_export_without_onnx_names_the_extra(monkeypatch, run_cli, capsys):
    import builtins

    real = builtins.__import__

    def no_onnx(name, *a, **k):
        if name == "onnx":
            raise ImportError("No module named 'onnx'", name="onnx")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    from lnrt.package import default_package_path
    assert run_cli("export", "variants", default_package_path()) == 2
    assert "pip install 'lnrt[export]'" in capsys.readouterr().err
