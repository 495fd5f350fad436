"""Helpers the application chapters share: a meta-learned model from the committed results (or trained
briefly when there are none), and the baseline every application needs, one network per task trained
from scratch on that task's support set.

- `meta_learned(algo, n_way, k_shot, ...)`: the committed run of an Omniglot table cell
  (results/omniglot/<algo>-<N>w<K>s.json and its checkpoint), else a short run trained here.
- `train_from_scratch(make_model, x_support, y_support, x_query, steps, lr, seed)`: a fresh network per
  task, trained with Adam on its support set, all tasks at once; query outputs after each step count.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap


@dataclass
class MetaLearned:
    """A meta-learned model ready to evaluate, and where it came from."""

    algorithm: object  # a fastadapt MetaLearner
    params: dict
    config: object  # the fastadapt.TrainConfig it was trained with
    source: str  # "results" (a committed run) or "trained here" (a short run in this process)
    iterations_done: int
    iterations_total: int
    cell: dict | None = None  # the committed results cell (accuracy, ci95, paper, ...) when source == "results"
    records: list = field(default_factory=list)  # the metrics.jsonl records, when they are at hand

    @property
    def complete(self) -> bool:
        """True when the run did all the meta-iterations of its protocol."""
        if self.cell is not None and "complete" in self.cell:
            return bool(self.cell["complete"])
        return self.iterations_done >= self.iterations_total

    def describe(self) -> str:
        """One line: what the model is and how much of its training it had."""
        c = self.config
        what = f"{c.algo} {c.n_way}-way {c.k_shot}-shot"
        if self.source == "results":
            state = "complete" if self.complete else "NOT complete"
            return (f"{what}: committed run {self.cell['run']} ({self.iterations_done:,} of "
                    f"{self.iterations_total:,} meta-iterations, {state})")
        return (f"{what}: no committed run found, trained here for {self.iterations_done:,} meta-iterations of "
                f"{c.meta_batch_size} tasks (a short run, far from the paper's protocol)")


def meta_learned(algo: str, n_way: int, k_shot: int, iterations: int, seed: int = 0, data=None,
                 device: str | torch.device = "cpu", download: bool = True, **settings) -> MetaLearned:
    """The committed run of the Omniglot cell `<algo>-<n_way>w<k_shot>s`, else a short run trained here.

    A committed cell is results/omniglot/<algo>-<N>w<K>s.json (found by fastadapt.results) whose `run`
    folder holds checkpoint.pt and metrics.jsonl. When there is none, `iterations` meta-iterations with
    the table's settings for the cell (overridden by `settings`, e.g. meta_batch_size=8) are run in a
    temporary folder, without validation.
    """
    import fastadapt
    from fastadapt import results

    cell = results.load_result(f"omniglot/{algo}-{n_way}w{k_shot}s.json", download=download)
    if cell is not None:
        checkpoint = results.find_result(f"{cell['run']}/checkpoint.pt", download=download)
        if checkpoint is not None:
            config, algorithm, params = fastadapt.load_checkpoint(checkpoint, device=device)
            metrics = results.find_result(f"{cell['run']}/metrics.jsonl", download=download)
            records = fastadapt.read_metrics(metrics) if metrics is not None else []
            done = int(cell.get("iterations_done", config.iterations))
            total = int(cell.get("iterations_total", config.iterations))
            return MetaLearned(algorithm, params, config, "results", done, total, cell, records)
    config = fastadapt.TrainConfig(algo=algo, dataset="omniglot", n_way=n_way, k_shot=k_shot, iterations=iterations,
                                   seed=seed, val_every=0, **settings)
    with tempfile.TemporaryDirectory(prefix=f"fastadapt_{algo}_") as out:
        params = fastadapt.train(config, out, device=device, progress=False, data=data)
        records = fastadapt.read_metrics(f"{out}/metrics.jsonl")
    algorithm = fastadapt.build_algorithm(config, fastadapt.build_model(config).to(device))
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    return MetaLearned(algorithm, params, config, "trained here", iterations, iterations, None, records)


def train_from_scratch(make_model: Callable[[], nn.Module], x_support: torch.Tensor, y_support: torch.Tensor,
                       x_query: torch.Tensor, steps: Sequence[int], lr: float, seed: int,
                       loss_fn=F.cross_entropy) -> torch.Tensor:
    """Train a fresh network per task on its support set with Adam; its query outputs after each of `steps`.

    Task t's network is make_model() initialised under torch.manual_seed(seed + t) (the global random
    state is restored afterwards), so a task's result does not depend on the other tasks in the batch.
    The networks are trained side by side: their weights are stacked, their outputs computed with vmap,
    and one Adam optimizer steps on the sum of their losses. Adam works entry by entry and each task's
    loss depends only on its own weights, so this is exactly T independent trainings, only faster.
    Query outputs are computed with the whole query set of a task as one batch. loss_fn must be a mean
    over points (like F.cross_entropy and F.mse_loss), so that tasks * loss_fn(all points) is the sum of
    the tasks' own losses.

    x_support (tasks, support, ...), y_support (tasks, support, ...), x_query (tasks, query, ...);
    returns (len(steps), tasks, query, ...) outputs.
    """
    steps = list(steps)
    if not steps or any(b < a for a, b in zip(steps, steps[1:])) or steps[0] < 0:
        raise ValueError(f"steps must be ascending step counts (0 or more), got {steps}.")
    tasks = x_support.shape[0]
    models = []
    with torch.random.fork_rng(devices=[]):
        for t in range(tasks):
            torch.manual_seed(seed + t)
            models.append(make_model().to(x_support.device))
    stacked, _ = stack_module_state(models)  # {name: (tasks, ...)}
    params = {k: v.detach().clone().requires_grad_(True) for k, v in stacked.items()}
    base = models[0]
    forward = vmap(lambda p, x: functional_call(base, p, (x,)))
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    outputs, done = [], 0
    for target in steps:
        for _ in range(target - done):
            predictions = forward(params, x_support)  # (tasks, support, ...)
            loss = loss_fn(predictions.flatten(0, 1), y_support.flatten(0, 1)) * tasks  # sum of per-task means
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        done = target
        with torch.no_grad():
            outputs.append(forward(params, x_query))  # (tasks, query, ...)
    return torch.stack(outputs)
