"""PU-MLC's backbone, -m resnet101 (Yuan et al. 2024): it builds, runs, and fails offline with the file to place."""
from __future__ import annotations

import pytest
import torch
from torchvision import models as tv

from errors import UserError
from models import BACKBONES, MultiLabelModel, create_backbone


def test_resnet101_builds_and_runs():
    torch.manual_seed(0)
    bb = create_backbone("resnet101", pretrained=False)
    assert (bb.feature_dim, bb.preprocess.size) == (2048, 448)
    assert BACKBONES["resnet101"].has_pretrained
    # torchvision's ResNet-101 without its fc: 42.5 M parameters
    assert sum(p.numel() for p in bb.features.parameters()) == 42_500_160
    model = MultiLabelModel(bb, 20)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 20)


def test_resnet101_offline_names_the_weights_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    name = tv.ResNet101_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    with pytest.raises(UserError, match=f"{name}.*--no-pretrained"):
        create_backbone("resnet101", pretrained=True)


def test_torchvision_weights_are_read_from_the_cache_or_fetched_with_nothing_left_on_failure(monkeypatch, tmp_path,
                                                                                            capsys):
    import urllib.error

    from nets.backbones import load_torchvision_weights

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub = tmp_path / "hub"  # a TORCH_HOME that does not exist yet
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    weights = tv.ResNet18_Weights.IMAGENET1K_V1
    name = weights.url.rsplit("/", 1)[-1]
    with pytest.raises(UserError, match=f"cannot fetch pretrained weights \\(URLError\\): put {name} .* in {hub}"):
        load_torchvision_weights(weights)
    assert not hub.exists() and "Downloading" not in capsys.readouterr().err
    # placed by hand, the file is read from the cache; the network is never asked
    (hub / "checkpoints").mkdir(parents=True)
    state = tv.resnet18(weights=None).state_dict()
    torch.save(state, hub / "checkpoints" / name)
    assert load_torchvision_weights(weights).keys() == state.keys()
