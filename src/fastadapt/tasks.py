"""Tasks: N-way K-shot episodes from any labelled images, and the sinusoid family of MAML."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .checks import positive_int


class Episode(NamedTuple):
    """A batch of tasks: support set to adapt on, query set to evaluate on."""

    x_support: torch.Tensor  # (tasks, n_way * k_shot, ...)
    y_support: torch.Tensor  # (tasks, n_way * k_shot)
    x_query: torch.Tensor  # (tasks, n_way * n_query, ...)
    y_query: torch.Tensor  # (tasks, n_way * n_query)

    def to(self, device) -> "Episode":
        """The same episode on another device."""
        return Episode(*(t.to(device, non_blocking=True) for t in self))


def make_generator(seed: int | torch.Generator | None, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on `device` (default the CPU) from a seed, or the generator itself; None is refused to keep
    runs reproducible."""
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None:
        raise ValueError("Pass an explicit seed (an int) or a torch.Generator so episodes are reproducible.")
    return torch.Generator(device=device).manual_seed(int(seed))


def episode_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """The seed of one rank's meta-batch at one iteration: runs are a pure function of (seed, iteration)."""
    return (seed * 1_000_003 + iteration) * 1_009 + rank


class EpisodeSampler:
    """Samples N-way K-shot episodes from images already in memory (CPU or GPU).

    images: (classes, examples, C, H, W), every class with the same number of examples, or
    (items, C, H, W) together with labels (items,), where classes may differ in size.
    uint8 images are scaled to [0, 1] floats. device_generator=True draws the random numbers with a generator
    on the images' device (a CUDA generator for images on a GPU: no host work or transfer per episode); the
    episodes are then another (equally distributed) sequence than the CPU generator's.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, device_generator: bool = False):
        if labels is None:
            if images.dim() < 3:
                raise ValueError(f"images must be (classes, examples, ...), got shape {tuple(images.shape)}.")
            classes, per_class = images.shape[:2]
            self.items = images.reshape(classes * per_class, *images.shape[2:])  # (items, C, H, W)
            self.counts = torch.full((classes,), per_class)
        else:
            if labels.shape[0] != images.shape[0]:
                raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels.")
            order = torch.argsort(labels.cpu(), stable=True)
            self.items = images[order.to(images.device)]
            _, self.counts = torch.unique(labels.cpu(), return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts  # (classes,) first item of each class
        self.n_classes = len(self.counts)
        self.smallest, self.longest = int(self.counts.min()), int(self.counts.max())  # read once, not per episode
        self.random_device = self.items.device if device_generator else torch.device("cpu")
        self.counts, self.starts = self.counts.to(self.random_device), self.starts.to(self.random_device)

    def sample(
        self,
        tasks: int,
        n_way: int,
        k_shot: int,
        n_query: int,
        seed: int | torch.Generator | None,
        rotate: bool = False,
    ) -> Episode:
        """A batch of episodes; labels are 0..n_way-1 in a random class order per task."""
        for name, value in dict(tasks=tasks, n_way=n_way, k_shot=k_shot, n_query=n_query).items():
            positive_int(name, value)
        if n_way > self.n_classes:
            raise ValueError(
                f"n_way={n_way} but only {self.n_classes} classes are available; choose n_way <= {self.n_classes}."
            )
        shots = k_shot + n_query
        if shots > self.smallest:
            raise ValueError(
                f"k_shot + n_query = {k_shot} + {n_query} = {shots} but the smallest class has only "
                f"{self.smallest} examples; lower k_shot or n_query so they sum to at most that."
            )
        generator = make_generator(seed, self.random_device)
        device = generator.device
        # Classes: the n_way largest of a random key per class, per task (a uniform random subset).
        classes = torch.rand(tasks, self.n_classes, generator=generator, device=device).topk(n_way, dim=1).indices
        counts = self.counts[classes]  # (tasks, n_way)
        # Examples: the first `shots` of a random permutation within each class (ragged classes masked).
        longest = self.longest
        keys = torch.rand(tasks, n_way, longest, generator=generator, device=device)  # (tasks, n_way, longest)
        keys = keys.masked_fill(torch.arange(longest, device=device) >= counts.unsqueeze(-1), 2.0)
        position = keys.argsort(dim=-1)[..., :shots]  # (tasks, n_way, shots)
        index = (self.starts[classes].unsqueeze(-1) + position).to(self.items.device)  # (tasks, n_way, shots)
        x = self.items[index]  # (tasks, n_way, shots, C, H, W)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if rotate:
            x = rotate_per_class(x, torch.randint(0, 4, (tasks, n_way), generator=generator, device=device))
        y = torch.arange(n_way, device=x.device).view(1, n_way, 1)  # (1, n_way, 1)
        x_support = x[:, :, :k_shot].flatten(1, 2)  # (tasks, n_way * k_shot, C, H, W)
        x_query = x[:, :, k_shot:].flatten(1, 2)  # (tasks, n_way * n_query, C, H, W)
        y_support = y.expand(tasks, n_way, k_shot).flatten(1)  # (tasks, n_way * k_shot)
        y_query = y.expand(tasks, n_way, n_query).flatten(1)  # (tasks, n_way * n_query)
        return Episode(x_support, y_support, x_query, y_query)


def rotate_per_class(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate every image of class (t, c) by quarter_turns[t, c] * 90 degrees."""
    out = x.clone()  # (tasks, n_way, shots, C, H, W)
    for k in (1, 2, 3):
        mask = (quarter_turns == k).to(x.device)  # (tasks, n_way)
        if mask.any():
            out[mask] = x[mask].rot90(k, dims=(-2, -1))
    return out


class SinusoidTasks(NamedTuple):
    """A batch of sinusoid regression tasks y = amplitude * sin(x - phase)."""

    episode: Episode
    amplitude: torch.Tensor  # (tasks,)
    phase: torch.Tensor  # (tasks,)


def sinusoid(
    x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor
) -> torch.Tensor:
    """amplitude * sin(x - phase), broadcasting one (amplitude, phase) per task over x (tasks, points, 1)."""
    return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))


def sample_sinusoids(
    tasks: int,
    k_shot: int,
    n_query: int,
    seed: int | torch.Generator | None,
    amplitude_range: tuple[float, float] = (0.1, 5.0),
    phase_range: tuple[float, float] = (0.0, math.pi),
    x_range: tuple[float, float] = (-5.0, 5.0),
) -> SinusoidTasks:
    """The MAML paper's sinusoid family: amplitude in [0.1, 5], phase in [0, pi], x uniform in [-5, 5]."""
    for name, value in dict(tasks=tasks, k_shot=k_shot, n_query=n_query).items():
        positive_int(name, value)
    generator = make_generator(seed)

    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=generator)

    amplitude = uniform((tasks,), *amplitude_range)  # (tasks,)
    phase = uniform((tasks,), *phase_range)  # (tasks,)
    x = uniform((tasks, k_shot + n_query, 1), *x_range)  # (tasks, k_shot + n_query, 1)
    y = sinusoid(x, amplitude, phase)  # (tasks, k_shot + n_query, 1)
    episode = Episode(x[:, :k_shot], y[:, :k_shot], x[:, k_shot:], y[:, k_shot:])
    return SinusoidTasks(episode, amplitude, phase)
