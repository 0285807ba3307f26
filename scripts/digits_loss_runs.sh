#!/usr/bin/env bash
# The README's loss table on digits: every loss x seeds 0 1 2 (the README used --epochs 3 --patience 0).
#   bash scripts/digits_loss_runs.sh [runs/digits_losses] [extra main.py flags]
#   python scripts/loss_table.py runs/digits_losses
set -euo pipefail
out=${1:-runs/digits_losses}
for loss in bce bce_ls iun iu pr an an_ls wan epr role EM EM_APL; do
  for seed in 0 1 2; do
    [ -f "$out/${loss}_s${seed}/results.json" ] && continue
    python main.py -g cpu -l "$loss" -s "$seed" --num-workers 0 --out "$out/${loss}_s${seed}" "${@:2}"
  done
done
