#!/usr/bin/env bash
# The prepared GPU suite, for a lent H100/H200 machine in one go (budget: at most 8 minutes).
#
# On this machine first (the device has CuPy, PyTorch and ONNX Runtime's CPU build, not SimpleITK, cc3d,
# isal or click), put Python 3.12 wheels in .whl/ (about 60 MB, one transfer):
#   pip download --only-binary=:all: --python-version 3.12 --no-deps -d .whl SimpleITK connected-components-3d isal click
# then run it there through the device tool, carrying .whl:
#   run(command="bash benchmarks/gpu_suite.sh", carry=[".whl"], timeout_s=540)
# It writes under $OUT: gpu.json (GPU, driver, CUDA), twins.log (the kernel tests on the real GPU),
# memcheck.log (compute-sanitizer memcheck over the CUDA twin tests), kernels.json (components + statistics
# on the GPU vs cc3d + NumPy on the same labels) and suite.json (each step's exit status and seconds).
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
step install 120 python3 -m pip install -q --no-index --no-deps .whl/*.whl
step install_lnrt 60 python3 -m pip install -q --no-deps --no-build-isolation -e .
step gpu 30 python3 -c "import json; from lnrt.device import probe_gpu; p = probe_gpu(); print(json.dumps({'ok': p.ok, 'reason': p.reason, **(p.to_dict() or {})}))"
cp "$OUT/gpu.log" "$OUT/gpu.json"
step twins 150 python3 -m pytest -q -p no:cacheprovider tests/test_twins.py tests/test_kernels.py -k "cuda or nvcc or kernel"
step memcheck 150 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -m pytest -q -p no:cacheprovider tests/test_twins.py -k "cuda and not emulat"
step kernels 90 python3 benchmarks/kernels_bench.py --out "$OUT"
( IFS=,; echo "[${STEPS[*]}]" ) > "$OUT/suite.json"
cat "$OUT/suite.json"
