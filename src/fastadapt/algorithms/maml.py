"""MAML (Finn et al. 2017) and its first-order approximation."""
from __future__ import annotations

from dataclasses import dataclass, field

from .base import MetaLearner


@dataclass
class MAML(MetaLearner):
    """Second-order MAML: differentiate the query loss through the inner gradient steps."""

    name: str = field(default="maml", init=False)


@dataclass
class FOMAML(MetaLearner):
    """First-order MAML: the same, with the inner gradients treated as constants."""

    first_order: bool = True
    name: str = field(default="fomaml", init=False)
