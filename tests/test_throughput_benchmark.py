"""The throughput benchmark runs end to end at a tiny size (the GPU figures come from the same script)."""
from __future__ import annotations

import json
import math

from benchmarks import throughput


def test_throughput_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "figures.json"
    results = throughput.main(["--model", "digits_cnn", "--size", "24", "--images", "8", "--bsize", "4",
                               "--workers", "0", "--steps", "1", "--warmup", "1", "--precisions", "fp32",
                               "--json", str(out)])
    printed = capsys.readouterr().out
    assert set(results["pipeline"]) == {"pil", "gpu"}  # decoding on the CPU through the --decode gpu code path
    assert set(results["training"]) == {"pil fp32 (default)", "gpu-decode fp32"}
    rates = [*results["pipeline"].values(), results["backbone"]["fp32"],
             *(r["images_per_s"] for r in results["training"].values()),
             *(r["eval_images_per_s"] for r in results["training"].values())]
    assert all(math.isfinite(rate) and rate > 0 for rate in rates)
    assert "(c) training steps, gpu-decode fp32" in printed and json.loads(out.read_text()) == results


def test_synthetic_dataset_is_coco_shaped(tmp_path):
    from PIL import Image

    data = throughput.make_dataset(tmp_path / "d", 3)
    with Image.open(next((data / "images").glob("train_*.jpg"))) as img:
        assert (img.size, img.format) == ((640, 480), "JPEG")
