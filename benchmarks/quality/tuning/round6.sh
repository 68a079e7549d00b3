#!/bin/bash
# Round 6: MoCo v2+'s base EMA momentum at the main study's schedule (validation split), stopped after
# epoch 4; one run, beside one shard of the main grid (the 0.99 row is round 4's crop 0.4-1 run).
cd "$(dirname "$0")/../../.."  # the repository root
source benchmarks/quality/tuning/short_run.sh
export OMP_NUM_THREADS=1
short_run $PWD/benchmarks/quality/tuning/round6 mocov2plus method.base_momentum=0.9 method.base_momentum=0.9
