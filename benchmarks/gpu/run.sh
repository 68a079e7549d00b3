#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one go, on one CUDA GPU, in about 5 minutes:
#
#   bash benchmarks/gpu/run.sh            # results into $OUT if it is set, else benchmarks/gpu/results/
#
# 1. smoke.py: the paths only a GPU exercises (mixed precision, compile, SIGTERM + resume, device views,
#    blockwise DimCL, kNN on the device), JSON with figures;
# 2. the test suite's CUDA cases (tests parametrised with "cuda": device views equal to the per-image path,
#    objectives in float32 under CUDA autocast, kNN on the device);
# 3. benchmarks/speed/gpu.sh: training-step speed of every method and the DimCL loss's memory.
# It uses the machine's python with torch, torchvision, lightning, safetensors and pyyaml already there
# (GPU machines often cannot reach PyPI) and imports dimcl from this checkout's src/ (nothing is installed).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
out="${OUT:-$here/results}"
mkdir -p "$out"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
started=$(date +%s)
timeout 240 "$python" "$here/smoke.py" --out "$out/smoke.json" 2>&1 | tee "$out/smoke.log" || status=1
(cd "$repo" && timeout 120 "$python" -m pytest -q -p no:cacheprovider -k cuda \
    tests/data/test_device_views.py tests/losses/test_objectives.py tests/eval/test_knn.py) 2>&1 \
    | tee "$out/pytest_cuda.log" || status=1
RESULTS="$out" timeout 300 bash "$repo/benchmarks/speed/gpu.sh" 2>&1 | tee "$out/speed.log" || status=1
echo "run.sh: done in $(( $(date +%s) - started )) s, status $status; results in $out"
exit $status
