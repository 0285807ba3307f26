"""Step time of GPR with DAMP computed at every step (AEVLP's code) against the rule run from cached CLIP scores.

    python -m benchmarks.aevlp_step_time                                   # CPU: the digits setting, tiny CLIP
    python -m benchmarks.aevlp_step_time --device cuda --backbone resnet50 --size 448 \\
        --clip-model ViT-B-16 --bsize 16 --classes 80 --source-size 640    # the authors' COCO setting

Both variants run the same training step: backbone forward/backward, the GPR loss on DAMP's
pseudo-labels, Adam. The per-step variant does what the authors' train.py does every step:
the whole image and its g x g tiles cut from the source image (--source-size, the stored
picture), each resized to CLIP's side, flipped at random and normalised; the frozen CLIP
image tower on the B (g^2 + 1) crops (fp16 on CUDA, as theirs); the text tower on the class
prompts and the text graph; the rule. (The authors cut and resize the crops with PIL in the
loader workers, which costs more than the tensor ops here: the per-step figure is a lower
bound.) The cached variant gathers each crop's cosines in its drawn orientation from a
(2 K N, C) float16 table and runs the rule. Weights are random (timing only, no download).
Prints the median step time of each and their ratio.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.timing import median_step_time, print_speedup
from methods.aevlp import loss_gpr
from methods.aevlp.damp import CropGrid, crop_rows, damp_pseudo_labels
from methods.aevlp.text_graph import TextGraph
from models import IMAGENET_MEAN, IMAGENET_STD, MultiLabelModel, create_backbone
from presets import DATA_ROOT

GPR = dict(w=0.0, b=-2.0, mu=0.5375, sigma=1.8125, q2=0.01, q3=1.0, lam=(0.7, 0.5), rho=0.9, reg=0.001,
           expected_pos=2.9)  # the authors' COCO setting at epoch 1 of 8
DAMP = dict(temp=0.01, eta=0.3, threshold=0.5, top_k=3, neg_ratio=0.3)


def _clip(name: str, device: torch.device):
    """A randomly initialised open_clip model (an open_clip name or a JSON config), its tokenizer and input side."""
    import open_clip

    if name.endswith(".json"):
        open_clip.add_model_config(name)
        name = Path(name).stem
    model = open_clip.create_model(name, pretrained=None).to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        model = model.half()  # the authors' CLIP runs in fp16
    size = open_clip.get_model_preprocess_cfg(model)["size"]
    return model, open_clip.get_tokenizer(name), size[0] if isinstance(size, (tuple, list)) else size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", default="digits_cnn")
    ap.add_argument("--size", type=int, default=24, help="backbone input size")
    ap.add_argument("--source-size", type=int, default=24, help="side of the stored image the crops are cut from")
    ap.add_argument("--clip-model", default=str(DATA_ROOT / "tiny_clip.json"))
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--bsize", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MultiLabelModel(create_backbone(args.backbone, pretrained=False), args.classes).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    clip, tokenize, clip_size = _clip(args.clip_model, device)
    grid, graph = CropGrid(args.grid), TextGraph(seed=0)
    tokens = tokenize([f"a photo of a class {c}." for c in range(args.classes)]).to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    n_train = 1000
    table = (torch.rand(2 * grid.count * n_train, args.classes, device=device) * 0.1 + 0.2).half()
    source = torch.randint(0, 256, (args.bsize, 3, args.source_size, args.source_size), dtype=torch.uint8, device=device)
    images = torch.randn(args.bsize, 3, args.size, args.size, device=device)
    targets = torch.zeros(args.bsize, args.classes, device=device)
    targets[:, 0] = 1
    index = torch.arange(args.bsize, device=device)

    def damp_every_step() -> torch.Tensor:
        with torch.no_grad():
            crops = torch.cat([F.interpolate(source[:, :, y0:y1, x0:x1].float() / 255, size=(clip_size, clip_size),
                                             mode="bilinear", antialias=True)
                               for x0, y0, x1, y1 in grid.boxes(args.source_size, args.source_size)])
            flips = torch.rand(len(crops), device=device) < 0.5
            crops = (torch.where(flips.view(-1, 1, 1, 1), crops.flip(-1), crops) - mean) / std
            emb = F.normalize(clip.encode_image(crops.to(next(clip.parameters()).dtype)).float(), dim=-1)
            text = F.normalize(graph(clip.encode_text(tokens).float()), dim=-1)
            cosines = (emb @ text.T).view(grid.count, args.bsize, -1).transpose(0, 1)  # (B, K, C)
            return damp_pseudo_labels(cosines, targets, **DAMP)

    def damp_cached() -> torch.Tensor:
        view = index + n_train * torch.randint(0, 2 ** (grid.count + 1), (args.bsize,), device=device)
        return damp_pseudo_labels(table[crop_rows(view, n_train, grid.count, 2)], targets, **DAMP)

    def step(pseudo_labels) -> None:
        terms = loss_gpr(model(images), targets, pseudo_labels(), **GPR)
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        optimizer.step()

    times = {name: median_step_time(lambda: step(pseudo_labels), device, args.warmup, args.steps)
             for name, pseudo_labels in (("cached scores", damp_cached), ("DAMP every step", damp_every_step))}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({where}), backbone {args.backbone} @ {args.size}, CLIP {Path(args.clip_model).stem} @ "
          f"{clip_size}, grid {args.grid} ({grid.count} crops of a {args.source_size} px image), batch {args.bsize}, "
          f"{args.classes} classes, median of {args.steps} steps")
    print_speedup(times)


if __name__ == "__main__":
    main()
