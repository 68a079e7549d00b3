#!/bin/bash
# Round 4: crop scale 0.2-1 vs 0.4-1 at the main study's schedule (8-epoch cosine, validation split),
# each run stopped (SIGTERM) once epoch 4's record is written. Two queues, one thread each.
cd "$(dirname "$0")/../../.."  # the repository root (the rounds ran from a worktree of 02f897b)
export OMP_NUM_THREADS=1
OUT=$PWD/benchmarks/quality/tuning/round4
mkdir -p $OUT
one() {  # recipe name  extra overrides...
  local recipe=$1 name=$2; shift 2
  local dir=$OUT/$name
  .venv/bin/dimcl pretrain -c fashion_mnist/$recipe --out $dir dimcl.weight=0.0 data.val_size=10000 \
    trainer.max_epochs=8 eval.every=2 trainer.progress_bar=false "$@" > $dir.log 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    if [ -f $dir/metrics.jsonl ] && grep -q '"epoch": 4,' $dir/metrics.jsonl; then kill -TERM $pid; fi
    sleep 15
  done
  wait $pid
}
( one byol byol,crop=0.2,lr=2.0 'augment.crop_scale=[0.2,1.0]'
  one mocov2plus mocov2plus,crop=0.4
  one simsiam simsiam,crop=0.4 ) &
( one mocov2plus mocov2plus,crop=0.2 'augment.crop_scale=[0.2,1.0]'
  one simsiam simsiam,crop=0.2 'augment.crop_scale=[0.2,1.0]'
  one byol byol,crop=0.2,lr=1.0 'augment.crop_scale=[0.2,1.0]' optim.lr=1.0 ) &
wait
