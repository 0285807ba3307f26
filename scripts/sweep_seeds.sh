#!/usr/bin/env bash
# Train one configuration for several seeds into one folder (the references' habit:
# a shell loop over seeds), then summarise mean ± std over the seeds.
#
#   scripts/sweep_seeds.sh OUT_DIR "SEEDS" [main.py flags...]
#   scripts/sweep_seeds.sh runs/coco_em "1 2 3" -d coco -l EM -g 0
#   python scripts/summarize.py runs/coco_em
#
# Seed N runs `python main.py FLAGS -s N --out OUT_DIR/seedN`. Re-running the sweep
# skips the seeds already completed and resumes the interrupted ones (--resume),
# so a crashed sweep is finished by running the same line again. A failing seed
# does not stop the others; the script exits non-zero naming the failed seeds and
# their errors. Ctrl-C stops the whole sweep (exit 130); the same line resumes it.
set -uo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 OUT_DIR \"SEED [SEED...]\" [main.py flags...]" >&2
    exit 2
fi
out_dir=$1
seeds=$2
shift 2
for flag in "$@"; do
    case $flag in
        -s|--seed|--seed=*|--out|--out=*|--resume|--resume=*|--eval-only|--eval-only=*)
            echo "error: $0 sets the seed and the run folder itself; drop $flag" >&2
            exit 2 ;;
    esac
done
python=${PYTHON:-python}
main=$(cd "$(dirname "$0")/.." && pwd)/main.py
mkdir -p "$out_dir"

status_of() {  # completed / running / interrupted / diverged, or "none" when the run has not written results yet
    "$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["status"])' "$1/results.json" 2>/dev/null || echo none
}

errors=$(mktemp)
trap 'rm -f "$errors"' EXIT

run_seed() {  # main.py with its stderr shown and kept; a Ctrl-C (main.py's 130) stops the sweep
    # tee ignores Ctrl-C: it must outlive main.py, which still writes its last lines after one
    { "$python" "$main" "$@"; } 2> >(trap '' INT; exec tee "$errors" >&2)
    local rc=$?
    wait $!  # tee has written everything
    if [[ $rc -eq 130 ]]; then
        echo "sweep interrupted (Ctrl-C) at seed $seed; run the same line again to resume it" >&2
        exit 130
    fi
    if [[ $rc -ne 0 ]]; then
        failed+=("seed $seed: $(grep -E '^error: ' "$errors" | tail -n 1 || true)")
    fi
}

failed=()
for seed in $seeds; do
    run_dir=$out_dir/seed$seed
    if [[ -f $run_dir/config.json ]]; then  # a run main.py started (any mode): main.py --resume knows what is left
        case $(status_of "$run_dir") in
            completed) echo "seed $seed: already completed in $run_dir, skipped" >&2; continue ;;
            *) echo "seed $seed: resuming $run_dir" >&2
               run_seed --resume "$run_dir"; continue ;;
        esac
    fi
    if [[ -d $run_dir ]] && [[ -n $(ls -A "$run_dir") ]]; then
        # not a run folder of main.py: never delete a folder here
        failed+=("seed $seed: $run_dir exists and holds no run (no config.json); remove it to start the seed again")
        continue
    fi
    echo "seed $seed: training into $run_dir" >&2
    run_seed "$@" -s "$seed" --out "$run_dir"
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "error: ${#failed[@]} seed(s) failed:" >&2
    printf '  %s\n' "${failed[@]}" >&2
    echo "fix the cause, then run this line again: completed seeds are kept, the others resumed" >&2
    exit 1
fi
echo "all seeds done: python $(dirname "$0")/summarize.py $out_dir" >&2
