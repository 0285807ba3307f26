"""Which variant of a benchmark a dataset folder holds, and the counts expected of it.

NUS-WIDE exists in two incompatible forms: Cole et al.'s 2020 re-crawl
(150,000 / 60,260 images, shipped pre-formatted) and the official release
(161,789 / 107,859 images, formatted by `preproc/format_nuswide.py`) used by the
EM and VLPL papers. They give different numbers, so every result must say which
one it used. COCO likewise: Cole et al. keep the images with an annotation
(82,081 / 40,137), PU-MLC (Yuan et al. 2024) every image (82,783 / 40,504).
The formatting scripts write `variant.json` into the dataset folder;
pre-formatted files without one are recognised by their image counts.
"""
from __future__ import annotations

import json
from pathlib import Path

from fileio import write_json_atomic

VARIANT_FILE = "variant.json"
# Bump the version whenever preproc/format_digits.py would draw different mosaics.
DIGITS_VARIANT = "sklearn-digits-3x3-v1"

# (official train images, official val = test images) per known variant (the papers and the official releases).
EXPECTED_COUNTS: dict[str, dict[str, tuple[int, int]]] = {
    "digits": {DIGITS_VARIANT: (4000, 1000)},
    "pascal": {"voc2012": (5717, 5823)},
    "coco": {"coco2014": (82081, 40137), "coco2014-every-image": (82783, 40504)},
    "voc2007": {"voc2007": (5011, 4952)},
    "cub": {"cub-200-2011": (5994, 5794)},
    "nuswide": {"cole-recrawl": (150000, 60260), "official": (161789, 107859)},
}


def write_variant(data_dir: Path, variant: str, **details) -> Path:
    """Record how the folder was made; `details` are extra JSON-able facts (flags, sources)."""
    path = Path(data_dir) / VARIANT_FILE
    write_json_atomic(path, {"variant": variant, **details})
    return path


def dataset_variant(dataset: str, data_dir: Path, num_train: int, num_test: int) -> str:
    """The folder's recorded variant, else the known variant its counts match, else "unknown"."""
    path = Path(data_dir) / VARIANT_FILE
    if path.is_file():
        try:
            return str(json.loads(path.read_text())["variant"])
        except (ValueError, KeyError, TypeError):
            return f"unknown ({path} is unreadable)"
    for name, counts in EXPECTED_COUNTS.get(dataset, {}).items():
        if counts == (num_train, num_test):
            return name
    return "unknown"


def count_mismatch(dataset: str, variant: str, num_train: int, num_test: int) -> str | None:
    """A warning when the counts are not those of the folder's variant (fixtures, partial downloads), or,
    for a folder of unknown variant, not those of any variant of its dataset."""
    known = EXPECTED_COUNTS.get(dataset, {})
    if variant in known:
        candidates = {variant: known[variant]}
    else:  # a variant without published counts (NUS-WIDE's official-labelled) has none to miss
        candidates = known if variant.startswith("unknown") else {}
    if not candidates or (num_train, num_test) in candidates.values():
        return None
    expected = " or ".join(f"{train:,} train / {test:,} test images ({name})"
                           for name, (train, test) in candidates.items())
    return (f"{dataset} should have {expected}, found {num_train:,} / {num_test:,}: a partial download or a "
            f"different release; results will not be comparable to the papers")
