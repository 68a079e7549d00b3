#!/usr/bin/env bash
# The main CPU study (benchmarks/quality/README.md): the grid of fashion_mnist_full.yaml, the floors and
# the ceiling of its protocol, and its report (run_grid.sh: resumable, two single-thread shards).
set -euo pipefail
cd "$(dirname "$0")"
GRID=benchmarks/quality/fashion_mnist_full.yaml exec bash ../run_grid.sh benchmarks/quality/full
