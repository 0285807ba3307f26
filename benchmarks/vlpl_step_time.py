"""Step time of EM_PL with cached CLIP scores against the reference's frozen-CLIP forward at every step.

    python -m benchmarks.vlpl_step_time                                 # CPU, small models
    python -m benchmarks.vlpl_step_time --device cuda --backbone resnet50 --size 448 \\
        --clip-model ViT-L-14-336 --bsize 8                              # the paper's setting

Both variants run the same training step (backbone forward/backward, Adam) with
the same loss; the reference variant also resizes the batch to CLIP's size,
runs the frozen CLIP image tower under no_grad and applies the pseudo-label rule,
as VLPL's `main_clip.py` does every step. The cached variant looks the
pseudo-labels up by index. Weights are random (timing only, no download).
Prints the median step time of each and their ratio.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.timing import median_step_time, print_speedup
from methods.vlpl import loss_em_pl, pseudo_labels
from models import MultiLabelModel, create_backbone

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=224, help="backbone input size")
    ap.add_argument("--clip-model", default="ViT-B-32")
    ap.add_argument("--bsize", type=int, default=8)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    import open_clip

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MultiLabelModel(create_backbone(args.backbone, pretrained=False), args.classes).to(device)
    clip = open_clip.create_model(args.clip_model, pretrained=None).to(device).eval().requires_grad_(False)
    clip_size = open_clip.get_model_preprocess_cfg(clip)["size"]
    clip_size = clip_size[0] if isinstance(clip_size, (tuple, list)) else clip_size
    text = F.normalize(torch.randn(args.classes, clip.visual.output_dim, device=device), dim=-1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)

    n_train = 1000
    table = pseudo_labels(torch.randn(n_train, args.classes, device=device) * 0.05, 0.01, 0.3, 0.0)
    images = torch.randn(args.bsize, 3, args.size, args.size, device=device)
    targets = torch.zeros(args.bsize, args.classes, device=device)
    targets[:, 0] = 1
    index = torch.arange(args.bsize, device=device)

    def step(per_step_clip: bool) -> None:
        if per_step_clip:
            with torch.no_grad():
                small = F.interpolate(images, size=(clip_size, clip_size), mode="bilinear", align_corners=False)
                emb = F.normalize(clip.encode_image(small).float(), dim=-1)
                pseudo = pseudo_labels(emb @ text.T, 0.01, 0.3, 0.0)
        else:
            pseudo = table[index]
        loss = loss_em_pl(model(images), targets, pseudo, 0.1, 0.7)["main"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    times = {name: median_step_time(lambda: step(per_step), device, args.warmup, args.steps)
             for name, per_step in (("cached scores", False), ("CLIP every step", True))}
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"backbone {args.backbone} @ {args.size}, CLIP {args.clip_model} @ {clip_size}, batch {args.bsize}, "
          f"median of {args.steps} steps")
    print_speedup(times)


if __name__ == "__main__":
    main()
