#!/usr/bin/env bash
# The study, round two, part 1 (grid.yaml beside this file, README.md): the five frameworks, every evaluation
# stage; then the floors and the ceiling of the same protocol with the few-label subsets of the linear_1pct /
# linear_10pct stages, and the report (run_grid.sh: resumable, two single-thread shards). The supervised
# ceiling of this protocol (8 epochs, every class) is the first study's, lent by its folder rather than
# trained again; the floors and the few-label references are computed here.
set -euo pipefail
cd "$(dirname "$0")"
exec bash ../run_grid.sh benchmarks/quality/frameworks --labels 1%,10% --ceiling-from benchmarks/quality/full/results
