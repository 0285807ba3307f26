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

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from errors import UserError
from fileio import load_npy

log = logging.getLogger(__name__)

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


def _prepare_command(data_dir: Path, dataset: str) -> str:
    if dataset == "digits":
        return f"run `python -m preproc.format_digits --save-path {data_dir}`"
    return f"see data/{dataset}/README.md to download and format it"


def _check_labels(labels: np.ndarray, allowed: tuple[int, ...], path: Path, num_rows: int) -> None:
    if labels.ndim != 2 or labels.shape[0] != num_rows:
        raise UserError(f"{path} has shape {labels.shape}, expected ({num_rows}, C) to match its image list")
    bad = ~np.isin(labels, allowed)
    if bad.any():
        value = labels[bad][0]
        raise UserError(f"{path} holds the value {value!r}; allowed values are {sorted(allowed)}")


def resolve_images(names: np.ndarray, image_root: Path, source: Path, check_exists: bool = True) -> np.ndarray:
    """Absolute image paths; refuses paths that escape the image root, reports missing files."""
    root = image_root.resolve()
    paths = []
    for name in names.tolist():
        rel = Path(str(name))
        full = (root / rel).resolve()
        if rel.is_absolute() or not full.is_relative_to(root):
            raise UserError(f"{source} lists {name!r}, which points outside the image root {root}; refusing it")
        paths.append(str(full))
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
    fix = _prepare_command(data_dir, dataset)
    images_path = data_dir / f"formatted_{split}_images.npy"
    names = load_npy(images_path, fix)
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise UserError(f"{images_path} must be a 1-D array of path strings, got {names.dtype} {names.shape}")
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
        raise UserError(f"dataset folder {data_dir} does not exist: {_prepare_command(data_dir, dataset)}")
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
    return UserError(f"cannot read image {path}: {err} (re-extract it; --skip-bad-images skips "
                     f"unreadable training images)")


class ImageFiles(Dataset):
    """The image files of a split and their label rows; what an unreadable file does (stop, or skip)."""

    def __init__(self, split: Split, skip_unreadable: bool = False, flip_views: bool = False, crop_flips: int = 0):
        self.images = split.images
        self.labels = torch.from_numpy(split.labels)
        self.skip_unreadable = skip_unreadable
        self.flip_views = flip_views
        self.crop_flips = crop_flips

    def __len__(self) -> int:
        return len(self.images)

    def unreadable(self, path: str, err: Exception) -> None:
        """None (the sample is skipped) with `skip_unreadable`, else the one-line error with the path."""
        if not self.skip_unreadable:
            raise unreadable_image(path, err) from err
        log.warning(f"skipping unreadable image {path}: {err}")
        return None

    def view_index(self, index: int, flipped: bool) -> int:
        """The sample's view index `index + N x code`: bit 0 of `code` says whether the image was flipped,
        bit 1 + k is a fresh flip drawn for crop k of the `crop_flips` crops (AEVLP's DAMP flips each crop it
        scores on its own; methods/aevlp/damp.py reads the bits). torch's RNG, as the image's own flip."""
        code = int(flipped)
        if self.crop_flips:
            for k, flip in enumerate((torch.rand(self.crop_flips) < 0.5).tolist()):
                code |= int(flip) << (1 + k)
        return index + len(self.images) * code


class ImageDataset(ImageFiles):
    """Yields (image tensor, label row, index); the index lets stateful losses address rows.

    An unreadable or truncated image stops the run with its path; with
    `skip_unreadable` it yields None instead, which `collate_skipping` drops
    from the batch (the training loop counts what it did not see).

    With `flip_views` the dataset flips images at random itself (the transform
    must not) and yields the *view index* `index + N` for a mirrored image: the
    row of that view in a (2N, C) table of per-view scores (VLPL's cached CLIP
    pseudo-labels, see methods/vlpl/loss.py). With `crop_flips` it also draws
    that many crop flips per sample into the view index (`view_index`).
    """

    def __init__(self, split: Split, transform, skip_unreadable: bool = False, flip_views: bool = False,
                 crop_flips: int = 0):
        super().__init__(split, skip_unreadable, flip_views, crop_flips)
        self.transform = transform

    def __getitem__(self, index: int):
        path = self.images[index]
        try:
            with Image.open(path) as img:
                image = img.convert("RGB")  # decodes the whole file: a truncated image fails here
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            return self.unreadable(path, err)
        # torch's RNG, as T.RandomHorizontalFlip: seeded per DataLoader worker.
        flipped = self.flip_views and torch.rand(()).item() < 0.5
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.transform(image), self.labels[index], self.view_index(index, flipped)


def collate_skipping(batch: list):
    """`default_collate` of the readable samples; an all-unreadable batch becomes an empty one."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        return torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.long)
    return default_collate(kept)
