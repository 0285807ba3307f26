"""PU-MLC's VOC 2007 on a miniature devkit tree: format, sample labels, check, train one epoch; bad trees."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from class_names import PASCAL_CLASSES
from main import main
from preproc import check_dataset, format_voc2007
from preproc.generate_observed_labels import generate_observed_labels

# image id -> objects (class name as written in the XML, difficult flag); ids listed unsorted on purpose
TRAINVAL = {
    "000012": [("car", 0)],
    "000005": [("chair", 0), ("chair", 1), ("Dog", 0)],  # the devkit's names are lower case; the authors lower-case
    "000007": [("bottle", 1)],  # only a difficult object: no positive at all
    "000009": [("horse", 0), ("person", 0), ("person", 1)],
    "000016": [("bicycle", 0)],
    "000017": [("person", 0), ("horse", 0)],
    "000019": [("cat", 0)],
    "000020": [("car", 0), ("bus", 0)],
    "000021": [("dog", 0), ("person", 0)],
    "000023": [("bicycle", 0), ("person", 0)],
}
TEST = {
    "000001": [("dog", 0), ("person", 0)],
    "000002": [("train", 0)],
    "000004": [("sheep", 1), ("car", 0)],  # sheep only difficult: a negative in the test labels too
    "000006": [("diningtable", 0), ("chair", 1), ("pottedplant", 0)],
}


def _xml(image_id: str, objects) -> str:
    body = "".join(f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
                   f"<difficult>{difficult}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
                   f"<ymax>9</ymax></bndbox></object>" for name, difficult in objects)
    return (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>32</width><height>24</height><depth>3</depth></size>{body}</annotation>")


def make_voc2007(root: Path, splits=(("trainval", TRAINVAL), ("test", TEST))) -> Path:
    """The VOCdevkit/VOC2007 tree of both tars, with tiny JPEGs; returns the VOC2007 folder."""
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for k, (image_set, images) in enumerate(splits):
        (voc / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in images))
        for j, (image_id, objects) in enumerate(images.items()):
            (voc / "Annotations" / f"{image_id}.xml").write_text(_xml(image_id, objects))
            pixels = np.random.RandomState(100 * k + j).randint(0, 255, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
    return voc


def _columns(*names: str) -> list[int]:
    return sorted(PASCAL_CLASSES.index(n) for n in names)


def test_format_skips_difficult_objects_and_keeps_file_order(tmp_path):
    make_voc2007(tmp_path)
    assert format_voc2007.main(["--load-path", str(tmp_path), "--save-path", str(tmp_path)]) == 0
    images, labels = np.load(tmp_path / "formatted_train_images.npy"), np.load(tmp_path / "formatted_train_labels.npy")
    assert images.tolist() == [f"{i}.jpg" for i in TRAINVAL] and labels.dtype == np.float64
    assert labels.shape == (10, 20)
    assert labels[1].nonzero()[0].tolist() == _columns("chair", "dog")
    assert labels[2].sum() == 0  # only a difficult bottle
    assert labels[3].nonzero()[0].tolist() == _columns("horse", "person")
    test_images, test = np.load(tmp_path / "formatted_val_images.npy"), np.load(tmp_path / "formatted_val_labels.npy")
    assert test_images.tolist() == [f"{i}.jpg" for i in TEST]
    assert test[2].nonzero()[0].tolist() == _columns("car")  # the difficult sheep is a negative
    assert test[3].nonzero()[0].tolist() == _columns("diningtable", "pottedplant")
    variant = json.loads((tmp_path / "variant.json").read_text())
    assert variant["variant"] == "voc2007" and variant["difficult"].startswith("negative (PU-MLC")
    assert (tmp_path / "classes.txt").read_text().splitlines() == list(PASCAL_CLASSES)


def test_labels_check_and_one_epoch_end_to_end(tmp_path, capsys):
    make_voc2007(tmp_path)
    assert format_voc2007.main(["--load-path", str(tmp_path), "--save-path", str(tmp_path)]) == 0
    # PU-MLC's protocol: a tenth of the train entries known, positives and negatives alike
    generate_observed_labels(tmp_path, seed=0, known_ratio=0.1)
    obs = np.load(tmp_path / "formatted_train_labels_obs.npy")
    keep = np.random.RandomState(0).rand(10, 20) < 0.1
    full = np.load(tmp_path / "formatted_train_labels.npy")
    np.testing.assert_array_equal(obs, np.where(keep, 2 * full - 1, 0))
    generate_observed_labels(tmp_path)  # single positive
    obs = np.load(tmp_path / "formatted_train_labels_obs.npy")
    assert (obs == 1).sum(1).tolist() == [1, 1, 0, 1, 1, 1, 1, 1, 1, 1] and not (obs == -1).any()

    assert check_dataset.main(["-d", "voc2007", "--data-dir", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "(variant: voc2007)" in out and "5,011 train / 4,952 test" in out and out.rstrip().endswith("OK")

    run = tmp_path / "run"
    assert main(["-d", "voc2007", "--data-dir", str(tmp_path), "-m", "digits_cnn", "-l", "EM", "-g", "cpu",
                 "--num-workers", "0", "--epochs", "1", "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed" and results["dataset_variant"] == "voc2007"
    assert results["config"]["bsize"] == 8 and results["config"]["lr"] == 1e-5  # pascal's (Zhou et al.)


@pytest.mark.parametrize("damage, expected", [
    (lambda voc: (voc / "ImageSets/Main/test.txt").unlink(), "test.txt: the test images .* VOCtest_06-Nov-2007.tar"),
    (lambda voc: (voc / "Annotations/000019.xml").unlink(), "missing .*000019.xml: download VOCtrainval_06-Nov"),
    (lambda voc: (voc / "Annotations/000002.xml").unlink(), "missing .*000002.xml: the test images .* separate tar"),
    (lambda voc: (voc / "Annotations/000019.xml").write_text("<annotation><object>"), "000019.xml is not valid XML"),
    (lambda voc: (voc / "Annotations/000019.xml").write_text(_xml("000019", [("kitten", 0)])),
     "000019.xml: unknown class 'kitten'; the VOC 2007 classes are aeroplane, bicycle"),
    (lambda voc: (voc / "Annotations/000019.xml").write_text("<annotation><object></object></annotation>"),
     "000019.xml: an <object> without a <name>"),
    (lambda voc: ((voc / "Annotations/000019.xml").unlink(), (voc / "Annotations/000019.xml").mkdir()),
     "cannot read .*000019.xml"),
    (lambda voc: (voc / "Annotations/000019.xml").write_text(_xml("000019", [("cat", 2)])),
     "<difficult> must be 0 or 1, got '2'"),
    (lambda voc: (voc / "ImageSets/Main/trainval.txt").write_text("000019\n../../etc/passwd\n"),
     r"trainval.txt:2: expected one image id per line, got '../../etc/passwd'"),
    (lambda voc: (voc / "ImageSets/Main/test.txt").write_text("000019\n"),
     "1 images are in both trainval.txt and test.txt"),
])
def test_bad_trees_are_one_line_errors(tmp_path, capsys, damage, expected):
    damage(make_voc2007(tmp_path))
    assert format_voc2007.main(["--load-path", str(tmp_path), "--save-path", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(expected, err), err
    assert not (tmp_path / "out").exists()


def test_missing_devkit_names_both_tars(tmp_path, capsys):
    assert format_voc2007.main(["--load-path", str(tmp_path), "--save-path", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "VOCdevkit/VOC2007" in err and "VOCtrainval_06-Nov-2007.tar" in err and "VOCtest_06-Nov-2007.tar" in err
