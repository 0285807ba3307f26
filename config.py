"""Command-line parsing into one frozen, typed run configuration.

Flags mirror the reference repos (`-d -l -g -s -m`); every default that depends
on the dataset (batch size, lr, alpha, ...) comes from `presets.py` unless the
flag is given. Cross-field checks raise `UserError` naming the flag and value.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from errors import UserError
from losses import LOSSES, LossHyper
from models import BACKBONES
from modes import TRAIN_MODES
from presets import DATA_ROOT, PRESETS, REPO_ROOT
from search import DEFAULT_BSIZES, DEFAULT_LRS

LINEAR_EPOCHS = 25  # Cole et al.'s epochs for the linear modes


@dataclass(frozen=True)
class Config:
    dataset: str
    loss: str
    model: str
    seed: int
    device: str  # "cpu" or "cuda:N"
    epochs: int
    bsize: int
    lr: float
    patience: int  # 0: never stop early
    num_workers: int
    pretrained: bool
    val_set_variant: str
    threshold: float
    data_dir: Path
    image_root: Path
    out: Path
    hyper: LossHyper
    train_mode: str = "end_to_end"  # modes.TRAIN_MODES
    linear_epochs: int = 25  # linear phase of linear_init
    search: bool = False
    search_lrs: tuple[float, ...] = DEFAULT_LRS
    search_bsizes: tuple[int, ...] = DEFAULT_BSIZES

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2 via main, not usage + message
        raise UserError(message)


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description="Train and evaluate a single-positive multi-label classifier.")
    loss_help = "; ".join(f"{name}: {entry.help}" for name, entry in LOSSES.items())
    p.add_argument("-d", "--dataset", default="digits", choices=sorted(PRESETS), help="dataset preset (default: digits)")
    p.add_argument("-l", "--loss", default=_default_loss(), choices=list(LOSSES), help=loss_help)
    p.add_argument("-g", "--gpu", default="0", help="GPU index, or 'cpu'; falls back to the CPU when CUDA is absent (default: 0)")
    p.add_argument("-s", "--seed", type=int, default=0, help="PyTorch seed (default: 0)")
    p.add_argument("-m", "--model", choices=sorted(BACKBONES), help="backbone (default: the dataset's, resnet50 for the benchmarks)")
    p.add_argument("--no-pretrained", action="store_true", help="random initialisation instead of ImageNet weights")
    p.add_argument("--epochs", type=_positive(int), help="training epochs (default: 10)")
    p.add_argument("--bsize", type=_positive(int), help="batch size (default: per dataset)")
    p.add_argument("--lr", type=_positive(float), help="Adam learning rate (default: per dataset)")
    p.add_argument("--patience", type=_non_negative_int, default=1,
                   help="stop after this many epochs without a val mAP gain; 1 is the EM/APL code's rule, "
                        "0 never stops early (Cole, VLPL) (default: 1)")
    p.add_argument("--num-workers", type=_non_negative_int, help="data loading processes (default: per dataset)")
    p.add_argument("--val-set-variant", choices=("clean", "observed"), default="clean",
                   help="score val on its full labels, or on its observed positives only (default: clean)")
    p.add_argument("--threshold", type=float, default=0.5, help="score threshold of CF1/OF1 (0.75 is fair for EM models)")
    p.add_argument("--data-dir", type=Path, help="dataset folder (default: data/<dataset>)")
    p.add_argument("--image-root", type=Path, help="image folder (default: the dataset's, inside --data-dir)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<dataset>_<loss>_s<seed>_<time>); never overwritten")
    p.add_argument("--train-mode", choices=TRAIN_MODES, default="end_to_end",
                   help="end_to_end; linear_fixed_features: a linear layer on the features cached by "
                        "preproc/extract_features.py (default --epochs 25); linear_init: that linear phase "
                        "(--linear-epochs), then end-to-end fine-tuning (--epochs) (default: end_to_end)")
    p.add_argument("--linear-epochs", type=_positive(int), default=LINEAR_EPOCHS,
                   help=f"epochs of linear_init's linear phase (default: {LINEAR_EPOCHS})")
    p.add_argument("--search", action="store_true",
                   help="run the lr x batch-size grid, one run folder each under --out, select by val mAP")
    p.add_argument("--search-lrs", type=_positive(float), nargs="+", default=list(DEFAULT_LRS),
                   help=f"learning rates of --search (default: {' '.join(f'{v:g}' for v in DEFAULT_LRS)})")
    p.add_argument("--search-bsizes", type=_positive(int), nargs="+", default=list(DEFAULT_BSIZES),
                   help=f"batch sizes of --search (default: {' '.join(map(str, DEFAULT_BSIZES))})")
    hp = p.add_argument_group("loss hyperparameters (defaults: per dataset, SPEC §3)")
    hp.add_argument("--alpha", type=float, help="EM weight of the unknown-label entropy")
    hp.add_argument("--beta", type=float, help="APL weight of the soft pseudo-negatives")
    hp.add_argument("--warmup-epochs", type=_non_negative_int, help="epochs before pseudo-labelling starts")
    hp.add_argument("--ls-coef", type=float, default=0.1, help="label-smoothing coefficient (default: 0.1)")
    hp.add_argument("--expected-pos", type=_positive(float), help="expected positives per image (EPR, ROLE)")
    return p


def _default_loss() -> str:
    return "EM_APL" if "EM_APL" in LOSSES else "EM"


def _device(gpu: str) -> str:
    import torch

    if gpu == "cpu":
        return "cpu"
    if not gpu.isdigit():
        raise UserError(f"-g/--gpu must be a GPU index or 'cpu', got {gpu!r}")
    if not torch.cuda.is_available():
        return "cpu"
    if int(gpu) >= torch.cuda.device_count():
        raise UserError(f"-g/--gpu {gpu}: only {torch.cuda.device_count()} GPU(s) visible")
    return f"cuda:{gpu}"


def parse_args(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    preset = PRESETS[args.dataset]
    pick = lambda value, default: default if value is None else value  # noqa: E731
    data_dir = args.data_dir or DATA_ROOT / args.dataset
    linear = args.train_mode == "linear_fixed_features"
    epochs = pick(args.epochs, LINEAR_EPOCHS if linear else preset.epochs)
    if args.search and (args.lr is not None or args.bsize is not None):
        raise UserError("--search sets --lr and --bsize itself; give the grids with --search-lrs / --search-bsizes")
    out = args.out or REPO_ROOT / "runs" / f"{args.dataset}_{args.loss}_s{args.seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    if not 0.0 < args.threshold < 1.0:
        raise UserError(f"--threshold must be in (0, 1), got {args.threshold}")
    return Config(
        dataset=args.dataset,
        loss=args.loss,
        model=pick(args.model, preset.model),
        seed=args.seed,
        device=_device(args.gpu),
        epochs=epochs,
        bsize=pick(args.bsize, preset.bsize),
        lr=pick(args.lr, preset.lr),
        patience=args.patience,
        num_workers=pick(args.num_workers, preset.num_workers),
        pretrained=not args.no_pretrained and BACKBONES[pick(args.model, preset.model)].has_pretrained,
        val_set_variant=args.val_set_variant,
        threshold=args.threshold,
        data_dir=data_dir,
        image_root=args.image_root or data_dir / preset.image_root,
        out=out,
        hyper=LossHyper(
            alpha=pick(args.alpha, preset.alpha),
            beta=pick(args.beta, preset.beta),
            warmup_epochs=pick(args.warmup_epochs, preset.warmup_epochs),
            ls_coef=args.ls_coef,
            expected_pos=pick(args.expected_pos, preset.expected_pos),
            epochs=epochs,
        ),
        train_mode=args.train_mode,
        linear_epochs=args.linear_epochs,
        search=args.search,
        search_lrs=tuple(args.search_lrs),
        search_bsizes=tuple(args.search_bsizes),
    )
