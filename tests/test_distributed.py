"""Data-parallel meta-training on torch.distributed: 2 CPU processes (gloo, bound to 127.0.0.1).

One distributed meta-step (ranks forked from the test process) must equal a single-process step
on the concatenation of the ranks' tasks, every rank must hold the same parameters afterwards, and
`torchrun -m fastadapt train` must train, with rank 0 alone writing the log and the checkpoint.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastadapt import (TrainConfig, build_algorithm, build_model, episode_seed, init_distributed, meta_step,
                       read_checkpoint, read_metrics, task_source, train)
from fastadapt import training
from fastadapt.models import Conv4
from fastadapt.tasks import Episode

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
ITERATION = 3  # any iteration: the episodes depend on (seed, iteration, rank) only
STEP_CONFIGS = {
    "maml": TrainConfig(algo="maml", n_way=5, k_shot=1, n_query=2, meta_batch_size=4, inner_steps=1, inner_lr=0.4,
                        meta_lr=0.5, seed=3, val_every=0),
    # plain SGD inner loop: the published inner Adam carries its state from task to task, which cannot be split
    # across processes (train() refuses it with more than one)
    "reptile": TrainConfig(algo="reptile", n_way=5, k_shot=1, n_query=2, meta_batch_size=4, inner_steps=2,
                           inner_lr=0.1, meta_lr=1.0, seed=3, val_every=0, inner_optimizer="sgd", inner_batch=0,
                           eval_inner_batch=0),
}



def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """python -m torch.distributed.run with 2 CPU processes that talk over 127.0.0.1 only."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_PORT")}
    env.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(WORLD),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"torchrun failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-4000:]}"
    return result


def _rank_main(rank: int, port: int, out: str, data) -> None:
    """One forked rank: join a gloo group on 127.0.0.1, take one meta-step per STEP_CONFIGS entry, save."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    device = init_distributed("cpu")
    try:
        assert torch.distributed.get_backend() == "gloo" and torch.distributed.get_world_size() == WORLD
        for name, config in STEP_CONFIGS.items():
            torch.manual_seed(config.seed)
            algorithm = build_algorithm(config, build_model(config))
            params = {k: v.detach().requires_grad_(True) for k, v in algorithm.init_params().items()}
            # plain SGD: its update is proportional to the averaged gradient, so a sum instead of a mean shows
            # (Adam's first step is invariant to the scale of the gradient and would hide it)
            optimizer = torch.optim.SGD(list(params.values()), lr=config.meta_lr)
            sample = task_source(config, "train", device, data=data)
            episode = sample(config.meta_batch_size // WORLD, episode_seed(config.seed, ITERATION, rank))
            metrics = {k: float(v) for k, v in meta_step(algorithm, params, optimizer, episode).items()}
            torch.save({"params": {k: v.detach() for k, v in params.items()}, "metrics": metrics},
                       Path(out) / f"{name}_rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_steps(tmp_path_factory, omniglot):
    """{name: [rank 0 result, rank 1 result]} of one 2-process meta-step per STEP_CONFIGS entry.

    The ranks are forked from this process (no second import of torch), as torchrun would start them.
    """
    out = tmp_path_factory.mktemp("distributed_step")
    torch.func.grad(lambda x: x.square().sum())(torch.ones(2))  # import torch.func's lazy modules once, before forking
    context = multiprocessing.get_context("fork")
    port = free_port()
    ranks = [context.Process(target=_rank_main, args=(r, port, str(out), omniglot)) for r in range(WORLD)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(timeout=180)
    for p in ranks:
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in ranks] == [0] * WORLD, "a rank failed (its traceback is in the captured stderr)"
    return {name: [torch.load(out / f"{name}_rank{r}.pt", weights_only=True) for r in range(WORLD)]
            for name in STEP_CONFIGS}


def single_process_step(config: TrainConfig, data) -> tuple[dict, dict]:
    """The same step in this process: rank 0's tasks then rank 1's, concatenated into one meta-batch."""
    torch.manual_seed(config.seed)
    model = build_model(config)
    algorithm = build_algorithm(config, model)
    params = {k: v.detach().requires_grad_(True) for k, v in algorithm.init_params().items()}
    optimizer = torch.optim.SGD(list(params.values()), lr=config.meta_lr)
    sample = task_source(config, "train", "cpu", data=data)
    shares = [sample(config.meta_batch_size // WORLD, episode_seed(config.seed, ITERATION, r)) for r in range(WORLD)]
    episode = Episode(*(torch.cat(parts) for parts in zip(*shares)))
    assert episode.x_support.shape[0] == config.meta_batch_size
    metrics = meta_step(algorithm, params, optimizer, episode)
    return {k: v.detach() for k, v in params.items()}, {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("name", list(STEP_CONFIGS))
def test_distributed_step_equals_single_process_step(name, distributed_steps, omniglot):
    config = STEP_CONFIGS[name]
    ranks = distributed_steps[name]
    expected, expected_metrics = single_process_step(config, omniglot)
    torch.manual_seed(config.seed)
    initial = build_algorithm(config, build_model(config)).init_params()
    for k, want in expected.items():
        torch.testing.assert_close(ranks[0]["params"][k], want, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name} {k}: {m}")
    step = sum(float((expected[k] - initial[k].detach()).norm()) for k in expected)
    assert step > 1e-2, f"the step barely moved the parameters ({step}), so the comparison would prove little"
    for k in expected_metrics:
        assert ranks[0]["metrics"][k] == pytest.approx(expected_metrics[k], rel=1e-5, abs=1e-6), k


@pytest.mark.parametrize("name", list(STEP_CONFIGS))
def test_every_rank_holds_identical_parameters(name, distributed_steps):
    first, second = distributed_steps[name]
    assert first["params"].keys() == second["params"].keys()
    for k in first["params"]:
        assert torch.equal(first["params"][k], second["params"][k]), f"{name}: ranks disagree on {k}"
    assert first["metrics"] == second["metrics"]


def test_each_rank_samples_different_tasks(omniglot):
    """The ranks' shares of the meta-batch come from different seeds, so they are different tasks."""
    config = STEP_CONFIGS["maml"]
    sample = task_source(config, "train", "cpu", data=omniglot)
    seeds = {episode_seed(config.seed, ITERATION, r) for r in range(WORLD)}
    assert len(seeds) == WORLD
    a, b = (sample(2, s) for s in sorted(seeds))
    assert not torch.equal(a.x_support, b.x_support)


def test_meta_batch_must_divide_among_processes(tmp_path, monkeypatch, omniglot):
    monkeypatch.setattr(training, "process_group", lambda: (0, 2))
    config = TrainConfig(algo="fomaml", meta_batch_size=3, iterations=1, val_every=0)
    with pytest.raises(ValueError, match=r"meta_batch_size=3 must be divisible by the 2 processes"):
        train(config, tmp_path, device="cpu", progress=False, data=omniglot)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_every_reduced_buffer_lives_on_the_parameters_device(monkeypatch):
    """NCCL only reduces tensors on the GPU: everything meta_step hands to all_reduce must be on the parameters'
    device, including the metrics. The parameters live on the `meta` device here, so a buffer made on the CPU
    (as metrics once were) shows up. all_reduce records each buffer's device; the step then stops at its
    finiteness check, since a meta tensor holds no values to check."""
    from fastadapt import distributed

    devices = []

    def all_reduce(tensor, *args, **kwargs):
        devices.append(tensor.device)

    monkeypatch.setattr(distributed, "process_group", lambda: (0, 2))
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    model = Conv4(n_way=5, hidden=4).to("meta")
    algorithm = build_algorithm(TrainConfig(algo="fomaml", inner_steps=1), model)
    params = {k: v.to("meta").requires_grad_(True) for k, v in algorithm.init_params().items()}
    assert {p.device.type for p in params.values()} == {"meta"}
    x = torch.empty(2, 5, 1, 28, 28, device="meta")  # (tasks, n_way, 1, 28, 28)
    y = torch.arange(5, device="meta").repeat(2, 1)  # (tasks, n_way)
    with pytest.raises(RuntimeError, match="meta"):
        meta_step(algorithm, params, torch.optim.SGD(list(params.values()), lr=0.1), Episode(x, y, x, y))
    assert devices == [torch.device("meta")], "one flat buffer (gradients and metrics), on the parameters' device"


def test_torchrun_cli_trains(tmp_path, omniglot):
    """A short 2-process run of `torchrun -m fastadapt train` learns, and only rank 0 writes."""
    iterations = 12
    out = tmp_path / "run"
    result = torchrun("-m", "fastadapt", "train", "--algo", "fomaml", "--n-way", "5", "--k-shot", "1",
                      "--n-query", "2", "--meta-batch-size", "4", "--meta-lr", "0.003", "--iterations",
                      str(iterations), "--val-every", "0", "--log-every", "1", "--checkpoint-every", "5",
                      "--device", "cpu", "--out", str(out))
    assert "Traceback" not in result.stderr
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert summaries and summaries[0]["iterations"] == iterations
    records = read_metrics(out / "metrics.jsonl")
    assert [r["iteration"] for r in records] == list(range(1, iterations + 1)), "one record per iteration, written once"
    assert all(0 <= r["accuracy"] <= 1 and r["loss"] > 0 for r in records)
    blob = read_checkpoint(out / "checkpoint.pt")
    assert blob["iteration"] == iterations
    assert blob["config"]["meta_batch_size"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]

    # Learning: the same 40 training tasks before and after (a paired comparison, far less noisy than the log).
    config = TrainConfig.from_dict(blob["config"])
    torch.manual_seed(config.seed)
    algorithm = build_algorithm(config, build_model(config))
    episode = task_source(config, "train", "cpu", data=omniglot)(40, 12_345)
    before = algorithm.meta_gradient(algorithm.init_params(), episode)[1]
    after = algorithm.meta_gradient({k: v.requires_grad_(True) for k, v in blob["params"].items()}, episode)[1]
    assert after["loss"] < before["loss"] - 0.1, (before, after)
    assert after["accuracy"] > max(before["accuracy"], 1 / config.n_way) + 0.05, (before, after)
