#!/usr/bin/env bash
# The study, round two, part 3 (grid.yaml beside this file): 24 epochs. Floors and ceiling of the same
# protocol (the ceiling trained for the same 24 epochs), few labels included (run_grid.sh: resumable); the
# report shows SimSiam's and BYOL's 8-epoch cells of the main study beside them, in its tables and on the same
# per-epoch figure per method.
set -euo pipefail
cd "$(dirname "$0")"
BESIDE=benchmarks/quality/full/results exec bash ../run_grid.sh benchmarks/quality/budget --labels 1%,10%
