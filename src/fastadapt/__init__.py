"""fastadapt: small, fast, functional meta-learning (MAML, FOMAML, Reptile, ANIL, Meta-SGD, ProtoNets)."""
from .algorithms import ALGORITHMS, ANIL, FOMAML, MAML, MetaLearner, MetaSGD, ProtoNet, Reptile, make_algorithm
from .core import accuracy, adapt, batched_query_outputs, maml_loss_reference, query_outputs
from .data import DatasetError, Omniglot, find_omniglot, load_omniglot, omniglot_classes, split_characters
from .evaluate import confidence_interval, evaluate
from .models import Conv4, mlp, params_of
from .tasks import Episode, EpisodeSampler, sample_sinusoids, sinusoid
from .train import TrainConfig, load_checkpoint, pick_device, task_source, train

__version__ = "0.1.0"
__all__ = [
    "ALGORITHMS", "ANIL", "Conv4", "DatasetError", "Episode", "EpisodeSampler", "FOMAML", "MAML", "MetaLearner",
    "MetaSGD", "Omniglot", "ProtoNet", "Reptile", "TrainConfig", "accuracy", "adapt", "batched_query_outputs",
    "confidence_interval", "evaluate", "find_omniglot", "load_checkpoint", "load_omniglot", "make_algorithm",
    "maml_loss_reference", "mlp", "omniglot_classes", "params_of", "pick_device", "query_outputs",
    "sample_sinusoids", "sinusoid", "split_characters", "task_source", "train",
]
