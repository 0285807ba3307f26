"""Safe `.npy` reading and atomic writing for the dataset files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from atomic import write_atomic
from errors import UserError


def load_npy(path: Path, fix: str) -> np.ndarray:
    """Load an array without pickles; `fix` tells the user how to create a missing file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file {path}: {fix}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):  # object arrays need pickle, which can run arbitrary code
            raise UserError(f"{path} holds Python objects (pickled data), refused; "
                            f"re-save it as a plain string/number array") from err
        raise UserError(f"{path} is not a readable .npy file ({err}); recreate it: {fix}") from err  # truncated
    except (OSError, EOFError) as err:
        raise UserError(f"{path} is not a readable .npy file ({err}); recreate it: {fix}") from err


def save_npy_atomic(path: Path, array: np.ndarray) -> Path:
    """Write `array` to `path` through a temporary file, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.save(f, array))
    return path
