"""Reptile (Nichol et al. 2018): move the initialization towards the adapted weights."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.func import functional_call, grad, vmap

from ..checks import non_negative_int, one_of
from ..core import Params, _autograd_grads, adapt, batched_loss
from .base import MetaLearner, metrics


def minibatch_order(n_images: int, batch: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """(steps, batch) image indices: consecutive mini-batches of a stream of reshuffled passes over the images,
    a batch running on into the next pass (supervised-reptile's _mini_batches); batch 0: every image each step."""
    if batch == 0:
        return torch.arange(n_images).expand(steps, n_images)
    passes, items, stream = -(-steps * batch // n_images), torch.arange(n_images), []  # passes: ceil
    for _ in range(passes):  # random.shuffle of the same list again and again
        items = items[torch.randperm(n_images, generator=generator)]
        stream.append(items)
    return torch.cat(stream)[:steps * batch].view(steps, batch)


def adam_steps(loss_of, phi: Params, order: torch.Tensor, lr: float, v: Params, count: torch.Tensor, beta2: float,
               eps: float, functional: bool) -> tuple[Params, Params, torch.Tensor]:
    """Adam with beta1 = 0 (so its first moment is the gradient itself) on mini-batches order[j], j = 0, 1, ...:
    v <- beta2 v + (1 - beta2) g^2, phi <- phi - lr g / (sqrt(v / (1 - beta2^t)) + eps). Returns (phi, v, t)."""
    for indices in order:
        grads = grad(loss_of)(phi, indices) if functional else _autograd_grads(lambda p: loss_of(p, indices), phi,
                                                                               first_order=True)
        count = count + 1
        correction = 1 - beta2 ** count
        v = {k: beta2 * v[k] + (1 - beta2) * g.detach() ** 2 for k, g in grads.items()}
        phi = {k: phi[k] - lr * grads[k].detach() / ((v[k] / correction).sqrt() + eps) for k in phi}
    return phi, v, count


@dataclass
class Reptile(MetaLearner):
    """Meta-gradient theta - mean(phi_task), where phi_task is theta after the inner loop on the task's support set.

    A meta-optimizer step of SGD with learning rate eps gives theta + eps * (mean(phi) - theta);
    eps is annealed linearly to 0 over the run, as in the paper's code (--meta-step-final 0).
    The inner loop is plain gradient descent on the whole support set, or (inner_optimizer="adam", the
    published Omniglot setting) Adam with beta1 = 0 on mini-batches of inner_batch images that cycle through
    the reshuffled support set. As in the paper's code, the inner Adam's state carries over from one task to
    the next (only the weights are reset); at test time each task starts from that state and leaves it as it was.
    """

    inner_lr: float = 0.1
    inner_steps: int = 5
    first_order: bool = True
    inner_optimizer: str = "sgd"  # "sgd" or "adam"
    inner_batch: int = 0  # images per inner step (0: the whole support set)
    eval_inner_batch: int = 0  # the same at test time
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    seed: int = 0  # of the mini-batch order in meta-training
    name: str = field(default="reptile", init=False)
    schedule_spans_iterations = True  # the step size reaches 0 at the last iteration
    minibatch_inner_loop = True

    def __post_init__(self):
        super().__post_init__()
        one_of("inner_optimizer", self.inner_optimizer, ("sgd", "adam"))
        non_negative_int("inner_batch", self.inner_batch)
        non_negative_int("eval_inner_batch", self.eval_inner_batch)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.adam_v: Params | None = None  # the inner Adam's second moments, carried from task to task
        self.adam_count = torch.zeros(())  # its step count

    @property
    def sequential(self) -> bool:
        return self.inner_optimizer == "adam" and not self.vectorize

    def make_optimizer(self, params, meta_lr, iterations):
        """SGD with step size meta_lr * (1 - t / iterations) at iteration t (0-based)."""
        optimizer = torch.optim.SGD(list(params.values()), lr=meta_lr)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: max(0.0, 1 - t / iterations))

    def state_dict(self) -> dict:
        if self.inner_optimizer == "sgd" and not self.inner_batch:
            return {}
        return {"generator": self.generator.get_state(), "adam_count": self.adam_count,
                "adam_v": {} if self.adam_v is None else self.adam_v}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.generator.set_state(state["generator"])
            self.adam_count = state["adam_count"]
            self.adam_v = state["adam_v"] or None

    def _plain(self) -> bool:
        return self.inner_optimizer == "sgd" and not self.inner_batch and not self.eval_inner_batch

    def _inner(self, theta: Params, x_support, y_support, order, functional: bool, state=None):
        """phi (and the inner Adam's new state) after len(order) inner steps on mini-batches order[j]."""
        def loss_of(phi, indices):
            return self.loss_fn(functional_call(self.model, phi, (x_support[indices],)), y_support[indices])

        if self.inner_optimizer == "adam":
            v, count = state
            return adam_steps(loss_of, theta, order, self.inner_lr, v, count, self.adam_beta2, self.adam_eps,
                              functional)
        phi = theta
        for indices in order:
            grads = grad(loss_of)(phi, indices) if functional else _autograd_grads(lambda p: loss_of(p, indices),
                                                                                   phi, first_order=True)
            phi = {k: phi[k] - self.inner_lr * grads[k].detach() for k in phi}
        return phi, None, None

    def _start_state(self, theta: Params):
        v = self.adam_v if self.adam_v is not None else {k: torch.zeros_like(p) for k, p in theta.items()}
        return {k: t.to(theta[k].device) for k, t in v.items()}, self.adam_count.to(next(iter(theta.values())).device)

    def adapt_task(self, params, x_support, y_support, inner_steps=None):
        """Test-time adaptation of one task: inner_steps (default: this algorithm's) on eval_inner_batch mini-batches,
        the mini-batch order drawn from a generator seeded by the support images (independent of batching)."""
        steps = self.inner_steps if inner_steps is None else inner_steps
        if self._plain():
            return adapt(self.model, params, x_support, y_support, **self.adapt_kwargs(params, steps))
        theta = {k: p.detach() for k, p in params.items()}
        seed = int(x_support.double().sum().mul(1000).round()) % (2 ** 62)
        order = minibatch_order(len(x_support), self.eval_inner_batch, steps, torch.Generator().manual_seed(seed))
        phi, _, _ = self._inner(theta, x_support, y_support, order.to(x_support.device), functional=False,
                                state=self._start_state(theta))
        return phi

    def predict(self, params, x_support, y_support, x_query, inner_steps=None):
        if self._plain():
            return super().predict(params, x_support, y_support, x_query, inner_steps)
        return torch.stack([functional_call(self.model, self.adapt_task(params, xs, ys, inner_steps), (xq,))
                            for xs, ys, xq in zip(x_support, y_support, x_query)])  # (tasks, queries, ...)

    def meta_gradient(self, params, episode):
        theta = {k: p.detach() for k, p in params.items()}
        tasks, support = episode.x_support.shape[:2]
        if self._plain():
            kwargs = self.adapt_kwargs(theta)
            phis = [adapt(self.model, theta, xs, ys, functional=False, **kwargs)
                    for xs, ys in zip(episode.x_support, episode.y_support)]
        else:
            orders = torch.stack([minibatch_order(support, self.inner_batch, self.inner_steps, self.generator)
                                  for _ in range(tasks)]).to(episode.x_support.device)  # (tasks, steps, batch)
            phis = self._meta_batch(theta, episode, orders)
        grads = {k: sum(theta[k] - phi[k].detach() for phi in phis) / tasks for k in theta}
        with torch.no_grad():  # metrics from the same adapted weights, no second adaptation
            outputs = torch.stack([functional_call(self.model, phi, (xq,)) for phi, xq in zip(phis, episode.x_query)])
        return grads, metrics(batched_loss(outputs, episode.y_query, self.loss_fn), outputs, episode.y_query)

    def _meta_batch(self, theta, episode, orders) -> list[Params]:
        """Each task's phi. Sequential (the published order: each task's inner Adam continues the previous task's
        state), or with vectorize=True all tasks at once under vmap, each starting from the same state, after which
        the carried state is their mean (faster where vmap pays, not the published arithmetic)."""
        state = self._start_state(theta)
        if self.vectorize:
            def one(xs, ys, order):
                phi, v, _ = self._inner(theta, xs, ys, order, functional=True, state=state)
                return phi, v
            phis, vs = vmap(one, randomness="same")(episode.x_support, episode.y_support, orders)
            self.adam_v = {k: v.mean(0) for k, v in vs.items()} if vs is not None else None
            self.adam_count = state[1] + orders.shape[1]
            return [{k: p[i] for k, p in phis.items()} for i in range(len(orders))]
        phis = []
        for xs, ys, order in zip(episode.x_support, episode.y_support, orders):
            phi, *state = self._inner(theta, xs, ys, order, functional=False, state=state)
            phis.append(phi)
        if self.inner_optimizer == "adam":
            self.adam_v, self.adam_count = state
        return phis
