"""PU-MLC's local-global convolution (Yuan et al. 2024): G(x) ~ 0 at the start, shapes and
strides, the 33 wrapped convs of ResNet-101, gradients through every branch, and --lgconv."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cli import parse_args
from errors import UserError
from nets.lgconv import GlobalBranch, LGConv, convert_to_lgconv
from models import create_backbone


def test_global_branch_starts_near_zero_and_keeps_the_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
    wrapped = LGConv(conv).train()
    x = torch.randn(2, 64, 14, 14)
    out = wrapped(x)
    assert out.shape == (2, 64, 7, 7)
    global_part = wrapped.global_branch(x)
    assert global_part.abs().max() < 1e-2 * conv(x).abs().max()  # BN weight ~ N(0, 1e-4)
    assert torch.allclose(out, conv(x) + global_part)


def test_global_branch_hand_shapes_and_gradients():
    torch.manual_seed(0)
    branch = GlobalBranch(32, 16, stride=1)
    nn.init.ones_(branch.norm.weight)  # make G visible
    x = torch.randn(3, 32, 5, 4, requires_grad=True)
    out = branch(x)
    assert out.shape == (3, 16, 5, 4)
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in branch.parameters())


def test_resnet101_gets_33_lgconvs_and_runs():
    torch.manual_seed(0)
    bb = create_backbone("resnet101", pretrained=False)
    before = sum(p.numel() for p in bb.features.parameters())
    assert convert_to_lgconv(bb.features) == 33  # conv2 of every bottleneck: 3 + 4 + 23 + 3
    assert convert_to_lgconv(bb.features) == 0  # wrapping twice does nothing
    added = sum(p.numel() for p in bb.features.parameters()) - before
    assert added > 0
    x = torch.randn(1, 3, 64, 64)
    bb.features.eval()(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in bb.features.parameters() if p.grad is not None)


def test_lgconv_flag(tmp_path):
    cfg = parse_args(["-g", "cpu", "-m", "resnet18", "--lgconv", "--no-pretrained", "--out", str(tmp_path / "a")])
    assert cfg.lgconv
    assert not parse_args(["-g", "cpu", "--out", str(tmp_path / "b")]).lgconv
    with pytest.raises(UserError, match="--lgconv"):
        parse_args(["-g", "cpu", "-m", "digits_cnn", "--lgconv", "--out", str(tmp_path / "c")])


def test_lgconv_model_is_built_for_the_run(small_digits, tmp_path):
    from modes.end_to_end import _splits_and_model

    cfg = parse_args(["-g", "cpu", "-m", "resnet18", "--lgconv", "--no-pretrained", "--data-dir", str(small_digits),
                      "--out", str(tmp_path / "run")])
    _, model = _splits_and_model(cfg)
    # resnet18: both 3x3 convs of each of its 8 basic blocks; the 7x7 stem is not wrapped
    wrapped = [name for name, module in model.named_modules() if isinstance(module, LGConv)]
    assert len(wrapped) == 16 and all(name.startswith("backbone.layer") for name in wrapped)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
