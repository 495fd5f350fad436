"""Baselines that involve no meta-learning, to measure what meta-learning adds.

- pixel_nearest_neighbour: label each query with its nearest support image in pixel space.
- pretrain_pooled: ordinary regression on all points of all training tasks pooled together
  (the "pretrained" baseline of the MAML sinusoid experiment).
- pretrain_classifier: ordinary supervised classification over all meta-training classes at once
  (the pre-training of Chen et al. 2019 and Tian et al. 2020).
- linear_probe, fine_tune_head: a new linear head fitted on a task's frozen support features
  (logistic regression as in Tian et al.; gradient descent from zero as in Chen et al.'s Baseline);
  FrozenFeatures wraps a pre-trained network and a head as a learner that evaluate() can score.
- save_pretrained, load_pretrained: the pre-trained feature network in one small file (results/baselines/).
- linear_cka: similarity of two representations of the same examples (Kornblith et al. 2019).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .algorithms import MetaLearner
from .tasks import Episode, episode_seed


def pixel_nearest_neighbour(episode: Episode) -> torch.Tensor:
    """Predicted labels (tasks, queries): the label of the support image closest in Euclidean pixel distance."""
    distances = torch.cdist(episode.x_query.flatten(2).float(), episode.x_support.flatten(2).float())  # (tasks, q, s)
    return episode.y_support.gather(1, distances.argmin(-1))  # (tasks, queries)


def pretrain_pooled(model: nn.Module, sample_tasks: Callable[[int, int], Episode], iterations: int,
                    tasks_per_batch: int, lr: float, seed: int,
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.mse_loss) -> list[float]:
    """Train model in place with Adam on every point of `tasks_per_batch` tasks at a time, tasks pooled
    into one dataset (no inner loop); batch t is sample_tasks(tasks_per_batch, episode_seed(seed, t)),
    the same batches meta-training with the same seed sees. Returns the loss of every batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for iteration in range(iterations):
        episode = sample_tasks(tasks_per_batch, episode_seed(seed, iteration))
        x = torch.cat([episode.x_support, episode.x_query], dim=1).flatten(0, 1)  # (tasks * points, ...)
        y = torch.cat([episode.y_support, episode.y_query], dim=1).flatten(0, 1)  # (tasks * points, ...)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------------------------
# Supervised pre-training and frozen-feature heads (Chen et al. 2019; Tian et al. 2020), and linear CKA
# (Kornblith et al. 2019) for comparing representations (Raghu et al. 2020's feature-reuse question).
# ---------------------------------------------------------------------------------------------------------

def pretrain_classifier(model: nn.Module, images: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int,
                        start: int = 0, optimizer: torch.optim.Optimizer | None = None,
                        callback: Callable[[int, torch.optim.Optimizer, list[float]], None] | None = None,
                        every: int = 100) -> list[float]:
    """Ordinary supervised pre-training: one classification problem over every class of `images`.

    images: (classes, examples, C, H, W), uint8 (scaled to [0, 1]) or float; the label of an image is its
    class index, so model must output one logit per class. Trains model in place with Adam, batch_size
    images at a time, the learning rate following a cosine from lr to 0 over `steps`. Batch t holds
    distinct images drawn with seed (seed, t), so a run is a pure function of (seed, step): pass start and
    the saved optimizer to resume it exactly. callback(steps_done, optimizer, losses) runs every `every`
    steps and after the last (to save a checkpoint). Returns the loss of every step from start.
    """
    classes, per_class = images.shape[:2]
    items = images.reshape(classes * per_class, *images.shape[2:])  # (items, C, H, W)
    labels = torch.arange(classes, device=images.device).repeat_interleave(per_class)  # (items,)
    if batch_size > len(items):
        raise ValueError(f"batch_size={batch_size} but there are only {len(items)} images.")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr) if optimizer is None else optimizer
    losses = []
    for step in range(start, steps):
        for group in optimizer.param_groups:  # cosine schedule: a pure function of the step, so resuming is exact
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        index = torch.randperm(len(items), generator=generator)[:batch_size].to(items.device)  # (batch,)
        x = items[index]
        x = x.float().div_(255) if x.dtype == torch.uint8 else x  # (batch, C, H, W)
        loss = F.cross_entropy(model(x), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        done = step + 1
        if callback is not None and (done % every == 0 or done == steps):
            callback(done, optimizer, losses)
    return losses


def embed_tasks(model: nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    """Features of a batch of tasks' images (tasks, points, C, H, W) -> (tasks, points, features), each task's
    images in one batch through the network with parameters params (so BatchNorm never mixes tasks)."""
    return vmap(lambda images: functional_call(model, params, (images,)))(x)


def _prepare(support_features: torch.Tensor, query_features: torch.Tensor, normalize: bool):
    """Detached float64 copies, L2-normalised along the feature dimension when normalize."""
    support, query = support_features.detach().double(), query_features.detach().double()
    if normalize:
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    return support, query


def linear_probe(support_features: torch.Tensor, y_support: torch.Tensor, query_features: torch.Tensor,
                 n_way: int | None = None, C: float = 1.0, normalize: bool = True, max_iter: int = 100) -> torch.Tensor:
    """Logistic regression on frozen features (Tian et al. 2020), every task fitted at once.

    support_features (tasks, support, d), y_support (tasks, support), query_features (tasks, queries, d).
    Per task, W and b minimise 0.5 * ||W||^2 + C * sum over the support set of the cross-entropy of
    W f + b: the objective of scikit-learn's LogisticRegression(C=C) (multinomial, bias not penalised),
    solved with L-BFGS. normalize: L2-normalise every feature vector first, as Tian et al. do.
    Returns the query logits (tasks, queries, n_way), in the dtype of query_features.
    """
    n_way = int(y_support.max()) + 1 if n_way is None else n_way
    support, query = _prepare(support_features, query_features, normalize)
    tasks, _, dim = support.shape
    weight = torch.zeros(tasks, n_way, dim, dtype=torch.float64, device=support.device, requires_grad=True)
    bias = torch.zeros(tasks, n_way, dtype=torch.float64, device=support.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def objective():  # the tasks' objectives are independent, so their sum has every task's optimum
        optimizer.zero_grad()
        logits = torch.einsum("tsd,tnd->tsn", support, weight) + bias[:, None]  # (tasks, support, n_way)
        cross_entropy = F.cross_entropy(logits.flatten(0, 1), y_support.flatten(), reduction="sum")
        loss = 0.5 * weight.pow(2).sum() + C * cross_entropy
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    logits = torch.einsum("tqd,tnd->tqn", query, weight.detach()) + bias.detach()[:, None]  # (tasks, queries, n_way)
    return logits.to(query_features.dtype)


def fine_tune_head(support_features: torch.Tensor, y_support: torch.Tensor, query_features: torch.Tensor,
                   n_way: int | None = None, steps: int = 100, lr: float = 0.1,
                   normalize: bool = False) -> torch.Tensor:
    """The test-time step of Chen et al. (2019)'s Baseline: a new linear head on frozen features.

    The head starts at zero and takes `steps` steps of full-batch gradient descent with rate lr on the
    mean cross-entropy of each task's support set (no weight decay; Chen et al. use mini-batch SGD with
    momentum). Shapes as in linear_probe; returns the query logits (tasks, queries, n_way).
    """
    n_way = int(y_support.max()) + 1 if n_way is None else n_way
    support, query = _prepare(support_features, query_features, normalize)
    tasks, n_support, dim = support.shape
    weight = torch.zeros(tasks, n_way, dim, dtype=torch.float64, device=support.device)
    bias = torch.zeros(tasks, n_way, dtype=torch.float64, device=support.device)
    one_hot = F.one_hot(y_support, n_way).double()  # (tasks, support, n_way)
    for _ in range(steps):  # the gradient of the mean cross-entropy, written out: (softmax - one-hot) / support
        logits = torch.einsum("tsd,tnd->tsn", support, weight) + bias[:, None]
        error = (logits.softmax(-1) - one_hot) / n_support  # (tasks, support, n_way)
        weight = weight - lr * torch.einsum("tsn,tsd->tnd", error, support)
        bias = bias - lr * error.sum(1)
    logits = torch.einsum("tqd,tnd->tqn", query, weight) + bias[:, None]  # (tasks, queries, n_way)
    return logits.to(query_features.dtype)


HEADS = {"linear_probe": linear_probe, "fine_tune_head": fine_tune_head}


@dataclass
class FrozenFeatures(MetaLearner):
    """A pre-trained network used as a few-shot learner, so evaluate() scores it like any meta-learner.

    model maps images to features (a Conv4 with n_way=None); params are its pre-trained weights, never
    changed. For each task: embed the support set (one batch) and the query set (one batch, like the
    transductive protocol of the meta-learners), fit a new linear head on the support features with
    `head` ("linear_probe" or "fine_tune_head", settings in head_settings) and return the query logits.
    """

    head: str = "linear_probe"
    head_settings: dict = field(default_factory=dict)
    inner_steps: int = 0
    name: str = field(default="frozen-features", init=False)
    fixed_ways = False  # a new head is fitted per task: any number of classes

    def __post_init__(self):
        super().__post_init__()
        if self.head not in HEADS:
            raise ValueError(f"Unknown head {self.head!r}; choose one of {', '.join(HEADS)}.")

    def predict(self, params, x_support, y_support, x_query, inner_steps=None):
        n_way = int(y_support.max()) + 1
        with torch.no_grad():
            support, query = embed_tasks(self.model, params, x_support), embed_tasks(self.model, params, x_query)
        return HEADS[self.head](support, y_support, query, n_way, **self.head_settings)  # (tasks, queries, n_way)

    def predict_each_query(self, params, x_support, y_support, x_query, inner_steps=None):
        """Each query embedded in one batch with the support set only; the head is fitted once."""
        n_way, n = int(y_support.max()) + 1, x_query.shape[0]
        with torch.no_grad():
            support = embed_tasks(self.model, params, x_support[None])  # (1, support, d)
            batches = torch.cat([x_support.expand(n, *x_support.shape), x_query.unsqueeze(1)], 1)  # (queries, S+1, ..)
            query = embed_tasks(self.model, params, batches)[:, -1]  # (queries, d)
        return HEADS[self.head](support, y_support[None], query[None], n_way, **self.head_settings)[0]

    def meta_gradient(self, params, episode):
        raise NotImplementedError("FrozenFeatures is a test-time learner; pre-train with pretrain_classifier.")


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear centred kernel alignment (Kornblith et al. 2019) of two representations of the same n examples.

    x (n, ...), y (n, ...), flattened to (n, p) and (n, q) and centred over the examples:
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F * ||Yc^T Yc||_F), computed from the n x n Gram matrices (cheap for
    wide layers). 1 when y is x up to a rotation, a reflection or a scale; near 0 for unrelated representations.
    """
    x = x.flatten(1).double()
    y = y.flatten(1).double()
    gram_x = (x - x.mean(0)) @ (x - x.mean(0)).T  # (n, n)
    gram_y = (y - y.mean(0)) @ (y - y.mean(0)).T
    return (gram_x * gram_y).sum() / (torch.linalg.matrix_norm(gram_x) * torch.linalg.matrix_norm(gram_y))


PRETRAINED_VERSION = 1


def save_pretrained(path, model: nn.Module, **info) -> None:
    """Save a pre-trained feature network (its weights without the classification head) and `info`
    (steps done, data, settings) in one small file, atomically."""
    from .data import save_atomic

    body = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("head.")}
    save_atomic({"version": PRETRAINED_VERSION, "params": body, "info": info}, path)


def load_pretrained(path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict, dict]:
    """(model, params, info) from save_pretrained's file: a fastadapt.Conv4 without head (image -> features),
    its weights as a params dict, and the saved info."""
    from .models import Conv4, params_of

    blob = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(blob, dict) or blob.get("version") != PRETRAINED_VERSION:
        raise ValueError(f"{path} is not a pre-trained network saved by fastadapt.baselines.save_pretrained.")
    model = Conv4(n_way=None, **blob["info"].get("network", {})).to(device)
    model.load_state_dict(blob["params"])
    return model, params_of(model), blob["info"]
