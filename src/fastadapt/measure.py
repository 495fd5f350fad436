"""Measurements the chapters share: scores after each inner step, time and peak memory of a call.

Time is wall-clock (synchronised) on a GPU and processor time of this process on a CPU, which unlike
wall-clock time does not grow when other programs share the machine. Peak memory is
torch.cuda.max_memory_allocated on a GPU; on a CPU PyTorch keeps no such counter, so it is the growth
of the process's peak resident size (Linux /proc/self/status VmHWM, reset through /proc/self/clear_refs
after returning freed heap memory with malloc_trim): everything the process touches, not only tensors.
"""
from __future__ import annotations

import ctypes
import gc
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.func import functional_call, vmap

from .core import adapt, default_vectorize
from .evaluate import confidence_interval


def _score(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Accuracy for class labels, mean squared error for real-valued targets (one task)."""
    if targets.is_floating_point():
        return (outputs - targets).pow(2).mean()
    return (outputs.argmax(-1) == targets).float().mean()


def scores_per_step(algorithm, params: dict, episode, steps: Sequence[int], inner_lr: float | None = None,
                    vectorize: bool | None = None) -> torch.Tensor:
    """Query score of every task after each number of inner steps in `steps`: (len(steps), tasks).

    The algorithm's own inner loop (learning rate, adapted parameters, loss) is run one block of steps
    at a time, so steps=(0, 1, 3, 10) costs ten steps, not fourteen; inner_lr overrides its rate.
    Scores are accuracy for class labels and MSE for regression targets.
    """
    steps = list(steps)
    if any(b < a for a, b in zip(steps, steps[1:])) or (steps and steps[0] < 0):
        raise ValueError(f"steps must be ascending numbers of inner steps (0 or more), got {steps}.")
    kwargs = {k: v for k, v in algorithm.adapt_kwargs(params, 1).items() if k != "inner_steps"}
    if inner_lr is not None:
        kwargs["inner_lr"] = inner_lr
    model, start = algorithm.model, {k: v.detach() for k, v in algorithm.model_params(params).items()}
    vectorize = default_vectorize(episode.x_support, episode.x_query) if vectorize is None else vectorize

    def one_task(x_support, y_support, x_query, y_query):
        fast, done, scores = start, 0, []
        for n in steps:
            fast = adapt(model, fast, x_support, y_support, inner_steps=n - done, functional=vectorize, **kwargs)
            done = n
            scores.append(_score(functional_call(model, fast, (x_query,)), y_query))
        return torch.stack(scores)  # (len(steps),)

    with torch.no_grad():  # no meta-gradient needed; the inner gradients are still taken
        if vectorize:
            return vmap(one_task, randomness="same")(*episode).T  # (len(steps), tasks)
        return torch.stack([one_task(*task) for task in zip(*episode)], dim=1)  # (len(steps), tasks)


def mean_and_ci(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 95% half-width over tasks of (rows, tasks) scores: two (rows,) tensors."""
    scores = scores.double()
    return scores.mean(1), torch.tensor([confidence_interval(row) for row in scores], dtype=torch.float64)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Mean seconds of fn() over `repeats` calls after one untimed warm-up (GPU: wall clock; CPU: process time)."""
    device = torch.device(device)
    fn()
    _synchronize(device)
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    started = clock()
    for _ in range(repeats):
        fn()
    _synchronize(device)
    return (clock() - started) / repeats


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (reported there in kB), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_memory_mib(fn: Callable[[], object], device: str | torch.device = "cpu") -> float:
    """Peak memory that fn() adds to what is in use when it starts, in MiB (NaN where it cannot be measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists():
        return float("nan")  # not Linux: no resettable peak-resident-size counter
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc: hand freed heap memory back to the system
    except (OSError, AttributeError):
        pass  # another C library: the peak may then include memory reused from earlier calls
    try:
        clear_refs.write_text("5")  # reset the peak resident size (VmHWM) to the current size
    except OSError:
        return float("nan")
    before = _status_bytes("VmRSS")
    fn()
    return (_status_bytes("VmHWM") - before) / 2**20
