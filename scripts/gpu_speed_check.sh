#!/usr/bin/env bash
# The speed checks on a GPU, in one run (about 8 minutes on one H100/H200):
#   1. --deterministic on CUDA with the default digits model: runs, and twice gives the same metrics;
#      then one epoch each of resnet18, convnext_tiny and a tiny clip_vision (random weights);
#   2. the decoding tests on CUDA (nvJPEG against PIL: RGB, grayscale and CMYK JPEGs, PNG, flips);
#   3. digits, 3 epochs: default (PIL, fp32) against --fast (device decode, bf16, channels-last);
#   4. the throughput benchmark at the paper's setting (ResNet-50, 448 px, batch 16, 8 workers).
# Usage: bash scripts/gpu_speed_check.sh [OUT_DIR]   (figures in OUT_DIR/throughput.json and the log)
set -u
OUT=${1:-${OUT:-/tmp/spml_gpu_check}}
mkdir -p "$OUT"
metrics() { python - "$@" <<'PY'
import json, sys
import os
dirs = [d for d in sys.argv[1:] if os.path.isfile(d + "/metrics.jsonl")]
rows = [[{k: v for k, v in json.loads(l).items() if k != "time_s"} for l in open(d + "/metrics.jsonl")] for d in dirs]
for d, r in zip(dirs, rows):
    print(d, "epoch, val mAP, test mAP:", [(e["epoch"], round(e["val_map"], 3), round(e["test_map"], 3)) for e in r])
if len(dirs) < len(sys.argv[1:]):
    print("missing metrics.jsonl in", sorted(set(sys.argv[1:]) - set(dirs)))
if len(rows) == 2:
    print("identical per-epoch metrics" if rows[0] == rows[1] else "metrics differ")
PY
}
echo "== 1. --deterministic on CUDA"
python main.py -g 0 --deterministic --epochs 3 --out "$OUT/det_a" 2>&1 | tail -2
python main.py -g 0 --deterministic --epochs 3 --out "$OUT/det_b" 2>&1 | tail -1
metrics "$OUT/det_a" "$OUT/det_b"
# every other kind of built-in model, one epoch each (ResNet/ConvNeXt pool with a mean; CLIP: attention)
python -c "import json, sys; sys.path.insert(0, 'tests'); from conftest import TINY_CLIP; print(json.dumps(TINY_CLIP))" > "$OUT/tiny_clip.json"
for model in "resnet18" "convnext_tiny" "clip_vision --clip-model $OUT/tiny_clip.json"; do
    echo "-- --deterministic -m $model"
    python main.py -g 0 --deterministic -l EM --epochs 1 --no-pretrained -m $model --out "$OUT/det_${model%% *}" 2>&1 | tail -1
done
echo "== 2. decoding on CUDA against PIL"
python -m pytest -q -s tests/test_speed.py -k "device_decode_matches" -p no:warnings 2>&1 | grep -E "cuda|passed|failed" | sort | uniq -c | tail -8
echo "== 3. digits: default against --fast"
python main.py -g 0 --epochs 3 --out "$OUT/digits_default" 2>&1 | grep -E "^epoch|best epoch"
python main.py -g 0 --epochs 3 --fast --out "$OUT/digits_fast" 2>&1 | grep -E "^epoch|best epoch"
metrics "$OUT/digits_default" "$OUT/digits_fast"
echo "== 4. throughput, ResNet-50 at 448, batch 16"
python -m benchmarks.throughput --device cuda --model resnet50 --size 448 --bsize 16 --images 1600 --workers 8 \
    --json "$OUT/throughput.json" 2>&1 | grep -v Warning
