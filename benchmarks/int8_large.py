"""INT8 of the real-sized model: seconds per tile on each CPU backend against FP32, and argmax agreement.

    python benchmarks/int8_large.py [PACKAGE [TAG]]   (default: benchmarks/peers_large.py's cached package)

A package whose INT8 variant passed its gate (the trained network of `lnrt.models.train_nnunet`, exported
by `lnrt export nnunet`) is timed with that file. Otherwise (the random-weight network, whose INT8 fails
its gate: Dice 0.937 on ONNX Runtime, see the README, "Real-sized models") it is timing only, calibrated
like `lnrt export` (streaming, 6 tiles of 2 phantoms). Two batches of 2 tiles after a warm-up, on random
normal input; the argmax agreement is on that input, the gates' on phantoms. Writes
`benchmarks/results/<host>-<date>-int8-large[-TAG].json`.
"""
import datetime as dt
import json
import sys
import time

import numpy as np
import onnx

from lnrt.export import precision, gate as gates
from lnrt.export.variants import iter_calibration_volumes
from lnrt.session import Session
from lnrt.backends import REGISTRY
from pathlib import Path

from lnrt.bench import machine_info, save_result

pkg = sys.argv[1] if len(sys.argv) > 1 else "/tmp/lnrt-peers-large/pkg"
tag = sys.argv[2] if len(sys.argv) > 2 else ""
gated = Path(pkg) / "model.int8.onnx"
if gated.exists():
    int8_path = gated
else:
    with Session(pkg, backend="onnxruntime") as s:
        tiles = gates.iter_calibration_tiles(s, iter_calibration_volumes(None, 2), per_volume=3, seed=2)
        q = precision.to_int8(onnx.load(f"{pkg}/model.onnx"), tiles)
    int8_path = Path(pkg).parent / "model.int8.timing.onnx"
    onnx.save(q, str(int8_path))
x = np.random.default_rng(0).normal(size=(2, 1, 64, 128, 128)).astype(np.float32)
out = {}
for name, prec in (("openvino", "f32"), ("onnxruntime", "f32")):
    for label, path in (("fp32", f"{pkg}/model.onnx"), ("int8", str(int8_path))):
        be = REGISTRY[name].factory(path, threads=2, precision=prec)
        be.run(x)
        t = time.perf_counter()
        for _ in range(2):
            y = be.run(x)
        out[f"{name}_{label}_s_per_tile"] = round((time.perf_counter() - t) / 4, 3)
        if label == "fp32": ref = y
        else:
            out[f"{name}_int8_argmax_agreement_vs_fp32"] = round(float((y.argmax(1) == ref.argmax(1)).mean()), 4)
print(json.dumps(out))
res = {"schema": "lnrt.int8-large/1", "date": dt.date.today().isoformat(), "machine": machine_info(2),
       "model": f"16.5 M parameter nnU-Net package {pkg}", "int8_file": "the package's gated variant" if gated.exists()
       else "calibrated here for timing (no gated variant in the package)", "results": out}
print(save_result(res, Path(__file__).parent / "results", "int8-large" + (f"-{tag}" if tag else "")))
