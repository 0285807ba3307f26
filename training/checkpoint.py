"""Checkpoints: what a run needs to continue after a crash, written atomically, read without pickles.

    <out>/last.pt   after every completed epoch: model, optimiser, loss state
                    (ROLE's label matrix, APL's soft labels, ...), train state
                    (epoch, best so far, patience counter), the epoch records,
                    RNG states, config, format version
    <out>/best.pt   on each val mAP gain: the model weights of the best epoch and
                    the same metadata (no optimiser: it only serves evaluation)

Each file is written to a temporary file in the same folder and `os.replace`d,
so a crash while writing leaves the previous checkpoint whole. Reading uses
`torch.load(weights_only=True)`: tensors, dicts, lists and numbers only, never
arbitrary pickled objects; that is why NumPy's RNG state is stored as a tensor.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from errors import UserError
from fileio import load_torch, save_torch_atomic

FORMAT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"


def save_checkpoint(path: Path, payload: dict) -> None:
    """Through a temporary file + fsync + rename: the old file stays whole until the new one is."""
    save_torch_atomic(path, {"version": FORMAT_VERSION, **payload})


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's contents; refuses missing, corrupt, pickle-bearing or other-version files."""
    expected = "a run folder's last.pt or best.pt"
    ckpt = load_torch(path, "checkpoint", expected)
    if not isinstance(ckpt, dict) or ckpt.get("version") != FORMAT_VERSION:
        found = f"format {ckpt.get('version')!r}" if isinstance(ckpt, dict) and "version" in ckpt else \
            f"a {type(ckpt).__name__} without spml's format version"
        raise UserError(f"{path} is not a spml checkpoint of format {FORMAT_VERSION} (it holds {found}); "
                        f"expected {expected}")
    return ckpt


def seed_all(seed: int) -> None:
    """Seed every random stream a run draws from (torch on all devices, NumPy, Python)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state(train_generator: torch.Generator | None) -> dict:
    """Every random stream a training epoch draws from, as tensors and plain numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if train_generator is not None:
        # the train loader's shuffle order and its workers' base seed come from this generator
        state["train_loader"] = train_generator.get_state()
    return state


def restore_rng_state(state: dict, train_generator: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if train_generator is not None and "train_loader" in state:
        train_generator.set_state(state["train_loader"])
