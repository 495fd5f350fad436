"""Evaluation: mean accuracy (or MSE) over many new tasks with a 95% confidence interval."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .algorithms import MetaLearner
from .checks import non_negative_int, positive_int
from .core import accuracy
from .tasks import Episode


def confidence_interval(values: torch.Tensor) -> float:
    """Half-width of the 95% interval of the mean: 1.96 * std / sqrt(n) (sample std)."""
    n = values.numel()
    return float(1.96 * values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


def predict_queries(algorithm: MetaLearner, params: dict, x_support: torch.Tensor, y_support: torch.Tensor,
                    x_query: torch.Tensor, inner_steps: int | None = None, transductive: bool = False) -> torch.Tensor:
    """Outputs (queries, n_way) for one task. transductive=False classifies each query with the support set
    only (the algorithm's predict_each_query); True runs all queries as one batch. No graph is kept: the
    inner loop's gradients are torch.func transforms, which an outer no_grad does not switch off."""
    with torch.no_grad():
        if transductive:
            return algorithm.predict(params, x_support[None], y_support[None], x_query[None], inner_steps)[0]
        return algorithm.predict_each_query(params, x_support, y_support, x_query, inner_steps)


def task_seed(seed: int, task: int) -> int:
    """The seed of test task number `task`: the tasks drawn never depend on how they are batched."""
    return seed * 1_000_003 + 7_919 + task


def evaluate(algorithm: MetaLearner, params: dict, sample_tasks, tasks: int = 1000, seed: int = 0,
             inner_steps: int | None = None, batch: int = 25, progress: bool = True,
             return_scores: bool = False, transductive: bool = True) -> dict:
    """Adapt to `tasks` new tasks, task i drawn by sample_tasks(1, task_seed(seed, i)), and score each on its
    query set, `batch` tasks at a time; transductive=False classifies each query alone (predict_queries);
    return_scores adds the per-task scores ("scores", a tensor) for paired comparisons. Classification also
    gives "loss", the mean over tasks of the query cross-entropy. The network is used in the mode it is in
    (load_checkpoint gives it in eval(), the mode the published protocols test in)."""
    from tqdm import tqdm

    positive_int("tasks", tasks)
    positive_int("batch", batch)
    if inner_steps is not None:
        non_negative_int("inner_steps", inner_steps)
    scores, losses, n_way, k_shot = [], [], None, None
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    for start in tqdm(range(0, tasks, batch), desc="evaluating", disable=not progress, leave=False):
        drawn = [sample_tasks(1, task_seed(seed, i)) for i in range(start, min(start + batch, tasks))]
        episode = Episode(*(torch.cat(parts) for parts in zip(*drawn)))  # (batch, ...) each
        with torch.no_grad():
            if transductive:
                outputs = algorithm.predict(params, episode.x_support, episode.y_support, episode.x_query, inner_steps)
            else:
                outputs = torch.stack([algorithm.predict_each_query(params, *task, inner_steps)
                                       for task in zip(episode.x_support, episode.y_support, episode.x_query)])
        if episode.y_query.is_floating_point():
            scores.append((outputs - episode.y_query).pow(2).flatten(1).mean(1).cpu())  # (batch,) MSE per task
        else:
            scores.append(accuracy(outputs, episode.y_query).cpu())  # (batch,)
            losses.append(F.cross_entropy(outputs.flatten(0, 1), episode.y_query.flatten(), reduction="none")
                          .view(outputs.shape[:2]).mean(1).cpu())  # (batch,) mean query loss per task
            n_way = int(episode.y_support.max()) + 1
            k_shot = episode.y_support.shape[1] // n_way
    scores = torch.cat(scores).double()
    steps = algorithm.inner_steps if inner_steps is None else inner_steps
    result = {"mse" if n_way is None else "accuracy": float(scores.mean()), "ci95": confidence_interval(scores),
              "tasks": tasks, **({} if n_way is None else {"n_way": n_way, "k_shot": k_shot,
                                                           "loss": float(torch.cat(losses).double().mean())}),
              "inner_steps": steps, "transductive": transductive}
    return {**result, "scores": scores} if return_scores else result


def lake_one_shot_tasks(data, n_way: int = 20, device: str | torch.device = "cpu"):
    """A task source (tasks, seed) -> Episode for Lake et al.'s (2015) one-shot protocol: each task takes n_way
    characters of one alphabet of images_evaluation (the alphabet uniformly at random among those with at least
    n_way characters, then the characters), one support drawing of each character by one drawer and one query
    drawing of each by another drawer (the two drawers random per task). Unrotated 28x28 images in [0, 1].

    The 20 official runs of brendenlake/omniglot (python/one-shot-classification/all_runs.zip) hold copies of the
    images without their character names, so this sampler draws tasks with the same structure instead. People
    make 4.5% errors on those runs (Lake et al. 2015)."""
    from .checks import positive_int

    positive_int("n_way", n_way)
    evaluation = (~data.background).nonzero().squeeze(1)  # (659,) characters of the 20 evaluation alphabets
    names = sorted({data.alphabets[i] for i in evaluation.tolist()})
    alphabets = [evaluation[torch.tensor([data.alphabets[i] == a for i in evaluation.tolist()])] for a in names]
    alphabets = [characters for characters in alphabets if len(characters) >= n_way]
    if not alphabets:
        raise ValueError(f"n_way={n_way} but no evaluation alphabet has that many characters; choose n_way <= 47.")
    images = data.images.to(device)  # (characters, 20 drawers, 28, 28) uint8
    labels = torch.arange(n_way, device=images.device)

    def sample(tasks: int, seed: int) -> Episode:
        generator = torch.Generator().manual_seed(int(seed))
        support, query = [], []
        for _ in range(tasks):
            alphabet = alphabets[int(torch.randint(len(alphabets), (1,), generator=generator))]
            characters = alphabet[torch.randperm(len(alphabet), generator=generator)[:n_way]].to(images.device)
            drawers = torch.randperm(images.shape[1], generator=generator)[:2].tolist()  # support drawer, query drawer
            support.append(images[characters, drawers[0]])  # (n_way, 28, 28), class c = characters[c]
            query.append(images[characters, drawers[1]])
        as_float = lambda x: torch.stack(x).unsqueeze(2).float().div_(255)  # noqa: E731  (tasks, n_way, 1, 28, 28)
        y = labels.expand(tasks, n_way)
        return Episode(as_float(support), y, as_float(query), y)

    return sample
