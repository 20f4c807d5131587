"""Attention networks (issue #18, `lnrt.models.attention`): shapes and sizes, ONNX export (opset 17, dynamic
batch, fixed patch) against PyTorch on ONNX Runtime and OpenVINO, the FP16 converter on their ops
(MatMul in float16, Softmax in float32), and INT8 Q/DQ on both activation inputs of attention's MatMuls.

Random-weight networks give nearly tied logits, so every network here is seeded, its BatchNorm statistics
(when it has BatchNorm) are measured on phantom tiles, and its head bias is set so that about 30 % of the
voxels are foreground; inputs are windowed neck-phantom crops centred on lymph nodes."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, numpy_helper  # noqa: E402

from lnrt.export import precision  # noqa: E402
from lnrt.export.torch_export import OPSET, export_module, load_module, simplify  # noqa: E402
from lnrt.models.attention import AttentionUNet3D, AxialAttention, SNet25D, count_parameters  # noqa: E402
from lnrt.models.neck import make_spec, render  # noqa: E402

PATCH_2D = (64, 64)
PATCH_3D = (16, 48, 48)
CONTEXT = 7  # slices above and below: 15 channels
BACKENDS = ["onnxruntime", "openvino"]


# --- inputs and networks ------------------------------------------------------------------------------

def _phantom_crops(seeds, dim: int, per_seed: int = 2) -> list:
    """Windowed ([-160, 240] HU -> about [-1, 1]) crops centred on phantom nodes: (1, 15, y, x) slabs for
    dim 2, (1, 1, z, y, x) patches for dim 3."""
    out = []
    for seed in seeds:
        hu, labels, _ = render(make_spec(seed), (2.0, 1.0, 1.0))
        img = (np.clip(hu, -160.0, 240.0) - 40.0) / 200.0
        rng = np.random.default_rng(seed)
        ids = [i for i in np.unique(labels) if i > 0]
        for i in rng.permutation(ids)[:per_seed]:
            c = np.argwhere(labels == i).mean(0).round().astype(int)
            size = (2 * CONTEXT + 1, *PATCH_2D) if dim == 2 else PATCH_3D
            lo = [int(np.clip(cc - s // 2, 0, n - s)) for cc, s, n in zip(c, size, img.shape)]
            crop = img[tuple(slice(a, a + s) for a, s in zip(lo, size))]
            out.append(np.ascontiguousarray(crop[None] if dim == 2 else crop[None, None], np.float32))
    return out


def _prepared(net, tiles):
    """`net` in eval mode with BatchNorm statistics from `tiles` and about 30 % foreground on them."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    x = torch.from_numpy(np.concatenate(tiles))
    with torch.no_grad():
        if bns:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the passes
            net.train()
            for t in tiles:
                net(torch.from_numpy(t))
        net.eval()
        logits = net(x)
        d = (logits[:, 1] - logits[:, 0]).numpy()
        net.head.bias[1] -= float(np.quantile(d, 0.7))
    return net


def _export(net, patch, in_channels: int):
    """ONNX model as `lnrt export torch` makes it. 3D: `export_module` itself. 2D: `export_module` takes
    (z, y, x) patches only (issue #18 extends it), so the same call it makes: opset 17, the batch axis
    dynamic, constant folding, onnxslim, full check."""
    if len(patch) == 3:
        return export_module(net, patch, in_channels)[0]
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, torch.zeros(1, in_channels, *patch), buf, opset_version=OPSET, input_names=["image"],
                          output_names=["logits"], do_constant_folding=True, dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    model, _ = simplify(onnx.load_from_string(buf.getvalue()))
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model, x: np.ndarray, backend: str = "onnxruntime") -> np.ndarray:
    if backend == "onnxruntime":
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})  # never bf16 behind our back
    return np.asarray(compiled(x)[0], np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    fa, fb = a.argmax(1) > 0, b.argmax(1) > 0
    total = int(fa.sum() + fb.sum())
    return 1.0 if total == 0 else 2.0 * int((fa & fb).sum()) / total


NETS = {
    "snet25d": lambda norm: (SNet25D(in_channels=2 * CONTEXT + 1, norm=norm), PATCH_2D, 2 * CONTEXT + 1, 2),
    "attention_unet3d": lambda norm: (AttentionUNet3D(norm=norm), PATCH_3D, 1, 3),
}
_CACHE: dict = {}


def _case(name: str, norm: str):
    """(torch net, fp32 onnx, probe tiles as one batch, PyTorch logits) for one network, made once."""
    key = (name, norm)
    if key not in _CACHE:
        torch.manual_seed(0)
        net, patch, cin, dim = NETS[name](norm)
        if dim not in _CACHE:
            _CACHE[dim] = _phantom_crops([101, 102, 103], dim)
        tiles = _CACHE[dim]
        net = _prepared(net, tiles)
        x = np.concatenate(tiles)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        _CACHE[key] = (net, _export(net, patch, cin), x, ref)
    return _CACHE[key]


# --- the networks ---------------------------------------------------------------------------------------

def test_networks_are_small_and_give_logits_of_the_input_grid():
    torch.manual_seed(0)
    snet, unet = SNet25D().eval(), AttentionUNet3D().eval()
    assert 200_000 < count_parameters(snet) < 500_000 and 200_000 < count_parameters(unet) < 500_000
    assert snet.divisor == (8, 8) and unet.divisor == (4, 8, 8)
    with torch.no_grad():
        assert snet(torch.randn(2, 15, 32, 40)).shape == (2, 2, 32, 40)
        assert SNet25D(in_channels=1, num_classes=3).eval()(torch.randn(1, 1, 24, 32)).shape == (1, 3, 24, 32)
        assert unet(torch.randn(1, 1, 8, 16, 24)).shape == (1, 2, 8, 16, 24)
        small = AttentionUNet3D(features=[4, 8], strides=[[1, 1, 1], [2, 2, 2]], norm="batch",
                                gate_upsampling="nearest").eval()
        assert small(torch.randn(1, 1, 4, 8, 8)).shape == (1, 2, 4, 8, 8)
    with pytest.raises(ValueError, match="norm"):
        SNet25D(norm="group")
    with pytest.raises(ValueError, match="heads"):
        AxialAttention(30, heads=4)


def test_axial_attention_is_exact_attention_along_each_axis():
    """Height attention mixes only within a column, width attention only within a row, and equals
    softmax(Q K^T / sqrt(d)) V computed directly."""
    torch.manual_seed(0)
    for axis in ("height", "width"):
        att = AxialAttention(8, heads=2, axis=axis).eval()
        x = torch.randn(2, 8, 6, 5)
        with torch.no_grad():
            y = att(x)
            x2 = x.clone()
            x2[:, :, 2, 3] += 1.0  # changes only column 3 (height) or row 2 (width)
            changed = (att(x2) - y).abs().amax(dim=(0, 1)) > 1e-6
            want = torch.zeros(6, 5, dtype=torch.bool)
            if axis == "height":
                want[:, 3] = True
            else:
                want[2, :] = True
            assert torch.equal(changed, want), axis
            q, k, v = (f(x).reshape(2, 2, 4, 6, 5) for f in (att.q, att.k, att.v))
            if axis == "width":
                q, k, v = (t.transpose(-1, -2) for t in (q, k, v))  # attended axis last
            w = torch.softmax(torch.einsum("bhdil,bhdjl->bhlij", q, k) / 2.0, dim=-1)  # sqrt(4) = 2
            o = torch.einsum("bhlij,bhdjl->bhdil", w, v)
            if axis == "width":
                o = o.transpose(-1, -2)
            assert torch.allclose(att.out(o.reshape(2, 8, 6, 5)), y, atol=1e-5)


def test_lnrt_loads_them_from_json_kwargs_and_a_state_dict(tmp_path):
    from safetensors.torch import save_file

    kwargs = json.loads(json.dumps({"in_channels": 5, "features": [8, 16, 24], "strides": [1, 2, 2],
                                    "aspp_growth": 8, "heads": 2, "norm": "batch"}))
    torch.manual_seed(0)
    net = SNet25D(**kwargs)
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = load_module("lnrt.models.attention:SNet25D", kwargs, tmp_path / "w.safetensors")
    x = torch.randn(1, 5, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), net.eval()(x))
    kw3 = {"features": [4, 8, 16], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]]}
    torch.save(AttentionUNet3D(**kw3).state_dict(), tmp_path / "w.pt")
    assert isinstance(load_module("lnrt.models.attention:AttentionUNet3D", kw3, tmp_path / "w.pt"),
                      AttentionUNet3D)


# --- ONNX, FP32 -----------------------------------------------------------------------------------------

def test_onnx_graphs_hold_the_attention_ops_with_a_dynamic_batch_and_static_patch():
    _, snet, x2, _ = _case("snet25d", "instance")
    _, unet, x3, _ = _case("attention_unet3d", "instance")
    ops = {n.op_type for n in snet.graph.node}
    assert {"MatMul", "Softmax", "Transpose", "Reshape", "Resize", "Sigmoid", "Mul", "Concat",
            "InstanceNormalization", "LeakyRelu", "ConvTranspose"} <= ops
    assert sum(n.op_type == "MatMul" for n in snet.graph.node) == 4  # Q K^T and attention V, per axis
    dilations = {tuple(a.ints) for n in snet.graph.node if n.op_type == "Conv" for a in n.attribute
                 if a.name == "dilations"}
    assert {(3, 3), (6, 6), (9, 9), (12, 12)} <= dilations
    assert {"Resize", "Sigmoid", "Mul", "Relu", "InstanceNormalization"} <= {n.op_type for n in unet.graph.node}
    assert "MatMul" not in {n.op_type for n in unet.graph.node}
    for model, patch in ((snet, PATCH_2D), (unet, PATCH_3D)):
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[2:]] == list(patch)
        assert not any(n.op_type in ("Shape", "NonZero", "Loop", "If") for n in model.graph.node)
    for model, x in ((snet, x2), (unet, x3)):  # any batch size runs
        assert _run(model, x[:1]).shape[0] == 1 and _run(model, x).shape[0] == len(x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm", ["instance", "batch"])
@pytest.mark.parametrize("name", list(NETS))
def test_onnx_matches_pytorch(name, norm, backend):
    _, model, x, ref = _case(name, norm)
    got = _run(model, x, backend)
    assert got.shape == ref.shape
    fg = (ref.argmax(1) > 0).mean()
    assert 0.15 < fg < 0.5  # not a degenerate all-background or all-foreground network
    assert np.abs(got - ref).max() < 1e-3 * max(1.0, np.abs(ref).max())
    assert _dice(ref, got) >= 0.999


# --- FP16 -----------------------------------------------------------------------------------------------

def test_fp16_runs_matmul_in_half_and_softmax_in_float():
    _, model, _, _ = _case("snet25d", "instance")
    before = model.SerializeToString()
    half = precision.to_fp16(model)
    assert model.SerializeToString() == before  # the FP32 model is not converted in place
    types = precision.tensor_types(half)
    by_op: dict = {}
    for n in half.graph.node:
        by_op.setdefault(n.op_type, []).append(n)
    F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT
    for op in ("MatMul", "Transpose", "Reshape", "Mul", "Sigmoid", "Resize", "Conv", "ConvTranspose", "Concat"):
        for n in by_op[op]:
            assert types[n.input[0]] == F16 and types[n.output[0]] == F16, (op, n.name)
    for n in by_op["MatMul"]:
        assert all(types[i] == F16 for i in n.input)
    for n in by_op["Reshape"] + by_op["Resize"]:  # shapes, roi and scales keep their types
        assert all(types[i] != F16 for i in n.input[1:] if i)
    for op in ("Softmax", "InstanceNormalization"):
        for n in by_op[op]:
            assert all(types[i] == F32 for i in n.input if i) and types[n.output[0]] == F32, op
    producers = {o: n for n in half.graph.node for o in n.output}
    for n in by_op["Softmax"]:  # fp16 scores cast up, probabilities cast down for the second MatMul
        assert producers[n.input[0]].op_type == "Cast"
    for n in by_op["Cast"]:
        to = next(a.i for a in n.attribute if a.name == "to")
        assert types[n.input[0]] == (F16 if to == F32 else F32) and types[n.output[0]] == to
    assert half.graph.input[0].type.tensor_type.elem_type == F32
    assert half.graph.output[0].type.tensor_type.elem_type == F32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(NETS))
def test_fp16_matches_fp32(name, backend):
    _, model, x, _ = _case(name, "instance")
    ref = _run(model, x, backend)
    got = _run(precision.to_fp16(model), x, backend)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.abs(got - ref).max() < 0.05
    assert _dice(ref, got) >= 0.99


# --- INT8 -----------------------------------------------------------------------------------------------

def _int8_snet():
    if "int8" not in _CACHE:
        _, model, _, _ = _case("snet25d", "instance")
        calib = _phantom_crops([201, 202], 2)  # not the probe tiles
        _CACHE["int8"] = (precision.to_int8(model, iter(calib)), calib)
    return _CACHE["int8"]


def test_int8_puts_qdq_on_both_activation_inputs_of_attention_matmuls():
    _, model, _, _ = _case("snet25d", "instance")
    q, calib = _int8_snet()
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    want = {i for n in matmuls for i in n.input}
    assert len(want) == 8 and want <= set(precision.calibrated_tensors(model))
    ranges = precision.calibration_ranges(model, iter(calib))
    assert all(ranges[t][1] > 0 and ranges[t][0] == -ranges[t][1] for t in want)
    softmax_out = {n.output[0] for n in model.graph.node if n.op_type == "Softmax"}
    assert all(ranges[t][1] <= 1.0 for t in softmax_out)  # probabilities: t <= 1, calibrated, not assumed

    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    qmatmuls = [n for n in q.graph.node if n.op_type == "MatMul"]
    assert len(qmatmuls) == 4
    for n in qmatmuls:
        for i in n.input:
            dq = producers[i]
            assert dq.op_type == "DequantizeLinear", (n.name, i)
            qn = producers[dq.input[0]]
            assert qn.op_type == "QuantizeLinear"  # an activation: Q then DQ, no weight initializer
            scale, zp = inits[qn.input[1]], inits[qn.input[2]]
            assert scale.size == 1 and zp.dtype == np.int8 and not zp.any()
            lo, hi = ranges[qn.input[0]]
            assert np.isclose(float(scale), hi / 127.0, rtol=1e-5), qn.input[0]
    for n in q.graph.node:  # MatMul outputs (scores, attended values) stay float
        if n.op_type == "QuantizeLinear":
            assert producers.get(n.input[0]) is None or producers[n.input[0]].op_type not in precision.WEIGHTED_OPS
    first = precision.input_layers(model)[0]
    assert next(n for n in q.graph.node if n.name == first).input[0] == q.graph.input[0].name


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_snet_runs_on_each_backend(backend):
    """The Dice against FP32 is reported, not gated: random weights are not a trained network. ONNX
    Runtime follows the Q/DQ arithmetic of the specification, so its INT8 logits must follow FP32's
    (correlation > 0.9). OpenVINO's INT8 arithmetic depends on the CPU: 0.68 on a 2-core AMD EPYC with
    AVX-512 VNNI (2026-12-03), above 0.9 on the Intel Xeon with AMX of the day before, and known wrong on
    AVX2 without VNNI. So on OpenVINO the test asserts that the quantized graph runs, quantized (not the
    FP32 result) and finite; whether its result is good enough is the per-backend gate's call
    (`lnrt export variants`, README "Precision variants")."""
    _, model, x, _ = _case("snet25d", "instance")
    q, _ = _int8_snet()
    ref, got = _run(model, x, backend), _run(q, x, backend)
    assert got.shape == ref.shape and np.isfinite(got).all()
    corr = np.corrcoef(ref.ravel(), got.ravel())[0, 1]
    if backend == "onnxruntime":
        assert corr > 0.9, corr
    else:
        assert corr > 0.0 and np.abs(got - ref).max() > 1e-3, corr
    print(f"int8 vs fp32 on {backend}: dice {_dice(ref, got):.4f}, max abs logit diff {np.abs(got - ref).max():.3f}")


class _WeightMatMuls(torch.nn.Module):
    """MatMuls with weights on either side: a 2-D right-hand weight (nn.Linear), a batched 3-D right-hand
    weight and a left-hand weight; ONNX Runtime's default axis 1 fits only the first."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.lin = torch.nn.Linear(4, 6)
        self.wb = torch.nn.Parameter(torch.randn(2, 3, 5) * 0.3)
        self.wa = torch.nn.Parameter(torch.randn(7, 8) * 0.3)

    def forward(self, x):
        y = torch.relu(self.lin(torch.relu(self.conv(x)).permute(0, 2, 3, 1)))  # (B, 8, 8, 6)
        z = torch.matmul(y[..., :3].reshape(-1, 2, 32, 3), self.wb)  # (B, 2, 32, 5)
        w = torch.matmul(self.wa, y.reshape(-1, 8, 48))  # (B, 7, 48)
        return torch.cat([z.reshape(-1, 1, 320), w.reshape(-1, 1, 336)], dim=2)


def test_int8_matmul_weights_are_per_channel_on_the_output_axis_or_per_tensor():
    torch.manual_seed(0)
    net = _WeightMatMuls().eval()
    model = _export(net, (8, 8), 1)
    rng = np.random.default_rng(0)
    q = precision.to_int8(model, [rng.normal(size=(1, 1, 8, 8)).astype(np.float32) for _ in range(2)])
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    producers = {o: n for n in q.graph.node for o in n.output}
    seen = {}
    for n in q.graph.node:
        if n.op_type != "MatMul":
            continue
        for pos, i in enumerate(n.input):
            dq = producers[i]
            assert dq.op_type == "DequantizeLinear"
            if dq.input[0] in inits:  # a weight: int8, symmetric
                w, scale, zp = inits[dq.input[0]], inits[dq.input[1]], inits[dq.input[2]]
                assert w.dtype == np.int8 and not zp.any()
                axis = next((a.i for a in dq.attribute if a.name == "axis"), None)
                seen[(pos, w.ndim)] = (scale.size, axis if scale.size > 1 else None)
    assert seen == {(1, 2): (6, 1),  # nn.Linear's (in, out) weight: per output column
                    (1, 3): (1, None), (0, 2): (1, None)}  # batched and left-hand weights: per tensor
    x = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
    ref = _run(model, x)
    for backend in BACKENDS:
        got = _run(q, x, backend)  # ONNX Runtime refused axis 1 on the batched weight
        assert np.isfinite(got).all() and np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.99, backend
