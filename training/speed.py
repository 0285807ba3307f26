"""How a step runs, not what it computes: mixed precision, memory format, compilation.

Every option here changes the numbers a little (bf16 rounding, other convolution
kernels), so each is off by default and the default run is the references' fp32
protocol; `--fast` (cli.py) turns them on for a GPU. `StepOptions` is what the
training loop (engine.py) reads; `prepare_model` applies the model-side options once.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16}  # config.AMP_MODES


@dataclass(frozen=True)
class StepOptions:
    amp_dtype: torch.dtype | None = None  # autocast dtype of the forward; the loss stays fp32
    channels_last: bool = False  # NHWC images and conv weights (faster convolutions on tensor cores)

    @classmethod
    def from_config(cls, cfg) -> "StepOptions":
        return cls(AMP_DTYPES[cfg.amp], cfg.channels_last)

    def autocast(self, device: torch.device):
        """The forward's autocast context; a no-op when amp is off (so fp32 runs are untouched)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype)

    def images_to(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        images = images.to(device, non_blocking=True)
        if self.channels_last and images.dim() == 4:  # cached features (linear modes) are 2-D
            images = images.contiguous(memory_format=torch.channels_last)
        return images


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def prepare_model(model: nn.Module, options: StepOptions, compile_model: bool = False) -> nn.Module:
    """Applies the model-side options in place (the module and its state_dict keys stay the same)."""
    if options.channels_last and has_conv(model):
        model.to(memory_format=torch.channels_last)
    if compile_model:
        # nn.Module.compile, not torch.compile(model): the state_dict keys (checkpoints) keep no `_orig_mod.` prefix
        model.compile()
    return model


def check_amp(amp: str, device: str) -> None:
    """Raises ValueError with the reason when this device cannot run `--amp amp`."""
    if amp == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{torch.cuda.get_device_name(device)} has no bf16 support")
