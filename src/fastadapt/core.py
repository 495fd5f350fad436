"""The functional core: adapt a params dict to a task with a few gradient steps, batched over tasks.

Parameters are a dict of tensors and the model is used through torch.func.functional_call, so
adapting is a pure function: params in, adapted params out. Second-order by default (the outer
gradient flows through the inner steps); first_order=True detaches the inner gradients.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def adapt(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    inner_steps: int,
    inner_lr: float | Params,
    loss_fn: LossFn = F.cross_entropy,
    first_order: bool = False,
    adapt_keys: list[str] | None = None,
    functional: bool = True,
) -> Params:
    """`inner_steps` of gradient descent on one task's support set; inner_lr is a float or a
    per-parameter dict (Meta-SGD); adapt_keys limits adaptation to some parameters (ANIL).
    functional=False takes the gradients with torch.autograd.grad (same numbers, a little faster
    outside vmap on a CPU); the default torch.func.grad also works under vmap."""
    keys = list(params) if adapt_keys is None else adapt_keys
    fast = {k: params[k] for k in keys}
    frozen = {k: v for k, v in params.items() if k not in fast}

    def support_loss(fast: Params) -> torch.Tensor:
        outputs = functional_call(model, {**frozen, **fast}, (x_support,))  # (n_way * k_shot, n_way)
        return loss_fn(outputs, y_support)

    for _ in range(inner_steps):
        grads = grad(support_loss)(fast) if functional else _autograd_grads(support_loss, fast, first_order)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        fast = {k: fast[k] - (inner_lr[k] if isinstance(inner_lr, dict) else inner_lr) * grads[k] for k in fast}
    return {**frozen, **fast}


def _autograd_grads(loss_of: Callable[[Params], torch.Tensor], fast: Params, first_order: bool) -> Params:
    """torch.autograd.grad of loss_of(fast), keeping the graph for second order unless first_order."""
    with torch.enable_grad():
        fast = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in fast.items()}
        grads = torch.autograd.grad(loss_of(fast), list(fast.values()), create_graph=not first_order)
    return dict(zip(fast, grads))


def query_outputs(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    x_query: torch.Tensor,
    **adapt_kwargs,
) -> torch.Tensor:
    """Adapt on one task's support set, then predict its query set."""
    adapted = adapt(model, params, x_support, y_support, **adapt_kwargs)
    return functional_call(model, adapted, (x_query,))  # (n_way * n_query, n_way)


def default_vectorize(x_support: torch.Tensor, x_query: torch.Tensor) -> bool:
    """vmap over tasks on a GPU, and on a CPU for non-image inputs or tasks of at most 10 images.

    Measured on a 2-core CPU (benchmarks/bench_algorithms.py): once adapted weights differ per task,
    vmap turns every convolution into a grouped one, which beats a loop over tasks for 10 images
    per task (5-way 1-shot, 1 query) but loses from 30 upwards; for the sinusoid MLP vmap always wins.
    """
    if x_support.is_cuda:
        return True
    images_per_task = x_support.shape[1] + x_query.shape[1]
    return x_support.dim() <= 3 or images_per_task <= 10


def batched_query_outputs(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    x_query: torch.Tensor,
    vectorize: bool | None = None,
    **adapt_kwargs,
) -> torch.Tensor:
    """query_outputs for a batch of tasks, with vmap or with a loop over tasks (same numbers)."""
    vectorize = default_vectorize(x_support, x_query) if vectorize is None else vectorize
    if vectorize:
        task = lambda xs, ys, xq: query_outputs(model, params, xs, ys, xq, **adapt_kwargs)  # noqa: E731
        return vmap(task, randomness="same")(x_support, y_support, x_query)  # (tasks, n_way * n_query, n_way)
    outputs = [query_outputs(model, params, xs, ys, xq, functional=False, **adapt_kwargs)
               for xs, ys, xq in zip(x_support, y_support, x_query)]
    return torch.stack(outputs)  # (tasks, n_way * n_query, n_way)


def batched_loss(outputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn = F.cross_entropy) -> torch.Tensor:
    """Mean over tasks of each task's loss; outputs (tasks, points, ...), targets (tasks, points, ...)."""
    return loss_fn(outputs.flatten(0, 1), targets.flatten(0, 1))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of correct argmax predictions per task: logits (tasks, points, n_way) -> (tasks,)."""
    return (logits.argmax(-1) == labels).float().mean(-1)


def maml_loss_reference(
    model: nn.Module,
    params: Params,
    x_support: torch.Tensor,
    y_support: torch.Tensor,
    x_query: torch.Tensor,
    y_query: torch.Tensor,
    inner_steps: int,
    inner_lr: float,
    loss_fn: LossFn = F.cross_entropy,
    first_order: bool = False,
) -> torch.Tensor:
    """The readable reference: MAML's meta-loss with a Python loop over tasks and autograd.grad."""
    losses = []
    for xs, ys, xq, yq in zip(x_support, y_support, x_query, y_query):
        fast = dict(params)
        for _ in range(inner_steps):
            support_loss = loss_fn(functional_call(model, fast, (xs,)), ys)
            grads = torch.autograd.grad(support_loss, list(fast.values()), create_graph=not first_order)
            fast = {k: w - inner_lr * g for (k, w), g in zip(fast.items(), grads)}
        losses.append(loss_fn(functional_call(model, fast, (xq,)), yq))
    return torch.stack(losses).mean()
