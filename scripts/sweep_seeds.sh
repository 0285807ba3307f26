#!/usr/bin/env bash
# Train one configuration for several seeds into one folder (the references' habit:
# a shell loop over seeds), then summarise mean ± std over the seeds.
#
#   scripts/sweep_seeds.sh OUT_DIR "SEEDS" [main.py flags...]
#   scripts/sweep_seeds.sh runs/coco_em "1 2 3" -d coco -l EM -g 0
#   python scripts/summarize.py runs/coco_em
#
# A front of the grid launcher (docs/grid.md): it is
# `python -m scripts.grid --out OUT_DIR --seeds SEEDS --jobs 1 -- FLAGS`, so seed N runs
# `python main.py FLAGS -s N --out OUT_DIR/seedN`, one seed after another (JOBS=N: N at once).
# Re-running the sweep skips the seeds already completed and resumes the interrupted ones
# (--resume); a folder swept with other flags is refused, naming the difference. A failing
# seed does not stop the others; the script exits non-zero naming the failed seeds and their
# errors. Ctrl-C stops the whole sweep (exit 130); the same line resumes it.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 OUT_DIR \"SEED [SEED...]\" [main.py flags...]" >&2
    exit 2
fi
out_dir=$1
read -ra seeds <<< "$2"
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python}" -m scripts.grid \
    --out "$out_dir" --seeds "${seeds[@]}" --jobs "${JOBS:-1}" -- "$@"
