"""The command line: parsed flags (flags.py) -> one frozen, typed `Config` (config.py).

Flags mirror the reference repos (`-d -l -g -s -m`); every default that depends
on the dataset (batch size, lr, alpha, ...) comes from `presets.py` unless the
flag is given; loss and backbone choices come from their registries. Cross-field
checks raise `UserError` naming the flag and value.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import time
from pathlib import Path

from config import Config, LossHyper
from errors import UserError
from fileio import read_json
from flags import build_parser
from losses import LOSSES
from models import BACKBONES, BOOST_ALPHA, HEADS
from preflight import existing_file, existing_folder, new_run_folder, writable_folder
from preset_command import check_preset_labels, with_preset
from presets import (
    DEFAULT_CLIP_MODEL,
    LINEAR_EPOCHS,
    PRESETS,
    REPO_ROOT,
    custom_preset,
    dataset_dir,
    how_to_prepare,
    preset_of,
)
from training.checkpoint import load_checkpoint
from training.distributed import under_torchrun, world
from training.speed import check_amp

log = logging.getLogger(__name__)

# The only flags that may accompany --resume / --eval-only: where and how fast to run, not what.
_RESUME_FLAGS = {"resume", "gpu", "num_workers"}
_EVAL_FLAGS = {"eval_only", "gpu", "num_workers", "data_dir", "image_root"}


def _check_image_options(cfg: Config) -> None:
    """The recipe's image and scope options need images (and a ResNet for the scope), or they would do nothing."""
    if cfg.train_mode == "linear_fixed_features":
        given = [flag for flag, value in (("--crop-size", cfg.crop_size), ("--scale-size", cfg.scale_size))
                 if value is not None] + (["--train-scope"] if cfg.train_scope != "all" else [])
        if given:
            raise UserError(f"{' and '.join(given)} act on images or on the backbone, which "
                            f"--train-mode linear_fixed_features never trains; drop them")
    if cfg.scale_size is not None and cfg.decode == "gpu":
        raise UserError("--scale-size's multi-scale crop runs in the PIL loader workers: pass --decode pil "
                        "(also with --fast)")
    if cfg.train_scope != "all" and not cfg.model.startswith("resnet"):
        raise UserError(f"--train-scope {cfg.train_scope} trains a ResNet's layer4 and head; -m {cfg.model} has no "
                        f"layer4: use -m resnet18/resnet50/resnet101, or --train-scope all")


def _check_gr_ranges(hp: LossHyper) -> None:
    """The GR / GPR ranges whose parts constrain each other."""
    if min(hp.gr_alpha[1], hp.gr_alpha[3]) <= 0:
        raise UserError(f"--gr-alpha {' '.join(f'{v:g}' for v in hp.gr_alpha)}: the widths SIGMA0 and SIGMAT of "
                        f"v(p) must be > 0")
    if hp.gpr_lam[1] > hp.gpr_lam[0]:
        raise UserError(f"--gpr-lam {hp.gpr_lam[0]:g} {hp.gpr_lam[1]:g}: LAMBDA2 bounds a pseudo-positive's weight "
                        f"from below and LAMBDA1 from above; pass LAMBDA1 >= LAMBDA2")


def _speed_settings(args: argparse.Namespace, device: str) -> dict:
    """--fast and the speed flags -> the Config fields; a flag given explicitly wins over --fast."""
    cuda = device.startswith("cuda")
    fast = args.fast
    settings = {
        # On a CPU, decoding in the main process is slower than PIL in the workers: --fast is for CUDA only
        "decode": args.decode or ("gpu" if fast and cuda else "pil"),
        "amp": args.amp or ("bf16" if fast and cuda else "off"),
        "channels_last": args.channels_last if args.channels_last is not None else fast and cuda,
        "compile": args.compile,
        "fast": fast,
    }
    if fast and not cuda:
        log.info(f"--fast acts on CUDA only: on {device} it changes nothing (PIL decoding, fp32)")
    try:
        check_amp(settings["amp"], device)
    except ValueError as err:
        fix = "drop --fast or pass --amp off" if fast and args.amp is None else "drop --amp bf16"
        raise UserError(f"--amp bf16: {err}; {fix}") from None
    return settings


def _device(gpu: str) -> str:
    import torch

    if under_torchrun():
        return _torchrun_device(gpu)
    if gpu == "cpu":
        return "cpu"
    if not gpu.isdigit():
        raise UserError(f"-g/--gpu must be a GPU index or 'cpu', got {gpu!r}")
    if not torch.cuda.is_available():
        log.info(f"-g {gpu}: this machine has no CUDA device; running on the CPU (-g cpu says so up front)")
        return "cpu"
    if int(gpu) >= torch.cuda.device_count():
        raise UserError(f"-g/--gpu {gpu}: only {torch.cuda.device_count()} GPU(s) visible")
    return f"cuda:{gpu}"


def _torchrun_device(gpu: str) -> str:
    """Under torchrun each process takes the GPU of its LOCAL_RANK; -g cpu makes them CPU processes."""
    import torch

    here = world()
    if gpu == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        log.info(f"torchrun: this machine has no CUDA device; the {here.size} processes run on the CPU "
                 f"(-g cpu says so up front)")
        return "cpu"
    if here.local_rank >= torch.cuda.device_count():
        raise UserError(f"torchrun: LOCAL_RANK {here.local_rank} but only {torch.cuda.device_count()} GPU(s) "
                        f"visible; start at most {torch.cuda.device_count()} processes per node (--nproc_per_node)")
    log.info(f"torchrun: {here.size} processes, each on the GPU of its LOCAL_RANK; -g {gpu} is ignored")
    return f"cuda:{here.local_rank}"


def _check_world(cfg: Config) -> None:
    """What a run on torchrun's processes needs, before anything is written."""
    here = world()
    if not here.distributed:
        if cfg.sync_bn:
            log.info("--sync-bn: one process, nothing to synchronise; it acts under torchrun only")
        return
    for bsize in cfg.search_bsizes if cfg.search else (cfg.bsize,):
        if bsize % here.size:
            raise UserError(f"--bsize {bsize} is the global batch, split among the {here.size} processes: it must be "
                            f"a multiple of {here.size} (or give the batch per process with --per-gpu-bsize)")
    if cfg.sync_bn and not cfg.device.startswith("cuda"):
        raise UserError("--sync-bn synchronises BatchNorm across GPUs (torch.nn.SyncBatchNorm runs on CUDA only); "
                        "drop it with -g cpu")


def _given_flags(argv: list[str] | None) -> set[str]:
    """Destinations of the flags actually typed: parse again with every default replaced by a marker."""
    parser, unset = build_parser(), object()
    for action in parser._actions:
        action.default = unset
    return {dest for dest, value in vars(parser.parse_args(argv)).items() if value is not unset}


def _saved_config(args: argparse.Namespace, argv: list[str] | None) -> Config:
    """--resume / --eval-only: the run's own configuration; refuses flags that would change what it is."""
    if args.resume and args.eval_only:
        raise UserError("--resume and --eval-only exclude each other: pass one")
    flag, allowed = ("--resume", _RESUME_FLAGS) if args.resume else ("--eval-only", _EVAL_FLAGS)
    if extra := sorted(_given_flags(argv) - allowed):
        shown = ", ".join("--" + dest.replace("_", "-") for dest in extra)
        keep = ", ".join("--" + dest.replace("_", "-") for dest in sorted(allowed))
        raise UserError(f"{flag} uses the run's saved configuration; drop {shown} (only {keep} may be given)")
    if args.resume:
        existing_folder("--resume", args.resume, "the folder of a run started by main.py")
        writable_folder("--resume", args.resume)
        source = args.resume / "config.json"
        if not source.is_file():
            raise UserError(f"--resume {args.resume}: no config.json there; pass the folder of a run started by main.py")
        saved = read_json(source, "the run's")
    else:
        source = args.eval_only
        saved = load_checkpoint(args.eval_only)["config"]
    changes: dict = {"resume": args.resume is not None, "eval_only": args.eval_only}
    if args.resume:
        changes["out"] = args.resume  # the folder may have been moved since
    given = vars(args)
    for key in ("num_workers", "data_dir", "image_root"):
        if given.get(key) is not None:
            changes[key] = given[key]
    existing_folder("--data-dir", given.get("data_dir"), "the folder holding the dataset the checkpoint was trained on")
    existing_folder("--image-root", given.get("image_root"), "the folder the image paths are relative to")
    if given.get("data_dir") is not None and given.get("image_root") is None:
        changes["image_root"] = given["data_dir"] / preset_of(saved["dataset"]).image_root
    gpu = args.gpu if "gpu" in _given_flags(argv) else saved["device"].removeprefix("cuda:")
    changes["device"] = _device(gpu)
    cfg = Config.from_dict(saved, source, **changes)
    _check_world(cfg)
    return cfg


def _check_recipe(args: argparse.Namespace, epochs: int) -> None:
    """The recipe's cross-field rules, before anything is written."""
    if args.sched == "none" and args.sched_epochs is not None:
        raise UserError("--sched-epochs sizes a schedule: add --sched onecycle, or drop --sched-epochs")
    if args.sched != "none" and args.sched_epochs is not None and args.sched_epochs < epochs:
        raise UserError(f"--sched-epochs {args.sched_epochs} is shorter than --epochs {epochs}: the schedule would end "
                        f"before training does; pass --sched-epochs >= {epochs}")
    if (args.sched != "none" or args.ema) and (args.train_mode != "end_to_end" or args.search):
        raise UserError("--sched and --ema apply to end-to-end training only: drop them, or use "
                        "--train-mode end_to_end without --search")


def _check_head(args: argparse.Namespace, model: str) -> None:
    """The head can read what the backbone gives, at the image side it will see, before anything is written."""
    head, backbone = HEADS[args.head], BACKBONES[model]
    if args.head != "linear" and args.train_mode != "end_to_end":
        raise UserError(f"--head {args.head} reads the feature map of a backbone trained end to end; --train-mode "
                        f"{args.train_mode} trains a linear layer on pooled features: use --head linear")
    if head.reads_map and backbone.map_side is None:
        with_map = ", ".join(name for name, entry in sorted(BACKBONES.items()) if entry.map_side is not None)
        raise UserError(f"--head {args.head} reads a spatial feature map and -m {model} has none (it gives a pooled "
                        f"embedding): use --head linear, or a backbone with a map ({with_map})")
    if (args.head == "ssgrl") != (args.word_vectors is not None):
        raise UserError("--head ssgrl and --word-vectors go together: pass both, or neither")
    if args.boost_alpha is not None and args.head != "boostlu":
        raise UserError(f"--boost-alpha scales the class activation maps of --head boostlu, not of --head {args.head}: "
                        f"drop it, or pass --head boostlu")
    if args.crop_size is not None and backbone.map_side is not None:
        side, least = backbone.map_side(args.crop_size), head.min_map_side
        if side < least:
            crop = next(size for size in itertools.count(args.crop_size) if backbone.map_side(size) >= least)
            raise UserError(f"--crop-size {args.crop_size}: the feature map of -m {model} would be {side} x {side} and "
                            f"--head {args.head} reads at least {least} x {least}: pass --crop-size {crop} or more")


def _classifier_lr_mult(args: argparse.Namespace, default: float) -> float:
    """--classifier-lr-mult, or the loss's default; SSGRL has no single final layer for either."""
    mult = default if args.classifier_lr_mult is None else args.classifier_lr_mult
    if args.head != "ssgrl" or mult == 1:
        return mult
    if args.classifier_lr_mult is not None:
        raise UserError(f"--classifier-lr-mult {mult:g} sets the lr of a final linear layer; --head ssgrl has none "
                        f"(its per-class outputs follow a graph network, all trained at --lr by PU-MLC's authors): "
                        f"drop it")
    log.info(f"-l {args.loss} trains a final linear layer at {mult:g} x --lr by default (its authors' lr_mult); "
             f"--head ssgrl has none, so the whole model trains at --lr")
    return 1.0


def available_cores() -> int:
    """The cores this process may run on (a batch job's allocation, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    if args.resume or args.eval_only:
        return _saved_config(args, argv)
    if args.preset is not None:
        args = build_parser().parse_args(with_preset(argv))
    custom = args.dataset not in PRESETS
    data_dir = dataset_dir(args.dataset, args.data_dir).absolute()  # a dataset of one's own needs its folder
    preset = custom_preset(args.dataset) if custom else PRESETS[args.dataset]
    pick = lambda value, default: default if value is None else value  # noqa: E731
    loss_defaults = LOSSES[args.loss].defaults(preset)  # the method's own settings (VLPL), below the flags
    linear = args.train_mode == "linear_fixed_features"
    epochs = pick(args.epochs, LINEAR_EPOCHS if linear else preset.epochs)
    if args.search and (args.lr is not None or args.bsize is not None or args.per_gpu_bsize is not None):
        raise UserError("--search sets --lr and --bsize itself; give the grids with --search-lrs / --search-bsizes")
    if args.bsize is not None and args.per_gpu_bsize is not None:
        raise UserError(f"--bsize {args.bsize} (the global batch) and --per-gpu-bsize {args.per_gpu_bsize} exclude "
                        f"each other: pass one")
    expected_pos = pick(args.expected_pos, preset.expected_pos)
    if expected_pos is None and LOSSES[args.loss].needs_expected_pos:
        raise UserError(f"-l {args.loss} needs --expected-pos on a dataset of your own: the average number of "
                        f"positive labels per image (Cole et al. use each benchmark's, e.g. 2.9 on COCO)")
    _check_recipe(args, epochs)
    warmup = pick(args.warmup_epochs, loss_defaults.get("warmup_epochs", preset.warmup_epochs))
    if args.warmup_epochs is None and 0 < epochs <= warmup and LOSSES[args.loss].warmup_before_end:
        log.info(f"{args.loss}: the warm-up is shortened from {warmup} to {epochs - 1} epoch(s) for a {epochs}-epoch run "
                 f"(--warmup-epochs sets it)")
        warmup = epochs - 1
    if args.data_dir is not None or args.dataset != "digits":  # the embedded digits is built at its default place
        existing_folder("--data-dir", data_dir, f"a formatted dataset folder ({how_to_prepare(args.dataset, data_dir)})")
    existing_folder("--image-root", args.image_root, "the folder the image paths are relative to")
    if args.preset is not None:
        check_preset_labels(args.preset, args.dataset, data_dir)
    for flag, path, what in (("--pretrained-weights", args.pretrained_weights, "a PyTorch state dict file"),
                             ("--clip-weights", args.clip_weights, "an open_clip checkpoint file"),
                             ("--text-features", args.text_features, "a (num_classes, D) .npy file"),
                             ("--train-features", args.train_features, "a (N_official_train, D) .npy file"),
                             ("--test-features", args.test_features, "a (N_test, D) .npy file")):
        existing_file(flag, path, what)
    existing_file("--relation", args.relation, "a (num_classes, num_classes) .npy relation matrix")
    clip_model = pick(args.clip_model, loss_defaults.get("clip_model", DEFAULT_CLIP_MODEL))
    if clip_model.endswith(".json"):
        existing_file("--clip-model", Path(clip_model), "an open_clip model name or a JSON model config file")
    out = args.out or REPO_ROOT / "runs" / f"{args.dataset}_{args.loss}_s{args.seed}_{time.strftime('%Y%m%d-%H%M%S')}"
    new_run_folder(out.absolute())
    model = pick(args.model, preset.model)
    device = _device(args.gpu)
    _check_head(args, model)
    if BACKBONES[model].uses_clip and args.crop_size is not None:
        from methods.vlpl.towers import ClipSpec, image_side

        if args.crop_size != (side := image_side(ClipSpec(clip_model))):
            raise UserError(f"--crop-size {args.crop_size}: -m {model} is the image tower of --clip-model "
                            f"{clip_model}, whose positional embeddings fix its input at {side} px: drop --crop-size")
    existing_file("--word-vectors", args.word_vectors, "a (num_classes, D) .npy of class word vectors")
    if args.lgconv and (not model.startswith("resnet") or args.train_mode != "end_to_end"):
        raise UserError(f"--lgconv wraps the 3x3 convs of a ResNet trained end to end; -m {model} "
                        f"--train-mode {args.train_mode} has none to wrap: use -m resnet18/resnet50/resnet101")
    cfg = Config(
        dataset=args.dataset,
        loss=args.loss,
        model=model,
        seed=args.seed,
        device=device,
        epochs=epochs,
        bsize=args.per_gpu_bsize * world().size if args.per_gpu_bsize else
        pick(args.bsize, loss_defaults.get("bsize", preset.bsize)),
        lr=pick(args.lr, preset.lr),
        patience=pick(args.patience, loss_defaults.get("patience", 0 if linear else 1)),
        # more loader processes than cores only compete for them (and PyTorch warns)
        num_workers=pick(args.num_workers, min(preset.num_workers, available_cores())),
        pretrained=not args.no_pretrained and BACKBONES[model].has_pretrained,
        val_set_variant=args.val_set_variant,
        threshold=args.threshold,
        data_dir=data_dir,
        image_root=args.image_root or data_dir / preset.image_root,
        out=out,
        hyper=LossHyper(
            alpha=pick(args.alpha, preset.alpha),
            beta=pick(args.beta, preset.beta),
            warmup_epochs=warmup,
            ls_coef=args.ls_coef,
            expected_pos=expected_pos if expected_pos is not None else LossHyper.expected_pos,
            epochs=epochs,
            temp=args.temp,
            pl_threshold=args.pl_threshold,
            partial=args.partial,
            beta_pos=args.beta_pos,
            beta_neg=args.beta_neg,
            gamma_pos=args.gamma_pos,
            gamma_unknown=args.gamma_unknown,
            gamma_neg=args.gamma_neg,
            delta_rel=pick(args.delta_rel, loss_defaults.get("delta_rel")),
            pu_alpha=args.pu_alpha,
            pu_gamma=args.pu_gamma,
            mix_alpha=args.mix_alpha,
            reg_weight=args.reg_weight,
            # GR's schedule and AEVLP's settings: the flag, else the method's own default for the dataset
            **{name: pick(getattr(args, name), loss_defaults.get(name, getattr(LossHyper, name)))
               for name in ("gr_beta", "gr_alpha", "gr_q2q3", "pseudo_labels", "gpr_lam", "gpr_rho", "gpr_reg",
                            "damp_grid", "damp_temp", "damp_eta", "damp_threshold", "damp_top_k", "damp_neg_ratio",
                            "damp_norm", "text_graph", "text_graph_seed", "text_graph_topk", "text_graph_reweight")},
            relation=str(args.relation.absolute()) if args.relation else None,
        ),
        deterministic=args.deterministic,
        skip_bad_images=args.skip_bad_images,
        pretrained_weights=args.pretrained_weights,
        clip_model=clip_model,
        clip_weights=args.clip_weights,
        text_features=args.text_features,
        prompt_template=args.prompt_template,
        train_mode=args.train_mode,
        linear_epochs=args.linear_epochs,
        search=args.search,
        search_lrs=tuple(args.search_lrs),
        search_bsizes=tuple(args.search_bsizes),
        train_features=args.train_features,
        test_features=args.test_features,
        **_speed_settings(args, device),
        classifier_lr_mult=_classifier_lr_mult(args, loss_defaults.get("classifier_lr_mult", 1.0)),
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        sched=args.sched,
        sched_epochs=pick(args.sched_epochs, epochs) if args.sched != "none" else 0,
        ema=args.ema or 0.0,
        lgconv=args.lgconv,
        head=args.head,
        boost_alpha=pick(args.boost_alpha, BOOST_ALPHA) if args.head == "boostlu" else None,
        word_vectors=args.word_vectors,
        freeze_bn=args.freeze_bn,
        train_scope=args.train_scope,
        crop_size=args.crop_size,
        scale_size=args.scale_size,
        preset=args.preset,
        report_test_oracle=args.report_test_oracle,
        per_gpu_bsize=args.per_gpu_bsize,
        sync_bn=args.sync_bn,
        stop_drop=args.stop_drop,
    )
    _check_image_options(cfg)
    _check_gr_ranges(cfg.hyper)
    _check_world(cfg)
    if custom:
        log.info(f"{args.dataset}: a dataset of your own, with neutral defaults: batch {cfg.bsize}, lr {cfg.lr:g}, "
                 f"alpha {cfg.hyper.alpha:g}, beta {cfg.hyper.beta:g}, warm-up {cfg.hyper.warmup_epochs}, "
                 f"{cfg.model}, {cfg.num_workers} loader workers, images under {cfg.image_root} (flags override each)")
    return cfg
