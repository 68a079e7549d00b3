#!/usr/bin/env bash
# The study, round two, part 1 (grid.yaml beside this file): DINO, SwAV, MoCo v3, NNCLR and W-MSE, base vs
# +DimCL, seeds 0-2, every evaluation stage; then the floors and the ceiling of the same protocol, with few
# labels too, and the report. Resumable: finished cells are skipped, so this is the one command to start or
# continue it in any session. Two shards side by side, one thread each (a base / +DimCL pair at a time).
set -euo pipefail
cd "$(dirname "$0")/../../.."
DIMCL=${DIMCL:-.venv/bin/dimcl}
HERE=benchmarks/quality/frameworks
GRID=$HERE/grid.yaml
OUT=$HERE/results
EPOCHS=$(sed -n 's/^ *- trainer.max_epochs=\([0-9]*\)$/\1/p' "$GRID")
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
for k in 1 2; do
    "$DIMCL" sweep --grid "$GRID" --out "$OUT" --shard "$k/2" > "$HERE/sweep.shard$k.log" 2>&1 &
done
wait
# Floors and ceiling of the same protocol (full splits, the same epochs), with the few-label subsets of the
# linear_1pct / linear_10pct stages, one record per seed.
"$DIMCL" baselines -c fashion_mnist/byol -o "$OUT" --seeds 0,1,2 --skip-existing --labels 1%,10% \
    "trainer.max_epochs=$EPOCHS" > "$HERE/baselines.log" 2>&1
"$DIMCL" report "$OUT" --out "$HERE/report.md"
