#!/usr/bin/env bash
# torchrun's checks on GPUs (nccl), in one run, on a machine with at least 2 GPUs (about 10 minutes):
#   1. digits end to end, 3 epochs (the digits CNN has BatchNorm): one GPU against 2 with --sync-bn
#      (the same numbers up to GPU rounding), and against 2 without it (other numbers, as documented);
#   2. PU (the whole-batch gather and MixUp of images) the same way, with --sync-bn;
#   3. SIGTERM to torchrun mid-run: results.json interrupted, the last checkpoint named;
#   4. an unreadable image met by one process: one line, results.json failed (nccl: the other process
#      may wait in a collective until torchrun's agent stops it; how long it takes is what this measures);
#   5. the cost of the whole-batch gather on 2 GPUs (benchmarks/whole_batch_cost.py).
# Usage: bash scripts/gpu_ddp_check.sh [OUT_DIR]
set -u
OUT=${1:-${OUT:-/tmp/spml_ddp_check}}
mkdir -p "$OUT"
COMMON="-d digits -g 0 --epochs 3 --patience 0 --warmup-epochs 1 --deterministic"
compare() { python - "$@" <<'PY'
import json, sys
runs = [[json.loads(line) for line in open(d + "/metrics.jsonl")] for d in sys.argv[1:]]
for name, other in zip(sys.argv[2:], runs[1:]):
    diff = max(max(abs(a[k] - b[k]) for k in ("train_loss", "val_map", "test_map")) for a, b in zip(runs[0], other))
    print(f"{name} against {sys.argv[1]}: largest difference in train loss / val mAP / test mAP: {diff:.2e}")
PY
}
for loss in EM_APL PU; do
    echo "== $loss: 1 GPU against 2 with and without --sync-bn"
    python main.py $COMMON -l $loss --out "$OUT/${loss}_one" 2>&1 | tail -1
    torchrun --nproc_per_node 2 main.py $COMMON -l $loss --sync-bn --out "$OUT/${loss}_two_syncbn" 2>&1 | tail -1
    torchrun --nproc_per_node 2 main.py $COMMON -l $loss --out "$OUT/${loss}_two" 2>&1 | tail -1
    compare "$OUT/${loss}_one" "$OUT/${loss}_two_syncbn" "$OUT/${loss}_two"
done
echo "== SIGTERM to torchrun"
torchrun --nproc_per_node 2 main.py -d digits -g 0 --epochs 50 --out "$OUT/sigterm" > "$OUT/sigterm.log" 2>&1 &
pid=$!
while [ ! -f "$OUT/sigterm/last.pt" ]; do sleep 1; done
start=$(date +%s); kill -TERM $pid; wait $pid; echo "torchrun exited $? after $(( $(date +%s) - start )) s"
python -c "import json, sys; r = json.load(open(sys.argv[1])); print(r['status'], '|', r['reason'], '|', r['last_checkpoint'])" \
    "$OUT/sigterm/results.json"
echo "== an unreadable image met by one process"
rm -rf "$OUT/broken" && cp -r data/digits "$OUT/broken"
python - "$OUT/broken" <<'PY'
import sys, numpy as np
from pathlib import Path
root = Path(sys.argv[1]); name = np.load(root / "formatted_train_images.npy")[0]
path = root / "images" / name; path.write_bytes(path.read_bytes()[:40]); print("truncated", path)
PY
start=$(date +%s)
torchrun --nproc_per_node 2 main.py -d digits -g 0 --epochs 1 --data-dir "$OUT/broken" --out "$OUT/broken_run" 2>&1 \
    | grep -E "^error|^stopped" ; echo "every process stopped after $(( $(date +%s) - start )) s"
python -c "import json, sys; r = json.load(open(sys.argv[1])); print(r['status'], '|', r['reason'])" \
    "$OUT/broken_run/results.json"
echo "== the whole-batch gather's cost on 2 GPUs"
python -m benchmarks.whole_batch_cost --device cuda
