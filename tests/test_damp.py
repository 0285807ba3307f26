"""AEVLP's DAMP pseudo-labels: the rule on small score tensors, the crops, the crop flips from the train set to
the cache rows, the text graph, and the per-crop CLIP-score cache (reused without CLIP, never stale)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from config import LossHyper
from datasets import ImageDataset, Split
from device_decode import CODECS, device_loader
from errors import UserError
from losses import create_loss
from methods.aevlp.damp import CropGrid, crop_rows, damp_pseudo_labels, damp_rule
from methods.aevlp.text_graph import TextGraph, adjacency, graph_weights, load_relation, text_relation
from methods.vlpl import scores as clip_scores
from methods.vlpl.towers import ClipSpec, clip_preprocess, create_clip
from preprocess import ImageDraws, Preprocess

# --- the rule ----------------------------------------------------------------------------------------------


def _scores(whole: list[float], tiles: list[list[float]]) -> torch.Tensor:
    """(1, 1 + tiles, C) per-crop softmax scores of one image."""
    return torch.tensor([[whole, *tiles]])


OBSERVED = torch.tensor([[1.0, 0.0, 0.0, 0.0]])


def test_eta_zero_is_the_pure_tile_max():
    whole = [0.6, 0.1, 0.2, 0.1]
    tiles = [[0.5, 0.01, 0.8, 0.0], [0.4, 0.02, 0.1, 0.0], [0.3, 0.9, 0.05, 0.0]]
    # F = (G + max tile) / 2 = .6, .5, .5, .05: with eta 0 the gate never picks the worst tile
    labels = damp_rule(_scores(whole, tiles), OBSERVED, eta=0.0, threshold=0.5, top_k=4, num_negatives=0)
    assert labels.tolist() == [[1, 1, 1, 0]]


def test_the_gate_both_ways_and_strict():
    # class 1's best tile .25: above the gate min(G_pos, eta) when the positive scores .2 < eta .3, below it when
    # the positive scores .5 (gate .3): then its worst tile .05 counts, F = (.2 + .05) / 2
    tiles = [[0.0, 0.25, 0.3, 0.0], [0.0, 0.05, 0.3, 0.0]]
    low_positive = damp_rule(_scores([0.2, 0.2, 0.3, 0.0], tiles), OBSERVED, 0.3, 0.2, 4, 0)
    high_positive = damp_rule(_scores([0.5, 0.2, 0.3, 0.0], tiles), OBSERVED, 0.3, 0.2, 4, 0)
    assert low_positive[0, 1] == 1 and high_positive[0, 1] == 0  # F = .225 >= .2, then .125 < .2
    # class 2's best tile .3 equals the gate .3: not above it, so its worst tile .3 (the same) counts; make the
    # worst tile differ to see the strict >
    tiles = [[0.0, 0.0, 0.3, 0.0], [0.0, 0.0, 0.1, 0.0]]
    strict = damp_rule(_scores([0.5, 0.0, 0.3, 0.0], tiles), OBSERVED, 0.3, 0.25, 4, 0)
    assert strict[0, 2] == 0  # F = (.3 + .1) / 2 = .2, not (.3 + .3) / 2


def test_a_tie_at_the_threshold_passes():
    tiles = [[0.5, 0.0, 0.75, 0.0], [0.5, 0.0, 0.5, 0.0]]
    labels = damp_rule(_scores([0.5, 0.0, 0.25, 0.0], tiles), OBSERVED, 0.1, 0.5, 4, 0)
    assert labels[0, 2] == 1  # F = (.25 + .75) / 2 = .5 exactly


def test_top_k_cuts_a_passing_class():
    tiles = [[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]]
    labels = damp_rule(_scores([0.9, 0.8, 0.7, 0.6], tiles), OBSERVED, 0.1, 0.5, 3, 0)
    assert labels.tolist() == [[1, 1, 1, 0]]  # all four pass 0.5; the fourth is cut by top-3


def test_the_negative_step_removes_a_one_tile_class_and_never_writes_minus_one():
    # class 3: strong in one tile only (.9), faint in the whole image and the other tiles: it passes the rule
    # (F = (.2 + .9) / 2 = .55), but its (G + mean tile) / 2 = (.2 + .3) / 2 = .25 is the lowest: set back to 0
    whole = [0.6, 0.3, 0.3, 0.2]
    tiles = [[0.6, 0.3, 0.35, 0.9], [0.6, 0.3, 0.35, 0.0], [0.6, 0.3, 0.35, 0.0]]
    kept = damp_rule(_scores(whole, tiles), OBSERVED, 0.1, 0.5, 4, 0)
    assert kept[0, 3] == 1
    labels = damp_rule(_scores(whole, tiles), OBSERVED, 0.1, 0.5, 4, 1)
    assert labels.tolist() == [[1, 0, 0, 0]] and labels.min() == 0


def test_softmax_at_temperature_in_fp32_from_fp16_cosines():
    cosines = torch.tensor([[[0.30, 0.29, 0.20], [0.30, 0.20, 0.29], [0.29, 0.30, 0.20]]], dtype=torch.float16)
    labels = damp_pseudo_labels(cosines, torch.tensor([[1.0, 0, 0]]), temp=0.01, eta=0.1, threshold=0.4, top_k=3,
                                neg_ratio=0.34)  # int(.34 x 3) = 1 negative
    assert labels.dtype == torch.float32
    expected = damp_rule(torch.softmax(cosines.float() / 0.01, dim=-1), torch.tensor([[1.0, 0, 0]]), 0.1, 0.4, 3, 1)
    assert torch.equal(labels, expected)


# --- crops and their flips ------------------------------------------------------------------------------------


def test_the_crops_are_the_image_and_a_row_major_grid_without_the_remainder():
    grid = CropGrid(3)
    boxes = grid.boxes(10, 7)  # tiles of 3 x 2 px; the last column and row of pixels are dropped
    assert grid.count == 10 and boxes[0] == (0, 0, 10, 7)
    assert boxes[1:4] == [(0, 0, 3, 2), (3, 0, 6, 2), (6, 0, 9, 2)] and boxes[9] == (6, 4, 9, 6)


def test_each_crop_is_resized_to_clip_and_normalised_as_asked(tiny_clip):
    clip = clip_preprocess(create_clip(ClipSpec(str(tiny_clip))))
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 50, 3), dtype=np.uint8))
    crops = CropGrid(2, "imagenet").transform(clip)(image)
    assert crops.shape == (5, 3, clip.size, clip.size)
    imagenet = Preprocess(clip.size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert torch.equal(crops[4], imagenet.transform(False, False)(image.crop((25, 20, 50, 40))))
    own = CropGrid(2, "clip").transform(clip)(image)
    assert torch.equal(own[0], clip.transform(False, False)(image))


def test_a_grid_larger_than_an_image_is_refused_naming_it(tmp_path):
    Image.new("RGB", (30, 5)).save(tmp_path / "thin.png")
    with pytest.raises(UserError, match=r"--damp-grid 6 is larger than the image .*thin.png \(30 x 5 px\)"):
        CropGrid(6).check_sizes(np.array([str(tmp_path / "thin.png")]))
    CropGrid(5).check_sizes(np.array([str(tmp_path / "thin.png")]))


def test_the_train_set_draws_each_crops_flip_and_the_rows_follow_them(small_digits):
    """The flips packed in the view index select, per crop, the row of its orientation in the cache; they are
    drawn per image and epoch (preprocess.ImageDraws), the same in the PIL and the --decode gpu train sets."""
    paths = np.array(sorted(str(p) for p in (small_digits / "images" / "train").iterdir())[:4])
    n, count = len(paths), 5
    split, pre = Split(paths, np.zeros((n, 1), np.float32)), Preprocess(24, (0.5,) * 3, (0.5,) * 3)
    dataset = ImageDataset(split, pre.transform(train=True, hflip=True), flip_views=True, seed=0, crop_flips=count)
    files = device_loader(split, pre, torch.device("cpu"), CODECS["torchvision"](), 2, 0, train=True, hflip=True,
                          flip_views=True, seed=0, crop_flips=count).dataset
    views = []
    for epoch in range(200):
        dataset.set_epoch(epoch)
        files.set_epoch(epoch)
        views.append(dataset[2][2])
        draws = ImageDraws(0, epoch, 2)
        expected = 2 + n * (int(draws.flip()) + sum(int(bit) << (1 + k) for k, bit in enumerate(draws.crop_flips(count))))
        assert views[-1] == expected and files[2][2] == expected
    views = torch.tensor(views)
    rows = crop_rows(views, n, count, orientations=2)
    orientation, crop = rows // n // count, rows // n % count
    assert (rows % n == 2).all() and (crop == torch.arange(count)).all()
    assert torch.equal(orientation, (views // n).unsqueeze(1) >> torch.arange(1, count + 1) & 1)
    # every crop's flip is its own fair coin, apart from the image's own flip (bit 0) and the other crops'
    flips = torch.cat([(views // n % 2).unsqueeze(1), orientation], dim=1).float()
    assert ((flips.mean(0) - 0.5).abs() < 0.12).all()
    assert (torch.corrcoef(flips.T) - torch.eye(count + 1)).abs().max() < 0.25
    # one orientation cached (a train set that never flips): always the rows as stored
    assert torch.equal(crop_rows(views, n, count, orientations=1), crop * n + 2)


# --- the text graph ----------------------------------------------------------------------------------------------


def test_adjacency_by_hand():
    relation = torch.tensor([[1.0, 0.9, 0.6, 0.3], [0.9, 1.0, 0.2, 0.8], [0.6, 0.2, 1.0, 0.4], [0.3, 0.8, 0.4, 1.0]])
    adj = adjacency(relation, topk=3, reweight=0.2)
    # row 0 keeps itself, .9 and .6: neighbours .9/1.5 and .6/1.5 of the 0.2
    assert adj[0].tolist() == pytest.approx([0.8, 0.12, 0.08, 0.0])
    assert adj[1].tolist() == pytest.approx([0.2 * 0.9 / 1.7, 0.8, 0.0, 0.2 * 0.8 / 1.7])
    assert adj.sum(1).tolist() == pytest.approx([1.0] * 4) and ((adj > 0).sum(1) == 3).all()
    # a class without a positive neighbour keeps only itself (the authors' code divides by zero there)
    assert adjacency(relation, topk=1, reweight=0.2).tolist() == torch.eye(4).tolist()
    lonely = relation.clone()
    lonely[3, :3] = 0
    assert adjacency(lonely, topk=3, reweight=0.2)[3].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_the_graph_network_by_hand_and_seeded():
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
    graph = TextGraph(seed=3, topk=2, reweight=0.2)
    adj = adjacency(text_relation(text), 2, 0.2)
    assert text_relation(text)[1, 2] == 0  # a negative cosine (-.8) counts as no relation
    w1, w2, w3 = graph_weights(2, 3)
    assert (w1.shape, w2.shape, w3.shape) == ((2, 4), (4, 4), (4, 2)) and w2.abs().max() <= 0.5
    leaky = lambda x: torch.where(x > 0, x, 0.2 * x)  # noqa: E731
    expected = text + adj @ (leaky(adj @ (leaky(adj @ (text @ w1)) @ w2)) @ w3)
    assert torch.allclose(graph(text), expected, atol=1e-6)
    assert torch.equal(graph(text), TextGraph(seed=3, topk=2, reweight=0.2)(text))
    assert not torch.allclose(graph(text), TextGraph(seed=4, topk=2, reweight=0.2)(text))


def test_a_relation_file_is_checked(tmp_path):
    np.save(tmp_path / "r.npy", np.eye(3, dtype=np.float32))
    assert load_relation(tmp_path / "r.npy", 3).shape == (3, 3)
    with pytest.raises(UserError, match=r"expected floats of shape \(4, 4\)"):
        load_relation(tmp_path / "r.npy", 4)
    np.save(tmp_path / "nan.npy", np.full((3, 3), np.nan, dtype=np.float32))
    with pytest.raises(UserError, match="NaN or infinite"):
        load_relation(tmp_path / "nan.npy", 3)


# --- the score cache ------------------------------------------------------------------------------------------


@pytest.fixture
def six_images(small_digits) -> np.ndarray:
    return np.array(sorted(str(p) for p in (small_digits / "images" / "train").iterdir())[:6])


def test_crop_scores_cached_in_both_orientations_and_reused_without_clip(six_images, tiny_clip, tmp_path,
                                                                         monkeypatch, caplog):
    names = [f"class {i}" for i in range(10)]
    spec, grid = ClipSpec(str(tiny_clip)), CropGrid(2)
    damp = dict(crops=grid, text_graph=TextGraph(seed=0), dtype=np.float16)
    args = ("digits", tmp_path, six_images, names, spec, 2, torch.device("cpu"))
    first = clip_scores.train_similarities(*args, **damp)
    assert first.shape == (2 * 5 * 6, 10) and first.dtype == np.float16
    # row (v K + k) N + i: crop 2 of image 1, mirrored, is CLIP's cosine of that crop flipped
    model = create_clip(spec)
    crops = grid.transform(clip_preprocess(model))(Image.open(six_images[1]).convert("RGB"))
    raw = clip_scores.encode_prompts(model, spec, [f"a photo of a {name}." for name in names], torch.device("cpu"))
    text = torch.nn.functional.normalize(TextGraph(seed=0)(raw), dim=-1)
    with torch.no_grad():
        image = torch.nn.functional.normalize(model.encode_image(crops[2:3].flip(-1)), dim=-1)
    assert np.allclose(first[(5 + 2) * 6 + 1], (image @ text.T)[0].numpy(), atol=1e-3)

    def no_clip(*_):
        raise AssertionError("CLIP was built although the scores are cached")

    monkeypatch.setattr(clip_scores, "create_clip", no_clip)
    with caplog.at_level(logging.INFO):
        again = clip_scores.train_similarities(*args, **damp)
    assert np.array_equal(again, first)
    (cache,) = (tmp_path / "clip_scores").glob("*.npy")
    assert f"CLIP scores: reusing {cache}" in caplog.text
    # a changed class list, crop grid, CLIP model, normalisation or text graph is another cache: never a stale one
    other_clip = tmp_path / "tiny_clip_2.json"
    other_clip.write_text(tiny_clip.read_text().replace('"layers": 1', '"layers": 2'))
    for changed_args, changed in (((*args[:3], names[::-1], *args[4:]), damp),
                                  (args, {**damp, "crops": CropGrid(3)}),
                                  (args, {**damp, "crops": CropGrid(2, "clip")}),
                                  (args, {**damp, "text_graph": TextGraph(seed=1)}),
                                  (args, {**damp, "text_graph": None}),
                                  ((*args[:4], ClipSpec(str(other_clip)), *args[5:]), damp)):
        with pytest.raises(AssertionError, match="cached"), caplog.at_level(logging.INFO):
            clip_scores.train_similarities(*changed_args, **changed)
    assert "recomputing" not in caplog.text  # each a file of its own, not the first one found of another shape


def test_gpr_looks_its_pseudo_labels_up_in_the_rows_of_each_crops_flip():
    """Two images x 3 crops x 2 orientations: the loss's pseudo-labels are the rule on the rows its view drew."""
    hp = LossHyper(damp_grid=1, damp_top_k=2, damp_threshold=0.4, damp_neg_ratio=0.0, damp_eta=0.0)
    loss = create_loss("GPR", hp, 2, 3)
    assert loss.needs_clip_scores and loss.crop_flips == 2
    torch.manual_seed(0)
    cosines = torch.rand(2 * 2 * 2, 3)  # row (o K + k) N + i
    loss.attach_train_labels(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    loss.set_clip_cosines(cosines)
    targets = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    index = torch.tensor([0 + 2 * 0b100, 1 + 2 * 0b011])  # image 0: crop 1 flipped; image 1: crop 0 flipped
    seen = torch.stack([cosines[[0, 6]], cosines[[5, 3]]])  # (B, K, C)
    expected = damp_pseudo_labels(seen, targets, hp.damp_temp, 0.0, 0.4, 2, 0.0)
    assert torch.equal(loss.pseudo_labels(targets, index), expected)
    assert "cosines" not in loss.state_dict()  # the cache on disk holds them, not every checkpoint
