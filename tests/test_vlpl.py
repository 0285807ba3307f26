"""VLPL: the pseudo-label rule, the EM_PL / EM_PL_ASL losses, flip views, the CLIP-score cache,
the new backbones and an end-to-end EM_PL run on a small slice of `digits` with a tiny CLIP."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

import models
from config import LossHyper
from errors import UserError
from losses import create_loss
from methods.base import loss_em
from main import main
from methods.vlpl import VLPLLoss, loss_em_pl, loss_em_pl_asl, pseudo_labels
from methods.vlpl import scores as clip_scores
from methods.vlpl.towers import ClipSpec
from models import BACKBONES, create_backbone


def nl(x: float) -> float:  # the references' -log(x + 1e-5)
    return -math.log(x + 1e-5)


def H(p: float) -> float:
    return p * nl(p) + (1 - p) * nl(1 - p)


# --- the pseudo-label rule -------------------------------------------------------


def test_pseudo_labels_temperature_softmax_threshold_and_partial():
    cos = torch.tensor([[0.30, 0.29, 0.20]])
    # softmax([30, 29, 20]) = [0.7310, 0.2689, 3.3e-5]
    assert pseudo_labels(cos, 0.01, 0.3, 0.0).tolist() == [[1, 0, 0]]
    assert pseudo_labels(cos, 0.01, 0.25, 0.0).tolist() == [[1, 1, 0]]
    # T = 1: softmax([0.30, 0.29, 0.20]) ~ [0.3473, 0.3438, 0.3089]: all above 0.3
    assert pseudo_labels(cos, 1.0, 0.3, 0.0).tolist() == [[1, 1, 1]]
    # partial: int(0.34 * 3) = 1 lowest class negative; int(0.67 * 3) = 2, overriding a positive
    assert pseudo_labels(cos, 0.01, 0.3, 0.34).tolist() == [[1, 0, -1]]
    assert pseudo_labels(cos, 0.01, 0.25, 0.67).tolist() == [[1, -1, -1]]


# --- the losses ------------------------------------------------------------------

LOGITS = torch.tensor([[0.0, math.log(3), math.log(3), -math.log(3), 0.0]])  # p = .5, .75, .75, .25, .5
TARGETS = torch.tensor([[1.0, 0.0, 0.0, 0.0, -1.0]])
PSEUDO = torch.tensor([[1.0, 1.0, -1.0, 0.0, 1.0]])  # entries 0 and 4 are observed: their q is ignored


def test_em_pl_hand_values():
    alpha, bp, bn = 0.2, 0.7, 0.5
    expected = [nl(0.5), bp * (0.9 * nl(0.75) + 0.1 * nl(0.25)), bn * (0.1 * nl(0.75) + 0.9 * nl(0.25)),
                -alpha * H(0.25), nl(0.5)]
    got = loss_em_pl(LOGITS, TARGETS, PSEUDO, alpha, bp, bn)["main"].item()
    assert got == pytest.approx(sum(expected) / 5, rel=1e-5)
    # beta_neg 0 (the reference): a pseudo-negative contributes nothing
    got0 = loss_em_pl(LOGITS, TARGETS, PSEUDO, alpha, bp)["main"].item()
    assert got0 == pytest.approx((sum(expected) - expected[2]) / 5, rel=1e-5)


def test_em_pl_asl_hand_values():
    expected = [0.5 ** 2 * nl(0.5), 0.25 ** 2 * nl(0.75), 0.75 ** 4 * nl(0.25), -(0.75 ** 4) * H(0.25), nl(0.5)]
    got = loss_em_pl_asl(LOGITS, TARGETS, PSEUDO, 2.0, 4.0, 4.0)["main"].item()
    assert got == pytest.approx(sum(expected) / 5, rel=1e-5)


def _reference_em_pl(preds, obs, pl, alpha, beta_pos):
    """VLPL's loss_EM_PL, as written there (boolean indexing, later writes win)."""
    final = torch.where(obs == 0, pl, obs)
    nlog = lambda x: -torch.log(x + 1e-5)  # noqa: E731
    m = torch.zeros_like(preds)
    m[obs == 1] = nlog(preds[obs == 1])
    u = final == 0
    m[u] = -alpha * (preds[u] * nlog(preds[u]) + (1 - preds[u]) * nlog(1 - preds[u]))
    pos = (obs == 0) & (pl == 1)
    m[pos] = beta_pos * (0.9 * nlog(preds[pos]) + 0.1 * nlog(1 - preds[pos]))
    return (m / m.numel()).sum()


def _reference_em_pl_asl(preds, obs, pl, gp, gu, gn):
    final = torch.where(obs == 0, pl, obs)
    nlog = lambda x: -torch.log(x + 1e-5)  # noqa: E731
    m = torch.zeros_like(preds)
    m[obs == 1] = (1 - preds[obs == 1]) ** gp * nlog(preds[obs == 1])
    u = final == 0
    m[u] = -((1 - preds[u]) ** gu) * (preds[u] * nlog(preds[u]) + (1 - preds[u]) * nlog(1 - preds[u]))
    pos = (obs == 0) & (pl == 1)
    m[pos] = (1 - preds[pos]) ** gp * nlog(preds[pos])
    neg = (obs == 0) & (pl == -1)
    m[neg] = preds[neg] ** gn * nlog(1 - preds[neg])
    return (m / m.numel()).sum()


def test_losses_match_the_reference_formulas_on_random_batches():
    g = torch.Generator().manual_seed(0)
    logits = torch.rand(8, 20, generator=g) * 8 - 4  # |logit| <= 4
    obs = torch.zeros(8, 20)
    obs[torch.arange(8), torch.randint(0, 20, (8,), generator=g)] = 1
    pl = torch.randint(-1, 2, (8, 20), generator=g).float()
    preds = torch.sigmoid(logits)
    ours = loss_em_pl(logits, obs, pl, 0.1, 0.7)["main"]
    assert ours.item() == pytest.approx(_reference_em_pl(preds, obs, pl, 0.1, 0.7).item(), rel=1e-4)
    ours = loss_em_pl_asl(logits, obs, pl, 2.0, 4.0, 4.0)["main"]
    assert ours.item() == pytest.approx(_reference_em_pl_asl(preds, obs, pl, 2.0, 4.0, 4.0).item(), rel=1e-4)


@pytest.mark.parametrize("name", ["EM_PL", "EM_PL_ASL"])
def test_warmup_is_em_then_pseudo_labels_of_the_fed_view(name):
    n, c = 3, 4
    loss = create_loss(name, LossHyper(alpha=0.1, warmup_epochs=1), n, c)
    assert isinstance(loss, VLPLLoss)
    cos = torch.zeros(2 * n, c)
    cos[n + 1, 2] = 1.0  # only the mirrored view of image 1 makes class 2 pseudo-positive
    loss.set_clip_cosines(cos)
    logits = torch.randn(2, c, requires_grad=True)
    targets = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    loss.start_epoch(1, lambda: None)
    assert torch.equal(loss(logits, targets, torch.tensor([1, n + 1]))["main"], loss_em(logits, targets, 0.1)["main"])
    loss.start_epoch(2, lambda: None)
    fn = loss_em_pl if name == "EM_PL" else loss_em_pl_asl
    pseudo = torch.zeros(2, c)
    pseudo[1, 2] = 1
    out = loss(logits, targets, torch.tensor([1, n + 1]))["main"]
    assert torch.equal(out, fn(logits, targets, pseudo, **loss.hparams)["main"])
    out.backward()
    assert torch.isfinite(logits.grad).all()
    assert loss.state_dict()["pseudo"].shape == (2 * n, c)


def test_flip_view_dataset_reports_the_flip_in_the_index(small_digits):
    from datasets import ImageDataset, load_splits
    from preprocess import Preprocess

    train = load_splits(small_digits, "digits", small_digits / "images").train
    pre = Preprocess(24, (0.5,) * 3, (0.5,) * 3)
    plain = ImageDataset(train, pre.transform(train=False, hflip=False))
    flipping = ImageDataset(train, pre.transform(train=True, hflip=True), flip_views=True, seed=0)
    n = len(train.images)
    seen = set()
    for epoch in range(1, 13):
        flipping.set_epoch(epoch)
        image, label, view = flipping[5]
        seen.add(view)
        expected = plain[5][0].flip(-1) if view == n + 5 else plain[5][0]
        assert torch.equal(image, expected) and torch.equal(label, plain[5][1])
    assert seen == {5, n + 5} and plain[5][2] == 5


# --- the CLIP-score cache ----------------------------------------------------------


def test_clip_scores_are_cached_and_reused_without_clip(small_digits, tiny_clip, monkeypatch, tmp_path):
    paths = np.array(sorted(str(p) for p in (small_digits / "images" / "train").iterdir())[:6])
    names = [f"class {i}" for i in range(10)]
    spec = ClipSpec(str(tiny_clip))
    args = ("digits", tmp_path, paths, names, spec, 2, torch.device("cpu"))
    first = clip_scores.train_similarities(*args)
    assert first.shape == (12, 10) and np.isfinite(first).all() and np.abs(first).max() <= 1 + 1e-5
    # the mirrored view is a genuinely different input
    assert not np.allclose(first[:6], first[6:])

    def no_clip(*_):
        raise AssertionError("CLIP was built although the scores are cached")

    monkeypatch.setattr(clip_scores, "create_clip", no_clip)
    assert np.array_equal(clip_scores.train_similarities(*args), first)
    # another prompt is another key: computed again (here: refused by the patched builder)
    with pytest.raises(AssertionError, match="cached"):
        clip_scores.train_similarities(*args, prompt="a drawing of the digit {}")
    meta = json.loads(next((tmp_path / "clip_scores").glob("*.json")).read_text())
    assert meta["views"] == 2 and meta["prompts"][0] == "a photo of a class 0."


def test_text_features_file_checked_and_normalised(tmp_path):
    good = tmp_path / "t.npy"
    np.save(good, np.array([[3.0, 4.0], [0.0, 2.0]], dtype=np.float32))
    assert np.allclose(clip_scores.load_text_features(good, 2), [[0.6, 0.8], [0.0, 1.0]])
    with pytest.raises(UserError, match=r"expected floats of shape \(3, embed_dim\)"):
        clip_scores.load_text_features(good, 3)


def test_named_clip_model_without_weights_fails_at_once_saying_what_to_place(monkeypatch, tmp_path):
    """Not in the local cache: an error at once, online or not (no network look-up that hangs)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    from methods.vlpl.towers import create_clip

    started = time.monotonic()
    with pytest.raises(UserError, match="not in the local Hugging Face cache.*vit_base_patch32_clip_224.openai"
                                        ".*--clip-weights"):
        create_clip(ClipSpec("ViT-B-32"))
    assert time.monotonic() - started < 10
    with pytest.raises(UserError, match="neither an open_clip model name"):
        create_clip(ClipSpec("ViT-Nope"))


# --- backbones -----------------------------------------------------------------------


def test_every_backbone_is_registered():
    expected = {"resnet50", "clip_vision", "convnext_xlarge_22k", "convnext_xlarge_1k",
                *(f"convnext_{s}" for s in ("tiny", "small", "base", "large"))}
    assert expected <= set(BACKBONES)


@pytest.mark.parametrize("name,dim", [("convnext_tiny", 768), ("clip_vision", 16)])
def test_backbone_features_and_own_preprocessing(name, dim, tiny_clip):
    bb = create_backbone(name, pretrained=False, clip=ClipSpec(str(tiny_clip)))
    assert bb.feature_dim == dim
    size = bb.preprocess.size
    with torch.no_grad():
        assert bb.features.eval()(torch.randn(2, 3, size, size) if name == "clip_vision" else
                                  torch.randn(2, 3, 64, 64)).shape == (2, dim)
    if name == "clip_vision":  # CLIP's normalisation and size, never ImageNet's
        assert size == 32 and bb.preprocess.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    else:
        assert size == 448 and bb.preprocess.mean == models.IMAGENET_MEAN


@pytest.mark.parametrize("name,dim,size,probe", [
    ("resnet50", 2048, 448, 64),
    ("convnext_xlarge_22k", 2048, 448, 64),  # VLPL's ConvNeXt-XL (timm)
    ("clip_vision", 768, 336, 336),  # ViT-L/14 at 336, the VLPL paper's CLIP: its positions fix the input size
])
def test_published_architectures_build_and_run(name, dim, size, probe):
    """The papers' backbones, randomly initialised (about 15 s on 2 cores): feature size, input size, a forward pass."""
    bb = create_backbone(name, pretrained=False, clip=ClipSpec("ViT-L-14-336"))
    assert (bb.feature_dim, bb.preprocess.size) == (dim, size)
    with torch.no_grad():
        assert bb.features.eval()(torch.randn(1, 3, probe, probe)).shape == (1, dim)


def test_offline_convnext_xlarge_fails_fast_with_the_file_to_place(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="timm/convnext_xlarge.fb_in22k"):
        create_backbone("convnext_xlarge_22k", pretrained=True)


def test_pretrained_weights_load_from_a_prefixed_checkpoint(tmp_path):
    src = create_backbone("digits_cnn", pretrained=False)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.features.state_dict().items()}}, path)
    loaded = create_backbone("digits_cnn", pretrained=False, weights=path)
    for k, v in src.features.state_dict().items():
        assert torch.equal(loaded.features.state_dict()[k], v)
    torch.save({"other.weight": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="does not fit this backbone"):
        create_backbone("digits_cnn", pretrained=False, weights=path)


# --- end to end ------------------------------------------------------------------------


def test_em_pl_end_to_end_on_digits_with_a_tiny_clip(small_digits, tiny_clip, tmp_path, capsys):
    argv = ["-d", "digits", "-l", "EM_PL", "-g", "cpu", "--epochs", "1", "--data-dir", str(small_digits),
            "--clip-model", str(tiny_clip), "-th", "0.2"]
    assert main(argv + ["--out", str(tmp_path / "run1")]) == 0
    results = json.loads((tmp_path / "run1" / "results.json").read_text())
    assert results["status"] == "completed" and math.isfinite(results["test_map"])
    assert results["config"]["hyper"]["pl_threshold"] == 0.2 and results["config"]["patience"] == 0
    assert len(list((small_digits / "clip_scores").glob("*.npy"))) == 1
    # bad flags: one line, exit code 2
    assert main(argv + ["-p", "1.5", "--out", str(tmp_path / "run2")]) == 2
    assert "error: argument -p/--partial: must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()
