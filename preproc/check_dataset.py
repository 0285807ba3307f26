"""Check a prepared dataset folder before spending GPU hours on it.

    python -m preproc.check_dataset -d coco [--data-dir data/coco] [--workers 16] [--strict-counts]

Checks, for the official train and val (= test) splits:
- the formatted files load and agree (shapes, 0/1 full labels, +1/0/-1 observed
  labels), with the structural checks of `datasets.load_split_files`;
- every listed image lies inside the image root, exists and fully decodes
  (in parallel threads, with a progress bar; a truncated JPEG fails here);
- the observed labels agree with the full labels: every observed positive is a
  true positive, every observed negative a true negative;
- the class names match the label columns; the counts match the published
  ones (a warning, or a problem with `--strict-counts`).

Prints a summary (images per split, classes, positives per image, images with
no positive, classes with no positive) and exits 1 when a problem was found,
naming the first few offenders; 2 for bad arguments.
"""
from __future__ import annotations

if not __package__:  # started as `python preproc/NAME.py`: the repository's modules are not importable
    import _script_guard  # noqa: F401  (prints the `python -m preproc.NAME` form, exits 2)

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from class_names import load_class_names
from dataset_provenance import count_mismatch, dataset_variant
from datasets import load_split_files, resolve_images
from errors import UserError
from presets import PRESETS, dataset_dir, dataset_name, how_to_prepare, preset_of

SPLITS = {"train": "train (official train, split 80/20 into train/val at run time)", "val": "test (official val)"}
SHOW = 5  # offenders named per problem


@dataclass
class SplitSummary:
    images: int
    classes: int
    positives_per_image: float
    observed_positives_per_image: float
    images_without_positive: int
    classes_without_positive: list[str]


@dataclass
class CheckReport:
    dataset: str
    data_dir: Path
    variant: str = "unknown"
    splits: dict[str, SplitSummary] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"{self.dataset} in {self.data_dir} (variant: {self.variant})"]
        for split, s in self.splits.items():
            empty = ", ".join(s.classes_without_positive[:SHOW]) + (" ..." if len(s.classes_without_positive) > SHOW else "")
            lines.append(
                f"  {SPLITS[split]}: {s.images:,} images, {s.classes} classes, "
                f"{s.positives_per_image:.2f} positives/image ({s.observed_positives_per_image:.2f} observed), "
                f"{s.images_without_positive:,} images with no positive, "
                f"{len(s.classes_without_positive)} classes with no positive{f' ({empty})' if empty else ''}"
            )
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        lines.append("OK" if self.ok else f"FAILED: {len(self.problems)} problem(s)")
        return "\n".join(lines)


def _decode_error(path: str) -> str | None:
    """None if the image opens and decodes completely, else the reason."""
    try:
        with Image.open(path) as img:
            # JPEG DCT scaling: still reads every byte (truncation is caught) at a fraction of the cost
            img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
    except FileNotFoundError:
        return "missing"
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports corrupt data with all three
        return f"cannot decode ({err})"
    return None


def decode_failures(paths: list[str], workers: int, desc: str) -> list[tuple[str, str]]:
    """(path, reason) of every image that does not decode, in list order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(tqdm(pool.map(_decode_error, paths, chunksize=64), total=len(paths), desc=desc,
                            unit="img", leave=False, disable=None))
    return [(p, r) for p, r in zip(paths, results) if r is not None]


def _offenders(items: list[str]) -> str:
    return ", ".join(items[:SHOW]) + (f" (and {len(items) - SHOW} more)" if len(items) > SHOW else "")


def _check_files_and_images(report: CheckReport, split: str, image_root: Path, workers: int, decode: bool):
    """(image names, full labels, observed labels) of a split after the structural and image checks, or None."""
    data_dir = report.data_dir
    try:
        names, full, obs = load_split_files(data_dir, split, report.dataset)
    except UserError as err:
        report.problems.append(str(err))
        return None
    source = data_dir / f"formatted_{split}_images.npy"
    if full is None:
        report.problems.append(f"missing file {data_dir / f'formatted_{split}_labels.npy'}: the full labels are "
                               f"needed for the clean val set and the test set; re-run the formatting script")
        full = (obs == 1).astype(np.float32)  # summarise what there is
    if len(set(names.tolist())) != len(names):
        report.warnings.append(f"{source} lists {len(names) - len(set(names.tolist()))} image names more than once")
    try:
        paths = resolve_images(names, image_root, source, check_exists=False).tolist()
    except UserError as err:
        report.problems.append(str(err))
        paths = []
    if decode and paths:
        failures = decode_failures(paths, workers, f"decoding {split}")
        if failures:
            report.problems.append(f"{len(failures)} of {len(paths)} images of {source.name} are missing or corrupt "
                                   f"under {image_root}: " + _offenders([f"{p} ({r})" for p, r in failures]))
    return names, full, obs


def _check_labels(report: CheckReport, split: str, names: np.ndarray, full: np.ndarray, obs: np.ndarray,
                  class_names: list[str]) -> None:
    """Observed labels against full labels, then the split's summary."""
    for wrong, what in ((np.argwhere((obs == 1) & (full != 1)), "observed positive that is not a true positive"),
                        (np.argwhere((obs == -1) & (full != 0)), "observed negative that is a true positive")):
        if len(wrong):
            items = [f"row {r} {names[r]} class {class_names[c]}" for r, c in wrong[:SHOW].tolist()]
            report.problems.append(f"{len(wrong)} {what} in formatted_{split}_labels_obs.npy: {_offenders(items)} "
                                   f"(re-run `python -m preproc.generate_observed_labels` after formatting)")
    report.splits[split] = SplitSummary(
        images=len(names),
        classes=full.shape[1],
        positives_per_image=float(full.sum(1).mean()),
        observed_positives_per_image=float((obs == 1).sum(1).mean()),
        images_without_positive=int((full.sum(1) == 0).sum()),
        classes_without_positive=[class_names[c] for c in np.nonzero(full.sum(0) == 0)[0].tolist()],
    )


def check_dataset(dataset: str, data_dir: Path | None = None, image_root: Path | None = None,
                  workers: int = 8, decode: bool = True, strict_counts: bool = False) -> CheckReport:
    """Run every check on a prepared dataset folder; the report lists problems instead of raising."""
    benchmark = dataset in PRESETS
    data_dir = Path(dataset_dir(dataset, data_dir))
    if not data_dir.is_dir():
        raise UserError(f"dataset folder {data_dir} does not exist; {how_to_prepare(dataset, data_dir)}")
    image_root = Path(image_root or data_dir / preset_of(dataset).image_root)
    report = CheckReport(dataset, data_dir)
    if not image_root.is_dir():
        report.problems.append(f"image folder {image_root} does not exist; " + (
            f"extract the images (data/{dataset}/README.md)" if benchmark else "pass --image-root"))
        decode = False
    loaded = {split: _check_files_and_images(report, split, image_root, workers, decode) for split in SPLITS}
    num_classes = sorted({data[1].shape[1] for data in loaded.values() if data is not None})
    if len(num_classes) > 1:
        report.problems.append(f"train and val labels have different numbers of classes: {num_classes}")
    for split, data in loaded.items():
        if data is None:
            continue
        try:
            class_names = load_class_names(dataset, data_dir, data[1].shape[1])
        except UserError as err:  # a dataset of one's own needs names only for CLIP prompts
            found = report.problems if benchmark or (data_dir / "classes.txt").is_file() else report.warnings
            if str(err) not in found:
                found.append(str(err))
            class_names = [str(c) for c in range(data[1].shape[1])]
        _check_labels(report, split, *data, class_names)
    if len(report.splits) == len(SPLITS):
        n_train, n_test = report.splits["train"].images, report.splits["val"].images
        report.variant = dataset_variant(dataset, data_dir, n_train, n_test)
        mismatch = count_mismatch(dataset, report.variant, n_train, n_test)
        if mismatch:
            (report.problems if strict_counts else report.warnings).append(mismatch)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", required=True, type=dataset_name,
                        help=f"a benchmark ({', '.join(sorted(PRESETS))}) or the name of a dataset of your own, "
                             f"whose folder --data-dir then gives")
    parser.add_argument("--data-dir", type=Path, help="dataset folder (default: data/<dataset> for a benchmark)")
    parser.add_argument("--image-root", type=Path, help="image folder (default: the dataset's, inside --data-dir)")
    parser.add_argument("--workers", type=int, default=8, help="decoding threads (default: 8)")
    parser.add_argument("--no-decode", action="store_true", help="skip opening the images (structure and labels only)")
    parser.add_argument("--strict-counts", action="store_true",
                        help="treat counts that differ from the published ones as a problem, not a warning")
    args = parser.parse_args(argv)
    try:
        if args.workers < 1:
            raise UserError(f"--workers must be >= 1, got {args.workers}")
        report = check_dataset(args.dataset, args.data_dir, args.image_root, args.workers,
                               not args.no_decode, args.strict_counts)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
