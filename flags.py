"""Every flag of main.py: its name, type, range and help (the argparse parser).

Choices come from the registries (losses, backbones, decoders, optimisers); numeric
flags are finite and range-checked here, so `cli.py` only turns them into a `Config`.
"""
from __future__ import annotations

import argparse
import math
import textwrap
from pathlib import Path

from config import (
    AMP_MODES,
    DAMP_NORMS,
    DECODERS,
    MAX_GRID,
    OPTIMIZERS,
    PSEUDO_LABELS,
    SCHEDULES,
    TEXT_GRAPHS,
    TRAIN_SCOPES,
    LossHyper,
)
from errors import UserError
from losses import LOSSES
from nets import BACKBONES, BOOST_ALPHA, HEADS
from presets import (
    AEVLP_CLIP_MODEL,
    DEFAULT_CLIP_MODEL,
    DEFAULT_PROMPT,
    LINEAR_EPOCHS,
    PRESETS,
    RUN_PRESETS,
    SEARCH_BSIZES,
    SEARCH_LRS,
    TRAIN_MODES,
    dataset_name,
)


class _Formatter(argparse.HelpFormatter):
    """Help lines never break inside a flag name (`--text-graph-topk`), so a preset's expansion copies as it is."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit code 2 via main, not usage + message
        raise UserError(message)


def _number(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a finite `kind` within [low, high] (open ends where asked); NaN and inf are refused."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if (low is not None and (value <= low if low_open else value < low)) or \
                (high is not None and (value >= high if high_open else value > high)):
            raise argparse.ArgumentTypeError(f"must be {_range_text(low, high, low_open, high_open)}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _scale_size(text: str) -> int | None:
    """--scale-size: a side of at least 2 px, or 0 for none (the off form beside a preset that sets one)."""
    value = _number(int, 0, None)(text)
    if value == 1:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or >= 2, got {text}")
    return value or None


def _range_text(low, high, low_open, high_open) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


_finite = _number(float)
_positive_int = _number(int, 0, low_open=True)
_non_negative_int = _number(int, 0)
_positive_float = _number(float, 0.0, low_open=True)
_non_negative_float = _number(float, 0.0)
_fraction = _number(float, 0.0, 1.0, high_open=True)  # [0, 1)
_seed = _number(int, 0, 2**32 - 1)  # NumPy's seed range


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description="Train and evaluate a single-positive multi-label classifier.", formatter_class=_Formatter)
    loss_help = "; ".join(f"{name}: {entry.help}" for name, entry in LOSSES.items())
    p.add_argument("-d", "--dataset", default="digits", type=dataset_name,
                   help=f"a benchmark ({', '.join(sorted(PRESETS))}), or the name of a dataset of your own in "
                        f"--data-dir, run with neutral defaults (default: digits)")
    p.add_argument("--preset", choices=sorted(RUN_PRESETS),
                   help="a published command in one flag; flags given beside it override its values (every switch has an off "
                        "form: --no-lgconv, --ema 0, --scale-size 0, ...), and --dataset, --head, --sched or a batch "
                        "flag given beside it drops the preset's flags that served its own value: "
                        + "; ".join(f"{name}: {preset.help} ({' '.join(preset.flags)})"
                                    for name, preset in RUN_PRESETS.items()))
    p.add_argument("-l", "--loss", default=_default_loss(), choices=list(LOSSES), help=loss_help)
    p.add_argument("-g", "--gpu", default="0", help="GPU index, or 'cpu'; runs on the CPU, saying so, when the machine has no CUDA; "
                   "under torchrun each process takes the GPU of its LOCAL_RANK and only -g cpu counts (default: 0)")
    p.add_argument("-s", "--seed", type=_seed, default=0, help="PyTorch seed (default: 0)")
    p.add_argument("-m", "--model", choices=sorted(BACKBONES), help="backbone (default: the dataset's, resnet50 for the benchmarks)")
    p.add_argument("--no-pretrained", action="store_true", help="random initialisation instead of ImageNet weights")
    p.add_argument("--pretrained-weights", type=Path, help="local checkpoint (state dict) to initialise the backbone with")
    p.add_argument("--epochs", type=_positive_int, help="training epochs (default: 10)")
    p.add_argument("--bsize", type=_positive_int,
                   help="batch size; under torchrun the global batch, split among the processes (default: per dataset)")
    p.add_argument("--per-gpu-bsize", type=_positive_int, metavar="N",
                   help="batch size per process, for recipes that define it so (PU-MLC: 35 per GPU x 2): the global "
                        "batch is N x the processes torchrun starts; excludes --bsize")
    p.add_argument("--lr", type=_positive_float, help="Adam learning rate (default: per dataset)")
    p.add_argument("--patience", type=_non_negative_int,
                   help="stop after this many epochs without a val mAP gain; 1 is the EM/APL code's rule, "
                        "0 never stops early (Cole, VLPL) (default: 1; 0 for EM_PL* and linear_fixed_features)")
    p.add_argument("--stop-drop", type=_non_negative_float, default=0.0, metavar="POINTS",
                   help="also stop when val mAP falls more than POINTS below the best so far (AEVLP's rule: 2); "
                        "0: off (default: 0)")
    p.add_argument("--num-workers", type=_non_negative_int, help="data loading processes (default: per dataset)")
    p.add_argument("--val-set-variant", choices=("clean", "observed"), default="clean",
                   help="score val on its full labels, or on its observed positives only (default: clean)")
    p.add_argument("--threshold", type=_number(float, 0.0, 1.0, True, True), default=0.5, help="score threshold of CF1/OF1 (0.75 is fair for EM models)")
    p.add_argument("--data-dir", type=Path, help="dataset folder (default: data/<dataset>; digits is built there on first use)")
    p.add_argument("--image-root", type=Path, help="image folder (default: the dataset's, inside --data-dir)")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<dataset>_<loss>_s<seed>_<time>); never overwritten")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: BatchNorm statistics over the global batch "
                        "(torch.nn.SyncBatchNorm); no effect in one process")
    p.add_argument("--deterministic", action="store_true",
                   help="use PyTorch's deterministic algorithms (GPU runs: slower, bit-reproducible; CPU runs already are)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable or truncated images out of every pass (training, scoring, evaluation), "
                        "each named once and listed in results.json (default: stop with the image's path)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue a killed run from its last completed epoch, with its saved configuration")
    p.add_argument("--eval-only", type=Path, metavar="CHECKPOINT",
                   help="score a checkpoint (last.pt or best.pt) on val and test; writes eval_<name>.json beside it")
    p.add_argument("--train-mode", choices=TRAIN_MODES, default="end_to_end",
                   help="end_to_end; linear_fixed_features: a linear layer on the features cached by "
                        "python -m preproc.extract_features (25 epochs, no early stop, as Cole et al.); linear_init: "
                        "that linear phase (--linear-epochs), then end-to-end fine-tuning (--epochs) (default: end_to_end)")
    p.add_argument("--train-features", type=Path, metavar="NPY",
                   help="linear modes: features of the official train images, one row per formatted_train_images.npy "
                        "row (default: <data-dir>/train_features_<model>.npy)")
    p.add_argument("--test-features", type=Path, metavar="NPY",
                   help="linear modes: features of the test images (official val), one row per formatted_val_images.npy "
                        "row (default: <data-dir>/val_features_<model>.npy)")
    p.add_argument("--linear-epochs", type=_positive_int, default=LINEAR_EPOCHS,
                   help=f"epochs of linear_init's linear phase (default: {LINEAR_EPOCHS})")
    p.add_argument("--search", action="store_true",
                   help="run the lr x batch-size grid, one run folder each under --out, select by val mAP")
    p.add_argument("--search-lrs", type=_positive_float, nargs="+", default=list(SEARCH_LRS),
                   help=f"learning rates of --search (default: {' '.join(f'{v:g}' for v in SEARCH_LRS)})")
    p.add_argument("--search-bsizes", type=_positive_int, nargs="+", default=list(SEARCH_BSIZES),
                   help=f"batch sizes of --search (default: {' '.join(map(str, SEARCH_BSIZES))})")
    hp = p.add_argument_group("loss hyperparameters (defaults: per dataset, as published by Zhou et al. 2022 and Cole et al. 2021)")
    hp.add_argument("--alpha", type=_non_negative_float, help="EM weight of the unknown-label entropy")
    hp.add_argument("--beta", type=_non_negative_float, help="APL weight of the soft pseudo-negatives")
    hp.add_argument("--warmup-epochs", type=_non_negative_int,
                    help="epochs before pseudo-labelling starts (default: per dataset, shortened to --epochs - 1 for "
                         "shorter runs)")
    hp.add_argument("--ls-coef", type=_fraction, default=0.1, help="label-smoothing coefficient (default: 0.1)")
    hp.add_argument("--expected-pos", type=_positive_float, help="expected positives per image (EPR, ROLE)")
    vl = p.add_argument_group("VLPL pseudo-labels (EM_PL, EM_PL_ASL) and CLIP models")
    vl.add_argument("-t", "--temp", type=_positive_float, default=0.01, help="softmax temperature of the CLIP scores (default: 0.01)")
    vl.add_argument("-th", "--pl-threshold", type=_fraction, default=0.3, help="CLIP score above which a label is pseudo-positive (default: 0.3)")
    vl.add_argument("-p", "--partial", type=_fraction, default=0.0, help="fraction of classes, lowest CLIP scores, made pseudo-negative (default: 0)")
    vl.add_argument("--beta-pos", type=_non_negative_float, default=0.7, help="EM_PL weight of pseudo-positives (default: 0.7)")
    vl.add_argument("--beta-neg", type=_non_negative_float, default=0.0, help="EM_PL weight of pseudo-negatives; 0 leaves them out, as the reference (default: 0)")
    vl.add_argument("--gamma-pos", type=_non_negative_float, default=2.0, help="EM_PL_ASL focusing of positives (default: 2)")
    vl.add_argument("--gamma-unknown", type=_non_negative_float, default=4.0, help="EM_PL_ASL focusing of unknown labels (default: 4)")
    vl.add_argument("--gamma-neg", type=_non_negative_float, default=4.0, help="EM_PL_ASL focusing of pseudo-negatives (default: 4)")
    vl.add_argument("--clip-model",
                    help=f"open_clip model name or a JSON model config: the frozen scorer and the clip_vision backbone "
                         f"(default: {DEFAULT_CLIP_MODEL}; {AEVLP_CLIP_MODEL} for GPR)")
    vl.add_argument("--clip-weights", type=Path, help="local open_clip checkpoint for --clip-model (default: OpenAI weights from open_clip's cache)")
    vl.add_argument("--text-features", type=Path, help="(num_classes, D) .npy class text embeddings (VLPL's *text_feature.npy) instead of prompts")
    vl.add_argument("--prompt-template", default=DEFAULT_PROMPT, help=f"class prompt for the CLIP text tower (default: {DEFAULT_PROMPT!r})")
    sp = p.add_argument_group("speed on a GPU (each changes the numbers slightly; the default is the references' "
                              "PIL decoding in fp32, so published numbers reproduce)")
    sp.add_argument("--fast", action="store_true",
                    help="the fast preset on CUDA: --decode gpu --amp bf16 --channels-last (a flag given "
                         "explicitly wins); no effect on the CPU")
    sp.add_argument("--decode", choices=DECODERS,
                    help="pil: decode and resize with PIL in the loader workers; gpu: workers only read the files, "
                         "batches are decoded (torchvision.io), resized, flipped and normalised on the run's device "
                         "(default: pil; gpu with --fast on CUDA)")
    sp.add_argument("--amp", choices=AMP_MODES,
                    help="bf16: autocast the forward to bfloat16, the loss in fp32 (default: off; bf16 with --fast on CUDA)")
    sp.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                    help="channels-last memory format for convolutional backbones (default: off; on with --fast on CUDA)")
    sp.add_argument("--compile", action="store_true", help="torch.compile the model (first epoch slower; default: off)")
    ll = p.add_argument_group("Large-Loss (LL-R, LL-Ct, LL-Cp; Kim et al. 2022) and the classifier learning rate")
    ll.add_argument("--delta-rel", type=_number(float, 0.0, 100.0, low_open=True),
                    help="LL-*: percentage points the clean rate falls per epoch "
                         "(default: LL-R 0.5, LL-Ct 0.2, LL-Cp 0.1, the authors' best)")
    ll.add_argument("--classifier-lr-mult", type=_positive_float,
                    help="learning rate of the final layer relative to --lr "
                         "(default: 1; 10 for LL-* and GR, as their authors' code)")
    _aevlp_flags(p)
    pu = p.add_argument_group("PU-MLC loss (-l PU; defaults: the authors' COCO settings, Yuan et al. 2024)")
    pu.add_argument("--pu-alpha", type=_positive_float, default=LossHyper.pu_alpha,
                    help=f"temperature scale: T_c = min(alpha x std of class c's logits over the batch, 1) "
                         f"(default: {LossHyper.pu_alpha:g}; the authors use 2 on VOC)")
    pu.add_argument("--pu-gamma", type=_non_negative_float, default=LossHyper.pu_gamma,
                    help=f"re-balance exponent of the unlabeled term, w_c = mean(q_c)^gamma "
                         f"(default: {LossHyper.pu_gamma:g}; the authors use 0.85 on VOC)")
    pu.add_argument("--mix-alpha", type=_positive_float, default=LossHyper.mix_alpha,
                    help=f"MixUp coefficient lambda ~ Beta(a, a) of the regulariser (default: {LossHyper.mix_alpha:g})")
    pu.add_argument("--reg-weight", type=_non_negative_float, default=LossHyper.reg_weight,
                    help=f"weight of the MixUp regulariser; 0 skips its second forward pass "
                         f"(default: {LossHyper.reg_weight:g})")
    rc = p.add_argument_group("training recipe, with every loss (PU-MLC's: --weight-decay 1e-4 --sched onecycle "
                              "--sched-epochs 80 --ema 0.9997; all off by default)")
    rc.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="optimiser (default: adam)")
    rc.add_argument("--weight-decay", type=_non_negative_float, default=0.0,
                    help="Adam's coupled L2 weight decay on every trainable tensor (default: 0)")
    rc.add_argument("--sched", choices=SCHEDULES, default="none",
                    help="lr schedule: onecycle steps every iteration up to --lr (warm-up 20%%, cosine, "
                         "beta1 0.95 -> 0.85 -> 0.95) (default: none, a constant --lr)")
    rc.add_argument("--sched-epochs", type=_positive_int,
                    help="epochs the onecycle schedule is sized for; training still stops at --epochs, "
                         "as the authors' cut-off of an 80-epoch schedule (default: --epochs)")
    rc.add_argument("--ema", type=_number(float, 0.0, 1.0, high_open=True), metavar="DECAY",
                    help="keep an EMA of the weights (decay per step, e.g. 0.9997); both the regular and the EMA "
                         "weights are scored every epoch and the better on val is kept; 0: none (default: off)")
    rc.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=False,
                    help="run every BatchNorm in eval mode while training too: running statistics never change, "
                         "the affine weights still learn (the authors' recipe) (default: off)")
    rc.add_argument("--report-test-oracle", action=argparse.BooleanOptionalAction, default=False,
                    help="also report the best test mAP over every epoch and both weights (regular, EMA), chosen "
                         "on the test set as PU-MLC's code reports it; labelled as such, never used to select "
                         "(default: off)")
    rc.add_argument("--train-scope", choices=TRAIN_SCOPES, default="all",
                    help="what trains: all, or layer4-head: layer4, the head and (with --lgconv) every global "
                         "branch, with the stem and layer1-3 frozen (BatchNorm statistics included), as the PU-MLC authors "
                         "(ResNets) (default: all)")
    rc.add_argument("--crop-size", type=_positive_int, metavar="PX",
                    help="image side the model sees, at train and test time (default: the backbone's, 448 for "
                         "the ResNets)")
    rc.add_argument("--scale-size", type=_scale_size, metavar="PX",
                    help="PU-MLC's augmentation: resize to PX x PX, crop a random square of side PX, PX-64, ... "
                         "down to PX/2, resize it to --crop-size, flip; every resize bicubic, at test time too "
                         "(the authors: 512); 0: off (default: off, a plain resize)")
    bb = p.add_argument_group("PU-MLC backbone (Yuan et al. 2024)")
    bb.add_argument("--lgconv", action=argparse.BooleanOptionalAction, default=False,
                    help="wrap every 3x3 conv of a ResNet backbone with a parallel global branch that starts near "
                         "zero (the local-global convolution), after the pretrained weights are loaded")
    hd = p.add_argument_group("the head: what turns the backbone's feature map into logits")
    hd.add_argument("--head", choices=tuple(HEADS), default="linear",
                    help="; ".join(f"{name}: {entry.help}" for name, entry in HEADS.items()) + " (default: linear)")
    hd.add_argument("--boost-alpha", type=_positive_float, metavar="ALPHA",
                    help=f"--head boostlu: the factor of the positive class-activation values "
                         f"(default: {BOOST_ALPHA:g}, the authors')")
    hd.add_argument("--word-vectors", type=Path, metavar="NPY",
                    help="(num_classes, D) .npy of class word vectors in class order, for --head ssgrl")
    return p


def _aevlp_flags(p: argparse.ArgumentParser) -> None:
    ae = p.add_argument_group(
        "GR schedule and AEVLP (-l GPR: GPR loss + DAMP pseudo-labels, Tran et al. ICCV 2025); defaults: the GR "
        "authors' for GR; for GPR the AEVLP authors' per benchmark (see --preset aevlp-*), on digits and datasets "
        "of your own their config.py's, shown here")
    ae.add_argument("--gr-beta", type=_finite, nargs=4, metavar=("W0", "WT", "B0", "BT"),
                    help="GR, GPR: the soft pseudo-label k(p) = sigmoid(w p + b), w from W0 toward WT and b from B0 "
                         "toward BT over the epochs (the GR authors' --beta) (default: 0 2 -2 -2)")
    ae.add_argument("--gr-alpha", type=_finite, nargs=4, metavar=("MU0", "SIGMA0", "MUT", "SIGMAT"),
                    help="GR, GPR: the weight v(p) = exp(-(p - mu)^2 / 2 sigma^2), mu from MU0 to MUT and sigma from "
                         "SIGMA0 to SIGMAT > 0 (the GR authors' --alpha) (default: 0.5 2 0.8 0.5)")
    ae.add_argument("--gr-q2q3", type=_positive_float, nargs=2, metavar=("Q2", "Q3"),
                    help="GR, GPR: exponents of the robust losses toward 1 and toward 0 (default: 0.01 1)")
    ae.add_argument("--pseudo-labels", choices=PSEUDO_LABELS,
                    help="GPR: damp, DAMP's CLIP pseudo-positives; off, GR + the expected-positive regulariser "
                         "(default: damp)")
    ae.add_argument("--gpr-lam", type=_number(float, 0.0, 1.0), nargs=2, metavar=("LAMBDA1", "LAMBDA2"),
                    help="GPR: a pseudo-positive's weight 1 - v is kept in [LAMBDA2, LAMBDA1] (default: 0.8 0.3)")
    ae.add_argument("--gpr-rho", type=_number(float, 0.0, 1.0),
                    help="GPR: a pseudo-positive's target, rho (-log p) + (1 - rho)(-log(1 - p)) (default: 0.9)")
    ae.add_argument("--gpr-reg", type=_non_negative_float,
                    help="GPR: weight of the expected-positive regulariser (--expected-pos) (default: 0.001)")
    ae.add_argument("--damp-grid", type=_number(int, 1, MAX_GRID), metavar="G",
                    help=f"DAMP: CLIP scores the whole image and the G x G tiles of a grid, 1 to {MAX_GRID} "
                         f"(default: 4)")
    ae.add_argument("--damp-temp", type=_positive_float, help="DAMP: softmax temperature of the CLIP cosines (default: 0.01)")
    ae.add_argument("--damp-eta", type=_number(float, 0.0, 1.0),
                    help="DAMP: a class takes its best tile's score if above min(eta, the observed positive's "
                         "whole-image score), else its worst tile's (default: 0.1)")
    ae.add_argument("--damp-threshold", type=_number(float, 0.0, 1.0),
                    help="DAMP: score from which a top-k class is pseudo-positive (default: 0.5)")
    ae.add_argument("--damp-top-k", type=_positive_int, help="DAMP: at most this many pseudo-positives per image (default: 3)")
    ae.add_argument("--damp-neg-ratio", type=_fraction,
                    help="DAMP: fraction of classes, lowest by whole-image and mean-tile score, never pseudo-positive "
                         "(default: 0.1)")
    ae.add_argument("--damp-norm", choices=DAMP_NORMS,
                    help="DAMP: mean/std of the CLIP input; imagenet as the authors (their thresholds were tuned on "
                         "it), or CLIP's own (default: imagenet)")
    ae.add_argument("--text-graph", choices=TEXT_GRAPHS,
                    help="DAMP: random, the authors' frozen random graph network over the class text embeddings "
                         "(seeded here); off, the plain embeddings (default: random)")
    ae.add_argument("--text-graph-seed", type=_seed, help="DAMP: seed of the text graph's weights (default: 0)")
    ae.add_argument("--text-graph-topk", type=_positive_int, metavar="K",
                    help="DAMP: neighbours per class in the text graph, itself included (default: every class)")
    ae.add_argument("--text-graph-reweight", type=_number(float, 0.0, 1.0),
                    help="DAMP: the text graph's weight of the neighbours, 1 - it of the class itself (default: 0.2)")
    ae.add_argument("--relation", type=Path, metavar="NPY",
                    help="DAMP: (num_classes, num_classes) .npy relation matrix of the text graph, e.g. the authors' "
                         "data/relation/relation+<dataset>.npy (default: cosines of the class text embeddings)")


def _default_loss() -> str:
    return "EM_APL" if "EM_APL" in LOSSES else "EM"
