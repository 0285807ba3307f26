"""One run of one configuration, in the mode it names."""
from __future__ import annotations

from config import Config
from errors import UserError
from modes.end_to_end import evaluate_checkpoint, train_end_to_end
from modes.linear import run_linear_mode
from modes.setup import prepare_digits, set_determinism
from presets import DATA_ROOT
from training.distributed import main_first


def run_single(cfg: Config) -> dict:
    set_determinism(cfg)
    if cfg.dataset == "digits" and cfg.data_dir == DATA_ROOT / "digits":  # built on first use, only there
        with main_first():  # under torchrun rank 0 builds it, the others find it built
            prepare_digits(cfg)
    if cfg.eval_only:
        if cfg.train_mode == "linear_fixed_features":
            raise UserError(f"--eval-only {cfg.eval_only}: a linear_fixed_features checkpoint holds a classifier on "
                            f"cached features, not a model of images; its results.json has its val and test mAP")
        return evaluate_checkpoint(cfg)
    if cfg.train_mode == "end_to_end":
        return train_end_to_end(cfg, cfg.out)
    return run_linear_mode(cfg)
