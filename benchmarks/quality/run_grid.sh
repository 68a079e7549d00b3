#!/usr/bin/env bash
# One grid of the CPU study: bash benchmarks/quality/run_grid.sh FOLDER [BASELINE ARGS...]
#
# Runs GRID (default FOLDER/grid.yaml) into FOLDER/results in two shards side by side, one thread each (on
# two cores that does about a quarter more steps per second than one two-thread run after another); then
# the floors and the ceiling of the same protocol, one record per seed (dimcl baselines with the grid's
# epochs and the BASELINE ARGS: more overrides, --labels ...), and the report, FOLDER/report.md (with the runs
# of the same arms under BESIDE, when set, as groups of their own: dimcl report --beside).
# Resumable: finished cells and recorded seeds are skipped, so it starts or continues a grid in any session.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIMCL=${DIMCL:-.venv/bin/dimcl}
HERE=$1
shift
GRID=${GRID:-$HERE/grid.yaml}
OUT=$HERE/results
EPOCHS=$(sed -n 's/^ *- trainer.max_epochs=\([0-9]*\)$/\1/p' "$GRID")
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
for k in 1 2; do
    "$DIMCL" sweep --grid "$GRID" --out "$OUT" --shard "$k/2" > "$HERE/sweep.shard$k.log" 2>&1 &
done
wait
"$DIMCL" baselines -c fashion_mnist/byol -o "$OUT" --seeds 0,1,2 --skip-existing "trainer.max_epochs=$EPOCHS" "$@" \
    > "$HERE/baselines.log" 2>&1
"$DIMCL" report "$OUT" --out "$HERE/report.md" ${BESIDE:+--beside "$BESIDE"}
