"""Every file spml writes or reads back: atomic writes, and reads that refuse unsafe or damaged files.

Writes go to a temporary file in the target folder, are fsynced, then `os.replace`d,
so a crash (or Ctrl-C) leaves the old file or the new one, never half of one.
Reads never unpickle: `.npy` files without `allow_pickle`, PyTorch files with
`weights_only=True`; a file that is not what it should be is reported as such
(`UserError`, one line) instead of passing the library's own message on.
JSON is written strictly: a non-finite number (a diverged run's mAP) becomes `null`.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from errors import UserError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_PROTO = b"\x80"  # the legacy torch.save format starts as a pickle


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write `path` with `write(binary_file)`; the file gets the usual permissions, not mkstemp's 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary file behind
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def strict_json(obj):
    """`obj` with every non-finite float replaced by None: strict JSON parsers reject NaN and Infinity."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: strict_json(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(value) for value in obj]
    return obj


def json_line(obj) -> str:
    return json.dumps(strict_json(obj), allow_nan=False)


def write_json_atomic(path: Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`; `what` names the file for the error ("the run's config.json")."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a file") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{what} {path} is not valid JSON ({err}); the file is damaged") from err
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} holds a JSON {type(value).__name__}, not an object")
    return value


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(size)


def _require_file(path: Path, missing: str) -> None:
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a file")
    if not path.is_file():
        raise UserError(missing)


def load_npy(path: Path, fix: str) -> np.ndarray:
    """Load an array without pickles; `fix` tells the user how to create a missing or damaged file."""
    path = Path(path)
    _require_file(path, f"missing file {path}: {fix}")
    if _head(path, len(NPY_MAGIC)) != NPY_MAGIC:
        raise UserError(f"{path} is not a NumPy .npy file (no .npy header); recreate it: {fix}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):  # object arrays need pickle, which can run arbitrary code
            raise UserError(f"{path} holds Python objects (pickled data), refused; "
                            f"re-save it as a plain string/number array") from err
        raise UserError(f"{path} is a truncated or damaged .npy file; recreate it: {fix}") from err
    except (OSError, EOFError) as err:
        raise UserError(f"{path} is a truncated or damaged .npy file; recreate it: {fix}") from err


def save_npy_atomic(path: Path, array: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda f: np.save(f, array))


def load_torch(path: Path, what: str, expected: str) -> object:
    """A PyTorch file's contents, tensors and plain containers only (weights_only=True).

    `what` names the file ("checkpoint", "--pretrained-weights"); `expected` says what
    the tool wants there, for the error. Never suggests `weights_only=False`: unpickling
    an untrusted file can run arbitrary code.
    """
    import torch

    path = Path(path)
    _require_file(path, f"{what} {path} does not exist; expected {expected}")
    head = _head(path, len(ZIP_MAGIC))
    if head != ZIP_MAGIC and not head.startswith(PICKLE_PROTO):
        raise UserError(f"{what} {path} is not a PyTorch file; expected {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # what weights_only refuses: arbitrary Python objects
        raise UserError(f"{what} {path} holds Python objects that are not loaded for safety (only tensors, "
                        f"dicts, lists and numbers are); expected {expected}") from err
    except Exception as err:  # truncated zip, damaged records, ...
        raise UserError(f"{what} {path} is a truncated or damaged PyTorch file; expected {expected}") from err


def save_torch_atomic(path: Path, payload: dict) -> Path:
    import torch

    return write_atomic(path, lambda f: torch.save(payload, f))
