#!/usr/bin/env bash
# The study, round two, part 2 (grid.yaml beside this file). Resumable: finished cells are skipped, so this is
# the one command to start or continue it in any session. Two shards side by side, one thread each.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DIMCL=${DIMCL:-.venv/bin/dimcl}
HERE=benchmarks/quality/unseen
GRID=$HERE/grid.yaml
OUT=$HERE/results
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
for k in 1 2; do
    "$DIMCL" sweep --grid "$GRID" --out "$OUT" --shard "$k/2" > "$HERE/sweep.shard$k.log" 2>&1 &
done
wait
# Floors and ceiling on the same classes: the pixels and the random-init backbone scored on classes 5-9, and
# the backbone trained with labels on classes 0-4 for the same epochs, then scored on 5-9 like the others.
"$DIMCL" baselines -c fashion_mnist/byol -o "$OUT" --seeds 0,1,2 --skip-existing --labels 10% trainer.max_epochs=8 \
    'data.classes=[0,1,2,3,4]' 'eval.classes=[5,6,7,8,9]' > "$HERE/baselines.log" 2>&1
"$DIMCL" report "$OUT" --out "$HERE/report.md"
