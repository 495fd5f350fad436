"""What defines a meta-training run (TrainConfig, checked), and the objects a config builds."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.nn.functional as F

from .algorithms import ALGORITHMS, MetaLearner, make_algorithm
from .checks import non_negative_int, one_of, positive_int, positive_rate
from .models import mlp
from .protocols import DEFAULT_CELLS, PROTOCOLS, protocol
from .tasks import Episode, EpisodeSampler, sample_sinusoids

DATASETS = ("omniglot", "sinusoid")
SPLITS = ("vinyals", "lake")
TRAIN_PARTS = ("train", "trainval")  # trainval for final runs; train (validated on val) for model selection
HYPERPARAMETERS = ("n_query", "meta_batch_size", "inner_steps", "inner_lr", "meta_lr", "iterations", "eval_inner_steps",
                   "inner_optimizer", "inner_batch", "eval_inner_batch", "val_n_way", "val_n_query")
INNER_OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainConfig:
    """Everything that defines a meta-training run (saved as config.json and in the checkpoint).

    Settings left at None come from the hyperparameter table (fastadapt.protocols): n_way and k_shot
    from the dataset's default cell, the others from the row of the (dataset, algo, n_way, k_shot) cell.
    """

    algo: str = "maml"
    dataset: str = "omniglot"
    split: str = "vinyals"
    train_part: str = "train"
    n_way: int | None = None
    k_shot: int | None = None
    n_query: int | None = None
    meta_batch_size: int | None = None
    inner_steps: int | None = None
    inner_lr: float | None = None
    meta_lr: float | None = None
    iterations: int | None = None
    seed: int = 0
    eval_inner_steps: int | None = None
    val_every: int = 500
    val_tasks: int = 100
    log_every: int = 10
    checkpoint_every: int = 100
    first_order: bool = False  # makes maml, anil and metasgd first-order (fomaml and reptile always are)
    inner_optimizer: str | None = None  # "sgd", or "adam" (Reptile's published inner loop: Adam, beta1 = 0)
    inner_batch: int | None = None  # images per inner step (Reptile's mini-batches); 0: the whole support set
    eval_inner_batch: int | None = None  # the same at test time
    val_n_way: int | None = None  # ways of a validation task (ProtoNets: 5 while training 60-way); 0: n_way
    val_n_query: int | None = None  # query examples per class of a validation task; 0: n_query
    patience: int = 0  # stop after this many validation points without a lower validation loss (0: never)
    retrain: bool = False  # then train again from the same start on trainval for (best point - 1 + patience) points

    def __post_init__(self):
        one_of("algorithm", self.algo, ALGORITHMS)
        one_of("dataset", self.dataset, DATASETS)
        if self.dataset == "sinusoid" and ALGORITHMS[self.algo].classification_only:
            raise ValueError(f"{self.algo} only classifies and cannot fit sinusoids; for dataset='sinusoid' choose one "
                             f"of {', '.join(a for a, cls in ALGORITHMS.items() if not cls.classification_only)}.")
        cell = DEFAULT_CELLS[self.dataset]
        self.n_way = cell[0] if self.n_way is None else self.n_way
        self.k_shot = cell[1] if self.k_shot is None else self.k_shot
        positive_int("n_way", self.n_way)
        positive_int("k_shot", self.k_shot)
        row = protocol(self.dataset, self.algo, self.n_way, self.k_shot)
        for name in HYPERPARAMETERS:
            if getattr(self, name) is None:
                setattr(self, name, getattr(row, name))
        check_config(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """A config from a dict, refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown config keys {sorted(unknown)}; known keys are {sorted(known)}.")
        return cls(**values)


def check_config(c: TrainConfig) -> None:
    """Raise ValueError naming the bad value and the limit."""
    one_of("split", c.split, SPLITS)
    one_of("train_part", c.train_part, TRAIN_PARTS)
    for name in ("n_query", "meta_batch_size", "iterations", "val_tasks", "log_every", "checkpoint_every"):
        positive_int(name, getattr(c, name))
    for name in ("inner_steps", "val_every", "eval_inner_steps", "inner_batch", "eval_inner_batch", "patience",
                 "val_n_way", "val_n_query"):
        non_negative_int(name, getattr(c, name))
    one_of("inner_optimizer", c.inner_optimizer, INNER_OPTIMIZERS)
    if not ALGORITHMS[c.algo].minibatch_inner_loop and (c.inner_optimizer != "sgd" or c.inner_batch or
                                                        c.eval_inner_batch):
        raise ValueError(f"{c.algo}'s inner loop is plain gradient descent on the whole support set; inner_optimizer, "
                         "inner_batch and eval_inner_batch are Reptile's (leave them out).")
    for name in ("inner_lr", "meta_lr"):
        positive_rate(name, getattr(c, name))
    for what, queries in (("n_query", c.n_query), ("val_n_query", c.val_n_query or c.n_query)):
        if c.dataset == "omniglot" and c.k_shot + queries > 20:
            raise ValueError(
                f"k_shot + {what} = {c.k_shot + queries} but Omniglot has 20 drawings per character; "
                f"keep k_shot + {what} <= 20."
            )
    if (c.patience or c.retrain) and not (c.val_every and c.train_part == "train"):
        raise ValueError("patience and retrain select a model on the validation characters: they need "
                         "train_part='train' and val_every > 0.")
    if c.dataset == "omniglot" and c.train_part == "trainval" and c.val_every:
        raise ValueError("train_part='trainval' trains on the validation characters, so validating on them measures "
                         "nothing; set val_every=0 (a final run) or train_part='train' (model selection).")


def protocol_config(dataset: str, algo: str, n_way: int, k_shot: int, **changes) -> TrainConfig:
    """The final run of a published cell: its paper's training tasks and settings, then changes. Trained on trainval,
    or, where the paper selects by validation (ProtoNets), on train with early stopping, then again on trainval."""
    if (dataset, algo, n_way, k_shot) not in PROTOCOLS:
        cells = sorted(f"{n}-way {k}-shot" for d, a, n, k in PROTOCOLS if (d, a) == (dataset, algo))
        raise ValueError(f"No published {n_way}-way {k_shot}-shot cell for {algo} on {dataset}; "
                         f"the table has {', '.join(cells) or 'none'}.")
    row = PROTOCOLS[(dataset, algo, n_way, k_shot)]
    settings = {name: getattr(row, name) for name in HYPERPARAMETERS}
    settings.update(n_way=row.train_ways or n_way, k_shot=row.train_shots or k_shot, train_part="trainval",
                    val_every=0)
    if row.patience:  # model selection on the validation characters, then the final run on trainval
        settings.update(train_part="train", val_every=row.val_every, val_tasks=row.val_tasks, patience=row.patience,
                        retrain=True)
    return TrainConfig(algo=algo, dataset=dataset, **{**settings, **changes})


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The network a config asks for: the MLP for sinusoids, the algorithm's own network for images."""
    if config.dataset == "sinusoid":
        return mlp()
    return ALGORITHMS[config.algo].image_model(config.n_way)


def build_algorithm(config: TrainConfig, model: torch.nn.Module) -> MetaLearner:
    """The algorithm a config asks for, with its inner-loop settings."""
    loss_fn = F.mse_loss if config.dataset == "sinusoid" else F.cross_entropy
    settings = dict(inner_lr=config.inner_lr, inner_steps=config.inner_steps, loss_fn=loss_fn)
    if ALGORITHMS[config.algo].minibatch_inner_loop:
        settings.update(inner_optimizer=config.inner_optimizer, inner_batch=config.inner_batch,
                        eval_inner_batch=config.eval_inner_batch, seed=config.seed)
    if config.first_order:  # only ever switches it on: fomaml and reptile are first-order already
        settings["first_order"] = True
    return make_algorithm(config.algo, model, **settings)


TaskSource = Callable[[int, int], Episode]  # (tasks, seed) -> Episode


def task_source(config: TrainConfig, part: str, device: torch.device, n_way: int | None = None,
                k_shot: int | None = None, n_query: int | None = None, data=None) -> TaskSource:
    """A function (tasks, seed) -> Episode on device for one part ("train", "val", "trainval", "test") of the data."""
    n_way = config.n_way if n_way is None else n_way
    k_shot = config.k_shot if k_shot is None else k_shot
    n_query = config.n_query if n_query is None else n_query
    if config.dataset == "sinusoid":
        offset = {"train": 0, "trainval": 0, "val": 1, "test": 2}[part]  # disjoint seed streams stand in for splits
        return lambda tasks, seed: sample_sinusoids(tasks, k_shot, n_query, seed=3 * seed + offset).episode.to(device)
    from .data import omniglot_classes

    images = omniglot_classes(config.split, part, data=data, device=device)
    sampler = EpisodeSampler(images, device_generator=images.is_cuda)  # on a GPU: random numbers drawn there
    return lambda tasks, seed: sampler.sample(tasks, n_way, k_shot, n_query, seed=seed)
