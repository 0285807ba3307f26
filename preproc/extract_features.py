"""Extract a backbone's pooled features of every train and test image, once, for the linear modes.

    python -m preproc.extract_features -d coco -m resnet50 [-g 0] [--bsize 64]

Writes `train_features_<backbone>.npy` (official train: our train + val) and
`val_features_<backbone>.npy` (official val: our test) beside the formatted files,
in their row order, as float32, each atomically. An unreadable image stops it with its
path; with `--skip-bad-images` its row is NaN instead (named once), which the linear modes
refuse unless they too are given --skip-bad-images. Images are read at the
backbone's eval preprocessing (no flip). A backbone with pretrained weights uses
them; one without (digits_cnn) uses the fixed initialisation of
`modes.FEATURE_SEED`, which `--train-mode linear_init` fine-tunes from.
"""
from __future__ import annotations

if not __package__:  # started as `python preproc/NAME.py`: the repository's modules are not importable
    import _script_guard  # noqa: F401  (prints the `python -m preproc.NAME` form, exits 2)

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets import ImageDataset, Split, load_split_files, resolve_images
from errors import UserError
from fileio import save_npy_atomic
from instrumentation import SkippedImages
from models import BACKBONES, Backbone
from modes.linear import FEATURE_SEED, create_feature_backbone, feature_path
from presets import PRESETS, dataset_dir, dataset_name, preset_of

log = logging.getLogger("extract_features")


@torch.no_grad()
def extract(backbone: Backbone, image_paths: np.ndarray, device: torch.device, bsize: int, num_workers: int,
            desc: str, skipped: SkippedImages | None = None) -> np.ndarray:
    """(N, D) float32 pooled features of `image_paths`, in order. With `skipped`, an unreadable image is
    left out: its row is NaN (the linear modes leave it out with --skip-bad-images) and `skipped` names it."""
    backbone.features.to(device).eval()
    dummy_labels = np.zeros((len(image_paths), 1), dtype=np.float32)  # ImageDataset yields labels; unused here
    dataset = ImageDataset(Split(image_paths, dummy_labels), backbone.preprocess.transform(train=False, hflip=False),
                           skip_unreadable=skipped is not None)
    loader = DataLoader(dataset, batch_size=bsize, shuffle=False, num_workers=num_workers, collate_fn=dataset.collate)
    features = np.full((len(image_paths), backbone.feature_dim), np.nan, dtype=np.float32)
    for images, _, index in tqdm(loader, desc=desc):
        if len(index):
            features[index.numpy()] = backbone.features(images.to(device)).float().cpu().numpy()
    if skipped is not None:
        skipped.note([str(path) for path in image_paths[np.isnan(features).all(axis=1)]], desc)
    return features


def extract_features(dataset: str, model: str, data_dir: Path, image_root: Path, device: str = "cpu",
                     bsize: int = 64, num_workers: int = 0, pretrained: bool = True,
                     skip_unreadable: bool = False) -> list[Path]:
    if model not in BACKBONES:
        raise UserError(f"unknown model {model!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    pretrained = pretrained and BACKBONES[model].has_pretrained
    if not pretrained:
        log.warning(f"{model}: randomly initialised (seed {FEATURE_SEED}), no pretrained weights: a linear layer on "
                    f"these features learns little; they serve tests and linear_init's fine-tuning")
    backbone = create_feature_backbone(model, pretrained)
    skipped = SkippedImages() if skip_unreadable else None
    written = []
    for split in ("train", "val"):
        names, _, _ = load_split_files(data_dir, split, dataset)
        paths = resolve_images(names, image_root, data_dir / f"formatted_{split}_images.npy")
        features = extract(backbone, paths, torch.device(device), bsize, num_workers, f"{split} features", skipped)
        written.append(save_npy_atomic(feature_path(data_dir, split, model), features.astype(np.float32)))
        log.info(f"{split}: {features.shape} -> {written[-1]}")
    return written


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", "--dataset", required=True, type=dataset_name,
                   help=f"a benchmark ({', '.join(sorted(PRESETS))}) or the name of a dataset of your own, "
                        f"whose folder --data-dir then gives")
    p.add_argument("-m", "--model", help="backbone (default: the dataset's)")
    p.add_argument("-g", "--gpu", default="cpu", help="'cpu' or a GPU index (default: cpu)")
    p.add_argument("--bsize", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--no-pretrained", action="store_true", help="random (FEATURE_SEED) weights instead of pretrained")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out unreadable images (their rows are NaN, named once) instead of stopping")
    p.add_argument("--data-dir", type=Path, help="dataset folder (default: data/<dataset> for a benchmark)")
    p.add_argument("--image-root", type=Path, help="image folder (default: the dataset's, inside --data-dir)")
    args = p.parse_args(argv)
    preset = preset_of(args.dataset)
    device = "cpu" if args.gpu == "cpu" or not torch.cuda.is_available() else f"cuda:{args.gpu}"
    try:
        data_dir = dataset_dir(args.dataset, args.data_dir)
        extract_features(args.dataset, args.model or preset.model, data_dir, args.image_root or data_dir / preset.image_root,
                         device, args.bsize, args.num_workers, not args.no_pretrained, args.skip_bad_images)
    except UserError as err:
        log.error(f"error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
