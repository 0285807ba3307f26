"""The class activation maps of a trained run, as a PNG grid a person can look at.

    python -m scripts.show_cams RUN_DIR [--split test] [--images 8] [--top 3] [--checkpoint best.pt] [--out FILE]

One row per image (the first --images of the split, in order): the image with its true
labels, then the maps of its --top highest-scoring classes, each over the image with the
class name and its score (the sigmoid of the logit). A map is the head's own, whose spatial
mean is the logit (BoostLU's after the boost), upsampled bilinearly over the image; its
positive part is shown, scaled from 0 to its maximum. Runs of the heads with maps
(`--head cam`, `boostlu`); writes RUN_DIR/cams_<split>.png unless --out names a file.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the repo's modules

from class_names import load_class_names  # noqa: E402
from config import Config  # noqa: E402
from datasets import ImageDataset, load_splits  # noqa: E402
from errors import UserError  # noqa: E402
from losses import LOSSES  # noqa: E402
from models import HEADS, MultiLabelModel, create_model, load_weights  # noqa: E402
from training.checkpoint import BEST, load_checkpoint  # noqa: E402

log = logging.getLogger("show_cams")

PANEL_PX, DPI = 200, 100  # each panel is 200 x 200 pixels: a 30-pixel title band over the image
TITLE_FRACTION = 0.15


def load_run(run_dir: Path, checkpoint: str) -> tuple[Config, dict]:
    """The run's configuration and the weights of its checkpoint; refuses a folder that is not a CAM run."""
    path = run_dir / checkpoint
    if not run_dir.is_dir() or not (run_dir / "config.json").is_file() or not path.is_file():
        raise UserError(f"{run_dir} is not a run folder with a {checkpoint} (no config.json or no {checkpoint}): "
                        f"pass the --out folder of a main.py run that completed an epoch")
    ckpt = load_checkpoint(path)
    cfg = Config.from_dict(ckpt["config"], path)
    with_cams = [name for name, entry in HEADS.items() if entry.cams]
    if cfg.head not in with_cams:
        raise UserError(f"{run_dir} was trained with --head {cfg.head}, which has no class activation maps; "
                        f"show_cams reads runs of --head {' or '.join(with_cams)}")
    # the checkpoint's weights replace whatever the backbone would be built with: no ImageNet file needed
    return dataclasses.replace(cfg, pretrained=False, pretrained_weights=None, device="cpu"), ckpt["model"]


@torch.no_grad()
def class_maps(model: MultiLabelModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps [B, C, H, W], scores [B, C]) of `images`; each score is the sigmoid of its map's mean."""
    model.eval()
    maps = model.classifier.cams(model.forward_features(images))
    return maps, torch.sigmoid(maps.mean(dim=(2, 3)))


def heat(cam: torch.Tensor, side: int) -> np.ndarray:
    """One class's map upsampled to `side` x `side`, its positive part scaled to [0, 1]."""
    up = F.interpolate(cam[None, None], size=(side, side), mode="bilinear", align_corners=False)[0, 0].clamp(min=0)
    return (up / up.max() if up.max() > 0 else up).numpy()


def draw(images: np.ndarray, maps: torch.Tensor, scores: torch.Tensor, labels: np.ndarray, names: list[str],
         top: int) -> plt.Figure:
    """The grid: one row per image, its panel then its `top` classes' maps; every panel PANEL_PX square."""
    rows, cols = len(images), 1 + top
    fig = plt.figure(figsize=(cols * PANEL_PX / DPI, rows * PANEL_PX / DPI), dpi=DPI)
    for row, (image, image_maps, image_scores, image_labels) in enumerate(zip(images, maps, scores, labels)):
        true = ", ".join(names[c] for c in np.flatnonzero(image_labels == 1)) or "no label"
        panels = [(None, f"labels: {true}")] + [
            (int(c), f"{names[c]}: {image_scores[c]:.2f}") for c in image_scores.argsort(descending=True)[:top]]
        for col, (cls, title) in enumerate(panels):
            ax = fig.add_axes((col / cols, 1 - (row + 1) / rows, 1 / cols, (1 - TITLE_FRACTION) / rows))
            side = image.shape[0]
            extent = (-0.5, side - 0.5, side - 0.5, -0.5)  # the map upsampled finer than the pixels, over them
            ax.imshow(image, interpolation="nearest", extent=extent)
            if cls is not None:
                ax.imshow(heat(image_maps[cls], PANEL_PX), cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=extent)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    return fig


def show_cams(run_dir: Path, split: str, num_images: int, top: int, checkpoint: str, out: Path | None) -> Path:
    cfg, weights = load_run(run_dir, checkpoint)
    out = out or run_dir / f"cams_{split}.png"
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    splits = load_splits(cfg.data_dir, cfg.dataset, cfg.image_root, LOSSES[cfg.loss].label_view, cfg.val_set_variant)
    model = create_model(cfg, splits.num_classes, splits.train.labels, weights)
    load_weights(model, weights, run_dir / checkpoint)
    part = getattr(splits, split)
    dataset = ImageDataset(part, model.preprocess.transform(train=False, hflip=False))
    batch = torch.stack([dataset[i][0] for i in range(min(num_images, len(dataset)))])
    maps, scores = class_maps(model, batch)
    mean, std = torch.tensor(model.preprocess.mean)[:, None, None], torch.tensor(model.preprocess.std)[:, None, None]
    pixels = (batch * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()  # what the model saw, unnormalised
    names = load_class_names(cfg.dataset, cfg.data_dir, splits.num_classes)
    fig = draw(pixels, maps, scores, part.labels[:len(batch)], names, min(top, splits.num_classes))
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the --out folder of a main.py run")
    p.add_argument("--split", choices=("val", "test"), default="test", help="the images to show (default: test)")
    p.add_argument("--images", type=int, default=8, help="how many, from the first (default: 8)")
    p.add_argument("--top", type=int, default=3, help="classes shown per image, highest scores first (default: 3)")
    p.add_argument("--checkpoint", default=BEST, help=f"the run's checkpoint to read (default: {BEST})")
    p.add_argument("--out", type=Path, help="the PNG to write (default: RUN_DIR/cams_<split>.png)")
    args = p.parse_args(argv)
    try:
        if args.images < 1 or args.top < 1:
            raise UserError(f"--images {args.images} --top {args.top}: both must be at least 1")
        log.info(f"wrote {show_cams(args.run_dir, args.split, args.images, args.top, args.checkpoint, args.out)}")
    except UserError as err:
        log.error(f"error: {err}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
