"""Figures the chapters share, so they look alike (matplotlib; every function returns the Figure).

Notebooks start with `%matplotlib inline`: the Makefile exports MPLBACKEND=Agg, under which a kernel
shows no figures at all, so without it the built book would have none.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

GOOD, BAD = "#1a9850", "#d73027"  # colours of correct and wrong predictions


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """Images on the CPU as floats in [0, 1] (uint8 images are scaled)."""
    images = images.detach().cpu()
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def _draw_grid(fig, images, col_labels=None, row_labels=None, titles=None, title_colors=None, title=None):
    """Draw images (rows, cols, C, H, W) on fig (a Figure or SubFigure) as a grid of axes."""
    rows, cols = images.shape[:2]
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(images[r, c, 0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if titles is not None:  # per-image titles (e.g. predictions) take the place of column labels
                ax.set_title(titles[r][c], fontsize=8, color=title_colors[r][c] if title_colors else "black", pad=2)
            elif r == 0 and col_labels is not None:
                ax.set_title(col_labels[c], fontsize=9, pad=3)
            if c == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[r], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return axes


def plot_image_grid(images: torch.Tensor, col_labels=None, row_labels=None, title=None, size: float = 1.0):
    """A grid of images (rows, cols, C, H, W), uint8 or [0, 1] floats, with optional row and column labels."""
    images = _as_float(images)
    rows, cols = images.shape[:2]
    fig = plt.figure(figsize=(cols * size + 0.4, rows * size + (0.6 if title else 0.3)), layout="constrained")
    _draw_grid(fig, images, col_labels, row_labels, title=title)
    return fig


def plot_episode(episode, task: int = 0, max_query: int = 3, predictions: torch.Tensor | None = None,
                 size: float = 1.0, title: str | None = None):
    """Support set (one column per class, k_shot rows) above the query set (max_query rows) of one task.

    predictions (optional): predicted labels of the task's queries, (n_way * n_query,) or (tasks, ...);
    each shown query then gets its prediction as a title, green when right and red when wrong.
    """
    x_support, y_support = _as_float(episode.x_support[task]), episode.y_support[task].cpu()
    x_query, y_query = _as_float(episode.x_query[task]), episode.y_query[task].cpu()
    labels = y_support.unique().tolist()
    n_way, k_shot = len(labels), len(y_support) // len(labels)
    n_query = min(max_query, len(y_query) // n_way)
    support = torch.stack([x_support[y_support == y][:k_shot] for y in labels], dim=1)  # (k_shot, n_way, C, H, W)
    query_index = torch.stack([(y_query == y).nonzero().squeeze(1)[:n_query] for y in labels], dim=1)  # (n_query, n_way)
    query = x_query[query_index]  # (n_query, n_way, C, H, W)
    titles = colors = None
    if predictions is not None:
        predicted = predictions.detach().cpu()
        predicted = predicted[task] if predicted.dim() == 2 else predicted
        predicted = predicted[query_index]  # (n_query, n_way)
        truth = y_query[query_index]
        titles = [[f"pred {p}" for p in row] for row in predicted.tolist()]
        colors = [[GOOD if ok else BAD for ok in row] for row in (predicted == truth).tolist()]

    fig = plt.figure(figsize=(n_way * size + 0.6, (k_shot + n_query) * size * 1.1 + 0.9), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[k_shot + 0.6, n_query * (1.25 if titles else 1) + 0.6])
    _draw_grid(top, support, [f"label {y}" for y in labels], [f"shot {i + 1}" for i in range(k_shot)],
               title=f"support set ({n_way}-way {k_shot}-shot)")
    _draw_grid(bottom, query, [f"label {y}" for y in labels],
               [f"query {i + 1}" for i in range(n_query)], titles, colors,
               title=f"query set (first {n_query} of {len(y_query) // n_way} per class)")
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def plot_sinusoids(tasks, n_tasks: int = 4, x_range: tuple[float, float] = (-5.0, 5.0), title: str | None = None):
    """Sinusoid tasks (a SinusoidTasks): each true curve on a dense grid and its K support points as markers."""
    from .tasks import sinusoid

    n_tasks = min(n_tasks, len(tasks.amplitude))
    grid = torch.linspace(*x_range, 400).view(1, -1, 1).expand(n_tasks, -1, -1)  # (tasks, 400, 1)
    curves = sinusoid(grid, tasks.amplitude[:n_tasks].cpu(), tasks.phase[:n_tasks].cpu())  # (tasks, 400, 1)
    x_support, y_support = tasks.episode.x_support.cpu(), tasks.episode.y_support.cpu()
    fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    for t in range(n_tasks):
        color = plt.cm.tab10(t % 10)
        a, p = tasks.amplitude[t].item(), tasks.phase[t].item()
        ax.plot(grid[t, :, 0], curves[t, :, 0], color=color, lw=1.5, label=f"A={a:.2f}, phase={p:.2f}")
        ax.scatter(x_support[t, :, 0], y_support[t, :, 0], color=color, edgecolor="black", s=40, zorder=3)
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(xlabel="x", ylabel="y", xlim=x_range,
           title=title or f"{n_tasks} sinusoid tasks, K={x_support.shape[1]} support points each (dots)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
