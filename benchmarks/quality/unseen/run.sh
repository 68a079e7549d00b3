#!/usr/bin/env bash
# The study, round two, part 2 (grid.yaml beside this file): unseen classes. Floors and ceiling on the same
# classes: the pixels and the random-init backbone scored on classes 5-9, and the backbone trained with labels
# on classes 0-4 for the same epochs, then scored on 5-9 like the others (run_grid.sh: resumable).
set -euo pipefail
cd "$(dirname "$0")"
exec bash ../run_grid.sh benchmarks/quality/unseen --labels 10% 'data.classes=[0,1,2,3,4]' 'eval.classes=[5,6,7,8,9]'
