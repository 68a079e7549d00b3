#!/bin/bash
# Round 5: BYOL's base EMA momentum at the main study's schedule (validation split), stopped after epoch 4.
cd "$(dirname "$0")/../../.."  # the repository root (the rounds ran from a worktree of 02f897b)
source benchmarks/quality/tuning/short_run.sh
export OMP_NUM_THREADS=1
OUT=$PWD/benchmarks/quality/tuning/round5
short_run $OUT byol method.base_momentum=0.96 method.base_momentum=0.96 &
short_run $OUT byol method.base_momentum=0.9 method.base_momentum=0.9 &
wait
