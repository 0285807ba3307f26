"""The registries name their builders (lazy.Lazy) instead of importing them: each name must lead to one."""
from __future__ import annotations

import pytest

from config import AMP_MODES
from lazy import Lazy
from losses import LOSSES
from nets import BACKBONES, HEADS
from training.speed import AMP_DTYPES


def test_a_lazy_call_is_the_call_it_names():
    assert Lazy("operator:add")(1, 2) == 3
    assert Lazy("os.path:sep.join").resolve() == __import__("os").path.sep.join  # an attribute path
    # arguments give a builder first (each Lazy among them resolved), which the call then calls
    assert Lazy("functools:partial", Lazy("operator:sub"), 10)(4) == 6
    assert Lazy("operator:add") == Lazy("operator:add") != Lazy("operator:sub")
    with pytest.raises(ValueError, match="'module:attribute'"):
        Lazy("operator.add")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_names_a_builder_and_its_defaults(name):
    entry = LOSSES[name]
    assert callable(entry.build.resolve())
    if isinstance(entry.defaults, Lazy):
        assert callable(entry.defaults.resolve())


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_names_its_factory(name):
    assert callable(BACKBONES[name].factory.resolve())  # resolving builds nothing (no weights, no timm)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_names_its_class(name):
    assert callable(HEADS[name].build.resolve())


def test_the_amp_choices_are_the_modes_speed_knows():
    assert tuple(AMP_DTYPES) == AMP_MODES
