"""Data guards: image paths stay inside the image root; `.npy` files never unpickle."""
from __future__ import annotations

import numpy as np
import pytest

from datasets import resolve_images
from errors import UserError
from fileio import load_npy


@pytest.mark.parametrize("name", ["../secret.png", "a/../../secret.png", "/etc/passwd"])
def test_paths_escaping_the_image_root_are_refused(tmp_path, name):
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    with pytest.raises(UserError, match="outside the image root"):
        resolve_images(np.array(["ok.png", name]), root, tmp_path / "formatted_train_images.npy", check_exists=False)


def test_paths_inside_the_root_resolve(tmp_path):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"x")
    paths = resolve_images(np.array(["a/x.png", "a/../a/x.png"]), root, tmp_path / "list.npy")
    assert paths.tolist() == [str(root / "a" / "x.png")] * 2


def test_a_linked_image_folder_is_read_through_its_link(tmp_path):
    """The usual layout: DIR/train -> /datasets/.../train, the images living outside DIR."""
    elsewhere = tmp_path / "datasets" / "train"
    elsewhere.mkdir(parents=True)
    (elsewhere / "000000.png").write_bytes(b"x")
    root = tmp_path / "mine"
    root.mkdir()
    (root / "train").symlink_to(elsewhere)
    paths = resolve_images(np.array(["train/000000.png"]), root, root / "formatted_train_images.npy")
    assert paths.tolist() == [str(root / "train" / "000000.png")]
    with pytest.raises(UserError, match="outside the image root"):  # a listed path may still not climb out
        resolve_images(np.array(["train/../../datasets/train/000000.png"]), root, root / "list.npy")


def test_pickle_bearing_npy_is_refused(tmp_path):
    path = tmp_path / "formatted_train_images.npy"
    np.save(path, np.array(["a.png", {"b": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="pickled data"):
        load_npy(path, "regenerate it")


@pytest.mark.parametrize("keep_bytes", [100, 300])  # cut inside the header, inside the data
def test_truncated_npy_is_refused(tmp_path, keep_bytes):
    path = tmp_path / "labels.npy"
    np.save(path, np.ones((50, 4), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:keep_bytes])
    with pytest.raises(UserError, match="is a truncated or damaged .npy file"):
        load_npy(path, "regenerate it")
