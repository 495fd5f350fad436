"""ANIL (Raghu et al. 2020): Almost No Inner Loop, adapt only the head."""
from __future__ import annotations

from dataclasses import dataclass, field

from .base import MetaLearner


@dataclass
class ANIL(MetaLearner):
    """MAML whose inner loop updates only the final layer ("head.*"); the body is meta-learned."""

    head_prefix: str = "head."
    name: str = field(default="anil", init=False)

    def adapt_kwargs(self, params, inner_steps=None) -> dict:
        keys = [k for k in params if k.startswith(self.head_prefix)]
        return {**super().adapt_kwargs(params, inner_steps), "adapt_keys": keys}
