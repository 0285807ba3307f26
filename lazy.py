"""A call named now and made when a run needs it: how the registries name their builders.

The tables of losses (`losses.py`) and of the model's parts (`nets/__init__.py`) hold names,
help lines and rules, which the flags read, and builders, which import torch. Each builder is
named as `"module:attribute"` and imported at its first use, so `python main.py -h` answers
without importing torch (2 s or more on a small CPU: `python -m benchmarks.startup_time`).

    Lazy("methods.role:RoleLoss.from_hyper")                      # that function
    Lazy("methods.base:stateless", Lazy("methods.cole:loss_ls"), "ls_coef")   # stateless(loss_ls, "ls_coef")

Calling a `Lazy` calls what it names: `LOSSES["role"].build(hp, n, c)` reads as if the table
held the function itself.
"""
from __future__ import annotations

import importlib
from typing import Any


class Lazy:
    def __init__(self, target: str, *args: Any):
        module, _, path = target.partition(":")
        if not module or not path:
            raise ValueError(f"a Lazy target is 'module:attribute', got {target!r}")
        self.target, self.args = target, args

    def resolve(self) -> Any:
        """What it names: the attribute, or, given arguments (each `Lazy` among them resolved), its result."""
        module, _, path = self.target.partition(":")
        found = importlib.import_module(module)
        for name in path.split("."):
            found = getattr(found, name)
        if not self.args:
            return found
        return found(*(arg.resolve() if isinstance(arg, Lazy) else arg for arg in self.args))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lazy) and (self.target, self.args) == (other.target, other.args)

    def __hash__(self) -> int:
        return hash((self.target, self.args))

    def __repr__(self) -> str:
        return f"Lazy({', '.join(map(repr, (self.target, *self.args)))})"
