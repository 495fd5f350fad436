"""Meta-SGD (Li et al. 2017): learn a learning rate for every parameter entry."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import MetaLearner

LR_PREFIX = "lr."


@dataclass
class MetaSGD(MetaLearner):
    """MAML whose inner step is params - lr * grad with lr a learned tensor shaped like each param."""

    name: str = field(default="metasgd", init=False)

    def init_params(self):
        params = super().init_params()
        lrs = {LR_PREFIX + k: torch.full_like(p, self.inner_lr).requires_grad_(True) for k, p in params.items()}
        return {**params, **lrs}

    def model_params(self, params):
        return {k: p for k, p in params.items() if not k.startswith(LR_PREFIX)}

    def adapt_kwargs(self, params, inner_steps=None) -> dict:
        lrs = {k[len(LR_PREFIX):]: p for k, p in params.items() if k.startswith(LR_PREFIX)}
        return {**super().adapt_kwargs(params, inner_steps), "inner_lr": lrs}
