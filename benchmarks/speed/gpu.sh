#!/usr/bin/env bash
# The speed benchmark on one CUDA GPU, bf16-mixed, in under 5 minutes; writes its JSON and Markdown next
# to this file, or into $RESULTS when set (benchmarks/gpu/run.sh sets it to the device tool's $OUT). Run
# from anywhere:
#
#   bash benchmarks/speed/gpu.sh
#
# It uses the machine's own python with torch, torchvision and lightning already installed (GPU machines
# often cannot reach PyPI), and imports dimcl from this checkout's src/ (nothing is installed).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
"$python" - <<'PY'
import sys
try:
    import lightning, safetensors, torch, torchvision, yaml  # noqa: F401
except ImportError as err:
    sys.exit(f"gpu.sh needs {err.name} in this python ({sys.executable}); pip install -e . first")
if not torch.cuda.is_available():
    sys.exit("gpu.sh: no CUDA device visible")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
PY
results="${RESULTS:-$here}"
mkdir -p "$results"
started=$(date +%s)
# Training steps of every method (eleven) at batch 256, bf16-mixed, plus the speed switches incl. torch.compile;
# the end-to-end epoch of each on 4096 images (8192 when there were six), to stay within run.sh's 300 s.
"$python" "$here/step_speed.py" --device cuda --batch 256 --precision bf16-mixed --steps 10 --images 4096 \
    --workers 8 --compile --out "$results/step_speed_gpu.json" --md "$results/step_speed_gpu.md"
# DimCL loss alone, plain vs blockwise, D in {256, 2048, 8192} x N in {256, 1024}.
"$python" "$here/dimcl_loss_memory.py" --device cuda --repeats 10 --out "$results/dimcl_loss_memory_gpu.json" \
    --md "$results/dimcl_loss_memory_gpu.md"
echo "gpu.sh: done in $(( $(date +%s) - started )) s; results in $results/*_gpu.{json,md}"
