"""What a run checks before it writes anything: the paths it will read and the folder it will write.

Each problem is a `UserError` naming the flag, what is wrong and how to fix it, raised
while parsing, so that a bad flag never leaves a half-made run folder behind.
"""
from __future__ import annotations

import os
from pathlib import Path

from errors import UserError


def existing_file(flag: str, path: Path | None, what: str) -> None:
    """`path` (when given) is a readable file; `what` says what the flag expects, for the error."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; pass {what}")
    if not path.exists():
        raise UserError(f"{flag} {path} does not exist; pass {what}")
    if not os.access(path, os.R_OK):
        raise UserError(f"{flag} {path} is not readable (permission denied)")


def existing_folder(flag: str, path: Path | None, what: str) -> None:
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; pass {what}")
    if not path.is_dir():
        raise UserError(f"{flag} {path} does not exist; pass {what}")


def writable_folder(flag: str, path: Path) -> None:
    """`path` is a folder that exists or can be made: its nearest existing ancestor is a writable folder."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if existing == path and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; pass a folder")
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, so no folder can be made under it; pass another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write in {existing} (read-only or permission denied); "
                        f"pass a folder you can write to")


def new_run_folder(path: Path) -> None:
    """--out: a folder spml may create (or an empty one); a folder holding files is never overwritten."""
    writable_folder("--out", path)
    if path.is_dir() and any(path.iterdir()):
        raise UserError(f"run folder {path} already exists and is not empty; pass a new --out (or --resume {path})")
