"""PU-MLC's local-global convolution (Yuan, Zhang, Huang, ICME 2024): every 3x3 conv of a
ResNet gets a parallel global branch, output = Conv3x3(x) + G(x), the original conv intact.

G(x), x of Cin channels on an H x W map, h = 8 heads, m = Cin / 4 (every 1x1 conv with a bias):

    l = ReLU(conv_{Cin->m}(x)); u = [l ; spatial mean of l]            2m channels
    a = softmax over the H*W positions of conv_{2m->h}(u), per head    where each head gathers
    b = sigmoid(conv_{2m->h}(u))                                       where each head broadcasts
    v = conv_{Cin->Cin}(x), split into h groups of Cin / h channels
    p = sum over positions of v * a                                    one vector per head
    q = p * b, back to Cin channels on the map
    G(x) = BN(conv_{Cin->Cout, stride of the wrapped conv}(x + q))

The BN's weight starts at N(0, 1e-4) and its bias at 0, so G(x) ~ 0 at the start and
pretrained features are nearly unchanged. `convert_to_lgconv` wraps the convs in place,
after the pretrained weights are loaded (the authors' order).
"""
from __future__ import annotations

import torch
from torch import nn

HEADS, REDUCTION = 8, 4
NORM_INIT_STD = 1e-4  # the global branch's last BN weight: G starts at about zero


class GlobalBranch(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, heads: int = HEADS,
                 reduction: int = REDUCTION):
        super().__init__()
        mid = in_channels // reduction
        self.heads = heads
        self.reduce = nn.Conv2d(in_channels, mid, 1)
        self.attend = nn.Conv2d(2 * mid, heads, 1)
        self.gate = nn.Conv2d(2 * mid, heads, 1)
        self.value = nn.Conv2d(in_channels, in_channels, 1)
        self.project = nn.Conv2d(in_channels, out_channels, 1, stride=stride)
        self.norm = nn.BatchNorm2d(out_channels)
        nn.init.normal_(self.norm.weight, std=NORM_INIT_STD)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        local = torch.relu(self.reduce(x))
        context = torch.cat([local, local.mean(dim=(2, 3), keepdim=True).expand_as(local)], dim=1)
        gather = torch.softmax(self.attend(context).flatten(2), dim=-1)  # [B, h, HW]
        spread = torch.sigmoid(self.gate(context)).flatten(2)  # [B, h, HW]
        values = self.value(x).view(batch, self.heads, channels // self.heads, height * width)
        pooled = torch.einsum("bhcn,bhn->bhc", values, gather)
        broadcast = (pooled.unsqueeze(-1) * spread.unsqueeze(2)).view(batch, channels, height, width)
        return self.norm(self.project(x + broadcast))


class LGConv(nn.Module):
    """The wrapped conv and its global branch, summed."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.global_branch = GlobalBranch(conv.in_channels, conv.out_channels, conv.stride[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.global_branch(x)


def wrappable(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.groups == 1 \
        and conv.in_channels % (HEADS * REDUCTION) == 0 and conv.stride[0] == conv.stride[1]


def convert_to_lgconv(module: nn.Module) -> int:
    """Wrap every square 3x3 conv below `module` (in place); returns how many were wrapped."""
    count = 0
    for name, child in module.named_children():
        if wrappable(child):
            setattr(module, name, LGConv(child))
            count += 1
        elif not isinstance(child, LGConv):
            count += convert_to_lgconv(child)
    return count
