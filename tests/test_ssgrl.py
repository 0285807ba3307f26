"""PU-MLC's SSGRL head (Yuan et al. 2024): the co-occurrence graph (diagonal 1, no NaN for unseen
classes), shapes and gradients, --head ssgrl on any backbone with a map, ResNet-101 + LGConv + the
head at 448, and checkpoints that carry their word vectors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli import parse_args
from errors import UserError
from main import main
from models import MultiLabelModel, create_backbone
from nets.lgconv import convert_to_lgconv
from nets.ssgrl import SSGRLHead, cooccurrence_graph, load_word_vectors


def test_graph_hand_values_and_unseen_classes():
    targets = np.array([[1, 1, 0, -1], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32)
    expected = np.array([[1, .5, 0, 0], [.5, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    graph = cooccurrence_graph(targets)  # class 2 never observed, class 3 only as -1: identity rows, not NaN
    np.testing.assert_allclose(graph, expected)
    assert np.isfinite(graph).all() and (np.diag(graph) == 1).all() and (graph.sum(1) >= 1).all()
    single_positive = np.eye(4)[[0, 1, 1, 3]]
    np.testing.assert_array_equal(cooccurrence_graph(single_positive), np.eye(4))


def test_head_shapes_and_gradients():
    torch.manual_seed(0)
    vectors = np.random.RandomState(0).randn(3, 5).astype(np.float32)
    head = SSGRLHead(16, vectors, cooccurrence_graph(np.array([[1, 1, 0], [1, 0, 0]])), dim=8)
    maps = torch.randn(2, 16, 4, 4, requires_grad=True)
    logits = head(maps)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert torch.isfinite(maps.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())
    assert not any(name in dict(head.named_parameters()) for name in ("word_vectors", "graph"))  # frozen buffers


def test_resnet101_lgconv_ssgrl_at_448():
    torch.manual_seed(0)
    backbone = create_backbone("resnet101", pretrained=False)
    convert_to_lgconv(backbone.features)
    targets = np.eye(20)[np.arange(40) % 20]
    vectors = np.random.RandomState(0).randn(20, 300).astype(np.float32)
    model = MultiLabelModel(backbone, 20, "ssgrl", word_vectors=vectors, graph=cooccurrence_graph(targets)).train()
    count = sum(p.numel() for p in model.parameters())
    print(f"ResNet-101 + LGConv + SSGRL head, 20 classes: {count:,} parameters")
    assert 50e6 < count < 70e6
    logits = model(torch.randn(2, 3, 448, 448))
    assert logits.shape == (2, 20)
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_head_flags(tmp_path, small_digits):
    from modes.end_to_end import _splits_and_model

    vectors = tmp_path / "vectors.npy"
    np.save(vectors, np.random.RandomState(0).randn(10, 300).astype(np.float32))
    base = ["-g", "cpu", "--no-pretrained", "--data-dir", str(small_digits)]
    cfg = parse_args([*base, "-m", "resnet18", "--head", "ssgrl", "--word-vectors", str(vectors), "--out", str(tmp_path / "a")])
    _, model = _splits_and_model(cfg)
    assert isinstance(model.classifier, SSGRLHead) and model.classifier.graph.shape == (10, 10)
    assert torch.isfinite(model.classifier.graph).all()
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    for extra, match in ((["-m", "resnet18", "--head", "ssgrl"], "--word-vectors"),
                         (["-m", "clip_vision", "--head", "ssgrl", "--word-vectors", str(vectors)], "has none"),
                         (["-m", "resnet18", "--word-vectors", str(vectors)], "--head ssgrl"),
                         (["-m", "resnet18", "--head", "ssgrl", "--word-vectors", str(tmp_path / "no.npy")], "no.npy")):
        with pytest.raises(UserError, match=match):
            parse_args([*base, *extra, "--out", str(tmp_path / "b")])
    np.save(vectors, np.zeros((7, 300), dtype=np.float32))
    cfg = parse_args([*base, "-m", "resnet18", "--head", "ssgrl", "--word-vectors", str(vectors), "--out", str(tmp_path / "c")])
    with pytest.raises(UserError, match=r"\(10, D\)"):
        _splits_and_model(cfg)


def test_a_losses_lr_mult_does_not_apply_to_ssgrl(tmp_path, caplog):
    caplog.set_level("INFO")
    vectors = tmp_path / "vectors.npy"
    np.save(vectors, np.zeros((10, 4), dtype=np.float32))
    base = ["-g", "cpu", "-l", "LL-R", "--head", "ssgrl", "--word-vectors", str(vectors),
            "--out", str(tmp_path / "run")]
    assert parse_args(base).classifier_lr_mult == 1
    assert "-l LL-R trains a final linear layer at 10 x --lr by default (its authors' lr_mult); --head ssgrl has " \
           "none, so the whole model trains at --lr" in caplog.text
    with pytest.raises(UserError, match="--classifier-lr-mult 10 sets the lr of a final linear layer; --head ssgrl has "
                                        "none .*: drop it"):
        parse_args([*base, "--classifier-lr-mult", "10"])


def test_checkpoints_carry_their_word_vectors(small_digits, tmp_path, monkeypatch):
    """SSGRL on the digits CNN's map, cut by Ctrl-C in epoch 2; --resume and --eval-only rebuild the head
    from the checkpoint's word vectors, so the file may be gone."""
    from training import engine

    vectors, out = tmp_path / "vectors.npy", tmp_path / "run"
    np.save(vectors, np.random.RandomState(0).randn(10, 6).astype(np.float32))
    train_one_epoch = engine.train_one_epoch

    def ctrl_c_in_epoch_2(*args):
        if args[5] == 2:  # the epoch
            raise KeyboardInterrupt
        return train_one_epoch(*args)

    with monkeypatch.context() as patch:
        patch.setattr(engine, "train_one_epoch", ctrl_c_in_epoch_2)
        assert main(["-g", "cpu", "-l", "an", "--head", "ssgrl", "--word-vectors", str(vectors), "--epochs", "2",
                     "--patience", "0", "--data-dir", str(small_digits), "--out", str(out)]) == 130
    vectors.unlink()
    assert main(["--resume", str(out), "-g", "cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and [e["epoch"] for e in results["epochs"]] == [1, 2]
    assert main(["--eval-only", str(out / "best.pt"), "-g", "cpu"]) == 0
    scored = json.loads((out / "eval_best.json").read_text())
    assert scored["test"]["map"] == pytest.approx(results["test_map"], abs=1e-9)


@pytest.mark.parametrize("vectors, match", [
    (np.array([["a", "b"]] * 3), "holds <U1 values, not numbers"),
    (np.zeros((3, 0), np.float32), r"has shape \(3, 0\); expected \(3, D\) with D >= 1"),
    (np.zeros((2, 4), np.float32), r"has shape \(2, 4\); expected \(3, D\)"),
    (np.array([[0.0, 1.0], [np.nan, 0.0], [0.0, 0.0]], np.float32), "NaN or infinite values \\(first in row 1\\)"),
])
def test_bad_word_vectors_are_one_line_each(tmp_path, vectors, match):
    path = tmp_path / "vectors.npy"
    np.save(path, vectors)
    with pytest.raises(UserError, match=match):
        load_word_vectors(path, 3)
