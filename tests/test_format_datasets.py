"""The benchmark formatting scripts on miniature trees in each dataset's own on-disk format."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from class_names import NUSWIDE_CLASSES, PASCAL_CLASSES
from dataset_provenance import count_mismatch, dataset_variant
from errors import UserError
from preproc import format_coco, format_cub, format_nuswide, format_pascal
from presets import REPO_ROOT


def _load(folder: Path, split: str):
    return np.load(folder / f"formatted_{split}_images.npy"), np.load(folder / f"formatted_{split}_labels.npy")


# ---------------------------------------------------------------- PASCAL VOC

def make_voc(root: Path, positives: dict[str, dict[str, dict[str, str]]]) -> None:
    """positives[split][image id][class] = flag ("1" or "0"); every other pair is written as -1."""
    main = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for split, images in positives.items():
        for name in PASCAL_CLASSES:
            lines = []
            for image in images:  # devkit order, not sorted on purpose
                flag = images[image].get(name, "-1")
                lines.append(f"{image} {' ' if flag != '-1' else ''}{flag}")
            (main / f"{name}_{split}.txt").write_text("\n".join(lines) + "\n")


def test_pascal_rows_sorted_difficult_is_negative_and_unlabelled_dropped(tmp_path):
    make_voc(tmp_path, {
        "train": {"2009_000002": {"dog": "1", "cat": "0"}, "2008_000008": {"horse": "1", "person": "1"},
                  "2008_000015": {"bottle": "0"}},  # only difficult: no positive, dropped
        "val": {"2010_000001": {"tvmonitor": "1"}},
    })
    assert format_pascal.main(["--load-path", str(tmp_path), "--save-path", str(tmp_path / "out")]) == 0
    images, labels = _load(tmp_path / "out", "train")
    assert images.tolist() == ["2008_000008.jpg", "2009_000002.jpg"]
    assert labels.dtype == np.float64
    expected = np.zeros((2, 20))
    expected[0, [12, 14]] = 1  # horse, person
    expected[1, 11] = 1  # dog; the difficult cat stays 0
    np.testing.assert_array_equal(labels, expected)
    images, labels = _load(tmp_path / "out", "val")
    assert images.tolist() == ["2010_000001.jpg"] and labels[0].nonzero()[0].tolist() == [19]
    assert (tmp_path / "out" / "classes.txt").read_text().split("\n")[:2] == ["aeroplane", "bicycle"]
    assert dataset_variant("pascal", tmp_path / "out", 2, 1) == "voc2012"


def test_pascal_missing_devkit_names_path_and_download(tmp_path, capsys):
    assert format_pascal.main(["--load-path", str(tmp_path), "--save-path", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "ImageSets/Main" in err and "VOCtrainval_11-May-2012.tar" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_pascal_refuses_image_id_escaping_the_root(tmp_path):
    make_voc(tmp_path, {"train": {"../../../etc/passwd": {"dog": "1"}}, "val": {"a": {"dog": "1"}}})
    with pytest.raises(UserError, match="outside the image root"):
        format_pascal.format_pascal(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out" / "formatted_train_images.npy").exists()


# ---------------------------------------------------------------- COCO

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 2, "name": "bicycle"}]


def write_instances(root: Path, split: str, annotations: list[tuple[int, int]], categories=CATEGORIES,
                    images: list[int] = ()) -> None:
    folder = root / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    data = {"images": [{"id": i, "file_name": f"COCO_{split}2014_{i:012d}.jpg"} for i in images],
            "categories": categories,
            "annotations": [{"id": k, "image_id": i, "category_id": c} for k, (i, c) in enumerate(annotations)]}
    (folder / f"instances_{split}2014.json").write_text(json.dumps(data))


# The `images` lists, in file order (not sorted); ids 7, 300 and 5 have no annotation.
TRAIN_IMAGES, VAL_IMAGES = [25, 7, 100, 9, 300], [5, 42]


def test_coco_ids_sorted_as_strings_and_categories_in_file_order(tmp_path):
    # ids 9, 100, 25: as strings "100" < "25" < "9"; category 3 (car) is the file's 2nd entry
    write_instances(tmp_path, "train", [(9, 1), (100, 3), (25, 2), (9, 3), (100, 3)], images=TRAIN_IMAGES)
    write_instances(tmp_path, "val", [(42, 2)], images=VAL_IMAGES)
    assert format_coco.main(["--load-path", str(tmp_path), "--save-path", str(tmp_path)]) == 0
    # Cole et al.'s rules ignore the images without annotations
    images, labels = _load(tmp_path, "train")
    assert images.tolist() == ["train2014/COCO_train2014_000000000100.jpg",
                               "train2014/COCO_train2014_000000000025.jpg",
                               "train2014/COCO_train2014_000000000009.jpg"]
    np.testing.assert_array_equal(labels, [[0, 1, 0], [0, 0, 1], [1, 1, 0]])
    assert labels.dtype == np.float64
    images, labels = _load(tmp_path, "val")
    assert images.tolist() == ["val2014/COCO_val2014_000000000042.jpg"] and labels.tolist() == [[0, 0, 1]]
    assert (tmp_path / "classes.txt").read_text() == "person\ncar\nbicycle\n"
    assert json.loads((tmp_path / "variant.json").read_text()) == {"variant": "coco2014"}


def test_coco_every_image_keeps_the_images_list_order_and_unannotated_images(tmp_path):
    """PU-MLC's COCO: every listed image, in `images` order (pycocotools' `imgs` keys), a repeated id once."""
    write_instances(tmp_path, "train", [(9, 1), (100, 3), (25, 2), (9, 3), (100, 3)], images=TRAIN_IMAGES + [7])
    write_instances(tmp_path, "val", [(42, 2)], images=VAL_IMAGES)
    out = tmp_path / "coco_every"
    assert format_coco.main(["--every-image", "--load-path", str(tmp_path), "--save-path", str(out)]) == 0
    images, labels = _load(out, "train")
    assert images.tolist() == [f"train2014/COCO_train2014_{i:012d}.jpg" for i in TRAIN_IMAGES]
    np.testing.assert_array_equal(labels, [[0, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    assert labels.dtype == np.float64
    images, labels = _load(out, "val")
    assert images.tolist() == ["val2014/COCO_val2014_000000000005.jpg", "val2014/COCO_val2014_000000000042.jpg"]
    assert labels.tolist() == [[0, 0, 0], [0, 0, 1]]
    variant = json.loads((out / "variant.json").read_text())
    assert variant["variant"] == "coco2014-every-image" and variant["unlabelled_images"] == {"train": 2, "val": 1}
    assert dataset_variant("coco", tmp_path, 82783, 40504) == "coco2014-every-image"
    assert "82,783 train / 40,504 test" in count_mismatch("coco", variant["variant"], 5, 2)
    assert "82,081 train" not in count_mismatch("coco", variant["variant"], 5, 2)
    # a folder of unknown variant is checked against every variant of its dataset
    unknown = count_mismatch("coco", "unknown", 5, 2)
    assert "82,081 train / 40,137 test images (coco2014) or 82,783 train / 40,504 test" in unknown
    assert count_mismatch("coco", "unknown", 82783, 40504) is None
    assert count_mismatch("nuswide", "official-labelled", 5, 2) is None  # no published counts to miss


def test_coco_every_image_refuses_annotations_of_unlisted_images(tmp_path):
    write_instances(tmp_path, "train", [(9, 1), (11, 2)], images=[9])
    write_instances(tmp_path, "val", [(42, 2)], images=[42])
    with pytest.raises(UserError, match="1 annotated image ids are missing from its 'images' list .first: 11."):
        format_coco.format_coco(tmp_path, tmp_path, every_image=True)
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps({"annotations": [],
                                                                                   "categories": CATEGORIES}))
    with pytest.raises(UserError, match="no 'images' list"):
        format_coco.format_coco(tmp_path, tmp_path, every_image=True)


def test_coco_json_without_annotations_is_refused(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps({"images": [], "categories": CATEGORIES}))
    with pytest.raises(UserError, match="no 'annotations' list"):
        format_coco.format_coco(tmp_path, tmp_path)


def test_coco_categories_must_agree_and_files_must_exist(tmp_path):
    with pytest.raises(UserError, match="instances_train2014.json.*annotations_trainval2014.zip"):
        format_coco.format_coco(tmp_path, tmp_path)
    write_instances(tmp_path, "train", [(1, 1)])
    write_instances(tmp_path, "val", [(2, 1)], categories=CATEGORIES[::-1])
    with pytest.raises(UserError, match="categories .* differ"):
        format_coco.format_coco(tmp_path, tmp_path)


# ---------------------------------------------------------------- CUB

def make_cub(root: Path, split_flags: list[int], present: np.ndarray, paths: list[str] | None = None) -> None:
    """A CUB tree; `present` is (images, 312) 0/1; label lines are written in a shuffled order."""
    cub = root / "CUB_200_2011"
    (cub / "attributes").mkdir(parents=True)
    paths = paths or [f"{i:03d}.Bird/Bird_{i}.jpg" for i in range(1, len(split_flags) + 1)]
    (cub / "images.txt").write_text("".join(f"{i} {p}\n" for i, p in enumerate(paths, start=1)))
    (cub / "train_test_split.txt").write_text("".join(f"{i} {f}\n" for i, f in enumerate(split_flags, start=1)))
    (root / "attributes.txt").write_text("".join(f"{j} has_part::color_{j}\n" for j in range(1, 313)))
    lines = [f"{i + 1} {j + 1} {present[i, j]} 3 12.5\n" for i in range(len(paths)) for j in range(312)]
    lines[5] = lines[5].rstrip("\n") + " 0\n"  # the official file has a few lines with an extra column
    order = np.random.RandomState(0).permutation(len(lines))
    (cub / "attributes" / "image_attribute_labels.txt").write_text("".join(lines[k] for k in order))


def test_cub_rows_follow_images_txt_and_split(tmp_path):
    present = np.zeros((4, 312), dtype=np.int64)
    present[0, [0, 311]] = 1
    present[1, 5] = 1
    present[2, 100] = 1
    present[3, [1, 2]] = 1
    make_cub(tmp_path, [1, 0, 1, 0], present)
    assert format_cub.main(["--load-path", str(tmp_path), "--save-path", str(tmp_path)]) == 0
    images, labels = _load(tmp_path, "train")
    assert images.tolist() == ["001.Bird/Bird_1.jpg", "003.Bird/Bird_3.jpg"]
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, present[[0, 2]])
    images, labels = _load(tmp_path, "val")
    assert images.tolist() == ["002.Bird/Bird_2.jpg", "004.Bird/Bird_4.jpg"]
    np.testing.assert_array_equal(labels, present[[1, 3]])
    names = (tmp_path / "classes.txt").read_text().splitlines()
    assert len(names) == 312 and names[0] == "has_part::color_1"


def test_cub_missing_label_pair_and_escaping_path(tmp_path):
    make_cub(tmp_path, [1, 0], np.zeros((2, 312), dtype=np.int64))
    path = tmp_path / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(UserError, match="0 times"):
        format_cub.format_cub(tmp_path, tmp_path)
    other = tmp_path / "b"
    make_cub(other, [1, 0], np.zeros((2, 312), dtype=np.int64), paths=["a/ok.jpg", "../../outside.jpg"])
    with pytest.raises(UserError, match="outside the image root"):
        format_cub.format_cub(other, other)


def test_cub_missing_folder_names_download(tmp_path):
    with pytest.raises(UserError, match="CUB_200_2011.*CUB_200_2011.tgz"):
        format_cub.format_cub(tmp_path, tmp_path)


# ---------------------------------------------------------------- NUS-WIDE

def make_nuswide(root: Path, lists: dict[str, list[str]], positives: dict[str, dict[int, list[str]]]) -> None:
    (root / "ImageList").mkdir(parents=True)
    (root / "Groundtruth" / "TrainTestLabels").mkdir(parents=True)
    (root / "Concepts81.txt").write_text("\r\n".join(NUSWIDE_CLASSES) + "\r\n")
    for tag, entries in lists.items():
        (root / "ImageList" / f"{tag}Imagelist.txt").write_text("\r\n".join(entries) + "\r\n")
        for concept in NUSWIDE_CLASSES:
            values = ["1" if concept in positives[tag].get(row, []) else "0" for row in range(len(entries))]
            (root / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{tag}.txt").write_text("\n".join(values) + "\n")


def test_nuswide_official_release(tmp_path):
    make_nuswide(
        tmp_path,
        {"Train": ["C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg", "actor\\0002_174174086.jpg", "zebra\\0003_1.jpg"],
         "Test": ["C:\\ImageData\\Flickr\\airport\\0001_9.jpg"]},
        {"Train": {0: ["sky", "clouds"], 2: ["zebra"]}, "Test": {0: ["airport"]}},
    )
    assert format_nuswide.main(["--load-path", str(tmp_path), "--save-path", str(tmp_path)]) == 0
    images, labels = _load(tmp_path, "train")
    assert images.tolist() == ["actor/0001_2124494179.jpg", "actor/0002_174174086.jpg", "zebra/0003_1.jpg"]
    sky, clouds, zebra = (NUSWIDE_CLASSES.index(c) for c in ("sky", "clouds", "zebra"))
    assert labels[0].nonzero()[0].tolist() == sorted([sky, clouds])
    assert labels[1].sum() == 0 and labels[2].nonzero()[0].tolist() == [zebra]
    assert json.loads((tmp_path / "variant.json").read_text())["variant"] == "official"

    out = tmp_path / "labelled"
    assert format_nuswide.main(["--load-path", str(tmp_path), "--save-path", str(out), "--drop-unlabelled"]) == 0
    assert _load(out, "train")[0].tolist() == ["actor/0001_2124494179.jpg", "zebra/0003_1.jpg"]
    assert dataset_variant("nuswide", out, 2, 1) == "official-labelled"


def test_nuswide_pre_formatted_files_are_installed_unchanged(tmp_path):
    src = tmp_path / "download"
    src.mkdir()
    labels = np.zeros((2, 81))
    labels[0, 3] = labels[1, 80] = 1
    for split in ("train", "val"):
        np.save(src / f"formatted_{split}_images.npy", np.array(["a/1.jpg", "b/2.jpg"]))
        np.save(src / f"formatted_{split}_labels.npy", labels)
    assert format_nuswide.main(["--pre-formatted", str(src), "--save-path", str(tmp_path / "nus")]) == 0
    np.testing.assert_array_equal(_load(tmp_path / "nus", "train")[1], labels)
    assert (tmp_path / "nus" / "classes.txt").read_text().splitlines() == list(NUSWIDE_CLASSES)
    # counts of neither published variant
    assert json.loads((tmp_path / "nus" / "variant.json").read_text())["variant"] == "unknown"


def test_nuswide_label_file_length_mismatch(tmp_path):
    make_nuswide(tmp_path, {"Train": ["a\\1.jpg", "a\\2.jpg"], "Test": ["b\\1.jpg"]}, {"Train": {}, "Test": {}})
    (tmp_path / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Train.txt").write_text("1\n")
    with pytest.raises(UserError, match="Labels_sky_Train.txt must hold one 0/1 per line"):
        format_nuswide.format_nuswide(tmp_path, tmp_path)


def test_variant_recognised_from_counts_when_no_record(tmp_path):
    assert dataset_variant("nuswide", tmp_path, 150000, 60260) == "cole-recrawl"
    assert dataset_variant("nuswide", tmp_path, 161789, 107859) == "official"
    assert dataset_variant("coco", tmp_path, 82081, 40137) == "coco2014"
    assert dataset_variant("coco", tmp_path, 10, 5) == "unknown"


def test_digits_folder_records_its_variant(digits_master, tmp_path):
    from dataset_provenance import DIGITS_VARIANT

    assert dataset_variant("digits", digits_master, 4000, 1000) == DIGITS_VARIANT
    # folders built before variant.json existed are recognised by their counts
    assert dataset_variant("digits", tmp_path, 4000, 1000) == DIGITS_VARIANT


def test_coco_every_image_trains_with_the_coco_folder_as_image_root(tmp_path, capsys):
    """The formatted folder holds no image: runs and the checker take the COCO folder as --image-root."""
    from PIL import Image

    from main import main
    from preproc import check_dataset
    from preproc.generate_observed_labels import generate_observed_labels

    write_instances(tmp_path, "train", [(9, 1), (100, 3), (25, 2), (9, 3), (100, 3)], images=TRAIN_IMAGES)
    write_instances(tmp_path, "val", [(42, 2)], images=VAL_IMAGES)
    for split, ids in (("train", TRAIN_IMAGES), ("val", VAL_IMAGES)):
        (tmp_path / f"{split}2014").mkdir()
        for i in ids:
            pixels = np.random.RandomState(i).randint(0, 255, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / f"{split}2014" / f"COCO_{split}2014_{i:012d}.jpg")
    out = tmp_path / "coco_every"
    format_coco.format_coco(tmp_path, out, every_image=True)
    generate_observed_labels(out, seed=0, known_ratio=0.5)
    assert check_dataset.main(["-d", "coco", "--data-dir", str(out), "--image-root", str(tmp_path),
                               "--workers", "1"]) == 0
    assert "(variant: coco2014-every-image)" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["-d", "coco", "--data-dir", str(out), "--image-root", str(tmp_path), "-m", "digits_cnn", "-l", "EM",
                 "-g", "cpu", "--num-workers", "0", "--epochs", "1", "--out", str(run)]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["dataset_variant"] == "coco2014-every-image"
    assert results["label_protocol"] == {"protocol": "known_ratio", "known_ratio": 0.5, "seed": 0}


@pytest.mark.parametrize("tool", sorted(p.stem for p in (REPO_ROOT / "preproc").glob("*.py")
                                        if '__name__ == "__main__"' in p.read_text()))
def test_a_preproc_tool_started_as_a_file_gives_the_module_form(tool, tmp_path):
    """`python preproc/NAME.py` (the reference repos' habit): one line with the command that works, exit 2."""
    done = subprocess.run([sys.executable, f"preproc/{tool}.py", "--save-path", str(tmp_path / "a b")],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"error: run the preproc tools as modules from the repository root: "
                           f"python -m preproc.{tool} --save-path '{tmp_path / 'a b'}'\n")
