"""Meta-reinforcement learning on MAML's 2-D point navigation (Finn et al. 2017, section 5.3), batched in torch.

A task is a goal g drawn uniformly from the square [-0.5, 0.5]^2. The agent starts at the origin, observes
its position (never the goal), and moves by a velocity command clipped to [-0.1, 0.1] per coordinate; the
reward of a step is minus the distance to the goal after the move. Everything it learns about the goal
comes from rewards, so adapting to a task means a few policy-gradient steps on its own trajectories.

- `sample_goals`, `step`: the tasks and the dynamics, for many tasks and trajectories at once.
- `GaussianPolicy`: pi(a | s) = N(mean(s), diag(std^2)), an MLP for the mean and one learned log std per
  action coordinate; it returns mean and log std side by side, so `fastadapt.adapt` can use it as is.
- `rollout`: trajectories of a policy (one set of weights, or one per task) on every task.
- `advantages`, `policy_gradient_loss`, `policy_gradient_data`: the REINFORCE surrogate, packed as
  (inputs, targets) so that an inner step is `fastadapt.adapt(policy, params, x, y, 1, lr, policy_gradient_loss)`.
- `adapt_policy`, `returns_after_steps`: the inner loop of MAML-RL and its measurement.
- `fomaml_loss`, `multitask_loss`: the outer objectives of first-order MAML-RL and of the multi-task baseline.

Actions are in units of the speed limit: the policy's output a moves the agent by 0.1 * clip(a, -1, 1), so
a policy with standard deviation 1 explores at the speed limit. The paper's policy outputs the velocity
itself; the two differ only by a constant factor on the mean and a constant shift of the log std.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, vmap

from .core import adapt

Params = dict[str, torch.Tensor]
MAX_SPEED = 0.1  # largest move per time step and coordinate
GOAL_RANGE = (-0.5, 0.5)  # goals are uniform in this square


def make_generator(seed: int | torch.Generator) -> torch.Generator:
    """A CPU generator from an int seed (or the generator itself): every random draw here is reproducible."""
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"Pass an int seed or a torch.Generator, got {seed!r}.")
    return torch.Generator().manual_seed(seed)


def sample_goals(tasks: int, seed: int | torch.Generator, low: float = GOAL_RANGE[0],
                 high: float = GOAL_RANGE[1]) -> torch.Tensor:
    """`tasks` goals drawn uniformly from the square [low, high]^2: (tasks, 2)."""
    generator = make_generator(seed)
    return low + (high - low) * torch.rand(tasks, 2, generator=generator)


def step(position: torch.Tensor, action: torch.Tensor, goal: torch.Tensor,
         max_speed: float = MAX_SPEED) -> tuple[torch.Tensor, torch.Tensor]:
    """One move of every agent: position + max_speed * clip(action, -1, 1); reward minus the new distance to goal.

    position, action: (..., 2); goal broadcasts against them. Returns (new position (..., 2), reward (...)).
    """
    moved = position + max_speed * action.clamp(-1.0, 1.0)
    return moved, -(moved - goal).norm(dim=-1)


class GaussianPolicy(nn.Module):
    """A Gaussian policy: an MLP (`layers` hidden ReLU layers) for the mean, a learned log std per coordinate.

    forward(observations (..., obs)) returns (..., 2 * act): the mean, then the log std (the same for
    every observation). The last layer is named `head`, the log std `log_std`.
    """

    def __init__(self, obs: int = 2, act: int = 2, hidden: int = 100, layers: int = 2, log_std: float = 0.0):
        super().__init__()
        sizes = [obs] + [hidden] * layers
        blocks = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(sizes[-1], act)
        self.log_std = nn.Parameter(torch.full((act,), float(log_std)))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        mean = self.head(self.body(observations))  # (..., act)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)  # (..., 2 * act)


def gaussian_log_prob(outputs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log pi(a | s) of diagonal Gaussians: outputs (..., 2 * act) = (mean, log std), actions (..., act) -> (...)."""
    mean, log_std = outputs.chunk(2, dim=-1)
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def policy_gradient_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The REINFORCE surrogate to minimise: -mean over samples of log pi(a | s) * advantage.

    outputs: (..., 2 * act) policy outputs at the sampled states; targets: (..., act + 1), the sampled
    action and then its advantage (a constant: no gradient flows into it). Its gradient is an unbiased
    estimate of minus the gradient of the expected return per time step (Williams 1992).
    """
    actions, advantage = targets[..., :-1], targets[..., -1]
    return -(gaussian_log_prob(outputs, actions) * advantage.detach()).mean()


class Rollouts(NamedTuple):
    """Trajectories of `trajectories` agents on each of `tasks` tasks, `horizon` steps each."""

    observations: torch.Tensor  # (tasks, trajectories, horizon, 2): the position before each move
    actions: torch.Tensor  # (tasks, trajectories, horizon, 2): the sampled (unclipped) actions
    rewards: torch.Tensor  # (tasks, trajectories, horizon)

    def returns(self) -> torch.Tensor:
        """Undiscounted return of every trajectory: (tasks, trajectories)."""
        return self.rewards.sum(-1)


def policy_outputs(policy: nn.Module, params: Params, observations: torch.Tensor, per_task: bool) -> torch.Tensor:
    """Policy outputs for observations (tasks, ...): one set of weights for all, or (per_task) one per task."""
    if per_task:
        return vmap(lambda p, o: functional_call(policy, p, (o,)))(params, observations)
    return functional_call(policy, params, (observations,))


@torch.no_grad()
def rollout(policy: nn.Module, params: Params, goals: torch.Tensor, trajectories: int, horizon: int,
            seed: int | torch.Generator, per_task: bool = False) -> Rollouts:
    """Sample `trajectories` trajectories of `horizon` steps from the origin for every goal (tasks, 2).

    params: the policy's weights, shared by all tasks, or (per_task=True) with a leading tasks dimension.
    The exploration noise comes from `seed` (an int or a torch.Generator), drawn outside the policy.
    """
    generator = make_generator(seed)
    tasks = goals.shape[0]
    position = torch.zeros(tasks, trajectories, 2, device=goals.device)  # every agent starts at the origin
    observations, actions, rewards = [], [], []
    for _ in range(horizon):
        mean, log_std = policy_outputs(policy, params, position, per_task).chunk(2, dim=-1)
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        action = mean + log_std.exp() * noise  # (tasks, trajectories, 2)
        observations.append(position)
        position, reward = step(position, action, goals[:, None, :])
        actions.append(action)
        rewards.append(reward)
    return Rollouts(torch.stack(observations, 2), torch.stack(actions, 2), torch.stack(rewards, 2))


def rewards_to_go(rewards: torch.Tensor, discount: float) -> torch.Tensor:
    """sum_{t' >= t} discount^(t' - t) r_t' for every t: (..., horizon) -> (..., horizon)."""
    out, running = torch.empty_like(rewards), torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = rewards[..., t] + discount * running
        out[..., t] = running
    return out


def advantages(rewards: torch.Tensor, discount: float = 0.99, normalize: bool = False) -> torch.Tensor:
    """Advantage of every step: reward-to-go minus a leave-one-out baseline, (tasks, trajectories, horizon).

    The baseline of trajectory k at time t is the mean reward-to-go at time t of the task's other
    trajectories; it does not depend on trajectory k's own actions, so the estimator stays unbiased.
    normalize rescales each task's advantages to mean 0 and standard deviation 1 (as MAML's code does):
    the direction of the step is unchanged, but its size no longer shrinks as a task's trajectories come
    to agree, so repeated steps overshoot; the default keeps the raw advantages.
    """
    to_go = rewards_to_go(rewards, discount)  # (tasks, trajectories, horizon)
    n = to_go.shape[1]
    if n < 2:
        raise ValueError("advantages need at least 2 trajectories per task for the leave-one-out baseline.")
    baseline = (to_go.sum(1, keepdim=True) - to_go) / (n - 1)
    advantage = to_go - baseline
    if normalize:
        flat = advantage.flatten(1)  # (tasks, trajectories * horizon)
        advantage = ((flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + 1e-8)).view_as(advantage)
    return advantage


def policy_gradient_data(rollouts: Rollouts, discount: float = 0.99,
                         normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's trajectories as a support set for `adapt`: x (tasks, samples, 2), y (tasks, samples, 3).

    x holds the observations; y the actions and, last, their advantages; samples = trajectories * horizon.
    """
    advantage = advantages(rollouts.rewards, discount, normalize)  # (tasks, trajectories, horizon)
    x = rollouts.observations.flatten(1, 2)
    y = torch.cat([rollouts.actions, advantage.unsqueeze(-1)], dim=-1).flatten(1, 2)
    return x, y


def _inner_step(policy: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, inner_lr: float,
                first_order: bool, per_task: bool) -> Params:
    """One policy-gradient step per task with fastadapt.adapt (vmapped over tasks)."""
    def one_task(p, xs, ys):
        return adapt(policy, p, xs, ys, inner_steps=1, inner_lr=inner_lr, loss_fn=policy_gradient_loss,
                     first_order=first_order)

    return vmap(one_task, in_dims=(0 if per_task else None, 0, 0))(params, x, y)


def adapt_policy(policy: nn.Module, params: Params, goals: torch.Tensor, steps: int, inner_lr: float,
                 trajectories: int, horizon: int, seed: int | torch.Generator, discount: float = 0.99,
                 first_order: bool = True, normalize: bool = False) -> tuple[Params, list[Rollouts]]:
    """`steps` policy-gradient steps on every task, each on fresh trajectories of the current policy.

    Returns the adapted weights (with a leading tasks dimension) and the rollouts of every step
    (steps + 1 of them: the last is of the adapted policy). first_order=True treats the inner gradients
    as constants for any outer gradient (see the chapter: their second derivatives need DiCE or ProMP).
    """
    generator = make_generator(seed)
    per_task, history = False, []
    for _ in range(steps):
        data = rollout(policy, params, goals, trajectories, horizon, generator, per_task)
        history.append(data)
        x, y = policy_gradient_data(data, discount, normalize)
        params = _inner_step(policy, params, x, y, inner_lr, first_order, per_task)
        per_task = True
    history.append(rollout(policy, params, goals, trajectories, horizon, generator, per_task))
    if not per_task:  # no step taken: give every task its own copy, as after a step
        params = {k: v.expand(goals.shape[0], *v.shape) for k, v in params.items()}
    return params, history


def returns_after_steps(policy: nn.Module, params: Params, goals: torch.Tensor, steps: int, inner_lr: float,
                        trajectories: int, horizon: int, seed: int | torch.Generator,
                        discount: float = 0.99, normalize: bool = False) -> torch.Tensor:
    """Mean return per task after 0, 1, ..., steps policy-gradient steps: (steps + 1, tasks).

    The return after j steps is the mean over the `trajectories` trajectories sampled from the policy
    after j steps, the same trajectories the next step learns from (as in MAML's evaluation).
    """
    with torch.no_grad():
        params = {k: v.detach() for k, v in params.items()}
    _, history = adapt_policy(policy, params, goals, steps, inner_lr, trajectories, horizon, seed, discount,
                              normalize=normalize)
    return torch.stack([data.returns().mean(1) for data in history])


def fomaml_loss(policy: nn.Module, params: Params, goals: torch.Tensor, inner_lr: float, trajectories: int,
                horizon: int, seed: int | torch.Generator, discount: float = 0.99) -> tuple[torch.Tensor, dict]:
    """First-order MAML-RL: the policy-gradient surrogate of the adapted policies on their own trajectories.

    Per task: trajectories of theta, one inner step (gradients treated as constants) to phi_i, fresh
    trajectories of phi_i, and the surrogate loss of phi_i on them. Its gradient with respect to theta is
    the mean over tasks of the policy gradient at phi_i, the first-order meta-gradient.
    Returns the loss and the mean returns before and after the step.
    """
    adapted, (before, after) = adapt_policy(policy, params, goals, 1, inner_lr, trajectories, horizon, seed,
                                            discount, first_order=True)
    x, y = policy_gradient_data(after, discount)
    loss = policy_gradient_loss(policy_outputs(policy, adapted, x, per_task=True), y)
    return loss, {"return_before": float(before.returns().mean()), "return_after": float(after.returns().mean())}


def multitask_loss(policy: nn.Module, params: Params, goals: torch.Tensor, trajectories: int, horizon: int,
                   seed: int | torch.Generator, discount: float = 0.99) -> tuple[torch.Tensor, dict]:
    """The multi-task baseline: the policy-gradient surrogate of one policy on the trajectories of all goals,
    no adaptation (the policy never sees the goal, so it learns what is best on average)."""
    data = rollout(policy, params, goals, trajectories, horizon, seed)
    x, y = policy_gradient_data(data, discount)
    loss = policy_gradient_loss(policy_outputs(policy, params, x, per_task=False), y)
    return loss, {"return": float(data.returns().mean())}
