"""PU-MLC's commands in one flag (--preset pumlc-*): the authors' settings, the label protocol they
need, flags given beside them winning, and the whole pipeline (ResNet + LGConv + SSGRL head,
scope, recipe, multi-scale crop, the test-chosen number) on digits."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli import parse_args
from conftest import slice_digits
from errors import UserError
from main import main
from preproc.generate_observed_labels import generate_observed_labels
from preset_command import check_preset_labels, with_preset


@pytest.fixture(scope="module")
def known_ratio_digits(digits_master, tmp_path_factory):
    """Tiny digits with 10% of the train labels known (the authors' protocol) and random word vectors."""
    # 40 official train rows (32 train / 8 val) and 20 test: the authors' head alone has 24 M weights
    root = slice_digits(digits_master, tmp_path_factory.mktemp("kr_digits"), 40, 20, copy_images=False)
    generate_observed_labels(root, seed=0, known_ratio=0.1)
    np.save(root / "vectors.npy", np.random.RandomState(0).randn(10, 300).astype(np.float32))
    return root


def test_the_voc2007_preset_is_the_authors_command(known_ratio_digits, tmp_path):
    cfg = parse_args(["--preset", "pumlc-voc2007", "-g", "cpu", "--data-dir", str(known_ratio_digits),
                      "--word-vectors", str(known_ratio_digits / "vectors.npy"), "--out", str(tmp_path / "a")])
    assert (cfg.dataset, cfg.loss, cfg.model, cfg.lgconv, cfg.head, cfg.train_scope, cfg.freeze_bn) == \
        ("voc2007", "PU", "resnet101", True, "ssgrl", "layer4-head", True)
    assert (cfg.weight_decay, cfg.sched, cfg.sched_epochs, cfg.epochs, cfg.patience, cfg.ema, cfg.lr, cfg.bsize) == \
        (1e-4, "onecycle", 80, 56, 0, 0.991, 4e-5, 45)
    assert cfg.per_gpu_bsize == 45  # the authors' batch per GPU; 90 on their two (torchrun --nproc_per_node 2)
    assert (cfg.hyper.pu_alpha, cfg.hyper.pu_gamma, cfg.scale_size, cfg.crop_size) == (2.0, 0.85, 512, 448)
    assert (cfg.preset, cfg.report_test_oracle) == ("pumlc-voc2007", True)
    mine = parse_args(["--preset", "pumlc-voc2007", "-g", "cpu", "--data-dir", str(known_ratio_digits), "--epochs", "3",
                       "--word-vectors", str(known_ratio_digits / "vectors.npy"), "--out", str(tmp_path / "b")])
    assert mine.epochs == 3 and mine.sched_epochs == 80  # a flag given beside the preset wins
    batch = parse_args(["--preset", "pumlc-voc2007", "-g", "cpu", "--data-dir", str(known_ratio_digits), "--bsize=16",
                        "--word-vectors", str(known_ratio_digits / "vectors.npy"), "--out", str(tmp_path / "c")])
    assert (batch.bsize, batch.per_gpu_bsize) == (16, None)  # --bsize replaces the preset's --per-gpu-bsize


def test_a_preset_refuses_single_positive_labels(small_digits, tmp_path):
    with pytest.raises(UserError, match="--known-ratio 0.1 --seed 0"):
        parse_args(["--preset", "pumlc-coco", "-g", "cpu", "--data-dir", str(small_digits), "--image-root",
                    str(small_digits / "images"), "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_the_preset_pipeline_runs_on_digits(known_ratio_digits, tmp_path):
    """The authors' whole recipe at digits scale: ResNet-18 instead of 101, 64 px, one epoch."""
    out = tmp_path / "run"
    assert main(["--preset", "pumlc-voc2007", "-d", "digits", "-g", "cpu", "--data-dir", str(known_ratio_digits),
                 "--word-vectors", str(known_ratio_digits / "vectors.npy"), "-m", "resnet18", "--no-pretrained",
                 "--epochs", "1", "--bsize", "16", "--num-workers", "0", "--crop-size", "64", "--scale-size", "96",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["image_size"] == 64 and results["label_protocol"]["known_ratio"] == 0.1
    oracle = results["test_map_chosen_on_test"]
    epoch = results["epochs"][0]
    assert oracle["map"] == max(epoch["test_map"], epoch["ema_test_map"]) and "not a model selection" in oracle["note"]
    # --train-scope layer4-head: the stem and layer1-3 (but their global branches) stay out of the optimiser
    parameters = results["parameters"]
    assert 0 < parameters["trainable"] < parameters["total"]
    assert results["config"]["preset"] == "pumlc-voc2007"


def test_preset_switches_have_off_forms_and_take_their_dependents_with_them(known_ratio_digits, tmp_path):
    """Every switch a preset sets has an off form, and a flag given beside the preset with another value
    drops the preset flags that only served its value (the schedule's length, the head's vectors, the
    dataset's paths)."""
    off = parse_args(["--preset", "pumlc-voc2007", "-g", "cpu", "--data-dir", str(known_ratio_digits),
                      "--no-lgconv", "--no-freeze-bn", "--no-report-test-oracle", "--sched", "none",
                      "--ema", "0", "--head", "linear", "--train-scope", "all", "--scale-size", "0",
                      "--out", str(tmp_path / "a")])
    assert (off.lgconv, off.freeze_bn, off.report_test_oracle, off.sched, off.sched_epochs, off.ema) == \
        (False, False, False, "none", 0, 0.0)
    assert (off.head, off.word_vectors, off.train_scope, off.scale_size) == ("linear", None, "all", None)
    # -d digits beside the VOC preset: the preset's data/voc2007 paths and vectors go (digits' own folder then)
    expanded = with_preset(["--preset", "pumlc-voc2007", "-d", "digits"])
    assert "--data-dir" not in expanded and "--word-vectors" not in expanded and expanded[-2:] == ["-d", "digits"]
    assert "--sched-epochs" in with_preset(["--preset", "pumlc-voc2007", "--sched", "onecycle"])  # the same value
    assert "--per-gpu-bsize" not in with_preset(["--preset", "pumlc-voc2007", "--bsize=16"])


def test_a_preset_on_a_folder_without_its_labels_says_how_to_get_them(tmp_path, small_digits, digits_dir):
    empty = tmp_path / "voc2007"
    empty.mkdir()
    with pytest.raises(UserError, match=f"--preset pumlc-voc2007: {empty} holds no formatted dataset; see "
                                        f"data/voc2007/README.md to download and format it"):
        check_preset_labels("pumlc-voc2007", "voc2007", empty)
    sample = "python -m preproc.generate_observed_labels --dataset digits --data-dir"
    wanted = "--known-ratio 0.1 --seed 0"
    # labels sampled before the protocol was recorded: sampling in place is the fix
    with pytest.raises(UserError, match=f"holds unrecorded .* labels: run `{sample} {small_digits} {wanted}` "):
        check_preset_labels("pumlc-voc2007", "digits", small_digits)
    # another recorded protocol: the folder's labels serve other runs, so the fix samples into a copy
    generate_observed_labels(digits_dir)
    copy = digits_dir.with_name("digits_pumlc-voc2007")
    with pytest.raises(UserError, match=f"holds single_positive labels: sample them into a copy: `cp -r {digits_dir} "
                                        f"{copy} && {sample} {copy} {wanted}`, then pass --data-dir {copy}$"):
        check_preset_labels("pumlc-voc2007", "digits", digits_dir)
