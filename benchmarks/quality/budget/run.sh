#!/usr/bin/env bash
# The study, round two, part 3 (grid.yaml beside this file). Resumable: finished cells are skipped, so this is
# the one command to start or continue it in any session. Two shards side by side, one thread each.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DIMCL=${DIMCL:-.venv/bin/dimcl}
HERE=benchmarks/quality/budget
GRID=$HERE/grid.yaml
OUT=$HERE/results
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
for k in 1 2; do
    "$DIMCL" sweep --grid "$GRID" --out "$OUT" --shard "$k/2" > "$HERE/sweep.shard$k.log" 2>&1 &
done
wait
# Floors and ceiling of the same protocol (the ceiling trained for the same 24 epochs), few labels included.
"$DIMCL" baselines -c fashion_mnist/byol -o "$OUT" --seeds 0,1,2 --skip-existing --labels 1%,10% trainer.max_epochs=24 \
    > "$HERE/baselines.log" 2>&1
"$DIMCL" report "$OUT" --out "$HERE/report.md"
