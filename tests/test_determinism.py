"""Runs are a pure function of the seed: the same seed gives the same metrics and bit-identical
parameters (on one machine, with one number of CPU threads); another seed gives another run."""
from __future__ import annotations

import pytest
import torch

from fastadapt import TrainConfig, episode_seed, read_checkpoint, read_metrics, task_source, train

SETTINGS = dict(n_way=5, k_shot=1, n_query=1, meta_batch_size=2, inner_steps=1, iterations=3, val_every=3,
                val_tasks=2, log_every=1, checkpoint_every=3)



def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in records]


@pytest.fixture(scope="module", params=["maml", "protonet"])
def runs(request, tmp_path_factory, omniglot):
    """{seed or "again": (params, metrics records, checkpoint)} of three tiny runs of one algorithm."""
    out = {}
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        folder = tmp_path_factory.mktemp(f"{request.param}_{name}")
        config = TrainConfig(algo=request.param, seed=seed, **SETTINGS)
        torch.manual_seed(1234 + len(out))  # the global RNG state must not matter: train seeds from config.seed
        params = train(config, folder, device="cpu", progress=False, data=omniglot)
        out[name] = (params, read_metrics(folder / "metrics.jsonl"), read_checkpoint(folder / "checkpoint.pt"))
    return request.param, out


def test_same_seed_same_metrics(runs):
    _, out = runs
    first, again = without_time(out["first"][1]), without_time(out["again"][1])
    assert [r["iteration"] for r in first] == [1, 2, 3]
    assert "val_accuracy" in first[-1]
    assert first == again


def test_same_seed_same_parameters(runs):
    _, out = runs
    first, again = out["first"][0], out["again"][0]
    assert first.keys() == again.keys()
    for k in first:
        assert torch.equal(first[k], again[k]), k
    for k, v in out["first"][2]["params"].items():
        assert torch.equal(v, out["again"][2]["params"][k]), k


def test_other_seed_other_run(runs):
    algo, out = runs
    first, other = out["first"][0], out["other"][0]
    differ = [k for k in first if not torch.equal(first[k], other[k])]
    assert len(differ) == len(first), f"{algo}: parameters {sorted(set(first) - set(differ))} equal across seeds"
    assert max(float((first[k] - other[k]).abs().max()) for k in first) > 1e-3
    assert without_time(out["first"][1]) != without_time(out["other"][1])


def test_episodes_are_a_pure_function_of_seed_iteration_rank(omniglot):
    config = TrainConfig(**SETTINGS)
    sample = task_source(config, "train", "cpu", data=omniglot)
    a = sample(2, episode_seed(0, 5, 0))
    torch.manual_seed(99)
    sample(3, episode_seed(0, 4, 0))  # other draws in between change nothing
    b = task_source(config, "train", "cpu", data=omniglot)(2, episode_seed(0, 5, 0))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    seeds = {episode_seed(s, i, r) for s in range(3) for i in range(50) for r in range(8)}
    assert len(seeds) == 3 * 50 * 8, "no two (seed, iteration, rank) share an episode seed"
