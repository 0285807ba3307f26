"""The training recipe around the loop: optimiser, per-step LR schedule and weight EMA.

Every option is off by default, so a run without them is plain Adam at a constant lr,
as before. PU-MLC's recipe (Yuan, Zhang, Huang, ICME 2024), usable with every loss:

    --weight-decay 1e-4     Adam's coupled L2 (added to the gradient), on every trainable tensor
    --sched onecycle        OneCycleLR stepped every iteration: max lr = each group's --lr,
                            warm-up over the first 20% (pct_start 0.2), cosine both ways, from
                            lr / 25 down to lr / 25 / 1e4, Adam's beta1 cycled 0.95 -> 0.85 -> 0.95;
                            sized for --sched-epochs (the authors' 80) while training stops at
                            --epochs (the authors' cut-off: the LR never reaches its floor)
    --freeze-bn             every BatchNorm runs in eval mode, also while training: its running
                            statistics never change (the authors' code), its affine weights still learn
    --ema DECAY             theta_ema <- d theta_ema + (1 - d) theta after every step, from the
                            first, no warm-up; the EMA copy is of the unwrapped model, stays in
                            eval mode, and copies (not averages) integer buffers (BatchNorm's step
                            count), unlike the authors' code
    --train-scope layer4-head   only layer4, the head and every LGConv global branch train; the stem
                            and layer1-3 are frozen, their BatchNorm statistics included (gradients
                            still flow through them to the global branches), as the authors' optimiser
                            groups

Both the scheduler's and the EMA's state go into last.pt, so --resume continues them.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from errors import UserError
from nets.lgconv import GlobalBranch

# The authors' OneCycle settings (their train.py)
PCT_START, DIV_FACTOR, FINAL_DIV_FACTOR = 0.2, 25.0, 1e4
BASE_BETA1, MAX_BETA1 = 0.85, 0.95


def build_optimizer(param_groups: list[dict], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam over the groups (each keeps its own lr); coupled L2 `weight_decay` on every one."""
    if weight_decay:
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(param_groups, lr=lr)  # exactly the optimiser runs had before the option


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    sched_epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step schedule `name`, or None for a constant lr."""
    if name == "none":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=max(steps_per_epoch, 1) * sched_epochs, pct_start=PCT_START, anneal_strategy="cos",
        cycle_momentum=True, base_momentum=BASE_BETA1, max_momentum=MAX_BETA1,
        div_factor=DIV_FACTOR, final_div_factor=FINAL_DIV_FACTOR)


def restrict_training(model: nn.Module, scope: str) -> tuple[int, int]:
    """Freeze what `scope` leaves out of training; returns (trainable, all) parameter counts."""
    if scope == "layer4-head":
        backbone = getattr(model, "backbone", None)
        layer4 = next((m for name, m in backbone.named_modules() if name.rsplit(".", 1)[-1] == "layer4"), None) \
            if isinstance(backbone, nn.Module) else None
        if layer4 is None:
            raise UserError(f"--train-scope {scope} trains a ResNet's layer4; {type(model).__name__} has no ResNet "
                            f"backbone: use -m resnet18/resnet50/resnet101, or --train-scope all")
        backbone.requires_grad_(False)
        live = (layer4, *(m for m in backbone.modules() if isinstance(m, GlobalBranch)))
        for module in live:
            module.requires_grad_(True)
        # A frozen layer keeps its BatchNorm statistics too: train mode would move their running means
        # under weights that no longer learn (the authors freeze every BatchNorm, --freeze-bn).
        trained_norms = {id(norm) for module in live for norm in _batchnorms(module)}
        _run_in_eval_mode([norm for norm in _batchnorms(backbone) if id(norm) not in trained_norms])
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def _eval_mode(module: nn.Module, inputs) -> None:
    module.train(False)


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _run_in_eval_mode(norms: list[nn.Module]) -> None:
    """A forward pre-hook on each, so the training loop needs no special case (the authors re-apply
    eval() to every BatchNorm after each model.train())."""
    for norm in norms:
        norm.register_forward_pre_hook(_eval_mode)


def freeze_batchnorm(model: nn.Module) -> int:
    """Make every BatchNorm of `model` run in eval mode whatever model.train() said; returns how many."""
    norms = _batchnorms(model)
    _run_in_eval_mode(norms)
    return len(norms)


class ModelEma:
    """An exponential moving average of a model's state (parameters and floating buffers)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema, live in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema.is_floating_point():
                ema.mul_(self.decay).add_(live.detach(), alpha=1.0 - self.decay)
            else:  # step counters: an average of integers means nothing
                ema.copy_(live)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
