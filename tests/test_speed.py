"""The speed options: --decode gpu on the CPU against the PIL path (with TorchCodec's and torchvision's
decoders), --amp bf16, --channels-last, the losses read once per window, and the deterministic digits CNN."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cli import parse_args
import device_decode
from datasets import ImageDataset, Split, collate_skipping
from device_decode import CODECS, device_loader, image_codec, jpeg_components
from errors import UserError
from main import main
from models import create_backbone
from preprocess import Preprocess
from training import engine, speed

PRE = Preprocess(24, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CPU = torch.device("cpu")
# On a GPU machine the decoding tests run on CUDA too (nvJPEG), with the bounds that hold for it.
DEVICES = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
# (PIL mode, format) of every kind of file the datasets hold
KINDS = [("RGB", "PNG"), ("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("L", "PNG"), ("RGBA", "PNG")]


def _images(tmp_path, n: int = 12) -> Split:
    """Smooth random images of every kind and of two sizes (bigger than 24: resized)."""
    rng = np.random.RandomState(0)
    paths = []
    for i in range(n):
        mode, fmt = KINDS[i % len(KINDS)]
        size = (64, 48) if i % 2 else (40, 52)
        image = Image.fromarray(rng.randint(0, 255, (6, 8, 3)).astype(np.uint8)).resize(size, Image.BICUBIC)
        path = tmp_path / f"{i}.{fmt.lower()}"
        image.convert(mode).save(path, format=fmt, quality=90)
        paths.append(str(path))
    return Split(np.array(paths), np.eye(n, 5, dtype=np.float32))


def _pil_batches(split: Split, train: bool, flip_views: bool = False, seed: int = 0):
    dataset = ImageDataset(split, PRE.transform(train=train, hflip=train), flip_views=train and flip_views,
                           seed=seed if train else None)
    loader = DataLoader(dataset, batch_size=5, shuffle=train, generator=torch.Generator().manual_seed(seed),
                        collate_fn=collate_skipping)
    return list(loader)


@pytest.fixture(params=list(CODECS))
def codec(request):
    """Each library that decodes for --decode gpu (TorchCodec where installed, torchvision.io)."""
    if request.param == "torchcodec":
        pytest.importorskip("torchcodec.decoders")
    return CODECS[request.param]()


def _device_batches(split: Split, train: bool, flip_views: bool = False, seed: int = 0, device=CPU, codec=None):
    batches = device_loader(split, PRE, device, codec or image_codec(device), batch_size=5, num_workers=0, train=train,
                            hflip=train, flip_views=flip_views, generator=torch.Generator().manual_seed(seed), seed=seed)
    return [(images.cpu(), labels, index) for images, labels, index in batches]


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalised images back to 8-bit grey levels."""
    return x * torch.tensor(PRE.std).view(1, 3, 1, 1) * 255


@pytest.mark.parametrize("device", DEVICES, ids=str)
@pytest.mark.parametrize("train,flip_views", [(False, False), (True, False), (True, True)])
def test_device_decode_matches_the_pil_path(tmp_path, train, flip_views, device, codec):
    """Same shapes, labels, index (flip views too) and flips; pixels within one grey level
    (libjpeg on the CPU; nvJPEG upsamples chroma its own way: a few levels), with either library."""
    split = _images(tmp_path)
    pil = _pil_batches(split, train, flip_views)
    dev = _device_batches(split, train, flip_views, device=device, codec=codec)  # the same flips: drawn per image
    bound = (1.01, 0.3) if device.type == "cpu" else (8.0, 1.0)
    assert len(pil) == len(dev)
    for (a, la, ia), (b, lb, ib) in zip(pil, dev):
        assert a.shape == b.shape == (len(ia), 3, 24, 24) and b.dtype == torch.float32
        assert torch.equal(la, lb) and torch.equal(ia, ib)
        diff = (_pixels(a) - _pixels(b)).abs()
        print(f"{device}: max {diff.max():.2f}, mean {diff.mean():.3f} grey levels from PIL")
        assert diff.max() <= bound[0] and diff.mean() < bound[1]
    if flip_views:
        assert any((ib >= len(split.images)).any() for _, _, ib in dev)


def test_device_decode_flips_are_seeded(tmp_path):
    split = _images(tmp_path, 10)
    def batches(seed):  # the order from the loader's generator, the flips drawn per image from the run's seed
        return _device_batches(split, True, seed=seed)

    first, again, other = batches(3), batches(3), batches(4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_jpeg_components_reads_the_frame_header(tmp_path):
    split = _images(tmp_path, 6)
    found = [jpeg_components(torch.from_numpy(np.fromfile(p, dtype=np.uint8))) for p in split.images]
    assert found == [None, 3, 1, 4, None, None]


def test_same_size_pngs_are_bit_identical_to_pil(small_digits, codec):
    """Digits (24x24 PNGs, a 24 px model): no resize, so the two paths give the same tensors."""
    names = np.load(small_digits / "formatted_train_images.npy")[:8]
    split = Split(np.array([str(small_digits / "images" / n) for n in names]), np.zeros((8, 1), np.float32))
    b = next(iter(device_loader(split, Preprocess(24, (0.5,) * 3, (0.5,) * 3), CPU, codec, 8, 0)))[0]
    a = next(iter(DataLoader(ImageDataset(split, Preprocess(24, (0.5,) * 3, (0.5,) * 3).transform(False, False)),
                             batch_size=8)))[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("damage", ["truncated_jpeg", "truncated_png", "empty"])
def test_unreadable_images_fail_or_are_skipped_as_with_pil(tmp_path, damage, codec):
    split = _images(tmp_path, 6)
    path = split.images[1 if damage == "truncated_jpeg" else 0]
    data = open(path, "rb").read()
    open(path, "wb").write(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(UserError, match=f"cannot read image {path}: .*--skip-bad-images"):
        _device_batches(split, False, codec=codec)
    kept = list(device_loader(split, PRE, CPU, codec, 6, 0, train=True, skip_unreadable=True,
                              generator=torch.Generator().manual_seed(0)))
    (images, labels, index), = kept
    assert len(index) == len(labels) == len(images) == 5 and split.images.tolist().index(path) not in index.tolist()


def test_the_codec_is_torchcodec_where_it_decodes_else_torchvision(monkeypatch):
    def refusing(name: str):
        def make():
            raise ImportError(f"No module named {name!r}")
        return make

    if importlib.util.find_spec("torchcodec") is not None:
        assert image_codec(CPU).name == "torchcodec"
    monkeypatch.setitem(CODECS, "torchcodec", refusing("torchcodec"))
    assert image_codec(CPU).name == "torchvision.io"


def test_decode_gpu_without_a_decoder_is_one_line(monkeypatch):
    def no_gpu():
        raise RuntimeError("Not compiled with GPU support")

    monkeypatch.setattr(device_decode, "CODECS", {"torchcodec": no_gpu, "torchvision": no_gpu})
    with pytest.raises(UserError, match=r"--decode gpu: no JPEG decoder for cpu \(torchcodec: Not compiled with GPU "
                                        r"support; torchvision: Not compiled .*\); drop --decode gpu"):
        image_codec(CPU)


def test_fast_preset_and_explicit_flags(caplog):
    caplog.set_level("INFO")
    cfg = parse_args(["-g", "cpu", "--fast", "--out", "x"])
    assert (cfg.decode, cfg.amp, cfg.channels_last) == ("pil", "off", False)  # --fast is for CUDA
    assert cfg.to_dict()["fast"] and "--fast acts on CUDA only: on cpu it changes nothing" in caplog.text
    cfg = parse_args(["-g", "cpu", "--fast", "--decode", "pil", "--amp", "bf16", "--channels-last", "--out", "x"])
    assert (cfg.decode, cfg.amp, cfg.channels_last) == ("pil", "bf16", True)
    default = parse_args(["-g", "cpu", "--out", "x"])
    assert (default.decode, default.amp, default.channels_last, default.compile, default.fast) == \
        ("pil", "off", False, False, False)


def test_fast_preset_on_cuda(monkeypatch):
    import cli

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    fast = cli.build_parser().parse_args(["--fast"])
    assert cli._speed_settings(fast, "cuda:0") == {"decode": "gpu", "amp": "bf16", "channels_last": True, "compile": False,
                                                   "fast": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(UserError, match="--amp bf16: Tesla V100 has no bf16 support; drop --fast or pass --amp off"):
        cli._speed_settings(fast, "cuda:0")


def test_bf16_refused_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ValueError, match="Tesla T4 has no bf16 support"):
        speed.check_amp("bf16", "cuda:0")
    speed.check_amp("bf16", "cpu")  # the CPU autocasts bf16 (slowly where it lacks bf16 instructions)


def test_digits_cnn_pools_deterministically():
    """max over the flattened H x W: the values AND gradients of AdaptiveMaxPool2d(1), ties included (a flat
    region of a mosaic gives many), with an op whose CUDA backward is deterministic."""
    net = create_backbone("digits_cnn", pretrained=False).features
    assert not any(isinstance(m, torch.nn.AdaptiveMaxPool2d) for m in net.modules())
    x = torch.randn(4, 64, 6, 6).clamp(min=0.5)  # every channel has tied maxima at 0.5 or above
    x[:, :, 2:4, 2:4] = x.amax(dim=(2, 3), keepdim=True)  # and ties at the maximum itself
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = net[-1](ours), torch.nn.AdaptiveMaxPool2d(1)(theirs).flatten(1)
    assert torch.equal(out, ref)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.equal(ours.grad, theirs.grad)


def test_a_nan_inside_a_window_names_its_step():
    window = [torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]), torch.tensor([float("nan")] * 2)]
    totals: dict = {}
    with pytest.raises(engine.NonFiniteLoss, match="at epoch 4, step 7"):
        engine._read_losses(window, [3, 5, 7], ["bce"], totals, 4)
    assert totals == {"bce": 3.0, "loss": 3.0}


def _metrics(out):
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in open(out / "metrics.jsonl")]


def _run(small_digits, out, *flags):
    assert main(["-g", "cpu", "-l", "an", "--epochs", "2", "--data-dir", str(small_digits), "--out", str(out),
                 *flags]) == 0
    return _metrics(out)


def test_reading_losses_per_window_and_device_decode_keep_a_digits_run(small_digits, tmp_path, monkeypatch):
    """The same metrics reading the losses every step (the old loop) and once per window, and with --decode gpu."""
    windowed = _run(small_digits, tmp_path / "window")
    monkeypatch.setattr(engine, "SYNC_EVERY", 1)
    assert _run(small_digits, tmp_path / "every_step") == windowed
    assert _run(small_digits, tmp_path / "device", "--decode", "gpu") == windowed


def test_bf16_and_channels_last_train_on_cpu(small_digits, tmp_path):
    """bf16 autocast really runs (other losses than fp32's) and trains about as well (the loss stays fp32)."""
    fp32 = _run(small_digits, tmp_path / "fp32")
    bf16 = _run(small_digits, tmp_path / "bf16_alone", "--amp", "bf16")
    metrics = _run(small_digits, tmp_path / "bf16", "--amp", "bf16", "--channels-last")
    assert all(half["train_loss"] != full["train_loss"] for half, full in zip(bf16, fp32, strict=True))
    for half, full in zip(metrics, fp32, strict=True):
        assert half["train_loss"] == pytest.approx(full["train_loss"], rel=0.05)
        assert abs(half["val_map"] - full["val_map"]) < 5 and abs(half["test_map"] - full["test_map"]) < 5
    saved = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert (saved["amp"], saved["channels_last"], saved["decode"]) == ("bf16", True, "pil")


def test_predict_returns_a_tensor_autograd_can_use():
    from modes.linear import FeatureDataset

    model = torch.nn.Linear(3, 2)
    dataset = FeatureDataset(torch.randn(4, 3).numpy(), torch.zeros(4, 2).numpy())
    scores = engine.predict(model, DataLoader(dataset, sampler=[[0, 1, 2, 3]], batch_size=None), CPU)
    assert not scores.is_inference()
    (scores * torch.ones(4, 2, requires_grad=True)).sum().backward()  # APL multiplies its soft labels in


def test_resume_accepts_a_checkpoint_written_before_the_speed_settings(tmp_path):
    """A run started before a setting existed (--decode, --amp, --classifier-lr-mult, --delta-rel) ran with its
    default: it resumes; another setting does not."""
    import dataclasses

    from training.checkpoint import LAST, save_checkpoint
    from training.trainer import _checkpoint_of

    cfg = dataclasses.replace(parse_args(["-g", "cpu", "--out", str(tmp_path)]), resume=True)
    old = {k: v for k, v in cfg.to_dict().items()
           if k not in ("decode", "amp", "channels_last", "compile", "classifier_lr_mult")}
    old["hyper"] = {k: v for k, v in old["hyper"].items() if k != "delta_rel"}  # loss settings added later too
    save_checkpoint(tmp_path / LAST, {"config": old, "model": {}})
    assert _checkpoint_of(cfg, tmp_path)["config"] == old
    with pytest.raises(UserError, match="another configuration"):
        _checkpoint_of(dataclasses.replace(cfg, amp="bf16"), tmp_path)


def test_compile_compiles_in_place(monkeypatch):
    """--compile uses nn.Module.compile: the module, and its checkpoint keys, stay the same."""
    called = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: called.append(self))
    model = torch.nn.Linear(2, 2)
    assert speed.prepare_model(model, speed.StepOptions(), compile_model=True) is model and called == [model]


def test_a_non_deterministic_op_stops_with_one_line(small_digits, tmp_path, monkeypatch, capsys):
    import training.trainer

    def fit(*args, **kwargs):  # what PyTorch raises on CUDA under use_deterministic_algorithms(True)
        raise RuntimeError("adaptive_max_pool2d_backward_cuda does not have a deterministic implementation, "
                           "but you set 'torch.use_deterministic_algorithms(True)'.\nYou can turn off ...")

    monkeypatch.setattr(training.trainer, "fit", fit)
    try:
        assert main(["-g", "cpu", "-l", "an", "--epochs", "1", "--data-dir", str(small_digits),
                     "--out", str(tmp_path / "run"), "--deterministic"]) == 2
    finally:
        torch.use_deterministic_algorithms(False)  # a process-wide setting: not for the tests after this one
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("error: --deterministic: adaptive_max_pool2d_backward_cuda has no deterministic implementation "
                   "on cpu; drop --deterministic or use another --model")
