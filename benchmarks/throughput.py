"""Images/s of the input pipeline, the backbone's train step, and real training steps.

    python -m benchmarks.throughput                                    # CPU: resnet18 at 224, 128 images
    python -m benchmarks.throughput --device cuda --model resnet50 --size 448 --bsize 16 \\
        --images 2000 --workers 8                                      # the paper's setting on a GPU

Makes its own COCO-shaped dataset (640x480 JPEGs of random content, about COCO's
file size) in a temp folder, then measures, each after a warm-up:

  (a) the input pipeline alone: the tool's train loader, PIL workers (`--decode pil`)
      against decoding on the device (`--decode gpu`), batches moved to the device;
  (b) the backbone's train step alone on synthetic tensors (forward, BCE, backward,
      Adam) in fp32, fp32 + channels_last, bf16 + channels_last; and its eval forward;
  (c) real training steps: `training.engine.train_one_epoch` over the tool's own
      loaders (`modes.setup.make_loaders`), for each pipeline and precision, with
      the ratio (c)/(b) at the same precision: how close the loop gets to the model's rate;
      and `training.engine.evaluate` over val + test (the rest of an epoch).

Weights are random (timing only, no download). `--json PATH` also writes the figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cli import parse_args
from datasets import load_splits
from device_decode import image_codec
from fileio import save_npy_atomic
from models import MultiLabelModel, create_backbone
from modes.setup import build_loss, make_loaders
from training.engine import evaluate, train_one_epoch
from training.speed import AMP_DTYPES, StepOptions, prepare_model

CLASSES = 80  # COCO's
# (c)'s configurations: (name, --decode, --amp, channels_last); the first is the default, the last --fast's
PIPELINES = [("pil fp32 (default)", "pil", "off", False), ("gpu-decode fp32", "gpu", "off", False),
             ("pil bf16+cl", "pil", "bf16", True), ("gpu-decode bf16+cl (--fast)", "gpu", "bf16", True)]
PRECISIONS = {"fp32": ("off", False), "fp32+cl": ("off", True), "bf16+cl": ("bf16", True)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_dataset(root: Path, n: int, seed: int = 0) -> Path:
    """A formatted dataset of `n` train (+ n/4 test) COCO-shaped JPEGs with one observed positive each."""
    rng = np.random.RandomState(seed)
    (root / "images").mkdir(parents=True)
    n_test = max(n // 4, 2)
    for split, count in (("train", n), ("val", n_test)):
        names = []
        for i in range(count):
            # Smooth colour blobs plus noise: about the 160 KB of a COCO JPEG at quality 90
            blobs = Image.fromarray(rng.randint(0, 256, (30, 40, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
            noisy = np.asarray(blobs, dtype=np.int16) + rng.randint(-30, 31, (480, 640, 3))
            name = f"{split}_{i:05d}.jpg"
            Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(root / "images" / name, quality=90)
            names.append(name)
        full = np.zeros((count, CLASSES), dtype=np.float32)
        full[np.arange(count), rng.randint(0, CLASSES, count)] = 1
        save_npy_atomic(root / f"formatted_{split}_images.npy", np.array(names))
        save_npy_atomic(root / f"formatted_{split}_labels.npy", full)
        save_npy_atomic(root / f"formatted_{split}_labels_obs.npy", full.copy())
    return root


def _gpu_flag(device: str) -> str:
    return "cpu" if device == "cpu" else (device.split(":")[1] if ":" in device else "0")


def _config(args, data: Path, decode: str, amp: str, channels_last: bool):
    flags = ["-d", "coco", "-l", "an", "-m", args.model, "-g", _gpu_flag(args.device), "--no-pretrained",
             "--bsize", str(args.bsize), "--num-workers", str(args.workers), "--data-dir", str(data),
             "--image-root", str(data / "images"), "--out", str(data / "run"), "--decode", decode, "--amp", amp,
             "--channels-last" if channels_last else "--no-channels-last"]
    return parse_args(flags)


def _model(args, device: torch.device) -> MultiLabelModel:
    model = MultiLabelModel(create_backbone(args.model, pretrained=False), CLASSES)
    if args.size:  # the model's own input size unless given (448 for the paper's backbones)
        model.preprocess = dataclasses.replace(model.preprocess, size=args.size)
    return model.to(device)


def bench_pipeline(args, data: Path, splits, decode: str) -> float:
    """(a) images/s of the train loader alone, batches on the device."""
    device = torch.device(args.device)
    cfg = _config(args, data, decode, "off", False)
    loader = make_loaders(cfg, splits, _model(args, device))["train"]
    seen, started = 0, None
    for step, (images, _, index) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        if step == 0:  # the first batch pays for starting the workers
            _sync(device)
            started = time.perf_counter()
            continue
        seen += len(index)
    _sync(device)
    return seen / (time.perf_counter() - started) if seen else float("nan")


def bench_backbone(args, precision: str, steps: int, train: bool = True) -> float:
    """(b) images/s of the model alone on synthetic tensors: a train step (BCE + Adam) or an eval forward."""
    device = torch.device(args.device)
    amp, channels_last = PRECISIONS[precision]
    options = StepOptions(AMP_DTYPES[amp], channels_last)
    model = prepare_model(_model(args, device), options)
    s = model.preprocess.size
    images = options.images_to(torch.randn(args.bsize, 3, s, s), device)
    targets = (torch.rand(args.bsize, CLASSES, device=device) < 0.03).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train(train)
    for step in range(args.warmup + steps):
        if step == args.warmup:
            _sync(device)
            started = time.perf_counter()
        if train:
            with options.autocast(device):
                logits = model(images)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode(), options.autocast(device):
                model(images)
    _sync(device)
    return steps * args.bsize / (time.perf_counter() - started)


def bench_training(args, data: Path, splits, decode: str, amp: str, channels_last: bool) -> tuple[float, float]:
    """(c) images/s of `train_one_epoch` over the tool's loaders (the first epoch is the warm-up),
    and of `evaluate` over val + test: the two halves of an epoch of `fit`."""
    device = torch.device(args.device)
    cfg = _config(args, data, decode, amp, channels_last)
    model = _model(args, device)
    options = StepOptions.from_config(cfg)
    prepare_model(model, options)
    loss_fn = build_loss(cfg, splits.train, splits.num_classes, device, cfg.epochs)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = make_loaders(cfg, splits, model)["train"]
    train_one_epoch(model, loader, loss_fn, optimizer, device, 1, options)  # warm-up: workers, cudnn autotuning
    _sync(device)
    started = time.perf_counter()
    train_one_epoch(model, loader, loss_fn, optimizer, device, 2, options)  # ends with a host sync (the losses)
    train_rate = len(splits.train.images) / (time.perf_counter() - started)
    loaders = make_loaders(cfg, splits, model)
    started = time.perf_counter()
    for split in ("val", "test"):  # each ends with the scores copied to the host
        evaluate(model, loaders[split], device, cfg.threshold, split, options)
    eval_rate = (len(splits.val.images) + len(splits.test.images)) / (time.perf_counter() - started)
    return train_rate, eval_rate


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    ap.add_argument("--model", default="resnet18", help="a registered backbone (default: resnet18)")
    ap.add_argument("--size", type=int, default=224, help="input size; 0: the model's own (default: 224)")
    ap.add_argument("--bsize", type=int, default=16)
    ap.add_argument("--images", type=int, default=128, help="synthetic train images (default: 128)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps of (b) (default: 10)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps of (b) (default: 3)")
    ap.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS),
                    help="precisions of (b) and (c) (default: all on CUDA; fp32 on CPU, where bf16 is often emulated)")
    ap.add_argument("--skip", nargs="*", default=[], choices=("pipeline", "backbone", "training"))
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels, as a long run would
    decodes = ["pil", "gpu"]
    try:
        print(f"--decode gpu decodes with {image_codec(device).name}")
    except Exception as err:  # noqa: BLE001 - report and go on with PIL only
        print(f"gpu decoding unavailable: {err}")
        decodes = ["pil"]
    precisions = args.precisions or (list(PRECISIONS) if cuda else ["fp32"])
    results: dict = {"setting": {k: str(v) for k, v in vars(args).items()}, "pipeline": {}, "backbone": {},
                     "backbone_eval": {}, "training": {}}
    tmp = Path(tempfile.mkdtemp(prefix="spml_throughput_"))
    try:
        started = time.perf_counter()
        data = make_dataset(tmp / "coco_like", args.images)
        files = list((data / "images").iterdir())
        size_kb = sum(p.stat().st_size for p in files) / 1024 / len(files)
        print(f"dataset: {args.images} train JPEGs 640x480, {size_kb:.0f} KB each, made in "
              f"{time.perf_counter() - started:.1f} s; device {device}, {args.model} at "
              f"{_model(args, torch.device('cpu')).preprocess.size} px, batch {args.bsize}, {args.workers} workers")
        splits = load_splits(data, "coco", data / "images")
        if "pipeline" not in args.skip:
            for decode in decodes:
                results["pipeline"][decode] = rate = bench_pipeline(args, data, splits, decode)
                print(f"(a) input pipeline, --decode {decode:3s}: {rate:9.1f} images/s")
        if "backbone" not in args.skip:
            for precision in precisions:
                results["backbone"][precision] = rate = bench_backbone(args, precision, args.steps)
                results["backbone_eval"][precision] = eval_rate = bench_backbone(args, precision, args.steps, train=False)
                print(f"(b) backbone train step, {precision:8s}: {rate:9.1f} images/s  (eval forward {eval_rate:9.1f})")
        if "training" not in args.skip:
            for name, decode, amp, channels_last in PIPELINES:
                precision = "bf16+cl" if amp == "bf16" else "fp32"
                if decode not in decodes or precision not in precisions:
                    continue
                rate, eval_rate = bench_training(args, data, splits, decode, amp, channels_last)
                ratio = rate / results["backbone"].get(precision, float("nan"))
                results["training"][name] = {"images_per_s": rate, "ratio_to_backbone": ratio,
                                             "eval_images_per_s": eval_rate}
                print(f"(c) training steps, {name:28s}: {rate:9.1f} images/s  = {ratio:.2f} x (b) {precision}; "
                      f"evaluation (val + test) {eval_rate:9.1f} images/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
