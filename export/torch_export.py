"""PyTorch -> ONNX: load a module with its weights, export it, simplify, check, and compare with PyTorch.

    module = load_module("lnrt.models.unet:UNet", {"cfg": {...}}, "weights.safetensors")
    onnx_model, check = export_module(module, patch=(48, 96, 96), probe=tiles)

Rules (issue #4):
- Weights are tensors only: safetensors, or a state dict read with `torch.load(weights_only=True)`
  (nested under "state_dict", "model" or "network_weights" is accepted). Anything else is refused
  with a one-line error; pickled modules are never loaded.
- Pinned opset 17, dynamic batch, fixed patch. Deep-supervision outputs are dropped: the module runs in
  eval mode and, if it still returns a list or tuple, only the first (full-resolution) output is kept.
- The graph is simplified by onnxslim when it is installed (constant folding, dead-node removal) and
  always checked with `onnx.checker` (full check, with shape inference).
- Its outputs are compared with PyTorch's on real-looking inputs the caller provides (phantom tiles by
  default): max absolute logit difference and Dice of the argmax foreground.
"""
from __future__ import annotations

import importlib
import io
import json
from pathlib import Path

import numpy as np

from lnrt.errors import LnrtError
from lnrt.optional import require

OPSET = 17
STATE_KEYS = ("state_dict", "model", "network_weights", "model_state_dict")


def _torch():
    return require("torch", "export")


def import_object(path: str):
    """`package.module:Name` (or `package.module.Name`) -> the object."""
    mod, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    if not mod or not name:
        raise LnrtError(f"{path!r}: expected a class path like 'package.module:ClassName'")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as exc:
        raise LnrtError(f"{path!r}: cannot import ({exc}); expected an importable class path") from None


def load_state_dict(path: str | Path) -> dict:
    """Tensors from a safetensors file or a state dict saved with torch.save (weights_only)."""
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise LnrtError(f"{path}: no such weights file; expected a .safetensors or .pt state dict")
    if path.suffix == ".safetensors":
        load_file = require("safetensors.torch", "export", "safetensors").load_file
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise LnrtError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors of many kinds: all mean "not a plain state dict"
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise LnrtError(f"{path}: not a state dict loadable with weights_only=True ({first}); "
                        "expected tensors only (save model.state_dict(), or use safetensors)") from None
    if isinstance(obj, dict):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise LnrtError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors; expected "
                        "model.state_dict() saved with torch.save, or a safetensors file")
    return obj


def load_module(class_path: str, kwargs: dict | None = None, weights: str | Path | None = None):
    """Instantiate `class_path(**kwargs)`, load `weights` strictly, and return it in eval mode."""
    torch = _torch()
    cls = import_object(class_path)
    kwargs = dict(kwargs or {})
    try:
        module = cls(**kwargs)
    except TypeError as exc:
        raise LnrtError(f"{class_path}: cannot build with {json.dumps(list(kwargs))} ({exc})") from None
    if not isinstance(module, torch.nn.Module):
        raise LnrtError(f"{class_path}: built a {type(module).__name__}; expected a torch.nn.Module")
    if weights is not None:
        state = load_state_dict(weights)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise LnrtError(f"{weights}: weights do not fit {class_path} "
                            f"({str(exc).splitlines()[0][:200]})") from None
    return module.eval()


def first_output(module, forward_axes=(0, 1, 2)):
    """`module` in eval mode, wrapped so a deep-supervision list gives only its first (full-resolution)
    output; with `forward_axes` other than (0, 1, 2), input patches are permuted that way before the
    module and the output permuted back (a model trained on transposed axes takes (z, y, x) patches)."""
    torch = _torch()
    fwd = [int(a) for a in forward_axes]
    back = [fwd.index(a) for a in range(3)]

    class FirstOutput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            if fwd != [0, 1, 2]:
                x = x.permute(0, 1, *[2 + a for a in fwd])
            y = self.inner(x)
            y = y[0] if isinstance(y, (list, tuple)) else y
            return y if fwd == [0, 1, 2] else y.permute(0, 1, *[2 + a for a in back])

    return FirstOutput(module.eval()).eval()


def slice_module(module):
    """A 2D module (B, C, y, x) -> (B, K, y, x) as lnrt's slice-model contract: (B, 1, C, y, x) ->
    (B, K, 1, y, x), C = 1 + 2 * context slices. Every lnrt component then sees a rank-5 model (the
    backends, the gates, calibration, TensorRT profiles): the tile's slab is the channel axis, and the
    reshape is free in every backend (contiguous, no copy)."""
    torch = _torch()

    class Slices(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x.flatten(1, 2))
            y = y[0] if isinstance(y, (list, tuple)) else y
            return y.unsqueeze(2)

    return Slices(module.eval()).eval()


def simplify(model):
    """onnxslim when installed; returns (model, tool name or None)."""
    try:
        import onnxslim
    except ImportError:
        return model, None
    return onnxslim.slim(model), f"onnxslim {getattr(onnxslim, '__version__', '')}".strip()


def export_module(module, patch, in_channels: int = 1, probe: list | None = None):
    """ONNX model (opset 17, dynamic batch) of `module` and its parity with PyTorch on `probe` tiles."""
    torch = _torch()
    import onnx

    if len(patch) != 3 or any(int(p) < 1 for p in patch):
        raise LnrtError(f"patch {patch}: expected three positive integers (z, y, x)")
    net = first_output(module)
    buf = io.BytesIO()
    dummy = torch.zeros(1, in_channels, *[int(p) for p in patch])
    with torch.no_grad():
        try:
            torch.onnx.export(net, dummy, buf, opset_version=OPSET, input_names=["image"],
                              output_names=["logits"], do_constant_folding=True, dynamo=False,
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        except Exception as exc:  # tracing errors come from many places
            raise LnrtError(f"ONNX export failed for patch {tuple(patch)}: {str(exc).splitlines()[0][:200]}") from None
    model = onnx.load_from_string(buf.getvalue())
    model, tool = simplify(model)
    onnx.checker.check_model(model, full_check=True)
    check = {"opset": OPSET, "torch": torch.__version__, "simplified_with": tool,
             "onnx_ops": sorted({n.op_type for n in model.graph.node})}
    if probe:
        check.update(torch_parity(net, model, probe))
    return model, check


def torch_parity(net, model, tiles: list) -> dict:
    torch = _torch()
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    err, inter, total = 0.0, 0, 0
    for t in tiles:
        with torch.no_grad():
            ref = net(torch.from_numpy(np.ascontiguousarray(t, np.float32))).numpy()
        got = sess.run(None, {"image": t.astype(np.float32)})[0]
        err = max(err, float(np.abs(got - ref).max()))
        a, b = ref.argmax(1) > 0, got.argmax(1) > 0
        inter += int(np.count_nonzero(a & b))
        total += int(np.count_nonzero(a) + np.count_nonzero(b))
    return {"parity_tiles": len(tiles), "max_abs_logit_diff": err,
            "argmax_dice": 1.0 if total == 0 else 2 * inter / total}
