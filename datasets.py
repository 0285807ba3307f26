"""Datasets: formatted `.npy` splits, the train/val split protocol and image loading.

Layout of a dataset folder (Cole et al. 2021), shared by the benchmarks, `digits`
and any folder given with `--data-dir`:

    formatted_{train,val}_images.npy      (N,) image paths relative to the image root
    formatted_{train,val}_labels.npy      (N, C) full labels, 0/1
    formatted_{train,val}_labels_obs.npy  (N, C) observed labels, +1/0/-1

The official train files are split 80/20 into train/val (`generate_split`); the
official val files are the test set. Only the observed labels reach the training
loss, except for the oracle losses that declare another label view on purpose.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from errors import UserError
from fileio import load_npy
from preprocess import ImageDraws, Transform
from presets import how_to_prepare

SPLIT_SEED = 1200  # the references' split seed
VAL_FRAC = 0.2

# Which training targets a loss sees (codes +1 / 0 / -1, as the observed labels):
LABEL_VIEWS = {
    "observed": "the sampled observed labels",
    "true_negatives": "observed labels plus every true negative as -1 (oracle)",
    "full": "the full labels as +1/-1 (oracle)",
}


def generate_split(num_examples: int, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The references' split: a seeded permutation, the last round(frac N) rows to val; both sorted."""
    n_val = int(np.round(val_frac * num_examples))
    if not 0 < n_val < num_examples:
        raise UserError(f"a val fraction of {val_frac} leaves no train or no val example out of {num_examples} official "
                        f"train images: the dataset is too small")
    perm = np.random.RandomState(seed).permutation(num_examples)
    return np.sort(perm[: num_examples - n_val]), np.sort(perm[-n_val:])


def training_targets(obs: np.ndarray, full: np.ndarray | None, view: str) -> np.ndarray:
    """The target matrix a loss trains on, in the +1/0/-1 code of the observed labels."""
    if view == "observed":
        return obs
    if full is None:
        raise UserError(f"this loss trains on {LABEL_VIEWS[view]}, but the dataset has no full train labels")
    if view == "full":
        return 2.0 * full - 1.0
    if view == "true_negatives":
        return np.where((obs == 0) & (full == 0), -1.0, obs)
    raise ValueError(f"unknown label view {view!r}")


@dataclass(frozen=True)
class Split:
    """One split: image paths (absolute) and the label matrix it is scored or trained on."""

    images: np.ndarray  # (N,) absolute paths as str
    labels: np.ndarray  # (N, C) float32: training targets (train) or 0/1 labels (val, test)


@dataclass(frozen=True)
class DatasetSplits:
    train: Split
    val: Split
    test: Split
    num_classes: int
    data_dir: Path


def _check_labels(labels: np.ndarray, allowed: tuple[int, ...], path: Path, num_rows: int) -> None:
    if labels.ndim != 2 or labels.shape[0] != num_rows:
        raise UserError(f"{path} has shape {labels.shape}, expected ({num_rows}, C) to match its image list")
    bad = ~np.isin(labels, allowed)
    if bad.any():
        value = labels[bad][0]
        raise UserError(f"{path} holds the value {value.item()!r}; allowed values are {sorted(allowed)}")


def resolve_images(names: np.ndarray, image_root: Path, source: Path, check_exists: bool = True) -> np.ndarray:
    """Absolute image paths; refuses paths that escape the image root, reports missing files.

    A path is judged as listed (absolute, or climbing above the root with `..`), not after following
    links: an image folder linked from elsewhere (`train2014 -> /datasets/coco/train2014`) is the
    usual layout, and its images are read through the link."""
    root = image_root.absolute()
    paths = []
    for name in names.tolist():
        rel = Path(os.path.normpath(str(name)))
        if rel.is_absolute() or rel.parts[:1] == ("..",):
            raise UserError(f"{source} lists {name!r}, which points outside the image root {root}; refusing it")
        paths.append(str(root / rel))
    if check_exists:
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise UserError(
                f"{len(missing)} of {len(paths)} images listed in {source} are missing under {root} "
                f"(first: {missing[0]}); check --image-root or re-extract the images"
            )
    return np.array(paths)


def load_split_files(data_dir: Path, split: str, dataset: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(image names, full labels or None, observed labels) of an official split, validated."""
    fix = how_to_prepare(dataset, data_dir)
    images_path = data_dir / f"formatted_{split}_images.npy"
    names = load_npy(images_path, fix)
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise UserError(f"{images_path} must be a 1-D array of path strings, got {names.dtype} {names.shape}")
    if names.dtype.kind == "S":  # paths saved as bytes (e.g. by Python 2 tools): UTF-8 text
        try:
            names = np.char.decode(names, "utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"{images_path} holds byte strings that are not UTF-8 ({err.reason} in "
                            f"{err.object[:60]!r}); save the paths as text") from None
    if len(names) == 0:
        role = "train and val sets" if split == "train" else "test set"
        raise UserError(f"{images_path} lists no image, so the {role} would be empty; re-format the dataset ({fix})")
    full_path = data_dir / f"formatted_{split}_labels.npy"
    full = load_npy(full_path, fix) if full_path.is_file() else None
    if full is not None:
        _check_labels(full, (0, 1), full_path, len(names))
    obs_path = data_dir / f"formatted_{split}_labels_obs.npy"
    obs = load_npy(obs_path, f"run `python -m preproc.generate_observed_labels --dataset {dataset} --data-dir {data_dir}`")
    _check_labels(obs, (-1, 0, 1), obs_path, len(names))
    if full is not None and full.shape != obs.shape:
        raise UserError(f"{full_path} has shape {full.shape} but {obs_path} has {obs.shape}; regenerate the observed labels")
    return names, full, obs


def load_splits(
    data_dir: Path,
    dataset: str,
    image_root: Path,
    label_view: str = "observed",
    val_variant: str = "clean",
    check_images: bool = True,
) -> DatasetSplits:
    """Train/val/test splits of a formatted dataset folder (the protocol of Cole et al. 2021)."""
    if not data_dir.is_dir():
        raise UserError(f"dataset folder {data_dir} does not exist: {how_to_prepare(dataset, data_dir)}")
    names, full, obs = load_split_files(data_dir, "train", dataset)
    test_names, test_full, _ = load_split_files(data_dir, "val", dataset)
    if test_full is None:
        raise UserError(f"missing file {data_dir / 'formatted_val_labels.npy'}: the test set needs full labels")
    if test_full.shape[1] != obs.shape[1]:
        raise UserError(f"train labels have {obs.shape[1]} classes but test labels have {test_full.shape[1]}")
    if val_variant == "clean" and full is None:
        raise UserError(f"missing file {data_dir / 'formatted_train_labels.npy'}: a clean val set needs it (or pass --val-set-variant observed)")

    paths = resolve_images(names, image_root, data_dir / "formatted_train_images.npy", check_images)
    test_paths = resolve_images(test_names, image_root, data_dir / "formatted_val_images.npy", check_images)
    train_idx, val_idx = generate_split(len(names), VAL_FRAC, SPLIT_SEED)
    targets = training_targets(obs, full, label_view)
    val_labels = full[val_idx] if val_variant == "clean" else (obs[val_idx] == 1)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return DatasetSplits(
        train=Split(paths[train_idx], f32(targets[train_idx])),
        val=Split(paths[val_idx], f32(val_labels)),
        test=Split(test_paths, f32(test_full)),
        num_classes=obs.shape[1],
        data_dir=data_dir,
    )


def unreadable_image(path: str, err: Exception) -> UserError:
    """The one error of an image that cannot be decoded, whichever decoder found it (PIL, device_decode)."""
    return UserError(f"cannot read image {path}: {err} (re-extract it, or leave out every unreadable image "
                     f"with --skip-bad-images)")


class ImageFiles(Dataset):
    """The image files of a split and their label rows; what an unreadable file does (stop, or skip).

    `seed`: the train pipeline's random choices are drawn per image (preprocess.ImageDraws) from
    the run's seed, the epoch (`set_epoch`) and the row; None for a split read without them.
    `crop_flips`: that many crop flips drawn per sample into its view index (`view_index`).
    """

    def __init__(self, split: Split, skip_unreadable: bool = False, flip_views: bool = False, seed: int | None = None,
                 crop_flips: int = 0):
        self.images = split.images
        self.labels = torch.from_numpy(split.labels)
        self.skip_unreadable = skip_unreadable
        self.flip_views = flip_views
        self.seed, self.epoch = seed, 0
        self.crop_flips = crop_flips

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass draws for. The train loader starts its workers at every pass
        (persistent_workers=False), so they hold this dataset as it is then."""
        self.epoch = epoch

    def draws(self, index: int) -> ImageDraws | None:
        return None if self.seed is None else ImageDraws(self.seed, self.epoch, index)

    def unreadable(self, path: str, err: Exception) -> None:
        """None (the sample is skipped; the pass that misses it names it once) with `skip_unreadable`, else the
        one-line error with the path."""
        if not self.skip_unreadable:
            raise unreadable_image(path, err) from err
        return None

    def view_index(self, index: int, flipped: bool, draws: ImageDraws | None) -> int:
        """The sample's view index `index + N x code`: bit 0 of `code` says whether the image was flipped,
        bit 1 + k is crop k's flip of the `crop_flips` crops (AEVLP's DAMP flips each crop it scores on its
        own; methods/aevlp/damp.py reads the bits), drawn per image with its other choices."""
        code = int(flipped)
        if self.crop_flips:
            for k, flip in enumerate(draws.crop_flips(self.crop_flips)):
                code |= int(flip) << (1 + k)
        return index + len(self.images) * code


class ImageDataset(ImageFiles):
    """Yields (image tensor, label row, index); the index lets stateful losses address rows.

    An unreadable or truncated image stops the run with its path; with
    `skip_unreadable` it yields None instead, which `collate_skipping` drops
    from the batch (the training loop counts what it did not see).

    With `flip_views` the index of a mirrored image is the *view index* `index + N`:
    the row of that view in a (2N, C) table of per-view scores (VLPL's cached CLIP
    pseudo-labels, see methods/vlpl/loss.py). The transform flips it; both read the
    same draw. With `crop_flips` the view index also carries that many crop flips (`view_index`).
    """

    def __init__(self, split: Split, transform: Transform, skip_unreadable: bool = False, flip_views: bool = False,
                 seed: int | None = None, crop_flips: int = 0):
        super().__init__(split, skip_unreadable, flip_views, seed, crop_flips)
        self.transform = transform
        self.image_shape = transform.shape

    def collate(self, batch: list):
        """A batch of the readable samples (`collate_skipping`)."""
        return collate_skipping(batch, self.image_shape, self.labels.shape[1])

    def __getitem__(self, index: int):
        path = self.images[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")  # decodes the whole file: a truncated image fails here
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            return self.unreadable(path, err)
        draws = self.draws(index)
        flipped = self.flip_views and draws.flip()
        return self.transform(image, draws), self.labels[index], self.view_index(index, flipped, draws)


def collate_skipping(batch: list, image_shape: tuple[int, ...] = (), num_classes: int = 0):
    """`default_collate` of the readable samples; an all-unreadable batch becomes an empty one, of images of
    `image_shape` and label rows of `num_classes` (under torchrun a process whose part of a batch is empty
    still runs its step)."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        return torch.empty(0, *image_shape), torch.empty(0, num_classes), torch.empty(0, dtype=torch.long)
    return default_collate(kept)
