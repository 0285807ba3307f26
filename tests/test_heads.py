"""Backbone -> feature map -> head: every backbone's map and pooling, the cam and boostlu heads
(linear == cam on an average-pooled backbone, boostlu(1) == cam, the boosting rule by hand),
every head's gradients, and the command line of --head, --boost-alpha and --crop-size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cli import parse_args
from errors import UserError
from main import main
from methods.vlpl.towers import ClipSpec
from models import BACKBONES, HEADS, MultiLabelModel, create_backbone
from nets.heads import BoostLUHead

SIDES = (1, 3, 4, 31, 32, 33, 64, 70)


@pytest.mark.parametrize("name", sorted(set(BACKBONES) - {"clip_vision"}))
def test_map_side_is_the_maps_side(name):
    """The side the command line checks --crop-size with is the side of the map the heads read (shapes only)."""
    entry = BACKBONES[name]
    with torch.device("meta"):  # shapes without weights: the 350M-parameter ConvNeXt-XL builds in seconds
        backbone = create_backbone(name, pretrained=False)
        backbone.features.eval()
        for side in SIDES:
            expected = entry.map_side(side)
            if expected == 0:
                with pytest.raises(RuntimeError):
                    backbone.feature_map(backbone.features, torch.empty(1, 3, side, side))
                continue
            fmap = backbone.feature_map(backbone.features, torch.empty(1, 3, side, side))
            assert fmap.shape == (1, backbone.feature_dim, expected, expected), side


@pytest.mark.parametrize("name", ["resnet18", "digits_cnn", "convnext_tiny", "clip_vision"])
def test_the_pooled_map_is_the_networks_own_forward(name, tiny_clip):
    """What the linear head reads is the network's own pooled features, to the bit: today's numbers."""
    torch.manual_seed(0)
    backbone = create_backbone(name, pretrained=False, clip=ClipSpec(str(tiny_clip)))
    net = backbone.features.eval()
    side = backbone.preprocess.size if name == "clip_vision" else 64
    images = torch.randn(2, 3, side, side)
    with torch.no_grad():
        fmap = backbone.feature_map(net, images)
        assert torch.equal(backbone.pool(net, fmap), net(images))
    assert fmap.shape[:2] == (2, backbone.feature_dim)
    assert (fmap.shape[2:] == (1, 1)) == (BACKBONES[name].map_side is None)  # CLIP: its embedding, as a 1 x 1 map


def _pair(head: str, **options) -> tuple[MultiLabelModel, MultiLabelModel]:
    """A linear model and a `head` model built from the same seed on a ResNet-18 (average pooling)."""
    models = []
    for name, opts in (("linear", {}), (head, options)):
        torch.manual_seed(0)
        models.append(MultiLabelModel(create_backbone("resnet18", pretrained=False), 5, name, **opts).eval())
    return models[0], models[1]


def _logits_and_head_grad(model: MultiLabelModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad()
    logits = model(images)
    (logits * torch.arange(1.0, 6.0)).sum().backward()
    weight = model.classifier.weight if isinstance(model.classifier, torch.nn.Linear) else model.classifier.conv.weight
    return logits.detach(), weight.grad.reshape(5, -1)


def test_cam_is_linear_on_an_average_pooled_backbone():
    linear, cam = _pair("cam")
    # a 1x1 conv draws its initial weights as nn.Linear does: from one seed, the same model
    assert torch.equal(cam.classifier.conv.weight.reshape(5, -1), linear.classifier.weight)
    assert torch.equal(cam.classifier.conv.bias, linear.classifier.bias)
    images = torch.randn(3, 3, 96, 96)  # a 3 x 3 map
    linear_logits, linear_grad = _logits_and_head_grad(linear, images)
    cam_logits, cam_grad = _logits_and_head_grad(cam, images)
    torch.testing.assert_close(cam_logits, linear_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cam_grad, linear_grad, rtol=1e-5, atol=1e-5)
    assert cam_logits.std() > 0.01  # not trivially equal


def test_boostlu_with_alpha_1_is_cam():
    _, cam = _pair("cam")
    _, boost = _pair("boostlu", alpha=1.0)
    images = torch.randn(3, 3, 96, 96)
    cam_logits, cam_grad = _logits_and_head_grad(cam, images)
    boost_logits, boost_grad = _logits_and_head_grad(boost, images)
    assert torch.equal(boost_logits, cam_logits) and torch.equal(boost_grad, cam_grad)
    _, boost5 = _pair("boostlu", alpha=5.0)
    assert not torch.allclose(_logits_and_head_grad(boost5, images)[0], cam_logits)


def test_the_boosting_rule_by_hand():
    """CAM' = alpha CAM where CAM > 0, else CAM; logit = the mean of CAM'. A zero is not boosted."""
    head = BoostLUHead(2, 2, alpha=5.0)
    with torch.no_grad():
        head.conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]).reshape(2, 2, 1, 1))
        head.conv.bias.zero_()
    fmap = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]],  # channel 0 -> class 0's CAM
                          [[2.0, 4.0], [-1.0, -3.0]]]], requires_grad=True)  # channel 1 -> class 1's CAM, negated
    assert torch.equal(head.cams(fmap), torch.tensor([[[[5.0, -2.0], [15.0, 0.0]], [[-2.0, -4.0], [5.0, 15.0]]]]))
    logits = head(fmap)
    assert torch.equal(logits, torch.tensor([[(5 - 2 + 15 + 0) / 4, (-2 - 4 + 5 + 15) / 4]]))
    logits[0, 0].backward()
    # d logit_0 / d map: alpha / 4 where the CAM is positive, 1 / 4 where it is not (0 included)
    assert torch.equal(fmap.grad[0, 0], torch.tensor([[1.25, 0.25], [1.25, 0.25]]))
    assert torch.equal(fmap.grad[0, 1], torch.zeros(2, 2))


def _head_options(head: str, num_classes: int) -> dict:
    if head == "boostlu":
        return {"alpha": 5.0}
    if head == "ssgrl":
        return {"word_vectors": np.random.RandomState(0).randn(num_classes, 7).astype(np.float32),
                "graph": np.eye(num_classes, dtype=np.float32)}
    return {}


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("name", ["digits_cnn", "convnext_tiny"])
def test_every_head_trains_every_weight(name, head):
    """Shapes, finite gradients, and no weight left out: ConvNeXt's pooling LayerNorm serves the linear head only."""
    torch.manual_seed(0)
    model = MultiLabelModel(create_backbone(name, pretrained=False), 4, head, **_head_options(head, 4)).train()
    side = 24 if name == "digits_cnn" else 64
    logits = model(torch.randn(3, 3, side, side))
    assert logits.shape == (3, 4)
    logits.square().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    if name == "convnext_tiny":
        assert any(n.startswith("backbone.classifier.") for n, _ in model.named_parameters()) == (head == "linear")


@pytest.mark.parametrize("head", sorted(HEADS))
def test_the_smallest_map_each_head_reads(head):
    least = HEADS[head].min_map_side
    torch.manual_seed(0)
    model = MultiLabelModel(create_backbone("digits_cnn", pretrained=False), 3, head, **_head_options(head, 3)).eval()
    with torch.no_grad():
        assert model.forward_head(torch.randn(1, 64, least, least)).shape == (1, 3)
        if least > 1:
            with pytest.raises(RuntimeError):
                model.forward_head(torch.randn(1, 64, least - 1, least - 1))


def test_head_flags(tmp_path):
    base = ["-g", "cpu", "--out", str(tmp_path / "run")]
    cfg = parse_args([*base, "--head", "boostlu"])
    assert (cfg.head, cfg.boost_alpha) == ("boostlu", 5.0)
    assert parse_args([*base, "--head", "boostlu", "--boost-alpha", "2.5"]).boost_alpha == 2.5
    assert (parse_args(base).head, parse_args(base).boost_alpha) == ("linear", None)
    assert parse_args([*base, "--head", "cam", "-l", "LL-R"]).classifier_lr_mult == 10  # the CAM conv at x10


@pytest.mark.parametrize("extra, message", [
    (["--head", "boostlu", "--boost-alpha", "0"], "--boost-alpha: must be > 0, got 0"),
    (["--head", "boostlu", "--boost-alpha", "-1"], "--boost-alpha: must be > 0, got -1"),
    (["--head", "boostlu", "--boost-alpha", "nan"], "--boost-alpha: must be a finite number, got nan"),
    (["--boost-alpha", "2"], "--boost-alpha scales the class activation maps of --head boostlu, not of --head linear"),
    (["--head", "boostlu", "-m", "clip_vision"],
     "--head boostlu reads a spatial feature map and -m clip_vision has none"),
    (["--head", "cam", "-m", "clip_vision"], "use --head linear, or a backbone with a map (convnext_base"),
    (["--head", "cam", "--train-mode", "linear_init"], "--train-mode linear_init trains a linear layer on pooled"),
    (["--head", "ssgrl", "--word-vectors", "v.npy", "-m", "resnet18", "--crop-size", "32"],
     "--crop-size 32: the feature map of -m resnet18 would be 1 x 1 and --head ssgrl reads at least 2 x 2: pass "
     "--crop-size 33 or more"),
    (["--crop-size", "3"], "--crop-size 3: the feature map of -m digits_cnn would be 0 x 0 and --head linear reads "
                           "at least 1 x 1: pass --crop-size 4 or more"),
    (["--head", "cam", "-m", "convnext_tiny", "--crop-size", "20"], "pass --crop-size 32 or more"),
    (["-m", "clip_vision", "--crop-size", "48"], "--crop-size 48: -m clip_vision is the image tower of --clip-model "
                                                 "TINY, whose positional embeddings fix its input at 32 px"),
])
def test_bad_head_input_is_one_line_before_anything_is_written(extra, message, small_digits, tiny_clip, tmp_path,
                                                               capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "clip_vision" in extra:  # were it not refused, a small CLIP would be built, not ViT-L
        extra = [*extra, "--clip-model", str(tiny_clip)]
    np.save(tmp_path / "v.npy", np.zeros((10, 4), dtype=np.float32))
    out = tmp_path / "run"
    assert main(["-g", "cpu", "-l", "an", "--no-pretrained", "--epochs", "1", "--data-dir", str(small_digits), *extra,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message.replace("TINY", str(tiny_clip)) in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_the_suggested_crop_runs(tmp_path):
    """The smallest --crop-size the error names is one the head can read."""
    from models import create_model

    np.save(tmp_path / "v.npy", np.random.RandomState(0).randn(3, 4).astype(np.float32))
    cfg = parse_args(["-g", "cpu", "--no-pretrained", "-m", "resnet18", "--head", "ssgrl", "--word-vectors",
                      str(tmp_path / "v.npy"), "--crop-size", "33", "--out", str(tmp_path / "run")])
    model = create_model(cfg, 3, np.eye(3)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 33)).shape == (1, 3)


def test_the_boostlu_presets(digits_dir, tmp_path, capsys):
    base = ["-g", "cpu", "--data-dir", str(digits_dir), "--out", str(tmp_path / "run")]
    cfg = parse_args(["--preset", "boostlu-coco", *base])
    assert (cfg.dataset, cfg.loss, cfg.model, cfg.head, cfg.boost_alpha, cfg.preset) == \
        ("coco", "LL-R", "resnet50", "boostlu", 5.0, "boostlu-coco")
    assert (cfg.bsize, cfg.lr, cfg.classifier_lr_mult, cfg.epochs, cfg.patience, cfg.hyper.delta_rel) == \
        (16, 1e-5, 10, 10, 0, 0.5)  # the authors' recipe; delta_rel and the head's x10 are LL-R's own
    other = parse_args(["--preset", "boostlu-cub", "-l", "LL-Ct", "--boost-alpha", "2", *base])
    assert (other.dataset, other.loss, other.hyper.delta_rel, other.classifier_lr_mult, other.bsize,
            other.boost_alpha) == ("cub", "LL-Ct", 0.2, 10, 16, 2.0)
    linear = parse_args(["--preset", "boostlu-pascal", "--head", "linear", *base])  # --boost-alpha goes with its head
    assert (linear.dataset, linear.head, linear.boost_alpha) == ("pascal", "linear", None)
    assert main(["-h"]) == 0
    assert "boostlu-nuswide: BoostLU with LL-R on NUS-WIDE, single positive labels" in \
        " ".join(capsys.readouterr().out.split())
    from preproc.generate_observed_labels import generate_observed_labels

    generate_observed_labels(digits_dir, seed=0, known_ratio=0.1)  # another protocol than the authors'
    with pytest.raises(UserError, match="--preset boostlu-coco trains on the authors' observed labels"):
        parse_args(["--preset", "boostlu-coco", *base])


def test_another_head_beside_a_preset_drops_the_presets_head_options():
    from preset_command import with_preset

    assert "--word-vectors" in with_preset(["--preset", "pumlc-coco"])
    assert "--word-vectors" in with_preset(["--preset", "pumlc-coco", "--head", "ssgrl"])
    assert "--word-vectors" not in with_preset(["--preset", "pumlc-coco", "--head", "linear"])
    assert "--boost-alpha" not in with_preset(["--preset", "boostlu-coco", "--head=cam"])
