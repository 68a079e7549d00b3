#!/usr/bin/env bash
# The main CPU study (benchmarks/quality/README.md): the grid of fashion_mnist_full.yaml, the floors and
# the ceiling of its protocol, and its report. Resumable: finished cells are skipped, so this is the one
# command to start or continue the study in any session. Two shards side by side, one thread each (on
# two cores that does about a quarter more steps per second than one two-thread run after another).
set -euo pipefail
cd "$(dirname "$0")/../../.."
DIMCL=${DIMCL:-.venv/bin/dimcl}
GRID=benchmarks/quality/fashion_mnist_full.yaml
HERE=benchmarks/quality/full
OUT=$HERE/results
EPOCHS=$(sed -n 's/^ *- trainer.max_epochs=\([0-9]*\)$/\1/p' "$GRID")
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
for k in 1 2; do
    "$DIMCL" sweep --grid "$GRID" --out "$OUT" --shard "$k/2" > "$HERE/sweep.shard$k.log" 2>&1 &
done
wait
# Floors and ceiling of the same protocol (full splits, the same epochs), one record per seed.
"$DIMCL" baselines -c fashion_mnist/byol -o "$OUT" --seeds 0,1,2 --skip-existing "trainer.max_epochs=$EPOCHS" > "$HERE/baselines.log" 2>&1
"$DIMCL" report "$OUT" --out "$HERE/report.md"
