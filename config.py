"""The run configuration: one frozen, typed `Config` (with its `LossHyper`), built by `cli.py`.

At the bottom of the import graph (it reads only `presets` and `errors`), so every
layer can take `cfg: Config`. `to_dict` / `from_dict` are what config.json and the
checkpoints hold.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from errors import UserError
from presets import DEFAULT_CLIP_MODEL, DEFAULT_PROMPT, SEARCH_BSIZES, SEARCH_LRS

# The values a setting takes (the flags' choices), here rather than beside the code that runs them, so that
# the flags are read without importing it (torch)
DECODERS = ("pil", "gpu")  # device_decode.py
AMP_MODES = ("off", "bf16")  # training/speed.py: AMP_DTYPES
OPTIMIZERS = ("adam",)  # training/recipe.py
SCHEDULES = ("none", "onecycle")
TRAIN_SCOPES = ("all", "layer4-head")
PSEUDO_LABELS = ("damp", "off")  # methods/aevlp/gpr.py
DAMP_NORMS = ("imagenet", "clip")  # methods/aevlp/damp.py
MAX_GRID = 6  # DAMP: a sample's crop flips are bits of its view index (int64): 2^(g^2 + 2) x N must fit
TEXT_GRAPHS = ("random", "off")  # methods/aevlp/text_graph.py


@dataclass(frozen=True)
class LossHyper:
    """Every loss hyperparameter the CLI exposes; each loss reads the ones it names."""

    alpha: float = 0.1
    beta: float = 0.2
    warmup_epochs: int = 2
    ls_coef: float = 0.1
    expected_pos: float = 2.9
    epochs: int = 10
    # VLPL (methods/vlpl): pseudo-label rule and loss weights, the reference's values
    temp: float = 0.01
    pl_threshold: float = 0.3
    partial: float = 0.0
    beta_pos: float = 0.7
    beta_neg: float = 0.0
    gamma_pos: float = 2.0
    gamma_unknown: float = 4.0
    gamma_neg: float = 4.0
    # Large-Loss (methods/large_loss.py): percentage points the clean rate falls per epoch;
    # None: the scheme's own default
    delta_rel: float | None = None
    # PU-MLC (methods/pu): adaptive temperature, re-balance exponent, MixUp regulariser
    pu_alpha: float = 1.0
    pu_gamma: float = 0.55
    mix_alpha: float = 0.3
    reg_weight: float = 1.0
    # GR / GPR schedules (methods/gr.py), in the GR authors' order: beta = (w0, wT, b0, bT) of
    # k = sigmoid(w p + b), alpha = (mu0, sigma0, muT, sigmaT) of v, then (q2, q3)
    gr_beta: tuple[float, ...] = (0.0, 2.0, -2.0, -2.0)
    gr_alpha: tuple[float, ...] = (0.5, 2.0, 0.8, 0.5)
    gr_q2q3: tuple[float, ...] = (0.01, 1.0)
    # AEVLP (methods/aevlp): the GPR loss and DAMP's pseudo-labels; the authors' defaults of their config.py
    # (the benchmarks' own values: presets.AEVLP_SETTINGS)
    pseudo_labels: str = "damp"  # or "off": GR + the expected-positive regulariser
    gpr_lam: tuple[float, ...] = (0.8, 0.3)  # (lambda1, lambda2): a pseudo-positive's weight lies in [lambda2, lambda1]
    gpr_rho: float = 0.9
    gpr_reg: float = 0.001
    damp_grid: int = 4
    damp_temp: float = 0.01
    damp_eta: float = 0.1
    damp_threshold: float = 0.5
    damp_top_k: int = 3
    damp_neg_ratio: float = 0.1
    damp_norm: str = "imagenet"  # the CLIP input's mean/std: "imagenet" (the authors') or "clip"
    text_graph: str = "random"  # or "off"
    text_graph_seed: int = 0
    text_graph_topk: int | None = None  # None: every class
    text_graph_reweight: float = 0.2
    relation: str | None = None  # a (C, C) .npy relation matrix (absolute path); None: from the class text embeddings

    def __post_init__(self):
        for f in dataclasses.fields(self):  # config.json holds the tuples as JSON lists
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))


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
    pretrained_weights: Path | None = None  # local checkpoint for the backbone
    clip_model: str = DEFAULT_CLIP_MODEL  # open_clip name or JSON config (VLPL scorer, clip_vision)
    clip_weights: Path | None = None
    text_features: Path | None = None  # (C, D) class embeddings instead of the text tower
    prompt_template: str = DEFAULT_PROMPT
    train_mode: str = "end_to_end"  # presets.TRAIN_MODES
    linear_epochs: int = 25  # linear phase of linear_init
    search: bool = False
    search_lrs: tuple[float, ...] = SEARCH_LRS
    search_bsizes: tuple[int, ...] = SEARCH_BSIZES
    deterministic: bool = False  # PyTorch's deterministic algorithms (GPU runs; CPU runs are already)
    skip_bad_images: bool = False  # skip unreadable training images (counted in results.json)
    # Linear modes: feature files given by flag (default: <data_dir>/{train,val}_features_<model>.npy).
    train_features: Path | None = None
    test_features: Path | None = None
    # Speed (flags.py's speed group, --fast): each changes the numbers slightly, so off by default.
    decode: str = "pil"  # "pil": PIL in the loader workers (the references'); "gpu": torchvision.io on the run's device
    amp: str = "off"  # "bf16": autocast of the forward (the loss stays fp32)
    channels_last: bool = False  # NHWC memory format for convolutional backbones
    compile: bool = False  # torch.compile the model
    fast: bool = False  # --fast was given: on CUDA it set decode, amp and channels_last; on a CPU nothing
    # The final layer's learning rate relative to --lr (Kim et al.'s x10 for LL-*, GR)
    classifier_lr_mult: float = 1.0
    # How this process was started, not what the run is: left out of config.json.
    resume: bool = False  # continue the run in `out` from its last.pt
    eval_only: Path | None = None  # score this checkpoint on val and test, train nothing
    # Training recipe (training/recipe.py; PU-MLC's, Yuan et al. 2024), all off by default
    optimizer: str = "adam"
    weight_decay: float = 0.0  # Adam's coupled L2
    sched: str = "none"  # "onecycle": stepped every iteration
    sched_epochs: int = 0  # OneCycle's length in epochs (--epochs unless given); 0 without a schedule
    ema: float = 0.0  # decay of the weight EMA; 0: none
    lgconv: bool = False  # PU-MLC's local-global convolution around every 3x3 conv of a ResNet
    head: str = "linear"  # what turns the backbone's feature map into logits (nets/heads.py)
    boost_alpha: float | None = None  # --head boostlu: the factor of the positive CAM values
    word_vectors: Path | None = None  # (C, D) class word vectors of the ssgrl head
    freeze_bn: bool = False  # every BatchNorm in eval mode while training (the authors' recipe)
    train_scope: str = "all"  # "layer4-head": the stem and layer1-3 frozen, except LGConv's global branches
    crop_size: int | None = None  # the image side the model sees; None: the backbone's own
    scale_size: int | None = None  # PU-MLC's multi-scale crop from this square resize; None: plain resize
    preset: str | None = None  # the --preset the flags came from (presets.RUN_PRESETS), for the record
    # Also report the best test mAP over epochs and weights, chosen on the test set as PU-MLC's code does
    # (never used to select anything)
    report_test_oracle: bool = False
    # torchrun (training/distributed.py): bsize is the global batch; per_gpu_bsize, when given, made it
    # per_gpu_bsize x the processes the run started on; sync_bn: SyncBatchNorm across the processes
    per_gpu_bsize: int | None = None
    sync_bn: bool = False
    # Also stop when val mAP falls more than this many points below the best (AEVLP's rule); 0: off
    stop_drop: float = 0.0

    def __post_init__(self):
        # Saved as absolute paths, so that --resume and --eval-only work from any directory.
        for name in _PATH_FIELDS:
            if (value := getattr(self, name)) is not None:
                object.__setattr__(self, name, Path(value).absolute())

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()
                if k not in _INVOCATION_FIELDS}

    @classmethod
    def from_dict(cls, saved: dict, source: Path, **changes) -> "Config":
        """The config a run saved (config.json or a checkpoint), with `changes` applied."""
        names = {f.name for f in dataclasses.fields(cls)} - _INVOCATION_FIELDS
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        if missing := sorted(required - set(saved)):
            raise UserError(f"{source} lacks {', '.join(missing)}: it was written by another version of spml")
        if unknown := sorted(set(saved) - names):
            raise UserError(f"{source} has unknown settings {', '.join(unknown)}: it was written by another version of spml")
        values = {k: Path(v) if k in _PATH_FIELDS and v is not None else v for k, v in saved.items()}
        values.update({k: tuple(saved[k]) for k in ("search_lrs", "search_bsizes") if k in saved})  # JSON lists
        values["hyper"] = LossHyper(**saved["hyper"])
        return cls(**{**values, **changes})


def with_defaults(saved: dict) -> dict:
    """A saved config (config.json, a checkpoint) with every setting it predates at its default:
    the behaviour the run had (each new setting defaults to the behaviour before it existed)."""
    filled = {f.name: f.default for f in dataclasses.fields(Config)
              if f.default is not dataclasses.MISSING and f.name not in _INVOCATION_FIELDS} | saved
    if isinstance(saved.get("hyper"), dict):
        filled["hyper"] = dataclasses.asdict(LossHyper()) | saved["hyper"]
    return filled


_INVOCATION_FIELDS = {"resume", "eval_only"}
_PATH_FIELDS = {"data_dir", "image_root", "out", "pretrained_weights", "clip_weights", "text_features", "train_features",
                "test_features", "word_vectors"}
