#!/bin/bash
# Round 5: BYOL's base EMA momentum at the main study's schedule (validation split), stopped after epoch 4.
cd "$(dirname "$0")/../../.."  # the repository root (the rounds ran from a worktree of 02f897b)
export OMP_NUM_THREADS=1
OUT=$PWD/benchmarks/quality/tuning/round5
mkdir -p $OUT
one() {
  local name=$1; shift
  local dir=$OUT/$name
  .venv/bin/dimcl pretrain -c fashion_mnist/byol --out $dir dimcl.weight=0.0 data.val_size=10000 \
    trainer.max_epochs=8 eval.every=2 trainer.progress_bar=false "$@" > $dir.log 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    if [ -f $dir/metrics.jsonl ] && grep -q '"epoch": 4,' $dir/metrics.jsonl; then kill -TERM $pid; fi
    sleep 15
  done
  wait $pid
}
one method.base_momentum=0.96 method.base_momentum=0.96 &
one method.base_momentum=0.9 method.base_momentum=0.9 &
wait
