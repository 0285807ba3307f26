"""Shared fixtures: the embedded digits dataset, built once per test session in a temp folder."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preproc.format_digits import format_digits  # noqa: E402
from preproc.generate_observed_labels import generate_observed_labels  # noqa: E402


@pytest.fixture(scope="session")
def digits_master(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    format_digits(root)
    generate_observed_labels(root)
    return root


@pytest.fixture
def digits_dir(digits_master: Path, tmp_path: Path) -> Path:
    """A private copy of the formatted files (images shared by symlink), safe to corrupt."""
    copy = tmp_path / "digits"
    copy.mkdir()
    for f in digits_master.iterdir():
        if f.is_dir():
            (copy / f.name).symlink_to(f)
        else:
            shutil.copy(f, copy / f.name)
    return copy
