"""Models: the 4-layer convolutional networks of MAML and Prototypical Networks, and the sinusoid MLP.

BatchNorm follows the MAML paper: it always normalises with the statistics of the batch it sees,
so each task's support set and query set are normalised with their own statistics, and there are
no running averages to go stale. model.eval() changes nothing for these layers; a network built
with PyTorch's default BatchNorm would, in eval(), use running averages that meta-training never
kept meaningful, and fall most of the way to chance accuracy (book chapter 2 measures it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchNorm(nn.Module):
    """BatchNorm over (batch, H, W) with batch statistics only, as in MAML (no running averages).

    The affine part is written out instead of passed to F.batch_norm: under vmap with per-task
    weights, batch_norm's own backward rule gives wrong second-order gradients (pytorch/functorch#534).
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C, H, W) -> normalised with this batch's statistics, then scaled and shifted."""
        x = F.batch_norm(x, None, None, training=True, eps=self.eps)  # (batch, C, H, W)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    """3x3 conv (stride 2, or stride 1 + 2x2 max-pool) -> per-batch BatchNorm -> ReLU."""
    if pool:
        layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1),
                  BatchNorm(out_channels), nn.ReLU(), nn.MaxPool2d(2)]
    else:
        layers = [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
                  BatchNorm(out_channels), nn.ReLU()]
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """Four conv blocks of 64 filters, spatial mean, and (unless n_way is None) a linear head.

    pool=False is the MAML Omniglot network (stride-2 convs, 28 -> 14 -> 7 -> 4 -> 2);
    pool=True is the Prototypical Networks encoder (max-pool, 28 -> 14 -> 7 -> 3 -> 1).
    """

    def __init__(self, n_way: int | None = 5, in_channels: int = 1, hidden: int = 64, pool: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(in_channels, hidden, pool),
            *(conv_block(hidden, hidden, pool) for _ in range(3)),
        )
        self.head = nn.Linear(hidden, n_way) if n_way is not None else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C, H, W) images -> (batch, hidden) features."""
        return self.features(x).mean(dim=(-2, -1))  # (batch, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C, H, W) images -> (batch, n_way) logits, or features when there is no head."""
        features = self.embed(x)  # (batch, hidden)
        return features if self.head is None else self.head(features)


def mlp(in_features: int = 1, hidden: int = 40, out_features: int = 1, layers: int = 2) -> nn.Sequential:
    """The MAML sinusoid regressor: `layers` hidden ReLU layers of 40 units."""
    sizes = [in_features] + [hidden] * layers
    blocks = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        blocks += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(sizes[-1], out_features))


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters as a dict of fresh leaf tensors that require grad."""
    return {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}


def n_parameters(params: dict[str, torch.Tensor]) -> int:
    """Total number of scalars in a params dict."""
    return sum(p.numel() for p in params.values())
