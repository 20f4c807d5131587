#!/usr/bin/env bash
# The prepared GPU suite, for a lent H100/H200 machine in one go (budget: at most 8 minutes).
#
# On this machine first (the device has CuPy, PyTorch and ONNX Runtime's CPU build, not SimpleITK, cc3d,
# isal, click or pydicom), put Python 3.12 wheels in .whl/ (about 62 MB, one transfer):
#   pip download --only-binary=:all: --python-version 3.12 --no-deps -d .whl SimpleITK connected-components-3d \
#       isal click pydicom
# then run it there through the device tool, carrying .whl:
#   run(command="bash benchmarks/gpu_suite.sh", carry=[".whl"], timeout_s=540)
# It writes under $OUT: gpu.json (GPU, driver, CUDA), twins.log (the kernel tests on the real GPU: labels,
# statistics, RECIST axes), memcheck.log (compute-sanitizer memcheck over the CUDA twin tests),
# pipeline.log (the device pipeline's parity with the CPU pipeline, on the GPU), kernels.json (components +
# statistics + RECIST on the GPU vs cc3d + NumPy + lnrt.recist on the same labels), device-stages.json (the
# whole-neck scan per stage, stages on the GPU vs the CPU, the network on ONNX Runtime's CPU build, which is
# all the device has: onnxruntime-gpu is 255 MB, more than one transfer) and suite.json (each step's exit
# status and seconds).
# Commit what comes back to benchmarks/results/ with the machine's name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
STEPS=()
step() {  # step NAME SECONDS COMMAND...: run with a time limit, record status and duration
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  STEPS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}")
  echo "$name: rc=$rc in $((SECONDS - t0)) s"
}
step install 60 python3 -m pip install -q --no-index --no-deps .whl/*.whl
step install_lnrt 30 python3 -m pip install -q --no-deps --no-build-isolation -e .
step gpu 20 python3 -c "import json; from lnrt.device import probe_gpu; p = probe_gpu(); print(json.dumps({'ok': p.ok, 'reason': p.reason, **(p.to_dict() or {})}))"
cp "$OUT/gpu.log" "$OUT/gpu.json"
step twins 60 python3 -m pytest -q -p no:cacheprovider tests/test_twins.py tests/test_kernels.py \
  -k "(cuda and not emulat) or nvcc or citation"
step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -p no:cacheprovider \
  tests/test_twins.py -k "cuda and not emulat and not large"
step pipeline 60 python3 -m pytest -q -p no:cacheprovider tests/test_device_pipeline.py -k "cuda and not emulated"
step kernels 45 python3 benchmarks/kernels_bench.py --out "$OUT"
step stages 90 python3 benchmarks/device_stages.py --repeat 1 --out "$OUT"
( IFS=,; echo "[${STEPS[*]}]" ) > "$OUT/suite.json"
cat "$OUT/suite.json"
