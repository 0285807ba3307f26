"""Per-dataset presets (layout on disk, the published hyperparameters) and the run-wide constants.

Batch / lr / alpha / beta / warm-up are Zhou et al. (ECCV 2022), the expected number
of positives (EPR, ROLE) Cole et al. (CVPR 2021). Explicit command-line flags
override every field. This module imports nothing of spml but `errors`: every layer may read it.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from errors import UserError

REPO_ROOT = Path(__file__).resolve().parent
DATA_ROOT = REPO_ROOT / "data"

TRAIN_MODES = ("end_to_end", "linear_fixed_features", "linear_init")
LINEAR_EPOCHS = 25  # Cole et al.'s epochs for the linear modes

# Cole et al.'s hyperparameter grid (--search)
SEARCH_LRS = (1e-2, 1e-3, 1e-4, 1e-5)
SEARCH_BSIZES = (8, 16)

DEFAULT_CLIP_MODEL = "ViT-L-14-336"  # VLPL's openai/clip-vit-large-patch14-336
AEVLP_CLIP_MODEL = "ViT-B-16"  # AEVLP's DAMP scorer (OpenAI weights)
DEFAULT_PROMPT = "a photo of a {}."


@dataclass(frozen=True)
class DatasetPreset:
    name: str
    num_classes: int
    image_root: str  # relative to the dataset folder
    bsize: int
    lr: float
    alpha: float  # EM weight of the unknown-label entropy term
    beta: float  # APL weight of the soft pseudo-negatives
    warmup_epochs: int  # APL starts after this many epochs
    expected_pos: float | None  # expected positives per image (EPR, ROLE); None: must be given (--expected-pos)
    model: str = "resnet50"
    hflip: bool = True  # random horizontal flip at train time
    num_workers: int = 8
    epochs: int = 10


PRESETS: dict[str, DatasetPreset] = {
    p.name: p
    for p in (
        DatasetPreset("pascal", 20, "VOCdevkit/VOC2012/JPEGImages", 8, 1e-5, 0.2, 0.02, 5, 1.5),
        # PU-MLC's VOC 2007 (Yuan et al. 2024). No single-positive hyperparameters are published
        # for it, so batch, lr, alpha, beta and warm-up are pascal's (Zhou et al., VOC 2012).
        # Expected positives: 7,306 positive labels over the 5,011 trainval images, the sum of the
        # VOC 2007 devkit's per-class trainval image counts (difficult objects excluded), which the
        # authors' co-occurrence matrix data/voc_devkit/VOC2007/prob_trainval.npy agrees with.
        DatasetPreset("voc2007", 20, "VOCdevkit/VOC2007/JPEGImages", 8, 1e-5, 0.2, 0.02, 5, 1.46),
        DatasetPreset("coco", 80, ".", 16, 1e-5, 0.1, 0.9, 5, 2.9),
        DatasetPreset("nuswide", 81, "Flickr", 16, 1e-5, 0.1, 0.2, 4, 1.9),
        DatasetPreset("cub", 312, "CUB_200_2011/images", 8, 1e-4, 0.01, 0.4, 3, 31.4),
        # The embedded dataset: a small CNN trained from scratch on 24x24 mosaics,
        # so a larger lr and batch; digits are not mirror-symmetric, so no flip.
        DatasetPreset(
            "digits", 10, "images", 32, 1e-3, 0.1, 0.2, 2, 2.3,
            model="digits_cnn", hflip=False, num_workers=0, epochs=10,
        ),
    )
}


def custom_preset(name: str) -> DatasetPreset:
    """Neutral defaults for a dataset of the user's own (`-d NAME --data-dir DIR`): no benchmark's tuning.

    ResNet-50 at 448 with ImageNet weights, Adam at 1e-4 (the middle of Cole et al.'s
    grid), batch 16, EM's alpha 0.1, APL's beta 0.2 after a 2-epoch warm-up, images
    listed relative to the folder itself; the expected number of positives (EPR, ROLE)
    is the dataset's own and must be given.
    """
    return DatasetPreset(name, 0, ".", bsize=16, lr=1e-4, alpha=0.1, beta=0.2, warmup_epochs=2, expected_pos=None)


def preset_of(name: str) -> DatasetPreset:
    """The benchmark's preset, or the neutral one of a dataset of the user's own."""
    return PRESETS.get(name) or custom_preset(name)


def how_to_prepare(dataset: str | None, data_dir: Path) -> str:
    """The one hint of every "not formatted" error: what makes `data_dir` a formatted folder of `dataset`."""
    if dataset == "digits":
        return f"run `python -m preproc.format_digits --save-path {data_dir}`"
    if dataset in PRESETS:
        return f"see data/{dataset}/README.md to download and format it"
    return (f"write its formatted_{{train,val}}_{{images,labels}}.npy files (the README's \"A dataset of your own\"), "
            f"then run `python -m preproc.generate_observed_labels --dataset {dataset or 'NAME'} --data-dir {data_dir}`")


def dataset_name(text: str) -> str:
    """argparse type of -d/--dataset in every tool: a benchmark, or the name of a dataset of one's own."""
    # it names files and folders (run folders, the CLIP-score cache)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits, '_', '-' and '.' only")
    return text


def dataset_dir(name: str, data_dir: Path | None, flag: str = "-d") -> Path:
    """The folder of dataset `name`: --data-dir, or data/<name> for a benchmark (a dataset of one's
    own has no place of its own, and a benchmark's folder must not be taken for it)."""
    if data_dir is not None:
        return data_dir
    if name not in PRESETS:
        raise UserError(f"{flag} {name} is not one of the benchmarks ({', '.join(sorted(PRESETS))}); for a dataset of "
                        f"your own pass its folder with --data-dir")
    return DATA_ROOT / name


@dataclass(frozen=True)
class RunPreset:
    """A published command in one flag (`--preset NAME`): its flags go before the user's, so any flag given wins."""

    flags: tuple[str, ...]
    labels: dict  # the observed-label protocol its data folder must hold (observed_labels.json)
    help: str


# A preset's flag that serves the value of another (its data paths serve its dataset, its word vectors and
# alpha its head, its schedule length its schedule): given beside the preset with another value, that other
# flag takes these preset flags with it, so that the user's choice stands alone.
PRESET_DEPENDENTS: dict[str, tuple[str, ...]] = {
    "--dataset": ("--data-dir", "--image-root", "--word-vectors", "--expected-pos"),
    "--head": ("--boost-alpha", "--word-vectors"),
    "--sched": ("--sched-epochs",),
    "--bsize": ("--per-gpu-bsize",),  # the two batch flags exclude each other
    "--per-gpu-bsize": ("--bsize",),
}


def _pumlc(dataset: str, data_dir: Path, image_root: Path | None, vectors: Path, per_gpu_bsize: int, lr: float,
           epochs: int, ema: float, pu_alpha: float, pu_gamma: float) -> tuple[str, ...]:
    """PU-MLC's README command (Yuan, Zhang, Huang, ICME 2024) in spml's flags.

    Kept from the authors: ResNet-101 + LGConv + the SSGRL head, the trainable scope,
    frozen BatchNorm, Adam with L2 1e-4, OneCycle sized for 80 epochs and cut off after
    Stop_epoch + 1 epochs, the weight EMA, the 512 -> 448 multi-scale crop, the batch per
    GPU (their 2 GPUs: `torchrun --nproc_per_node 2`), no early stopping. Fixed: the
    model is selected on a val split carved from the train images, not on the test set
    (their number is reported beside it, labelled); the test set keeps its last partial
    batch; a class without an observed positive does not poison the graph. Deviation: the
    loss's batch statistics are over the global batch (theirs: each GPU's), as one process's are.
    """
    images = ("--image-root", str(image_root)) if image_root is not None else ()
    return ("-d", dataset, "--data-dir", str(data_dir), *images, "-l", "PU",
            "-m", "resnet101", "--lgconv", "--head", "ssgrl", "--word-vectors", str(vectors),
            "--train-scope", "layer4-head", "--freeze-bn", "--weight-decay", "1e-4", "--sched", "onecycle",
            "--sched-epochs", "80", "--epochs", str(epochs), "--patience", "0", "--ema", str(ema),
            "--lr", str(lr), "--per-gpu-bsize", str(per_gpu_bsize), "--pu-alpha", str(pu_alpha), "--pu-gamma", str(pu_gamma),
            "--scale-size", "512", "--crop-size", "448", "--num-workers", "8", "--report-test-oracle")


_PUMLC_LABELS = {"protocol": "known_ratio", "known_ratio": 0.1, "seed": 0}

RUN_PRESETS: dict[str, RunPreset] = {
    "pumlc-coco": RunPreset(
        # the formatted every-image files in their own folder, the images those of data/coco
        _pumlc("coco", DATA_ROOT / "coco_every", DATA_ROOT / "coco", DATA_ROOT / "coco" / "vectors.npy",
               per_gpu_bsize=35, lr=1e-4, epochs=41, ema=0.9997, pu_alpha=1.0, pu_gamma=0.55),
        _PUMLC_LABELS, "PU-MLC on COCO-2014 (every image), 10%% of the labels known"),
    "pumlc-voc2007": RunPreset(
        _pumlc("voc2007", DATA_ROOT / "voc2007", None, DATA_ROOT / "voc2007" / "voc07_vector.npy",
               per_gpu_bsize=45, lr=4e-5, epochs=56, ema=0.991, pu_alpha=2.0, pu_gamma=0.85),
        _PUMLC_LABELS, "PU-MLC on VOC-2007, 10%% of the labels known"),
}


def _boostlu(dataset: str) -> tuple[str, ...]:
    """BoostLU's recipe (Kim et al., CVPR 2023: their README and config) with LL-R, their best scheme, in spml's flags.

    ResNet-50 (ImageNet V1) and the boostlu head (alpha 5, at training and test time), Adam
    at lr 1e-5, batch 16 on every dataset, 10 epochs without early stopping, the test mAP of
    the best val epoch. The head's lr x10 and delta_rel are the Large-Loss scheme's own
    defaults (LL-R 0.5, LL-Ct 0.2, LL-Cp 0.1), so `-l LL-Ct` beside the preset runs that scheme.
    """
    return ("-d", dataset, "-l", "LL-R", "-m", "resnet50", "--head", "boostlu", "--boost-alpha", "5",
            "--bsize", "16", "--lr", "1e-5", "--epochs", "10", "--patience", "0")


RUN_PRESETS.update({
    f"boostlu-{dataset}": RunPreset(_boostlu(dataset), {"protocol": "single_positive", "num_pos": 1, "num_neg": 0},
                                    f"BoostLU with LL-R on {name}, single positive labels (head lr x10 and "
                                    f"delta_rel from -l)")
    for dataset, name in (("coco", "COCO"), ("pascal", "VOC 2012"), ("nuswide", "NUS-WIDE"), ("cub", "CUB"))
})


# AEVLP (Tran et al., ICCV 2025): the authors' per-dataset settings (their configs/*.json), as LossHyper
# fields. `-l GPR` on a benchmark takes them as its defaults; --preset aevlp-* spells them out with the protocol.
def _aevlp_settings(beta, q2q3, lam, reg, temp, eta, threshold, top_k, grid, neg_ratio, graph_topk) -> dict:
    return dict(gr_beta=beta, gr_alpha=(0.5, 2.0, 0.8, 0.5), gr_q2q3=q2q3, gpr_lam=lam, gpr_rho=0.9, gpr_reg=reg,
                damp_temp=temp, damp_eta=eta, damp_threshold=threshold, damp_top_k=top_k, damp_grid=grid,
                damp_neg_ratio=neg_ratio, text_graph_topk=graph_topk, text_graph_reweight=0.2)


AEVLP_SETTINGS: dict[str, dict] = {
    "pascal": _aevlp_settings((0.0, 2.0, -2.0, -2.0), (0.01, 1.0), (0.7, 0.4), 0.05, 0.01, 0.0, 0.5, 3, 4, 0.2, 20),
    "coco": _aevlp_settings((0.0, 10.0, -2.0, -8.0), (0.01, 1.0), (0.7, 0.5), 0.001, 0.01, 0.3, 0.5, 3, 4, 0.3, 62),
    "nuswide": _aevlp_settings((0.0, 10.0, -2.0, -8.0), (0.01, 1.0), (0.7, 0.5), 0.001, 0.01, 0.3, 0.6, 3, 4, 0.2, 50),
    "cub": _aevlp_settings((0.0, 10.0, -2.0, -8.0), (0.01, 1.5), (0.8, 0.2), 0.01, 0.1, 0.005, 0.005, 32, 5, 0.2, 312),
}
_AEVLP_EPOCHS_BATCH = {"pascal": (8, 8), "coco": (8, 16), "nuswide": (10, 16), "cub": (10, 8)}


def _flag_values(value) -> list[str]:
    return [f"{v:g}" for v in value] if isinstance(value, tuple) else [f"{value:g}"]


def _aevlp(dataset: str) -> tuple[str, ...]:
    """AEVLP's training command (its scripts/train_<dataset>.sh with configs/<dataset>.json) in spml's flags.

    Kept from the authors: ResNet-50 (ImageNet weights) at 448, Adam at lr 1e-5 with the classifier at x10,
    their epochs and batch, GPR with DAMP's pseudo-labels from CLIP ViT-B/16 on ImageNet-normalised crops,
    the frozen random text graph, and their stopping rule (2 epochs without a val gain, or a fall of more
    than 2 points below the best). Fixed: the text graph is seeded, the rule runs in fp32 from cached scores.
    """
    epochs, bsize = _AEVLP_EPOCHS_BATCH[dataset]
    settings = [(f"--{name.replace('_', '-')}", *_flag_values(value)) for name, value in AEVLP_SETTINGS[dataset].items()]
    return ("-d", dataset, "-l", "GPR", "-m", "resnet50", "--epochs", str(epochs), "--bsize", str(bsize),
            "--lr", "1e-5", "--classifier-lr-mult", "10", "--patience", "2", "--stop-drop", "2",
            "--pseudo-labels", "damp", "--clip-model", AEVLP_CLIP_MODEL, "--damp-norm", "imagenet",
            "--text-graph", "random", "--expected-pos", f"{PRESETS[dataset].expected_pos:g}",
            *(arg for flag in settings for arg in flag))


_SINGLE_POSITIVE_LABELS = {"protocol": "single_positive", "num_pos": 1, "num_neg": 0, "seed": 1200}
RUN_PRESETS.update({
    f"aevlp-{dataset}": RunPreset(_aevlp(dataset), _SINGLE_POSITIVE_LABELS,
                                  f"AEVLP (Tran et al., ICCV 2025) on {title}: GPR loss + DAMP pseudo-labels")
    for dataset, title in (("pascal", "VOC 2012"), ("coco", "COCO 2014"), ("nuswide", "NUS-WIDE"), ("cub", "CUB"))
})
