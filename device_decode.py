"""`--decode gpu`: loader workers only read the image files; each batch is decoded on the run's device.

With PIL (the default, `datasets.ImageDataset`) every epoch of a ResNet-50 on a GPU
is bound by JPEG decoding in the CPU workers (measured on one H100: 429 images/s with 8
workers against 6,574 for nvJPEG). Here:

    FileBytesDataset   (worker)  file bytes, label row, index, flip decision
    BatchDecoder       (device)  decode -> antialiased resize to (s, s) -> flip -> normalise
    DeviceDecodeLoader           a DataLoader of bytes that yields (images, labels, index)
                                 like the PIL loaders, so the training loop is unchanged

Baseline 3-component JPEGs are decoded in one batched `decode_jpeg` call on the device
(nvJPEG on CUDA, libjpeg on CPU: the same code path, so the CPU tests exercise it).
Everything else is decoded one image at a time on the CPU and moved: PNG and other
formats and grayscale / CMYK JPEGs with `decode_image(mode=RGB)`, and JPEGs without an
end marker (possibly truncated) with PIL, so that an unreadable image fails (or is
skipped with --skip-bad-images) exactly as on the PIL path.

The decoders are TorchCodec's where it is installed and decodes on the run's device
(torchvision 0.29 deprecates its own for them), else torchvision.io's: `image_codec`
picks one per run and says which; both give libjpeg's / nvJPEG's pixels.

Flips are drawn per image (preprocess.ImageDraws, from the run's seed, the epoch and the
row), as on the PIL path: the same flips.
"""
from __future__ import annotations

import io
import logging
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from datasets import ImageFiles, Split, unreadable_image
from errors import UserError
from preprocess import Preprocess

# (dataset, batch size, shuffle, generator) -> the batch sampler of a loader
Batches = Callable[[Dataset, int, bool, "torch.Generator | None"], Sampler]

log = logging.getLogger(__name__)
# torchvision 0.29 deprecates its decoders for TorchCodec's and warns on every call: it is the
# fallback where TorchCodec is not installed.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated")

_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageCodec(NamedTuple):
    """One library's two decoders: `jpegs(data, device)` a batch of baseline JPEGs on the device;
    `image(data)` any format on the CPU; both (3, H, W) uint8 RGB. Each raises RuntimeError or
    ValueError on data it cannot decode."""

    name: str
    jpegs: Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]
    image: Callable[[torch.Tensor], torch.Tensor]


def _torchcodec() -> ImageCodec:
    from torchcodec.decoders import decode_image, decode_jpeg

    def image(data: torch.Tensor) -> torch.Tensor:
        decoded = decode_image(data, mode="RGB")
        return decoded[0] if decoded.dim() == 4 else decoded  # an animated image: its first frame, as PIL

    return ImageCodec("torchcodec", lambda data, device: decode_jpeg(data, mode="RGB", device=device), image)


def _torchvision() -> ImageCodec:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    return ImageCodec("torchvision.io", lambda data, device: decode_jpeg(data, mode=ImageReadMode.RGB, device=device),
                      lambda data: decode_image(data, mode=ImageReadMode.RGB))


CODECS: dict[str, Callable[[], ImageCodec]] = {"torchcodec": _torchcodec, "torchvision": _torchvision}  # preferred first


def image_codec(device: torch.device) -> ImageCodec:
    """The first of CODECS that imports and decodes a JPEG on `device`; refuses --decode gpu in one line
    when none can."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    probe = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    failures = []
    for name, make in CODECS.items():
        try:
            codec = make()
            codec.jpegs([probe], device)
        except (ImportError, OSError, RuntimeError, TypeError, ValueError) as err:
            failures.append(f"{name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
            continue
        log.info(f"--decode gpu: {codec.name} decodes the JPEGs on {device}")
        return codec
    raise UserError(f"--decode gpu: no JPEG decoder for {device} ({'; '.join(failures)}); drop --decode gpu / --fast, "
                    f"or install torchcodec (or a torchvision built with nvJPEG)")


class FileBytesDataset(ImageFiles):
    """Yields (file bytes as a 1-D uint8 tensor, label row, index, flipped); None for an unreadable
    file with `skip_unreadable`. `flip`: draw a random horizontal flip per sample (train);
    `flip_views`: report a flipped sample as index + N, and its `crop_flips` (see datasets.ImageDataset)."""

    def __init__(self, split: Split, skip_unreadable: bool = False, flip: bool = False, flip_views: bool = False,
                 seed: int | None = None, crop_flips: int = 0):
        super().__init__(split, skip_unreadable, flip_views, seed, crop_flips)
        self.flip = flip

    def __getitem__(self, index: int):
        path = self.images[index]
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            return self.unreadable(path, err)
        draws = self.draws(index)
        flipped = self.flip and draws.flip()
        view = self.view_index(index, flipped and self.flip_views, draws)
        # an empty file has no buffer to wrap; the decoder then reports it unreadable
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        return encoded, self.labels[index], view, flipped


def collate_bytes(batch: list):
    """(list of byte tensors, labels (B, C), index (B,), flips (B,)); unreadable samples (None) dropped."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        return [], torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.bool)
    data, labels, index, flips = zip(*kept)
    return list(data), torch.stack(labels), torch.tensor(index), torch.tensor(flips)


def jpeg_components(data: torch.Tensor) -> int | None:
    """Colour components of a JPEG (from its frame header), or None if `data` is no JPEG."""
    b = memoryview(data.numpy())  # no copy; indexing gives ints
    if b[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: P, Y, X, then Nf
            return b[i + 9]
        if marker == 0xDA:  # a scan before any frame header: malformed
            return None
        i += 2 + ((b[i + 2] << 8) | b[i + 3])
    return None


def _has_end_marker(data: torch.Tensor) -> bool:
    return len(data) >= 2 and data[-2].item() == 0xFF and data[-1].item() == 0xD9


def _decode_pil(data: torch.Tensor) -> torch.Tensor:
    with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
        array = np.asarray(img.convert("RGB"))  # decodes the whole file: a truncated image fails here
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _decode_cpu(data: torch.Tensor, codec: ImageCodec) -> torch.Tensor:
    """One image on the CPU, (3, H, W) uint8: the codec, or PIL where it cannot (or must judge a
    JPEG without an end marker: libjpeg pads a truncated file with grey where PIL refuses it)."""
    if jpeg_components(data) is not None and not _has_end_marker(data):
        return _decode_pil(data)
    try:
        return codec.image(data)
    except (RuntimeError, ValueError):
        return _decode_pil(data)  # formats the codec lacks (BMP, TIFF, ...) or a damaged file: PIL decides


class BatchDecoder:
    """Decodes a batch of file bytes on `device` into normalised (B, 3, s, s) float32 images.

    Resize as `T.Resize((s, s))` on a PIL image: bilinear with antialiasing, rounded to
    8 bits; an image already s x s is kept as it is (PIL copies it). Then flip, /255,
    and normalise in the order of `T.ToTensor` + `T.Normalize`.
    """

    def __init__(self, preprocess: Preprocess, device: torch.device, codec: ImageCodec):
        self.size = preprocess.size
        self.device = device
        self.codec = codec
        self.mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=device).view(3, 1, 1)
        self.std = torch.tensor(preprocess.std, dtype=torch.float32, device=device).view(3, 1, 1)

    def decode(self, data: list[torch.Tensor], paths: list[str], skip_unreadable: bool = False) -> list[torch.Tensor | None]:
        """(3, H, W) uint8 images on the device; None for an unreadable one with `skip_unreadable`."""
        images: list[torch.Tensor | None] = [None] * len(data)
        batched = [i for i, d in enumerate(data) if jpeg_components(d) == 3 and _has_end_marker(d)]
        if batched:
            try:
                decoded = self.codec.jpegs([data[i] for i in batched], self.device)
                for i, image in zip(batched, decoded):
                    images[i] = image
            except RuntimeError as err:  # one file the batched decoder refuses fails the batch: one by one below
                log.debug(f"batched decode failed ({err}); decoding one image at a time")
        for i, image in enumerate(images):
            if image is not None:
                continue
            try:
                images[i] = _decode_cpu(data[i], self.codec).to(self.device, non_blocking=True)
            except _PIL_ERRORS as err:
                if not skip_unreadable:
                    raise unreadable_image(paths[i], err) from err  # skipped: the pass that misses it names it
        return images

    def __call__(self, images: list[torch.Tensor], flips: torch.Tensor) -> torch.Tensor:
        """Resized, flipped, normalised (B, 3, s, s) float32 from (3, H, W) uint8 images on the device."""
        s = self.size
        out = torch.empty((len(images), 3, s, s), dtype=torch.float32, device=self.device)
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            by_shape[tuple(image.shape)].append(i)
        for shape, rows in by_shape.items():  # COCO is mostly 640x480: few groups, few kernel launches
            group = torch.stack([images[i] for i in rows]).float()
            if shape[1:] != (s, s):
                group = F.interpolate(group, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
                group = group.round_().clamp_(0, 255)  # PIL resizes 8-bit images to 8 bits
            if len(rows) == len(images):
                out = group
            else:  # index_put, which has a deterministic CUDA implementation (index_copy_ has none)
                out[torch.tensor(rows, device=self.device)] = group
        flips = flips.to(self.device, non_blocking=True).view(-1, 1, 1, 1)
        out = torch.where(flips, out.flip(-1), out)
        return out.div_(255).sub_(self.mean).div_(self.std)


class DeviceDecodeLoader:
    """Wraps a DataLoader of `FileBytesDataset`; yields (images on the device, labels, index) batches."""

    def __init__(self, loader: DataLoader, decoder: BatchDecoder):
        self.loader = loader
        self.decoder = decoder
        self.dataset = loader.dataset  # the loop reads .labels and len()
        self.generator = loader.generator  # checkpointed by the trainer (resume)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        dataset = self.dataset
        n = len(dataset)
        for data, labels, index, flips in self.loader:
            paths = [dataset.images[i % n] for i in index.tolist()]
            images = self.decoder.decode(data, paths, dataset.skip_unreadable)
            keep = [i for i, image in enumerate(images) if image is not None]
            if len(keep) < len(images):  # unreadable images skipped: the loop counts what it did not see
                rows = torch.tensor(keep, dtype=torch.long)
                images, labels, index, flips = [images[i] for i in keep], labels[rows], index[rows], flips[rows]
            if not keep:  # under torchrun a process whose part of a batch is empty still runs its step
                size = self.decoder.size
                yield (torch.empty(0, 3, size, size, device=self.decoder.device),
                       torch.empty(0, dataset.labels.shape[1]), torch.empty(0, dtype=torch.long))
                continue
            yield self.decoder(images, flips), labels, index


def device_loader(split: Split, preprocess: Preprocess, device: torch.device, codec: ImageCodec, batch_size: int,
                  num_workers: int, train: bool = False, hflip: bool = False, flip_views: bool = False,
                  skip_unreadable: bool = False, generator: torch.Generator | None = None,
                  batches: Batches | None = None, seed: int = 0, crop_flips: int = 0) -> DeviceDecodeLoader:
    """A `--decode gpu` loader of `split` decoded by `codec` (image_codec): shuffled and flipped (if `hflip`,
    drawn per image from `seed`, with `crop_flips` crop flips) when `train`, else in order.
    `batches(dataset, batch_size, shuffle, generator)` makes the batch sampler (this process's share under torchrun)."""
    dataset = FileBytesDataset(split, skip_unreadable=skip_unreadable, flip=train and hflip,
                               flip_views=train and hflip and flip_views, seed=seed if train else None,
                               crop_flips=crop_flips if train and hflip else 0)
    batching = dict(batch_size=batch_size, shuffle=train) if batches is None else \
        dict(batch_sampler=batches(dataset, batch_size, train, generator))
    loader = DataLoader(dataset, **batching, generator=generator, num_workers=num_workers,
                        collate_fn=collate_bytes, persistent_workers=num_workers > 0 and not train)
    return DeviceDecodeLoader(loader, BatchDecoder(preprocess, device, codec))
