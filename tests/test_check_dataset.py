"""preproc/check_dataset.py on a sound and on a broken miniature dataset."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from errors import UserError
from preproc import check_dataset as checker
from preproc.generate_observed_labels import generate_observed_labels


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 255, (64, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def make_pascal(root: Path) -> Path:
    """A formatted PASCAL folder: 4 train + 2 val JPEGs, observed labels sampled by the real sampler."""
    images = root / "VOCdevkit" / "VOC2012" / "JPEGImages"
    train = ["2008_000001.jpg", "2008_000002.jpg", "2008_000003.jpg", "2008_000004.jpg"]
    val = ["2010_000001.jpg", "2010_000002.jpg"]
    for k, name in enumerate(train + val):
        _jpeg(images / name, k)
    labels = np.zeros((4, 20))
    labels[0, [0, 14]] = labels[1, 14] = labels[2, [3, 5, 7]] = labels[3, 14] = 1
    test = np.zeros((2, 20))
    test[0, 1] = test[1, 14] = 1
    np.save(root / "formatted_train_images.npy", np.array(train))
    np.save(root / "formatted_train_labels.npy", labels)
    np.save(root / "formatted_val_images.npy", np.array(val))
    np.save(root / "formatted_val_labels.npy", test)
    generate_observed_labels(root)
    return images


def test_sound_dataset_passes_with_summary(tmp_path, capsys):
    make_pascal(tmp_path)
    assert checker.main(["-d", "pascal", "--data-dir", str(tmp_path), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("OK")
    report = checker.check_dataset("pascal", tmp_path, workers=2)
    train, test = report.splits["train"], report.splits["val"]
    assert (train.images, train.classes, test.images) == (4, 20, 2)
    assert train.positives_per_image == pytest.approx(7 / 4)
    assert train.observed_positives_per_image == 1.0
    assert train.images_without_positive == 0
    # 20 classes, positives only in aeroplane, boat, bus, cat, person
    assert len(train.classes_without_positive) == 15 and "bicycle" in train.classes_without_positive
    assert report.variant == "unknown"  # counts of neither published variant, and not written by a formatter
    assert any("5,717 train" in w for w in report.warnings)  # a warning, not a failure
    assert not checker.check_dataset("pascal", tmp_path, workers=2, strict_counts=False).problems
    assert checker.check_dataset("pascal", tmp_path, workers=2, strict_counts=True).problems


def test_broken_dataset_names_each_offender(tmp_path, capsys):
    images = make_pascal(tmp_path)
    (images / "2008_000002.jpg").unlink()  # missing
    data = (images / "2008_000003.jpg").read_bytes()
    (images / "2008_000003.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    obs = np.load(tmp_path / "formatted_train_labels_obs.npy")
    obs[3, 2] = 1  # image 4 has no bird: an observed positive that is not a true positive
    np.save(tmp_path / "formatted_train_labels_obs.npy", obs)

    assert checker.main(["-d", "pascal", "--data-dir", str(tmp_path), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "2 of 4 images" in out
    assert "2008_000002.jpg (missing)" in out
    assert "2008_000003.jpg (cannot decode" in out and "truncated" in out
    assert "1 observed positive that is not a true positive" in out and "row 3 2008_000004.jpg class bird" in out
    assert out.rstrip().endswith("FAILED: 2 problem(s)")


def test_missing_observed_labels_and_escaping_path(tmp_path):
    make_pascal(tmp_path)
    (tmp_path / "formatted_val_labels_obs.npy").unlink()
    np.save(tmp_path / "formatted_train_images.npy", np.array(["../../x.jpg", "a.jpg", "b.jpg", "c.jpg"]))
    report = checker.check_dataset("pascal", tmp_path, workers=1)
    text = "\n".join(report.problems)
    assert "outside the image root" in text
    assert "formatted_val_labels_obs.npy" in text and "preproc.generate_observed_labels" in text


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert checker.main(["-d", "pascal", "--data-dir", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(UserError, match="-d voc is not one of the benchmarks .* pass its folder with --data-dir"):
        checker.check_dataset("voc")  # a name of one's own without its folder


def test_truncated_jpeg_is_caught_by_the_decoder(tmp_path):
    path = tmp_path / "a.jpg"
    _jpeg(path, 0)
    assert checker._decode_error(str(path)) is None
    buf = io.BytesIO(path.read_bytes()[:-200])
    path.write_bytes(buf.getvalue())
    assert "truncated" in checker._decode_error(str(path))


def test_a_dataset_of_ones_own_is_sampled_checked_and_featurised_under_its_name(digits_master, tmp_path, capsys):
    """The three preproc tools take the name of a dataset of one's own with its folder (as main.py does),
    with neutral defaults (image paths relative to the folder), not a benchmark's."""
    from conftest import slice_digits
    from preproc import extract_features, generate_observed_labels

    mine = slice_digits(digits_master, tmp_path / "mine", 30, 10, copy_images=False)
    for split in ("train", "val"):
        (mine / f"formatted_{split}_labels_obs.npy").unlink()
    images = ["--image-root", str(mine / "images")]
    assert generate_observed_labels.main(["--dataset", "mine", "--data-dir", str(mine)]) == 0
    assert np.load(mine / "formatted_train_labels_obs.npy").shape == (30, 10)
    assert checker.main(["-d", "mine", "--data-dir", str(mine), *images]) == 0
    out = capsys.readouterr().out
    assert "mine" in out and "problem" not in out.lower().replace("no problem", "")
    assert extract_features.main(["-d", "mine", "--data-dir", str(mine), *images, "-m", "digits_cnn",
                                  "--no-pretrained", "--num-workers", "0"]) == 0
    assert np.load(mine / "train_features_digits_cnn.npy").shape[0] == 30
    for tool, flag in ((generate_observed_labels.main, "--dataset"), (checker.main, "-d"), (extract_features.main, "-d")):
        capsys.readouterr()
        assert tool([flag, "mine"]) == 2  # no folder of its own to default to
        assert f"{flag} mine is not one of the benchmarks" in capsys.readouterr().err
