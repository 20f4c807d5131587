"""Does OpenVINO's CPU plugin compute a Q/DQ INT8 convolution as the ONNX specification says?

One symmetric int8 activation Q/DQ feeding a 3x3x3 convolution with per-channel int8 weights, run by
ONNX Runtime (the reference semantics) and by OpenVINO, with weights using the full int8 range (127)
and a 7-bit range (63). On x86 CPUs without VNNI, int8 dot products use `vpmaddubsw`, which adds
pairs of u8 x s8 products into a saturating int16: with 8-bit weights, 2 x 255 x 127 overflows it,
with 7-bit weights it cannot (the reason NNCF's "overflow fix" exists). The script also records the
CPU flags, so a result says which machine it came from. Used for issue #4's OpenVINO INT8 finding.

    python benchmarks/openvino_int8_check.py --out benchmarks/results
"""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np


def _model(w: np.ndarray, wmax: int):
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    cout = w.shape[0]
    ws = (np.abs(w).reshape(cout, -1).max(1) / wmax).astype(np.float32)
    inits = [nh.from_array(np.array(0.05, np.float32), "s"), nh.from_array(np.array(0, np.int8), "zp"),
             nh.from_array(np.round(w / ws[:, None, None, None, None]).astype(np.int8), "wq"),
             nh.from_array(ws, "ws"), nh.from_array(np.zeros(cout, np.int8), "wzp")]
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
             h.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"]),
             h.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["w"], axis=0),
             h.make_node("Conv", ["dq", "w"], ["out"], pads=[1] * 6)]
    g = h.make_graph(nodes, "qdq_conv", [h.make_tensor_value_info("x", T.FLOAT, [1, w.shape[1], 8, 16, 16])],
                     [h.make_tensor_value_info("out", T.FLOAT, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    import onnxruntime as ort
    import openvino as ov

    from lnrt.bench import machine_info, save_result

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 8, 3, 3, 3)).astype(np.float32)
    x = (rng.normal(size=(1, 8, 8, 16, 16)) * 2).astype(np.float32)
    core = ov.Core()
    rows = []
    for wmax in (127, 63):
        m = _model(w, wmax)
        ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        got = core.compile_model(core.read_model(m.SerializeToString(), b""), "CPU",
                                 {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
        rows.append({"weight_range": wmax, "max_abs_diff": float(np.abs(ref - got).max()),
                     "output_max_abs": float(np.abs(ref).max())})
        print(f"weights +-{wmax}: max |OpenVINO - ONNX Runtime| = {rows[-1]['max_abs_diff']:.4g} "
              f"(outputs up to {rows[-1]['output_max_abs']:.4g})")
    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    res = {"schema": "lnrt.openvino-int8-check/1", "date": dt.date.today().isoformat(),
           "machine": machine_info(), "cpu_int8_flags": sorted(flags & {"avx2", "avx512f", "avx512_vnni",
                                                                        "avx_vnni", "amx_int8"}),
           "openvino": ov.get_version(), "onnxruntime": ort.__version__, "rows": rows}
    path = save_result(res, args.out, "openvino-int8-check")
    print(path)


if __name__ == "__main__":
    main()
