"""Models: the 4-layer convolutional networks of MAML and Prototypical Networks, and the sinusoid MLP.

BatchNorm follows the MAML paper by default: it always normalises with the statistics of the batch it
sees, so each task's support set and query set are normalised with their own statistics, and there are
no running averages to go stale. model.eval() changes nothing for these layers; a network built
with PyTorch's default BatchNorm would, in eval(), use running averages that meta-training with an
inner loop never kept meaningful, and fall most of the way to chance accuracy (book chapter 2 measures
it). Prototypical Networks have no inner loop, and their published encoder uses PyTorch's standard
BatchNorm: running averages kept in train(), used in eval() (Conv4(running_stats=True)).
"""
from __future__ import annotations

from collections import OrderedDict

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


def conv_block(in_channels: int, out_channels: int, pool: bool, running_stats: bool = False) -> nn.Sequential:
    """3x3 conv (stride 2, or stride 1 + 2x2 max-pool) -> BatchNorm -> ReLU; the BatchNorm uses the batch's
    statistics only, or (running_stats) is nn.BatchNorm2d with running averages used in eval()."""
    norm = nn.BatchNorm2d(out_channels) if running_stats else BatchNorm(out_channels)
    if pool:
        layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1), norm, nn.ReLU(), nn.MaxPool2d(2)]
    else:
        layers = [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), norm, nn.ReLU()]
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """Four conv blocks of 64 filters, spatial mean, and (unless n_way is None) a linear head.

    pool=False is the MAML Omniglot network (stride-2 convs, 28 -> 14 -> 7 -> 4 -> 2);
    pool=True is the Prototypical Networks encoder (max-pool, 28 -> 14 -> 7 -> 3 -> 1); running_stats=True
    gives it the published nn.BatchNorm2d (running averages, used in eval()).
    """

    def __init__(self, n_way: int | None = 5, in_channels: int = 1, hidden: int = 64, pool: bool = False,
                 running_stats: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(in_channels, hidden, pool, running_stats),
            *(conv_block(hidden, hidden, pool, running_stats) for _ in range(3)),
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
    """The MAML sinusoid regressor: a body of `layers` hidden ReLU layers of 40 units, then a linear head.

    Parameters are named body.0.*, body.2.*, ... and head.* (the final layer ANIL adapts).
    """
    sizes = [in_features] + [hidden] * layers
    body = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        body += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(OrderedDict(body=nn.Sequential(*body), head=nn.Linear(sizes[-1], out_features)))


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters as a dict of fresh leaf tensors that require grad."""
    return {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}


def has_running_stats(model: nn.Module) -> bool:
    """True when some layer of the model keeps running statistics (a standard BatchNorm)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def n_parameters(params: dict[str, torch.Tensor]) -> int:
    """Total number of scalars in a params dict."""
    return sum(p.numel() for p in params.values())
