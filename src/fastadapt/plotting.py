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


def _sequential_colors(n: int, cmap: str = "viridis") -> list:
    """n colours from light-to-dark along a colormap (the first is the lightest)."""
    return [plt.get_cmap(cmap)(0.85 - 0.75 * i / max(n - 1, 1)) for i in range(n)]


def plot_fits(grid: torch.Tensor, truth: torch.Tensor, fits: dict, x_support: torch.Tensor, y_support: torch.Tensor,
              title: str | None = None):
    """Fitted regression curves next to the truth, one panel per starting point.

    grid, truth: (points,) or (points, 1); fits: {panel title: {curve label: (points,) predictions}},
    e.g. {"MAML": {"0 steps": ..., "1 step": ..., "10 steps": ...}, ...}; x_support, y_support: the
    K points the curves were fitted on, drawn as black dots in every panel.
    """
    grid, truth = grid.detach().cpu().flatten(), truth.detach().cpu().flatten()
    x_support, y_support = x_support.detach().cpu().flatten(), y_support.detach().cpu().flatten()
    fig, axes = plt.subplots(1, len(fits), figsize=(4.2 * len(fits), 3.4), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, (name, curves) in zip(axes[0], fits.items()):
        ax.plot(grid, truth, color="black", lw=2.5, alpha=0.35, label="truth")
        for color, (label, curve) in zip(_sequential_colors(len(curves)), curves.items()):
            ax.plot(grid, curve.detach().cpu().flatten(), color=color, lw=1.6, label=label)
        ax.scatter(x_support, y_support, color="black", s=22, zorder=3, label=f"K={len(x_support)} points")
        ax.set(title=name, xlabel="x", xlim=(float(grid.min()), float(grid.max())))
    axes[0, 0].set_ylabel("y")
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_adaptation_curves(curves: dict, ylabel: str, ci: dict | None = None, chance: float | None = None,
                           log: bool = False, title: str | None = None, ax=None):
    """A score against the number of inner steps (0, 1, 2, ...), one line per starting point.

    curves: {name: (steps + 1,) mean scores}; ci: {name: (steps + 1,) 95% half-widths}, drawn as bands;
    chance: a horizontal reference line (e.g. 1 / n_way for accuracy); log: logarithmic y axis.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    else:
        fig = ax.figure
    for i, (name, values) in enumerate(curves.items()):
        values = torch.as_tensor(values).detach().cpu().double()
        steps = torch.arange(len(values))
        line, = ax.plot(steps, values, marker="o", ms=4, lw=1.6, color=plt.cm.tab10(i % 10), label=name)
        if ci is not None and name in ci:
            half = torch.as_tensor(ci[name]).detach().cpu().double()
            ax.fill_between(steps, values - half, values + half, color=line.get_color(), alpha=0.2, lw=0)
    if chance is not None:
        ax.axhline(chance, color="gray", ls="--", lw=1, label=f"chance ({chance:.2f})")
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="inner gradient steps on the support set", ylabel=ylabel, title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, frameon=False)
    return fig


def _moving_average(values: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of the last `window` values at every position (shorter at the start)."""
    cumulative = torch.cat([torch.zeros(1, dtype=values.dtype), values.cumsum(0)])  # (n + 1,)
    ends = torch.arange(1, len(values) + 1)
    starts = (ends - window).clamp(min=0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def plot_learning_curves(runs: dict, keys: tuple[str, ...] = ("loss", "accuracy"), smooth: int = 1,
                         title: str | None = None):
    """Meta-training curves: one panel per metric key, one line per run.

    runs: {name: records} with records as returned by fastadapt.train.read_metrics (dicts with
    "iteration" and the metric keys); smooth: moving-average window over the logged records.
    """
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.5), squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], keys):
        for i, (name, records) in enumerate(runs.items()):
            records = [r for r in records if key in r]
            if not records:
                continue
            iterations = torch.tensor([r["iteration"] for r in records])
            values = _moving_average(torch.tensor([float(r[key]) for r in records], dtype=torch.float64), smooth)
            ax.plot(iterations, values, lw=1.6, color=plt.cm.tab10(i % 10), label=name)
        ax.set(xlabel="meta-iteration", ylabel=f"meta-training {key}" + (f" (mean of {smooth} logs)" if smooth > 1 else ""))
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_meta_cost(rows: list[dict], time_label: str = "seconds per meta-iteration",
                   memory_label: str = "peak memory (MiB)", title: str | None = None):
    """Grouped bars of time and memory per meta-iteration: one group per inner_steps, one bar per method.

    rows: dicts with keys "method", "inner_steps", "seconds" and "memory_mib".
    """
    methods = list(dict.fromkeys(r["method"] for r in rows))
    steps = sorted({r["inner_steps"] for r in rows})
    width = 0.8 / len(methods)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for ax, key, label in zip(axes, ("seconds", "memory_mib"), (time_label, memory_label)):
        for i, method in enumerate(methods):
            values = [next((r[key] for r in rows if r["method"] == method and r["inner_steps"] == s), float("nan"))
                      for s in steps]
            positions = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(steps))]
            bars = ax.bar(positions, values, width, color=plt.cm.tab10(i % 10), label=method)
            ax.bar_label(bars, fmt="%.3g", fontsize=8, padding=2)
        ax.set_xticks(range(len(steps)), [f"{s} inner step{'s' if s != 1 else ''}" for s in steps])
        ax.set_ylabel(label)
        ax.margins(y=0.15)
    axes[0].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_intervals(x, means: dict, ci: dict | None = None, xlabel: str = "", ylabel: str = "accuracy",
                   reference: float | None = None, reference_label: str = "chance", logx: bool = False,
                   percent: bool = True, title: str | None = None, ax=None):
    """Mean scores with their 95% intervals against any x values (shots, inner steps, learning rates, ...).

    x: the common x values; means: {name: (len(x),) means}; ci: {name: (len(x),) 95% half-widths},
    drawn as error bars; reference: a dashed horizontal line (e.g. chance = 1 / n_way); percent: show
    scores in [0, 1] as percentages on the y axis.
    """
    from matplotlib.ticker import PercentFormatter

    if ax is None:
        fig, ax = plt.subplots(figsize=(5.6, 3.5), layout="constrained")
    else:
        fig = ax.figure
    x = [float(v) for v in x]
    for i, (name, values) in enumerate(means.items()):
        values = torch.as_tensor(values).detach().cpu().double()
        half = torch.as_tensor(ci[name]).detach().cpu().double() if ci is not None and name in ci else None
        offset = 1 + 0.025 * (i - (len(means) - 1) / 2) if logx else 1  # small shift so error bars do not overlap
        ax.errorbar([v * offset for v in x], values, yerr=half, marker="o", ms=4, lw=1.6, capsize=3,
                    color=plt.cm.tab10(i % 10), label=name)
    if reference is not None:
        ax.axhline(reference, color="gray", ls="--", lw=1, label=reference_label)
    if logx:
        ax.set_xscale("log")
        ax.minorticks_off()
    if logx or len(x) <= 12:
        ax.set_xticks(x, [f"{v:g}" for v in x])
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, min(top, 1.01))  # an interval may reach past 100%; the axis need not
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if len(means) > 1 or reference is not None:
        ax.legend(fontsize=8, frameon=False)
    return fig


def plot_train_val_accuracy(records: list[dict], smooth: int = 10, title: str | None = None, ax=None):
    """Meta-training accuracy (each logged meta-batch, faint, and its moving average) and validation
    accuracy with its 95% interval, against the meta-iteration.

    records: as returned by fastadapt.train.read_metrics; validation points are the records with
    "val_accuracy" (and "val_ci95").
    """
    from matplotlib.ticker import PercentFormatter

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    else:
        fig = ax.figure
    train = [r for r in records if "accuracy" in r]
    iterations = torch.tensor([r["iteration"] for r in train])
    values = torch.tensor([float(r["accuracy"]) for r in train], dtype=torch.float64)
    ax.plot(iterations, values, color=plt.cm.tab10(0), lw=0.8, alpha=0.3, label="meta-training batch")
    ax.plot(iterations, _moving_average(values, smooth), color=plt.cm.tab10(0), lw=1.8,
            label=f"meta-training, mean of {smooth} logs")
    val = [r for r in records if "val_accuracy" in r]
    if val:
        ax.errorbar([r["iteration"] for r in val], [r["val_accuracy"] for r in val],
                    yerr=[r.get("val_ci95", 0.0) for r in val], color=plt.cm.tab10(1), marker="o", ms=5,
                    capsize=3, lw=1.6, label="validation (95% interval)")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set(xlabel="meta-iteration", ylabel="query accuracy", title=title)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return fig
