#!/usr/bin/env bash
# The whole speed benchmark on this machine's CPU, one command (about 30 minutes on 2 cores):
#
#   bash benchmarks/speed/run.sh
#
# Writes step_speed_cpu.{json,md}, dimcl_loss_memory_cpu.{json,md} and vs_lightly_cpu.{json,md} next to this
# file. The lightly comparison gets its own environment (benchmarks/speed/.venv-lightly, set up on the
# first run; lightly is never a dependency of dimcl). SKIP_LIGHTLY=1 leaves it out.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="$repo/.venv/bin/python"
make -C "$repo" --no-print-directory .venv/.installed >/dev/null
started=$(date +%s)
"$python" "$here/step_speed.py" --device cpu --batch 256 --steps 2 --images 512 --workers 2 \
    --out "$here/step_speed_cpu.json" --md "$here/step_speed_cpu.md"
"$python" "$here/dimcl_loss_memory.py" --device cpu --out "$here/dimcl_loss_memory_cpu.json" \
    --md "$here/dimcl_loss_memory_cpu.md"
if [ "${SKIP_LIGHTLY:-0}" != 1 ]; then
    bash "$here/setup_lightly_env.sh"
    "$here/.venv-lightly/bin/python" "$here/vs_lightly.py" --device cpu --batch 64 --images 512 --workers 2 \
        --repeats 1 --out "$here/vs_lightly_cpu.json" --md "$here/vs_lightly_cpu.md"
fi
echo "run.sh: done in $(( $(date +%s) - started )) s"
