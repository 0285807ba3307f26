"""The training modes, and `run`, which picks one for a configuration.

    end_to_end.py  backbone + classifier on images (default); --eval-only
    linear.py      Cole et al.'s linear_fixed_features (a linear layer on cached
                   features) and linear_init (that, then end-to-end fine-tuning)
    search.py      Cole et al.'s lr x batch-size grid, one run per point
    single.py      one run of one configuration, in its mode
    setup.py       what every mode shares: determinism, the embedded dataset, image loaders,
                   and `build_loss`, the one place a loss is built and given what it needs
"""
from __future__ import annotations

import dataclasses

from config import Config
from modes.search import run_search
from modes.single import run_single
from training.distributed import same_as_main
from training.trainer import restart_if_unstarted


def run(cfg: Config) -> dict:
    """One run, or with --search one run per grid point."""
    # under torchrun each process named the default --out after its own clock: rank 0's name for all
    cfg = dataclasses.replace(cfg, out=same_as_main(cfg.out))
    cfg = restart_if_unstarted(cfg, cfg.out)
    if cfg.search:
        return run_search(cfg)
    return run_single(cfg)
