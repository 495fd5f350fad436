"""fastadapt.applications against independent computations: one network per task trained in a plain loop
with torch.optim.Adam, and committed results written by a real (tiny) training run."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastadapt
from fastadapt.applications import meta_learned, train_from_scratch


def test_train_from_scratch_equals_one_plain_adam_loop_per_task():
    gen = torch.Generator().manual_seed(0)
    x_support, x_query = torch.randn(3, 6, 4, generator=gen), torch.randn(3, 5, 4, generator=gen)
    y_support = torch.randint(0, 3, (3, 6), generator=gen)

    def make_model():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    before = torch.random.get_rng_state()
    outputs = train_from_scratch(make_model, x_support, y_support, x_query, steps=(0, 2, 5), lr=0.05, seed=10)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global random state is left as it was
    assert outputs.shape == (3, 3, 5, 3)
    for t in range(3):
        torch.manual_seed(10 + t)
        net = make_model()
        optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
        expected = []
        for step in range(6):
            if step in (0, 2, 5):
                with torch.no_grad():
                    expected.append(net(x_query[t]))
            if step == 5:
                break
            loss = F.cross_entropy(net(x_support[t]), y_support[t])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        torch.testing.assert_close(outputs[:, t], torch.stack(expected), atol=1e-5, rtol=1e-4)


def test_train_from_scratch_regression_and_a_task_does_not_depend_on_its_batch():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 10, 2, generator=gen)
    y = x.sum(-1, keepdim=True)  # (4, 10, 1)
    together = train_from_scratch(lambda: nn.Linear(2, 1), x[:, :6], y[:, :6], x[:, 6:], steps=(300,), lr=0.05, seed=0,
                                  loss_fn=F.mse_loss)
    torch.testing.assert_close(together[0], y[:, 6:], atol=1e-2, rtol=0)  # a linear task is learned
    alone = train_from_scratch(lambda: nn.Linear(2, 1), x[2:3, :6], y[2:3, :6], x[2:3, 6:], steps=(300,), lr=0.05,
                               seed=2, loss_fn=F.mse_loss)
    torch.testing.assert_close(alone[0, 0], together[0, 2], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="ascending"):
        train_from_scratch(lambda: nn.Linear(2, 1), x, y, x, steps=(5, 2), lr=0.1, seed=0)


def test_meta_learned_loads_a_committed_cell_and_falls_back_to_training(tmp_path, monkeypatch, omniglot):
    monkeypatch.setenv("FASTADAPT_RESULTS", str(tmp_path))
    monkeypatch.setenv("FASTADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # outside the repository, whose committed results/omniglot would be found next
    small = dict(meta_batch_size=2, n_query=1)
    trained = meta_learned("protonet", 5, 1, iterations=2, data=omniglot, download=False, **small)
    assert trained.source == "trained here" and trained.iterations_done == 2 and trained.complete
    assert len(trained.records) >= 1 and "trained here for 2" in trained.describe()

    # commit a run the way the results runner does: a cell JSON and its run folder
    config = fastadapt.TrainConfig(algo="protonet", n_way=5, k_shot=1, iterations=3, val_every=0, **small)
    run = tmp_path / "omniglot" / "runs" / "protonet-5w1s"
    params = fastadapt.train(config, run, progress=False, data=omniglot)
    cell = {"algorithm": "protonet", "n_way": 5, "k_shot": 1, "run": "omniglot/runs/protonet-5w1s",
            "iterations_done": 3, "iterations_total": 1000, "complete": False, "accuracy": 0.5, "ci95": 0.1}
    (tmp_path / "omniglot" / "protonet-5w1s.json").write_text(json.dumps(cell))
    loaded = meta_learned("protonet", 5, 1, iterations=2, data=omniglot, download=False)
    assert loaded.source == "results" and not loaded.complete
    assert "3 of 1,000" in loaded.describe() and "NOT complete" in loaded.describe()
    for k, v in params.items():
        torch.testing.assert_close(loaded.params[k].detach(), v)
    episode = fastadapt.EpisodeSampler(fastadapt.omniglot_classes("vinyals", "test", data=omniglot)).sample(
        2, 5, 1, 1, seed=0)
    assert loaded.algorithm.predict(loaded.params, *episode[:3]).shape == (2, 5, 5)
