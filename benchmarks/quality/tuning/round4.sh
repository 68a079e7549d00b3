#!/bin/bash
# Round 4: crop scale 0.2-1 vs 0.4-1 at the main study's schedule (8-epoch cosine, validation split),
# each run stopped (SIGTERM) once epoch 4's record is written. Two queues, one thread each.
cd "$(dirname "$0")/../../.."  # the repository root (the rounds ran from a worktree of 02f897b)
source benchmarks/quality/tuning/short_run.sh
export OMP_NUM_THREADS=1
OUT=$PWD/benchmarks/quality/tuning/round4
one() { short_run $OUT "$@"; }
( one byol byol,crop=0.2,lr=2.0 'augment.crop_scale=[0.2,1.0]'
  one mocov2plus mocov2plus,crop=0.4
  one simsiam simsiam,crop=0.4 ) &
( one mocov2plus mocov2plus,crop=0.2 'augment.crop_scale=[0.2,1.0]'
  one simsiam simsiam,crop=0.2 'augment.crop_scale=[0.2,1.0]'
  one byol byol,crop=0.2,lr=1.0 'augment.crop_scale=[0.2,1.0]' optim.lr=1.0 ) &
wait
