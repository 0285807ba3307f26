"""The training recipe (PU-MLC's, Yuan et al. 2024, with every loss): OneCycle's shape, the weight EMA,
the flags' rules, and a run with both that survives an interruption and --resume identically."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from cli import parse_args
from errors import UserError
from nets.lgconv import convert_to_lgconv
from main import main
from models import MultiLabelModel, create_backbone
from preprocess import ImageDraws, Preprocess, crop_sides
from training import engine
from training.checkpoint import BEST, LAST, load_checkpoint
from training.recipe import ModelEma, build_optimizer, build_scheduler, freeze_batchnorm, restrict_training
from training.trainer import model_param_groups


def test_onecycle_follows_the_authors_schedule():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [param]}], 1e-3, 1e-4)
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    sched = build_scheduler("onecycle", opt, steps_per_epoch=10, sched_epochs=10)  # 100 steps, peak at step 20
    lrs, beta1s = [], []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        beta1s.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3 / 25) and beta1s[0] == pytest.approx(0.95)
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) in (19, 20)
    assert beta1s[lrs.index(max(lrs))] == pytest.approx(0.85, abs=1e-3)
    assert lrs[-1] == pytest.approx(1e-3 / 25 / 1e4, rel=0.2) and beta1s[-1] == pytest.approx(0.95, abs=1e-3)
    assert build_scheduler("none", opt, 10, 0) is None
    plain = build_optimizer([{"params": [param]}], 1e-3, 0.0)
    assert plain.param_groups[0]["weight_decay"] == 0


def test_ema_averages_floats_and_copies_counters():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.75)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(4.0)
    model[1].num_batches_tracked += 3
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, start + 0.25 * 4.0)
    assert int(ema.module[1].num_batches_tracked) == 3
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


@pytest.mark.parametrize("extra, match", [
    (["--sched-epochs", "5"], "add --sched onecycle"),
    (["--sched", "onecycle", "--epochs", "4", "--sched-epochs", "3"], "--sched-epochs >= 4"),
    (["--ema", "1"], "--ema"),
    (["--ema", "0.9", "--train-mode", "linear_init"], "end-to-end training only"),
    (["--weight-decay", "-1"], "--weight-decay"),
])
def test_recipe_flags_refused(tmp_path, extra, match):
    with pytest.raises(UserError, match=match):
        parse_args(["-g", "cpu", "--out", str(tmp_path / "run"), *extra])
    assert not (tmp_path / "run").exists()


def test_recipe_off_by_default(tmp_path):
    cfg = parse_args(["-g", "cpu", "--out", str(tmp_path / "run")])
    assert (cfg.optimizer, cfg.weight_decay, cfg.sched, cfg.sched_epochs, cfg.ema) == ("adam", 0.0, "none", 0, 0.0)
    cfg = parse_args(["-g", "cpu", "--out", str(tmp_path / "run"), "--sched", "onecycle", "--epochs", "3"])
    assert cfg.sched_epochs == 3


def _records(run_dir):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in json.loads((run_dir / "results.json").read_text())["epochs"]]


def test_onecycle_and_ema_resume_like_an_uninterrupted_run(small_digits, tmp_path, monkeypatch):
    flags = ["-g", "cpu", "-l", "PU", "--patience", "0", "--epochs", "3", "--data-dir", str(small_digits),
             "--sched", "onecycle", "--sched-epochs", "5", "--ema", "0.9", "--weight-decay", "1e-4"]
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert main([*flags, "--out", str(straight)]) == 0

    real = engine.train_one_epoch

    def ctrl_c_at_epoch_2(*args, **kwargs):
        if args[5] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(engine, "train_one_epoch", ctrl_c_at_epoch_2)
        assert main([*flags, "--out", str(cut)]) == 130
    last = load_checkpoint(cut / LAST)
    assert last["train_state"]["epoch"] == 1 and {"scheduler", "ema"} <= set(last)
    assert main(["--resume", str(cut), "-g", "cpu"]) == 0
    assert _records(cut) == _records(straight)

    results = json.loads((straight / "results.json").read_text())
    epoch = results["epochs"][0]
    assert {"ema_val_map", "ema_test_map", "ema_val", "ema_test", "selected"} <= set(epoch)
    assert results["best_weights"] in ("regular", "ema")
    best = results["epochs"][results["best_epoch"] - 1]
    chosen = "ema_" if best["selected"] == "ema" else ""
    assert results["best_val_map"] == best[f"{chosen}val_map"] == max(best["val_map"], best["ema_val_map"])
    last = load_checkpoint(straight / LAST)
    steps = last["scheduler"]["last_epoch"]
    assert steps == 3 * last["scheduler"]["total_steps"] // 5  # cut off at --epochs of a --sched-epochs schedule
    assert load_checkpoint(straight / BEST)["train_state"]["best_source"] == results["best_weights"]


def test_freeze_bn_keeps_running_statistics_and_trains_the_affine_weights(small_digits, tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    assert freeze_batchnorm(model) == 1
    model.train()
    model(torch.randn(2, 3, 5, 5) + 3).sum().backward()
    assert torch.equal(model[1].running_mean, torch.zeros(4)) and int(model[1].num_batches_tracked) == 0
    assert model[1].weight.grad is not None and model[0].training
    assert not parse_args(["-g", "cpu", "--out", str(tmp_path / "a")]).freeze_bn
    out = tmp_path / "run"
    assert main(["-g", "cpu", "-l", "PU", "--epochs", "1", "--freeze-bn", "--data-dir", str(small_digits),
                 "--out", str(out)]) == 0
    state = load_checkpoint(out / LAST)["model"]
    assert all(int(v) == 0 for k, v in state.items() if k.endswith("num_batches_tracked"))


def test_multi_scale_crop_is_the_authors_pipeline():
    assert crop_sides(512) == (512, 448, 384, 320, 256) and crop_sides(640) == (640, 576, 512, 448, 384, 320)
    pre = Preprocess(448, (0.5,) * 3, (0.5,) * 3, scale=512)
    train, test = pre.transform(train=True, hflip=True), pre.transform(train=False, hflip=True)
    assert train.crop and train.flip and not test.random
    assert train.interpolation == test.interpolation == T.InterpolationMode.BICUBIC
    image = Image.fromarray(torch.randint(0, 255, (40, 30, 3), dtype=torch.uint8).numpy())
    for index in range(4):  # resize to 512, the drawn square, resize to 448, the drawn flip
        draws = ImageDraws(0, 1, index)
        side, top, left = draws.square_crop(crop_sides(512), 512)
        expected = TF.resize(TF.crop(TF.resize(image, [512, 512], T.InterpolationMode.BICUBIC), top, left, side, side),
                             [448, 448], T.InterpolationMode.BICUBIC)
        expected = TF.hflip(expected) if draws.flip() else expected
        assert torch.equal(train(image, draws), TF.normalize(TF.to_tensor(expected), pre.mean, pre.std))
    # the side is uniform over the five, its place anywhere in the 512 x 512 image; fixed by (seed, epoch, image)
    crops = [ImageDraws(0, 1, index).square_crop(crop_sides(512), 512) for index in range(500)]
    sides = [side for side, _, _ in crops]
    assert set(sides) == set(crop_sides(512)) and min(sides.count(s) for s in set(sides)) > 60
    assert all(0 <= top <= 512 - side and 0 <= left <= 512 - side for side, top, left in crops)
    tops = [top for side, top, _ in crops if side == 256]
    assert min(tops) < 32 and max(tops) > 224
    assert [ImageDraws(0, 1, index).square_crop(crop_sides(512), 512) for index in range(500)] == crops
    assert [ImageDraws(0, 2, index).square_crop(crop_sides(512), 512) for index in range(500)] != crops
    plain = Preprocess(448, (0.5,) * 3, (0.5,) * 3).transform(train=True, hflip=False)
    assert plain.interpolation == T.InterpolationMode.BILINEAR and not plain.random  # the default is unchanged


def _lgconv_resnet18(num_classes: int) -> MultiLabelModel:
    backbone = create_backbone("resnet18", pretrained=False)
    convert_to_lgconv(backbone.features)
    return MultiLabelModel(backbone, num_classes)


def test_train_scope_freezes_the_stem_and_layer1_to_3_but_not_the_global_branches():
    model = _lgconv_resnet18(5)
    trainable, total = restrict_training(model, "layer4-head")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in names) < total
    assert "backbone.layer4.0.conv1.conv.weight" in names and "classifier.weight" in names
    assert "backbone.layer1.0.conv2.global_branch.norm.weight" in names
    assert not {"backbone.conv1.weight", "backbone.layer3.0.downsample.0.weight", "backbone.layer1.0.conv2.conv.weight",
                "backbone.bn1.weight"} & names
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    moved = {name.rsplit(".", 1)[0] for name, buffer in model.named_buffers()
             if name.endswith("running_mean") and not torch.equal(buffer, before[name])}
    # the frozen stem and layer1-3 keep their BatchNorm statistics; layer4's and the global branches' move
    assert "backbone.bn1" not in moved and "backbone.layer3.1.bn2" not in moved and "backbone.layer1.0.bn1" not in moved
    assert {"backbone.layer4.0.bn1", "backbone.layer1.0.conv2.global_branch.norm"} <= moved
    assert model.backbone.layer1[0].conv2.global_branch.reduce.weight.grad is not None  # gradients flow through layer1
    assert model.backbone.layer1[0].conv1.conv.weight.grad is None
    groups = model_param_groups(model, 1e-3, 10.0)
    assert sum(p.numel() for g in groups for p in g["params"]) == trainable
    assert restrict_training(torch.nn.Linear(2, 2), "all") == (6, 6)
    with pytest.raises(UserError, match="no ResNet backbone"):
        restrict_training(MultiLabelModel(create_backbone("digits_cnn", pretrained=False), 5), "layer4-head")


@pytest.mark.parametrize("extra, match", [
    (["--train-scope", "layer4-head"], "-m digits_cnn has no layer4"),
    (["--scale-size", "512", "--decode", "gpu"], "--decode pil"),
    (["--crop-size", "224", "--train-mode", "linear_fixed_features"], "--crop-size act on images"),
    (["--scale-size", "1"], "--scale-size"),
    (["--crop-size", "0"], "--crop-size"),
])
def test_image_and_scope_flags_refused(tmp_path, extra, match):
    with pytest.raises(UserError, match=match):
        parse_args(["-g", "cpu", "--out", str(tmp_path / "run"), *extra])
    assert not (tmp_path / "run").exists()


def test_eval_only_of_best_pt_gives_the_reported_numbers_when_the_ema_weights_won(small_digits, tmp_path):
    """With --ema, best.pt holds the weights selected on val (here the EMA's), so --eval-only best.pt
    scores exactly what results.json reports."""
    out = tmp_path / "run"
    assert main(["-g", "cpu", "-l", "EM", "-s", "1", "--patience", "0", "--epochs", "3", "--ema", "0.8",
                 "--data-dir", str(small_digits), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    best = results["epochs"][results["best_epoch"] - 1]
    assert results["best_weights"] == "ema" and best["ema_val_map"] != best["val_map"]  # else this test proves nothing
    assert main(["--eval-only", str(out / BEST), "-g", "cpu"]) == 0
    scored = json.loads((out / "eval_best.json").read_text())
    assert (scored["val"]["map"], scored["test"]["map"]) == (results["best_val_map"], results["test_map"])
