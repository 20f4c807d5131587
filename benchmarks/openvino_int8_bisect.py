"""Which layers make the default model's INT8 go wrong on OpenVINO (issue #4's bisection, scripted).

    python benchmarks/openvino_int8_bisect.py [--model PKG] [--out benchmarks/results]

`benchmarks/openvino_int8_check.py` shows that one Q/DQ convolution with full-range int8 weights
saturates on x86 CPUs without VNNI. This script asks the model-level question: INT8 candidates of the
package, calibrated as `lnrt export variants` calibrates (neck phantoms 40000+, percentile 99.999,
Q/DQ on the inputs of weighted layers, input layer in float32), each run through the full parity gate
(`lnrt.export.gate.run_gate`: 3 validation phantoms, node-mask Dice and matched short axes against
FP32) on ONNX Runtime and on OpenVINO:
- `all`: every convolution but the input layer quantized (the shipped INT8);
- `concat_only`: only the convolutions that read a Concat (the decoder's first convolution at each
  level) quantized;
- `no_concat`: every convolution but those quantized;
- the same three with 7-bit weights (+-63): the weights of each Q/DQ convolution requantized so that
  a u8 x s8 pair sum cannot overflow int16 (2 x 255 x 63 < 32767).
Writes `<host>-<date>-openvino-int8-bisect.json` with the CPU flags, and prints a table.
"""
from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np


def concat_fed_convs(model) -> list:
    """Names of the Conv nodes whose data input is a Concat's output."""
    concat_out = {o for n in model.graph.node if n.op_type == "Concat" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] in concat_out]


def seven_bit_weights(model):
    """A copy whose per-channel int8 Conv weights use +-63 instead of +-127 (scales doubled to match)."""
    import copy

    from onnx import numpy_helper as nh

    m = copy.deepcopy(model)
    inits = {i.name: i for i in m.graph.initializer}
    conv_weights = {n.input[1] for n in m.graph.node if n.op_type == "Conv"}
    for n in m.graph.node:
        if n.op_type != "DequantizeLinear" or n.output[0] not in conv_weights or n.input[0] not in inits:
            continue
        q = nh.to_array(inits[n.input[0]])
        scale = nh.to_array(inits[n.input[1]])
        if q.dtype != np.int8:
            continue
        ratio = 127.0 / 63.0
        q7 = np.clip(np.round(q.astype(np.float64) / ratio), -63, 63).astype(np.int8)
        inits[n.input[0]].CopyFrom(nh.from_array(q7, n.input[0]))
        inits[n.input[1]].CopyFrom(nh.from_array((scale * ratio).astype(scale.dtype), n.input[1]))
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    import onnx

    from lnrt.bench import machine_info, save_result
    from lnrt.export import gate as gates
    from lnrt.export.precision import input_layers, to_int8
    from lnrt.export.variants import calibration_volumes
    from lnrt.package import ModelPackage

    pkg = ModelPackage.load(args.model)
    fp32 = onnx.load(str(pkg.onnx_path("fp32")))
    convs = [n.name for n in fp32.graph.node if n.op_type == "Conv"]
    concat = concat_fed_convs(fp32)
    first = input_layers(fp32)
    volumes = gates.gate_volumes(3)
    from lnrt.session import Session

    with Session(pkg, backend="onnxruntime", device="cpu") as prep:
        check_tiles = gates.calibration_tiles(prep, volumes[:1], per_volume=2, seed=1)
        tiles = gates.calibration_tiles(prep, calibration_volumes(None, 4), seed=2)
    refs = {b: gates.fp32_reference(pkg, volumes, backend=b, tiles=check_tiles) for b in ("onnxruntime", "openvino")}
    keeps = {"all": [], "concat_only": [c for c in convs if c not in concat and c not in first],
             "no_concat": concat}
    rows = []
    for name, keep in keeps.items():
        base = to_int8(fp32, tiles, keep)
        for bits, cand in ((8, base), (7, seven_bit_weights(base))):
            row = {"candidate": name, "weight_bits": bits, "fp32_convs": sorted(set(keep) | set(first))}
            for b, ref in refs.items():
                rep = gates.run_gate(pkg, "int8", cand, volumes, check_tiles, backend=b, reference=ref,
                                     diagnose=False)
                row[b] = {**gates.summary_line(rep), "nodes": rep["nodes"], "nodes_fp32": rep["nodes_fp32"],
                          "tile_logit_max_abs_diff": rep["tiles"].get("max_abs_logit_diff"),
                          "tile_argmax_agreement": rep["tiles"].get("argmax_agreement")}
            rows.append(row)
            print(f"{name:<12} {bits}-bit  " + "  ".join(
                f"{b}: Dice {row[b]['dice']:.4f}, short axes {row[b]['short_axis_max_diff_mm']:.2f} mm, "
                f"{'pass' if row[b]['passed'] else 'FAIL'}" for b in refs), flush=True)
    result = {"benchmark": "openvino_int8_bisect", "date": dt.date.today().isoformat(),
              "machine": machine_info(), "model": pkg.summary(), "concat_fed_convs": concat,
              "input_layer": first, "thresholds": "node-mask Dice >= 0.97, matched short axes within 0.5 mm",
              "rows": rows}
    print(f"wrote {save_result(result, args.out, 'openvino-int8-bisect')}")


if __name__ == "__main__":
    main()
