"""Devices and processes: pick a device, join torchrun's process group, average across processes."""
from __future__ import annotations

import os

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, or CUDA when present, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def init_distributed(device: str | None = None) -> torch.device:
    """Join the torchrun process group (gloo on CPU, NCCL on GPUs) when WORLD_SIZE > 1; returns this rank's device."""
    device = pick_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def process_group() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, or (0, 1) when it is not in use."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def average_across_processes(grads: dict, metrics: dict) -> tuple[dict, dict]:
    """Mean of the gradients and metrics over all processes, in one all_reduce of one flat buffer.

    The buffer lives on the gradients' (= the parameters') device, as NCCL requires; with one process
    the inputs come back unchanged.
    """
    _, world = process_group()
    if world == 1:
        return grads, metrics
    values = list(grads.values())
    flat = torch.cat([g.reshape(-1) for g in values] + [m.reshape(1).to(values[0]) for m in metrics.values()])
    torch.distributed.all_reduce(flat)  # (gradient entries + metrics,) summed over processes
    parts = (flat / world).split([g.numel() for g in values] + [1] * len(metrics))
    averaged = {k: part.view_as(g) for (k, g), part in zip(grads.items(), parts)}
    return averaged, {k: part[0] for k, part in zip(metrics, parts[len(values):])}
