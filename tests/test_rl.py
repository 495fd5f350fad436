"""fastadapt.rl against independent computations: the dynamics by hand, torch.distributions, a per-step
loop, and the exact gradient of a one-step Gaussian problem with a closed-form expected reward."""
import math

import pytest
import torch
from torch.func import functional_call

from fastadapt import rl
from fastadapt.models import params_of


def test_step_clips_the_velocity_and_rewards_minus_the_new_distance():
    position = torch.tensor([[0.0, 0.0], [0.3, -0.2]])
    action = torch.tensor([[0.5, -3.0], [2.0, 0.25]])
    goal = torch.tensor([0.1, -0.3])
    moved, reward = rl.step(position, action, goal)
    # by hand: (0 + 0.1 * 0.5, 0 + 0.1 * -1) = (0.05, -0.1); (0.3 + 0.1 * 1, -0.2 + 0.1 * 0.25) = (0.4, -0.175)
    torch.testing.assert_close(moved, torch.tensor([[0.05, -0.1], [0.4, -0.175]]))
    expected = -torch.tensor([math.hypot(0.05 - 0.1, -0.1 + 0.3), math.hypot(0.4 - 0.1, -0.175 + 0.3)])
    torch.testing.assert_close(reward, expected)


def test_sample_goals_are_uniform_in_the_square_and_reproducible():
    goals = rl.sample_goals(20_000, seed=3)
    assert goals.shape == (20_000, 2) and goals.min() >= -0.5 and goals.max() <= 0.5
    torch.testing.assert_close(goals.mean(0), torch.zeros(2), atol=0.01, rtol=0)
    torch.testing.assert_close(goals.var(0), torch.full((2,), 1 / 12), atol=0.005, rtol=0)  # uniform on [-0.5, 0.5]
    torch.testing.assert_close(rl.sample_goals(5, seed=3), goals[:5])
    with pytest.raises(ValueError, match="seed"):
        rl.sample_goals(5, seed=None)


def test_gaussian_log_prob_equals_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mean, log_std, actions = torch.randn(3, 7, 2, generator=gen, dtype=torch.float64)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    torch.testing.assert_close(rl.gaussian_log_prob(torch.cat([mean, log_std], -1), actions), expected)


def test_rollout_follows_the_policy_step_by_step():
    torch.manual_seed(0)
    policy = rl.GaussianPolicy(hidden=8)
    params = params_of(policy)
    goals = torch.tensor([[0.2, 0.3], [-0.4, 0.1]])
    data = rl.rollout(policy, params, goals, trajectories=3, horizon=5, seed=11)
    assert data.observations.shape == (2, 3, 5, 2) and data.actions.shape == (2, 3, 5, 2)
    assert data.rewards.shape == (2, 3, 5)
    # the same trajectories by hand: one agent at a time, the noise drawn in the same order
    gen = torch.Generator().manual_seed(11)
    noise = [torch.randn(2, 3, 2, generator=gen) for _ in range(5)]
    for task in range(2):
        for k in range(3):
            position = torch.zeros(2)
            for t in range(5):
                torch.testing.assert_close(data.observations[task, k, t], position)
                with torch.no_grad():
                    mean, log_std = policy(position).chunk(2)
                action = mean + log_std.exp() * noise[t][task, k]
                torch.testing.assert_close(data.actions[task, k, t], action)
                position = position + 0.1 * action.clamp(-1, 1)
                torch.testing.assert_close(data.rewards[task, k, t], -(position - goals[task]).norm())
    torch.testing.assert_close(data.returns(), data.rewards.sum(-1))


def test_rollout_with_per_task_weights_equals_one_rollout_per_task():
    torch.manual_seed(1)
    policy = rl.GaussianPolicy(hidden=8)
    first, second = params_of(policy), params_of(rl.GaussianPolicy(hidden=8))
    stacked = {k: torch.stack([first[k], second[k]]) for k in first}
    goals = torch.tensor([[0.2, 0.3], [-0.4, 0.1]])
    together = rl.rollout(policy, stacked, goals, trajectories=4, horizon=3, seed=5, per_task=True)
    for task, params in enumerate((first, second)):
        gen = torch.Generator().manual_seed(5)
        position = torch.zeros(4, 2)
        for t in range(3):
            noise = torch.randn(2, 4, 2, generator=gen)[task]  # the rollout draws both tasks' noise at once
            with torch.no_grad():
                mean, log_std = functional_call(policy, params, (position,)).chunk(2, -1)
            action = mean + log_std.exp() * noise
            torch.testing.assert_close(together.actions[task, :, t], action)
            position = position + 0.1 * action.clamp(-1, 1)


def test_rewards_to_go_and_leave_one_out_advantages_by_hand():
    rewards = torch.tensor([[[1.0, 2.0, 3.0], [0.0, -1.0, 1.0], [2.0, 2.0, 2.0]]])  # 1 task, 3 trajectories
    to_go = rl.rewards_to_go(rewards, discount=0.5)
    # trajectory 0: t=2: 3; t=1: 2 + 0.5 * 3 = 3.5; t=0: 1 + 0.5 * 3.5 = 2.75
    torch.testing.assert_close(to_go[0, 0], torch.tensor([2.75, 3.5, 3.0]))
    torch.testing.assert_close(to_go[0, 1], torch.tensor([-0.25, -0.5, 1.0]))
    torch.testing.assert_close(to_go[0, 2], torch.tensor([3.5, 3.0, 2.0]))
    advantage = rl.advantages(rewards, discount=0.5)
    # trajectory 0 at t=0: 2.75 - mean(-0.25, 3.5) = 2.75 - 1.625 = 1.125
    assert advantage[0, 0, 0].item() == pytest.approx(1.125)
    for k in range(3):
        others = [j for j in range(3) if j != k]
        torch.testing.assert_close(advantage[0, k], to_go[0, k] - to_go[0, others].mean(0))
    normalized = rl.advantages(rewards, discount=0.5, normalize=True)
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert normalized.std().item() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="at least 2 trajectories"):
        rl.advantages(rewards[:, :1], discount=0.5)


def test_policy_gradient_data_packs_observations_actions_and_advantages():
    torch.manual_seed(0)
    policy = rl.GaussianPolicy(hidden=8)
    data = rl.rollout(policy, params_of(policy), rl.sample_goals(2, 0), trajectories=3, horizon=4, seed=1)
    x, y = rl.policy_gradient_data(data, discount=0.9)
    assert x.shape == (2, 12, 2) and y.shape == (2, 12, 3)
    torch.testing.assert_close(x[1, 5], data.observations[1, 1, 1])  # sample 5 = trajectory 1, step 1
    torch.testing.assert_close(y[1, 5, :2], data.actions[1, 1, 1])
    torch.testing.assert_close(y[1, 5, 2], rl.advantages(data.rewards, 0.9)[1, 1, 1])


@pytest.mark.parametrize("baseline", [0.0, -3.0])
def test_score_function_gradient_matches_the_exact_gradient_of_a_one_step_problem(baseline):
    # One step, a ~ N(mu, sigma^2) per coordinate, reward r(a) = -|a - g|^2. The expected reward has a closed
    # form, J = -(|mu - g|^2 + 2 sigma^2) (two coordinates, one shared log std per coordinate), so
    # dJ/dmu = -2 (mu - g) and dJ/dlog_sigma_i = -2 sigma_i^2. The REINFORCE estimate is the gradient of
    # mean(log pi(a) * (r(a) - b)); it must agree within its Monte-Carlo error, for any constant baseline b.
    torch.manual_seed(0)
    mu = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    log_std = torch.tensor([-0.5, 0.2], dtype=torch.float64, requires_grad=True)
    goal = torch.tensor([0.1, 0.4], dtype=torch.float64)
    n = 400_000
    gen = torch.Generator().manual_seed(1)
    actions = mu.detach() + log_std.detach().exp() * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    reward = -(actions - goal).pow(2).sum(-1)  # (n,)
    outputs = torch.cat([mu, log_std]).expand(n, 4)
    targets = torch.cat([actions, (reward - baseline).unsqueeze(-1)], -1)
    estimate = torch.autograd.grad(-rl.policy_gradient_loss(outputs, targets), [mu, log_std])

    sigma = log_std.detach().exp()
    exact = (-2 * (mu.detach() - goal), -2 * sigma.pow(2))
    # Monte-Carlo standard error from the per-sample score terms (written out by hand, not by autograd)
    z = (actions - mu.detach()) / sigma
    per_sample = (z / sigma * (reward - baseline)[:, None], (z.pow(2) - 1) * (reward - baseline)[:, None])
    for got, want, samples in zip(estimate, exact, per_sample):
        error = samples.std(0) / math.sqrt(n)
        assert ((got - want).abs() < 4 * error).all(), (got, want, error)
        assert (error < 0.05 * want.abs().clamp(min=0.1)).all()  # the test is sharp enough to mean something


def test_one_inner_step_with_adapt_improves_a_one_step_problem():
    # the same one-step problem as a task: a policy whose mean is a bias, adapted by fastadapt.adapt
    import fastadapt

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mean = torch.nn.Parameter(torch.zeros(2))
            self.log_std = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return torch.cat([self.mean, self.log_std]).expand(x.shape[0], 4)

    model = Constant()
    params = params_of(model)
    goal = torch.tensor([0.8, -0.6])
    gen = torch.Generator().manual_seed(0)
    actions = torch.randn(5000, 2, generator=gen)
    reward = -(actions - goal).pow(2).sum(-1)
    y = torch.cat([actions, (reward - reward.mean()).unsqueeze(-1)], -1)
    adapted = fastadapt.adapt(model, params, torch.zeros(5000, 1), y, inner_steps=1, inner_lr=0.1,
                              loss_fn=rl.policy_gradient_loss)
    # exact gradient at mu = 0, sigma = 1: dJ/dmu = 2 g, so the step moves the mean by about 0.1 * 2 g
    torch.testing.assert_close(adapted["mean"].detach(), 0.2 * goal, atol=0.05, rtol=0)


def test_adapt_policy_and_returns_after_steps_agree():
    torch.manual_seed(0)
    policy = rl.GaussianPolicy(hidden=16)
    params = params_of(policy)
    goals = rl.sample_goals(3, seed=2)
    adapted, history = rl.adapt_policy(policy, params, goals, steps=2, inner_lr=0.1, trajectories=4, horizon=5,
                                       seed=9)
    assert len(history) == 3 and all(v.shape[0] == 3 for v in adapted.values())
    returns = rl.returns_after_steps(policy, params, goals, steps=2, inner_lr=0.1, trajectories=4, horizon=5, seed=9)
    torch.testing.assert_close(returns, torch.stack([h.returns().mean(1) for h in history]))
    # one step by hand: one fastadapt.adapt call per task on that task's trajectories of theta
    import fastadapt

    one_step, (first, _) = rl.adapt_policy(policy, params, goals, steps=1, inner_lr=0.1, trajectories=4, horizon=5,
                                           seed=9)
    torch.testing.assert_close(first.rewards, history[0].rewards)  # the same seed draws the same trajectories
    x, y = rl.policy_gradient_data(first)
    for task in range(3):
        by_hand = fastadapt.adapt(policy, params, x[task], y[task], inner_steps=1, inner_lr=0.1,
                                  loss_fn=rl.policy_gradient_loss)
        for k in params:
            torch.testing.assert_close(one_step[k][task], by_hand[k], atol=1e-6, rtol=1e-5)
    _, zero = rl.adapt_policy(policy, params, goals, steps=0, inner_lr=0.1, trajectories=4, horizon=5, seed=9)
    assert len(zero) == 1


def test_fomaml_gradient_is_the_policy_gradient_at_the_adapted_weights():
    torch.manual_seed(0)
    policy = rl.GaussianPolicy(hidden=16)
    params = params_of(policy)
    goals = rl.sample_goals(2, seed=4)
    loss, info = rl.fomaml_loss(policy, params, goals, inner_lr=0.1, trajectories=4, horizon=5, seed=3)
    grads = torch.autograd.grad(loss, list(params.values()))
    # independently: the same adaptation (same seed) and the gradient of the surrogate at the adapted weights
    adapted, (_, after) = rl.adapt_policy(policy, params, goals, 1, 0.1, 4, 5, seed=3)
    x, y = rl.policy_gradient_data(after)
    phi = {k: v.detach().requires_grad_(True) for k, v in adapted.items()}
    expected = {k: torch.zeros_like(v) for k, v in params.items()}
    for task in range(2):
        task_phi = {k: v[task] for k, v in phi.items()}
        task_loss = rl.policy_gradient_loss(functional_call(policy, task_phi, (x[task],)), y[task]) / 2
        for k, g in zip(params, torch.autograd.grad(task_loss, list(task_phi.values()))):
            expected[k] += g
    for k, g in zip(params, grads):
        torch.testing.assert_close(g, expected[k], atol=1e-5, rtol=1e-4)
    assert set(info) == {"return_before", "return_after"}
