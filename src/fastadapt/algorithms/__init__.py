"""Meta-learning algorithms, all on the functional core; build one with make_algorithm."""
from __future__ import annotations

from ..checks import one_of
from .anil import ANIL
from .base import MetaLearner
from .maml import FOMAML, MAML
from .metasgd import MetaSGD
from .protonet import ProtoNet, prototype_logits
from .reptile import Reptile

ALGORITHMS = {"maml": MAML, "fomaml": FOMAML, "reptile": Reptile, "anil": ANIL, "metasgd": MetaSGD, "protonet": ProtoNet}


def make_algorithm(name: str, model, **settings) -> MetaLearner:
    """An algorithm by name ("maml", "fomaml", "reptile", "anil", "metasgd", "protonet")."""
    one_of("algorithm", name, ALGORITHMS)
    return ALGORITHMS[name](model, **settings)


__all__ = ["ALGORITHMS", "ANIL", "FOMAML", "MAML", "MetaLearner", "MetaSGD", "ProtoNet", "Reptile",
           "make_algorithm", "prototype_logits"]
