"""fastadapt: small, fast, functional meta-learning (MAML, FOMAML, Reptile, ANIL, Meta-SGD, ProtoNets)."""
from .algorithms import ALGORITHMS, ANIL, FOMAML, MAML, MetaLearner, MetaSGD, ProtoNet, Reptile, make_algorithm
from .checkpoints import load_checkpoint, read_checkpoint, read_metrics
from .config import TrainConfig, build_algorithm, build_model, protocol_config, task_source
from .core import accuracy, adapt, batched_query_outputs, maml_loss_reference, query_outputs
from .data import (DatasetError, Omniglot, find_omniglot, load_omniglot, omniglot_class_names, omniglot_classes,
                   split_characters)
from .distributed import init_distributed, pick_device
from .evaluate import confidence_interval, evaluate, lake_one_shot_tasks, predict_queries
from .models import Conv4, mlp, params_of
from .protocols import PROTOCOLS, Paper, Protocol, protocol
from .tasks import Episode, EpisodeSampler, episode_seed, sample_sinusoids, sinusoid
from .training import TrainingDiverged, meta_step, train

__version__ = "0.1.0"
__all__ = [
    "ALGORITHMS", "ANIL", "Conv4", "DatasetError", "Episode", "EpisodeSampler", "FOMAML", "MAML", "MetaLearner",
    "MetaSGD", "Omniglot", "PROTOCOLS", "Paper", "ProtoNet", "Protocol", "Reptile", "TrainConfig", "TrainingDiverged",
    "accuracy", "adapt", "batched_query_outputs", "build_algorithm", "build_model", "confidence_interval",
    "episode_seed", "evaluate", "lake_one_shot_tasks", "find_omniglot", "init_distributed", "load_checkpoint", "load_omniglot",
    "make_algorithm", "maml_loss_reference", "meta_step", "mlp", "omniglot_class_names", "omniglot_classes",
    "params_of", "pick_device", "predict_queries", "protocol", "protocol_config", "query_outputs",
    "read_checkpoint", "read_metrics", "sample_sinusoids", "sinusoid", "split_characters", "task_source", "train",
]
