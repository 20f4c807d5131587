"""The placeholder default model: a hand-weighted ONNX blob detector (no training, no torch).

It stands in for the trained default network until that exists, so that the runtime, the package
format and the CLI can be exercised end to end. It marks compact soft-tissue blobs (lymph-node HU)
that are brighter than their surroundings (fat), using only convolutions with fixed kernels:

    s      = relu(1 - |x - 0.5| / 0.15)           soft-tissue membership (x: HU window -160..240 -> 0..1)
    blob   = box_small(s) - box_large(s)          a difference of boxes, positive on compact blobs
    near   = maxpool(blob)                        spread the blob response to the blob's edge
    node   = 40 * min(near - 0.3, x - 0.325, 0.725 - x)   also within -30..130 HU
    logits = [0, node]

It is NOT a lymph-node model: on real CT it also marks other compact soft tissue. Build with
`python -m lnrt.models.placeholder OUT_DIR` (needs the `onnx` package: `pip install 'lnrt[export]'`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lnrt.package import make_manifest

PATCH = (48, 96, 96)  # z, y, x voxels at 2 x 1 x 1 mm: a 96 mm cube
SPACING = (2.0, 1.0, 1.0)
WINDOW = (-160.0, 240.0)
OPSET = 17


def build_onnx():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def box(inp, out, k):
        """Separable box mean with zero padding: three 1D convolutions."""
        cur = inp
        for axis, n in enumerate(k):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = n
            w = const(f"{out}_w{axis}", np.full(shape, 1.0 / n, np.float32))
            pads = [0, 0, 0, 0, 0, 0]
            pads[axis] = pads[axis + 3] = n // 2
            nxt = f"{out}_{axis}" if axis < 2 else out
            nodes.append(helper.make_node("Conv", [cur, w], [nxt], pads=pads,
                                          kernel_shape=[shape[2], shape[3], shape[4]]))
            cur = nxt
        return out

    x = "image"
    nodes += [
        helper.make_node("Sub", [x, const("half", 0.5)], ["xc"]),
        helper.make_node("Abs", ["xc"], ["xa"]),
        helper.make_node("Div", ["xa", const("band", 0.15)], ["xd"]),
        helper.make_node("Sub", [const("one", 1.0), "xd"], ["s_pre"]),
        helper.make_node("Relu", ["s_pre"], ["s"]),
    ]
    box("s", "small", (3, 5, 5))
    box("s", "large", (7, 17, 17))
    nodes += [
        helper.make_node("Sub", ["small", "large"], ["blob"]),
        helper.make_node("MaxPool", ["blob"], ["near"], kernel_shape=[3, 5, 5], pads=[1, 2, 2, 1, 2, 2]),
        helper.make_node("Sub", ["near", const("blob_t", 0.3)], ["t_blob"]),
        helper.make_node("Sub", [x, const("lo", 0.325)], ["t_lo"]),
        helper.make_node("Sub", [const("hi", 0.725), x], ["t_hi"]),
        helper.make_node("Min", ["t_blob", "t_lo", "t_hi"], ["t_min"]),
        helper.make_node("Mul", ["t_min", const("gain", 40.0)], ["node"]),
        helper.make_node("Mul", ["node", const("zero", 0.0)], ["bg"]),
        helper.make_node("Concat", ["bg", "node"], ["logits"], axis=1),
    ]
    shape_in = ["batch", 1, *PATCH]
    shape_out = ["batch", 2, *PATCH]
    graph = helper.make_graph(
        nodes, "lnrt_placeholder_blob_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape_out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lnrt.models.placeholder")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def manifest() -> dict:
    return make_manifest(
        "lnrt-placeholder-blob-detector", "0.1.0", SPACING, PATCH, {"scheme": "window", "window_hu": list(WINDOW)},
        {"trained_on": "nothing: fixed hand-set convolution weights (a difference-of-boxes blob detector)",
         "intended_use": "placeholder for demonstration and testing of the runtime; not a lymph-node "
                         "model and not for clinical use",
         "built_by": "python -m lnrt.models.placeholder"},
        min_volume_mm3=20.0)


def build_package(out_dir: str | Path) -> Path:
    import onnx

    from lnrt.package import write_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(build_onnx(), str(out / "model.onnx"))
    write_manifest(out, manifest())
    return out


if __name__ == "__main__":
    print(build_package(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "default"))
