"""fastadapt.baselines against hand-made cases and closed-form least squares."""
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.baselines import pixel_nearest_neighbour, pretrain_pooled
from fastadapt.tasks import Episode


def test_pixel_nearest_neighbour_hand_made_case():
    support = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[5.0, 5.0]]]).view(1, 3, 1, 1, 2)  # 3 "images" of 2 pixels
    query = torch.tensor([[[0.9, 1.2]], [[4.0, 4.0]], [[0.1, -0.2]], [[2.9, 3.0]]]).view(1, 4, 1, 1, 2)
    y_support = torch.tensor([[2, 0, 1]])
    # distances by hand: q0 nearest s1 (label 0); q1 -> s2 (1); q2 -> s0 (2); q3: |(2.9,3)-(1,1)|^2 = 7.61 < 8.41 -> s1 (0)
    episode = Episode(support, y_support, query, torch.zeros(1, 4, dtype=torch.long))
    assert pixel_nearest_neighbour(episode).tolist() == [[0, 1, 2, 0]]


def test_pretrain_pooled_reaches_the_pooled_least_squares_solution():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 10, 1, generator=gen)
    y = torch.randn(4, 1, 1, generator=gen) * x + torch.randn(4, 1, 1, generator=gen)  # 4 linear tasks
    batch = Episode(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    losses = pretrain_pooled(model, lambda tasks, seed: batch, iterations=3000, tasks_per_batch=4, lr=0.01,
                             seed=0, loss_fn=F.mse_loss)
    design = torch.cat([x.flatten(0, 1), torch.ones(40, 1)], dim=1)  # (40, 2): pooled points and a bias column
    solution = torch.linalg.lstsq(design, y.flatten(0, 1)).solution.flatten()  # (slope, intercept)
    torch.testing.assert_close(torch.cat([model.weight.flatten(), model.bias]).detach(), solution, atol=1e-3, rtol=1e-3)
    assert len(losses) == 3000 and losses[-1] < losses[0]
