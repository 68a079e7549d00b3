#!/usr/bin/env bash
# The study, round two, part 3 (grid.yaml beside this file): 24 epochs. Floors and ceiling of the same
# protocol (the ceiling trained for the same 24 epochs), few labels included (run_grid.sh: resumable).
set -euo pipefail
cd "$(dirname "$0")"
exec bash ../run_grid.sh benchmarks/quality/budget --labels 1%,10%
