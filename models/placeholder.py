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

The multi-class variant (`build_package(out, classes=CLASSES_NPE)`, for the tests of multi-class
outputs) splits the same node logit into three node classes by density, as a stand-in for N / P / ENE
(Chang et al.): negative below 25 HU, positive 25-55 HU, extranodal extension above 55 HU. Each class's
logit is `node + score_c - max(scores)`, so a voxel is a node exactly where the binary model's is and
takes the class whose density band it lies in (scores: 40 x the signed distance into each band).
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
CLASSES_NPE = ("background", "node_n", "node_p", "node_ene")
NPE_CUTS_HU = (25.0, 55.0)  # N below the first, P between, ENE above the second


def _window_x(hu: float) -> float:
    return (hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0])


def _class_logits(nodes: list, const, helper) -> list:
    """Node-class logits (node_n, node_p, node_ene) from the node logit `node` and the input's density."""
    lo, hi = (_window_x(c) for c in NPE_CUTS_HU)
    nodes += [
        helper.make_node("Sub", [const("cut_lo", lo), "image"], ["d_n"]),
        helper.make_node("Sub", ["image", "cut_lo"], ["d_p_lo"]),
        helper.make_node("Sub", [const("cut_hi", hi), "image"], ["d_p_hi"]),
        helper.make_node("Min", ["d_p_lo", "d_p_hi"], ["d_p"]),
        helper.make_node("Sub", ["image", "cut_hi"], ["d_e"]),
        helper.make_node("Max", ["d_n", "d_p", "d_e"], ["d_max"]),
    ]
    out = []
    for name in ("n", "p", "e"):
        nodes += [helper.make_node("Sub", [f"d_{name}", "d_max"], [f"rel_{name}"]),
                  helper.make_node("Mul", [f"rel_{name}", const(f"gain_{name}", 40.0)], [f"score_{name}"]),
                  helper.make_node("Add", ["node", f"score_{name}"], [f"logit_{name}"])]
        out.append(f"logit_{name}")
    return out


def build_onnx(classes: tuple = ("background", "lymph_node")):
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
    ]
    fg = ["node"] if len(classes) == 2 else _class_logits(nodes, const, helper)
    nodes.append(helper.make_node("Concat", ["bg", *fg], ["logits"], axis=1))
    shape_in = ["batch", 1, *PATCH]
    shape_out = ["batch", len(classes), *PATCH]
    graph = helper.make_graph(
        nodes, "lnrt_placeholder_blob_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape_out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lnrt.models.placeholder")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def manifest(classes: tuple = ("background", "lymph_node")) -> dict:
    name = "lnrt-placeholder-blob-detector" + ("" if len(classes) == 2 else f"-{len(classes)}-classes")
    return make_manifest(
        name, "0.1.0", SPACING, PATCH, {"scheme": "window", "window_hu": list(WINDOW)},
        {"trained_on": "nothing: fixed hand-set convolution weights (a difference-of-boxes blob detector)",
         "intended_use": "placeholder for demonstration and testing of the runtime; not a lymph-node "
                         "model and not for clinical use",
         "built_by": "python -m lnrt.models.placeholder"},
        min_volume_mm3=20.0, classes=list(classes))


def build_package(out_dir: str | Path, classes: tuple = ("background", "lymph_node")) -> Path:
    import onnx

    from lnrt.package import write_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(build_onnx(classes), str(out / "model.onnx"))
    write_manifest(out, manifest(classes))
    return out


if __name__ == "__main__":
    print(build_package(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "default"))
