"""Precision variants of an FP32 ONNX model: FP16 with casts, INT8 with symmetric Q/DQ.

TensorRT 11 is strongly typed only, so precision must live in the ONNX file itself (docs/ARCHITECTURE.md):

- **FP16** (`to_fp16`): every node of a known numerically safe op type runs in float16; normalization
  layers, softmax, reductions, exponentials and any op this converter does not know keep float32, with a
  Cast inserted wherever a tensor crosses between the two. Graph inputs and outputs stay float32, so a
  runtime feeds and reads the same arrays for every variant. Written here rather than taken from
  onnxconverter-common so the list of kept ops is ours, explicit and tested.
- **INT8** (`to_int8`): ONNX Runtime's static quantizer in QDQ format with symmetric int8 activations
  and symmetric per-channel int8 weights (zero points 0, which TensorRT requires), calibrated on tiles
  the caller provides. The activation ranges are lnrt's own (`calibration_ranges`): tile by tile into a
  fixed-size histogram per tensor, handed to the quantizer as a calibration cache, so memory does not
  grow with the calibration set (ONNX Runtime's percentile calibrator keeps every tile's activations).
  Q/DQ pairs sit only on the inputs of the weighted layers (Conv, ConvTranspose,
  Gemm, MatMul): the placement the TensorRT developer guide recommends for explicit quantization
  ("Q/DQ layer placement": quantize the inputs of weighted operations, not their outputs). A MatMul of
  two activations (self-attention's Q K^T and attention V, `lnrt.models.attention`) gets a calibrated
  per-tensor pair on both inputs, its softmax probabilities included (symmetric, so [0, t] with t <= 1
  gets 127 steps); MatMul weights are per channel on the output axis where ONNX Runtime supports it,
  per tensor elsewhere (`matmul_weight_overrides`). The file
  loads on ONNX Runtime, OpenVINO and TensorRT 10/11, but a backend's int8 kernels may not compute it
  as the specification says (OpenVINO on an AVX2 CPU without VNNI does not), which is why
  `lnrt.export.variants` gates each variant on every installed backend.

Both take a `keep` list of node names to leave in float32, which is what a failing parity gate
suggests (see `lnrt.export.gate.layer_errors`). This module needs onnx and onnxruntime, never torch.
"""
from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import numpy as np

from lnrt.errors import LnrtError
from lnrt.optional import require

# Ops that are safe in float16 and whose float inputs are all data (or, for the listed ops, only the
# given input positions are data; the rest are shapes, scales or indices that must keep their type).
FP16_OPS = {
    "Conv": None, "ConvTranspose": None, "Relu": None, "LeakyRelu": None, "PRelu": None, "Sigmoid": None,
    "Tanh": None, "Add": None, "Sub": None, "Mul": None, "Concat": None, "MaxPool": None,
    "AveragePool": None, "Identity": None, "Transpose": None, "Clip": None, "Gemm": None, "MatMul": None,
    "Resize": (0,), "Reshape": (0,), "Slice": (0,), "Pad": (0, 2), "Upsample": (0,), "Squeeze": (0,),
    "Unsqueeze": (0,), "Expand": (0,), "Split": (0,), "Flatten": None,
}
# Kept in float32 on purpose (accumulation-sensitive): listed for the report; anything not in FP16_OPS
# is kept too.
FP32_OPS = ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
            "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow",
            "Sqrt", "Exp", "Log", "Div", "Erf")


def _onnx():
    return require("onnx", "export")


def tensor_types(model) -> dict:
    """Element type of every tensor in the graph (after shape inference)."""
    onnx = _onnx()
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    return types


def to_fp16(model, keep: Iterable[str] = ()):
    """A float16 copy of `model` (an onnx.ModelProto, left unchanged); float32 inputs and outputs kept."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    src, model = model, onnx.ModelProto()
    model.CopyFrom(src)  # the caller's model stays float32 (it used to be converted in place)
    keep = set(keep)
    F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    types = tensor_types(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    mode_of = {}
    for node in graph.node:
        mode_of[node.name] = F16 if node.op_type in FP16_OPS and node.name not in keep else F32

    # float initializers used only by fp16 nodes become fp16 in place; the others keep fp32
    users = {}
    for node in graph.node:
        for pos, name in enumerate(node.input):
            users.setdefault(name, []).append((node, pos))
    current = {}  # tensor name -> its element type in the new graph
    for name, init in inits.items():
        current[name] = init.data_type
        if init.data_type == F32 and users.get(name) and all(
                mode_of[n.name] == F16 and _is_data(n, p) for n, p in users[name]):
            arr = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(arr, name))
            current[name] = F16
    for vi in graph.input:
        current[vi.name] = vi.type.tensor_type.elem_type

    new_nodes, casts = [], {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            out = f"{name}__to_{'fp16' if to == F16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], name=f"{out}_cast", to=to))
            casts[key] = out
        return casts[key]

    for node in graph.node:
        mode = mode_of[node.name]
        for pos, name in enumerate(node.input):
            if not name or current.get(name, types.get(name)) not in (F32, F16):
                continue
            if mode == F16 and not _is_data(node, pos):
                continue
            if current.get(name, types.get(name)) != mode:
                node.input[pos] = cast(name, mode)
        new_nodes.append(node)
        for out in node.output:
            t = types.get(out)
            if node.op_type == "Cast":
                current[out] = next(a.i for a in node.attribute if a.name == "to")
            elif t in (F32, F16):
                current[out] = mode
            elif t is not None:
                current[out] = t
    # graph outputs stay float32
    for vo in graph.output:
        if current.get(vo.name) == F16:
            producer = next(n for n in new_nodes if vo.name in n.output)
            inner = f"{vo.name}__fp16"
            producer.output[list(producer.output).index(vo.name)] = inner
            for n in new_nodes:
                for i, name in enumerate(n.input):
                    if name == vo.name:
                        n.input[i] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [vo.name], name=f"{vo.name}_to_fp32", to=F32))
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    out = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(out)
    return out


def _is_data(node, pos: int) -> bool:
    spec = FP16_OPS.get(node.op_type)
    return spec is None or pos in spec


def fp32_nodes(model) -> list:
    """Names of the compute nodes an FP16 model still runs in float32 (for the gate report)."""
    _onnx()
    from onnx import TensorProto

    types = tensor_types(model)
    return [n.name for n in model.graph.node if n.op_type != "Cast" and n.output
            and types.get(n.output[0]) == TensorProto.FLOAT]


def input_layers(model) -> list:
    """The nodes that read the graph's input image directly."""
    name = model.graph.input[0].name
    return [n.name for n in model.graph.node if name in n.input]


CALIBRATION = ("minmax", "percentile")
# Only these ops get Q/DQ, and only on their inputs (see to_int8's docstring for the measurement).
WEIGHTED_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul"]


@contextmanager
def _root_logger_kept_quiet():
    """ONNX Runtime's quantizer warns through `logging.warning`, which gives the root logger a stderr
    handler when it has none: every later lnrt log line would then print twice. A NullHandler for the
    duration keeps the root logger as it was."""
    root = logging.getLogger()
    null = logging.NullHandler() if not root.handlers else None
    if null:
        root.addHandler(null)
    try:
        yield
    finally:
        if null:
            root.removeHandler(null)


HIST_BINS = 2048  # ONNX Runtime's default for percentile calibration: 2048 bins over [0, max |x|]
# ONNX Runtime's percentile calibrator, as lnrt called it before (99.999, not symmetric), cut (100 - 99.999) / 2
# from each signed tail, and the symmetric quantizer took the larger end: for the mostly non-negative
# activations after LeakyReLU that is the 99.9995th percentile of x, which this |x| percentile keeps
PERCENTILE = 99.9995


class AbsHistogram:
    """A histogram of |x| with a fixed number of bins, fed array by array (streaming percentiles).

    The bins cover [0, bins * width). The first array sets the width (just over its max |x| / bins); an
    array with a |x| beyond the last bin doubles the width, merging neighbouring bins pairwise, until it
    fits. The merge is exact (every count stays in the bin that holds its old bin), so the result does not
    depend on how the data were split into arrays beyond the width's power of two; memory is `bins`
    counts whatever the data."""

    def __init__(self, bins: int = HIST_BINS):
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.counts, self.width = np.zeros(bins, dtype=np.int64), 0.0
        self.lo, self.hi = np.inf, -np.inf

    def add(self, a: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.float32).ravel()
        if a.size == 0:
            return
        lo, hi = float(a.min()), float(a.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise LnrtError(f"INT8 calibration: an activation holds {'NaN' if np.isnan(lo + hi) else 'inf'}; "
                            "expected finite values (check the model and the calibration scans)")
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        a = np.abs(a)
        top, n = float(a.max()), self.counts.size
        if self.width == 0.0:  # every bin in use, the largest value just inside the last one
            self.width = top / n * (1.0 + 1e-6) if top > 0 else 0.0
        while top >= self.width * n and self.width > 0:
            self.counts = np.concatenate([self.counts.reshape(n // 2, 2).sum(axis=1), np.zeros(n // 2, np.int64)])
            self.width *= 2.0
        if self.width == 0.0:  # every value so far is 0
            self.counts[0] += a.size
            return
        idx = np.minimum((a / np.float32(self.width)).astype(np.int64), n - 1)
        self.counts += np.bincount(idx, minlength=n)

    def threshold(self, percentile: float = PERCENTILE) -> float:
        """The upper edge of the bin where the share `percentile` of |x| is reached, at most max |x|."""
        total = int(self.counts.sum())
        if total == 0 or self.width == 0.0:
            return 0.0
        i = int(np.searchsorted(np.cumsum(self.counts), percentile / 100.0 * total))
        return min((i + 1) * self.width, max(abs(self.lo), abs(self.hi)))


def calibrated_tensors(model, op_types=None, outputs: bool = False) -> list:
    """The float activations the quantizer needs ranges for, in graph order: the non-constant inputs of
    the nodes of `op_types`, and with `outputs` their outputs too (ONNX Runtime's own selection). With
    the outputs of weighted layers excluded from quantization (`to_int8`) their ranges are never used:
    the quantized file is byte for byte the same without them (tested), and calibration exposes, and
    holds in memory, half the tensors."""
    op_types = set(op_types or WEIGHTED_OPS)
    consts = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                           for o in n.output}
    seen, out = set(), []
    for node in model.graph.node:
        if node.op_type in op_types:
            for t in list(node.input) + (list(node.output) if outputs else []):
                if t and t not in consts and t not in seen:
                    seen.add(t)
                    out.append(t)
    return out


def matmul_weight_overrides(model) -> dict:
    """ONNX Runtime quantizer overrides (`TensorQuantOverrides`) for the MatMul weights whose per-channel
    axis its default gets wrong. The quantizer quantizes every initializer input of a MatMul per channel
    along axis 1, the output axis only for a 2-D right-hand weight B (K, N), as nn.Linear exports. For a
    left-hand weight A (M, K) axis 1 is the reduction axis K; for a B of rank 3 or more it is a batch or
    the reduction axis, and ONNX Runtime refuses the file at run time ("b zero point is not valid"). Its
    fused int8 MatMul takes no per-column scales for a batched B either (onnxruntime 1.32), so A and B
    weights of a rank other than 2 are quantized per tensor (symmetric). 2-D B weights get no override and
    their files stay as they were. Activation inputs (attention's Q K^T and attention V) need none: they
    get per-tensor Q/DQ with their calibrated ranges like every other activation."""
    inits = {i.name: len(i.dims) for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        for pos, name in enumerate(node.input[:2]):
            rank = inits.get(name)
            if rank is None:
                continue
            if pos == 0 or rank != 2:
                out[name] = [{"symmetric": True}]
    return out


def calibration_ranges(model, tiles: Iterable, method: str = "percentile", threads: int | None = None,
                       progress=None, outputs: bool = False) -> dict:
    """{tensor: (low, high)} over `tiles` (an iterable of (1, C, z, y, x) float32 arrays, or (1, C, y, x)
    for a slice model), one tile at a time: the tiles are consumed lazily and each tile's activations
    are reduced to its histogram and dropped before the next tile runs, so peak memory is one tile's
    activations whatever the number of tiles. "minmax" gives the exact (min, max); "percentile" the
    symmetric range (-t, t) with t the `PERCENTILE` of |x| (`AbsHistogram`). `progress(i)` is called
    after tile i (1-based)."""
    onnx = _onnx()
    import onnxruntime as ort

    if method not in CALIBRATION:
        raise LnrtError(f"unknown calibration method {method!r}; expected one of {', '.join(CALIBRATION)}")
    names = calibrated_tensors(model, outputs=outputs)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in known)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor named
    opts.enable_mem_pattern = False
    opts.enable_cpu_mem_arena = False  # each tile's tensors go back to the system, not to a growing arena
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed_name = model.graph.input[0].name
    hists = {t: AbsHistogram() for t in names}
    n = 0
    for tile in tiles:
        outs = sess.run(names, {feed_name: np.ascontiguousarray(tile, np.float32)})
        del tile
        for i, t in enumerate(names):
            hists[t].add(outs[i])
            outs[i] = None  # freed as soon as it is counted
        n += 1
        if progress:
            progress(n)
    del sess
    if n == 0:
        raise LnrtError("INT8 calibration needs at least one tile; expected calibration volumes")
    if method == "minmax":
        return {t: (h.lo, h.hi) for t, h in hists.items()}
    return {t: (-h.threshold(), h.threshold()) for t, h in hists.items()}


def to_int8(model, tiles: Iterable, keep: Iterable[str] = (), keep_input_layer: bool = True,
            method: str = "percentile", threads: int | None = None, progress=None):
    """An INT8 Q/DQ copy of `model` calibrated on `tiles` (an iterable of (1, C, z, y, x) float32, or
    (1, C, y, x) for a slice model, consumed one at a time: see `calibration_ranges`).

    The input layer stays in float32 by default: int8 over a 600 HU window is a 4.7 HU step (9.4 HU
    with a symmetric range over a non-negative input), coarser than the 20-40 HU contrast between a
    node and muscle; measured on the default model, quantizing it triples the logit error and drops
    the node-mask Dice from 0.96 to 0.30 on tiles. Percentile calibration (99.999 %) clips rare
    activation outliers that min/max would spend the range on.

    Q/DQ go on the inputs of weighted layers only (`WEIGHTED_OPS`), never on their outputs or around
    activations. ONNX Runtime's default also quantizes LeakyReLU's input, the pre-activation tensor,
    whose symmetric range is spent largely on negative values that LeakyReLU then shrinks 100-fold,
    and the outputs of weighted layers, the logits among them. On
    default model 1.1 that default failed the parity gate (matched short axes off by up to 0.99 mm,
    Dice 0.984); weighted-input placement passes it (0.24 mm, Dice 0.991) with half the Q/DQ pairs.

    Attention MatMuls have no weight: both inputs are activations with calibrated ranges, so both get
    Q/DQ (`calibrated_tensors` already lists both; "MatMulConstBOnly" is set off explicitly). On a
    random-weight `SNet25D` leaving its four attention MatMuls in float32 changes the INT8-vs-FP32 tile
    Dice only from 0.913 to 0.912 on the phantom crops of tests/test_attention.py: the convolutions
    dominate the error."""
    onnx = _onnx()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    import inspect

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise LnrtError(f"INT8 export needs onnxruntime >= 1.32 (its quantizer's calibration cache); this is "
                        f"{onnxruntime.__version__}: pip install 'onnxruntime>=1.32'")
    ranges = calibration_ranges(model, tiles, method, threads, progress)
    keep = list(keep) + (input_layers(model) if keep_input_layer else [])
    # MatMulConstBOnly off (its default for static quantization, stated here): a MatMul of two
    # activations (attention's Q K^T and attention V) gets a Q/DQ pair on both inputs
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "MatMulConstBOnly": False,
             "OpTypesToExcludeOutputQuantization": WEIGHTED_OPS}
    overrides = matmul_weight_overrides(model)
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    cal = CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.MinMax
    data = TensorsData(cal, {t: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                             for t, (lo, hi) in ranges.items()})
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, cache = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", Path(tmp) / "ranges.json"
        onnx.save(model, str(src))
        save_tensors_data(data, cache)  # the quantizer reads the ranges instead of calibrating again
        with _root_logger_kept_quiet():
            quantize_static(
                str(src), str(dst), None, quant_format=QuantFormat.QDQ, per_channel=True,
                op_types_to_quantize=WEIGHTED_OPS,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(keep),
                calibrate_method=cal, extra_options=extra, calibration_cache_path=str(cache),
            )
        out = onnx.load(str(dst))
    onnx.checker.check_model(out)
    return out
