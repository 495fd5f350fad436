"""The published protocols the table runs: Prototypical Networks' BatchNorm, schedule, early stopping and trainval
run; Reptile's inner Adam and mini-batches; Lake's one-shot tasks; the validation loss. Each is compared with
a transcription of the public code's logic, PyTorch's own optimizer or a hand computation."""
from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastadapt import (Episode, ProtoNet, Reptile, TrainConfig, evaluate, load_checkpoint, read_checkpoint,
                       read_metrics, train)
from fastadapt.algorithms.reptile import minibatch_order
from fastadapt.evaluate import lake_one_shot_tasks
from fastadapt.models import Conv4, mlp
from fastadapt.training import Hooks


def episode(tasks=1, n_way=4, k_shot=2, n_query=3, seed=0) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    xs = torch.rand(tasks, n_way * k_shot, 1, 28, 28, generator=gen)
    xq = torch.rand(tasks, n_way * n_query, 1, 28, 28, generator=gen)
    ys = torch.arange(n_way).repeat_interleave(k_shot).repeat(tasks, 1)
    yq = torch.arange(n_way).repeat_interleave(n_query).repeat(tasks, 1)
    return Episode(xs, ys, xq, yq)


# ---------------------------------------------------------------- Prototypical Networks

@pytest.mark.filterwarnings("ignore::UserWarning")
def test_protonet_rate_follows_the_published_epoch_schedule():
    """run_train.py / train.py: epochs of 100 episodes, a StepLR(20, 0.5) stepped at the start of every epoch
    (Engine.train calls on_start_epoch before the epoch's episodes). Simulated here with PyTorch's StepLR."""
    algorithm = ProtoNet(Conv4(n_way=None, hidden=4, pool=True, running_stats=True))
    optimizer, scheduler = algorithm.make_optimizer(algorithm.init_params(), meta_lr=1e-3, iterations=10_000)
    reference_optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    step_lr = torch.optim.lr_scheduler.StepLR(reference_optimizer, 20, gamma=0.5)  # on_start: built once
    for epoch in range(45):
        step_lr.step()  # on_start_epoch
        for _ in range(100):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(reference_optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    assert reference_optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)  # two halvings by epoch 45


def test_protonet_batchnorm_keeps_running_averages_and_evaluates_each_query_alone():
    """In train() a task's batch updates the running averages as nn.BatchNorm2d does (momentum 0.1, unbiased
    variance, checked by hand on the first layer); in eval() a query's logits do not depend on the other queries."""
    torch.manual_seed(0)
    model = Conv4(n_way=None, hidden=4, pool=True, running_stats=True)
    algorithm = ProtoNet(model)
    params = algorithm.init_params()
    task = episode()
    algorithm.predict(params, *task[:3])
    first = torch.cat([task.x_support[0], task.x_query[0]])  # the one batch the task was embedded in
    conv = F.conv2d(first, params["features.0.0.weight"], params["features.0.0.bias"], padding=1)
    bn = model.features[0][1]
    torch.testing.assert_close(bn.running_mean, 0.1 * conv.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * conv.var((0, 2, 3), unbiased=True))

    model.eval()
    xs, ys, xq = task.x_support[0], task.y_support[0], task.x_query[0]
    together = algorithm.predict_each_query(params, xs, ys, xq)
    alone = torch.cat([algorithm.predict(params, xs[None], ys[None], xq[i:i + 1][None])[0] for i in range(len(xq))])
    torch.testing.assert_close(together, alone)
    before = bn.running_mean.clone()
    algorithm.predict(params, *task[:3])
    assert torch.equal(bn.running_mean, before), "eval() must not change the running averages"


def scripted_validation(monkeypatch, losses):
    """Hooks.validate returns the given validation losses in turn (then keeps rising)."""
    calls = []

    def validate(self):
        calls.append(self.run.iteration)
        loss = losses[len(calls) - 1] if len(calls) <= len(losses) else 10.0 + len(calls)
        return {"val_mse": loss, "val_loss": loss}

    monkeypatch.setattr(Hooks, "validate", validate)
    return calls


def published_selection(losses, patience):
    """train.py's on_end_epoch (best loss, wait, stop when wait > patience) and trainval.py's length
    (trace argmin + patience epochs), transcribed: (epochs of the first run, epochs of the trainval run)."""
    best, wait, trace = math.inf, 0, []
    for epoch, loss in enumerate(losses, start=1):
        trace.append(loss)
        if loss < best:
            best, wait = loss, 0
        else:
            wait += 1
            if wait > patience:
                return epoch, min(range(len(trace)), key=trace.__getitem__) + patience
    raise AssertionError("the scripted losses must trigger early stopping")


SELECTION = dict(dataset="sinusoid", algo="maml", meta_batch_size=2, n_query=2, k_shot=2, iterations=1_000,
                 val_every=2, val_tasks=2, patience=2, retrain=True, log_every=1, checkpoint_every=3, seed=3)
LOSSES = [5.0, 4.0, 3.0, 3.5, 2.9, 3.1, 3.2, 3.3]  # best at the 5th point, patience 2: stops at the 8th


def test_early_stopping_and_the_trainval_run_have_the_published_lengths(tmp_path, monkeypatch):
    calls = scripted_validation(monkeypatch, LOSSES)
    config = TrainConfig(**SELECTION)
    train(config, tmp_path, progress=False)
    epochs, trainval_epochs = published_selection(LOSSES, config.patience)
    blob = read_checkpoint(tmp_path / "checkpoint.pt")
    selection = blob["selection"]
    assert calls == [config.val_every * (i + 1) for i in range(epochs)]  # validated only in the first phase
    assert (selection["phase"], selection["phase_start"], selection["best_point"]) == (2, epochs * 2, 5)
    assert blob["iteration"] == selection["phase_end"] == (epochs + trainval_epochs) * config.val_every
    assert selection["finished"] and selection["best_loss"] == 2.9
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in records] == list(range(1, blob["iteration"] + 1))
    assert {r["phase"] for r in records if r["iteration"] > epochs * 2} == {2}
    times = [r["time_s"] for r in records]
    assert times == sorted(times)


@pytest.mark.parametrize("stop_at", [7, 19])  # in model selection, and in the trainval run
def test_early_stopping_run_resumes_to_the_uninterrupted_result(stop_at, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, LOSSES)
    config = TrainConfig(**SELECTION)
    straight = train(config, tmp_path / "straight", progress=False)
    monkeypatch.undo()
    calls = scripted_validation(monkeypatch, LOSSES)
    from fastadapt import training

    original = training.meta_step

    def interrupted(*args):
        if len(steps) == stop_at:
            raise KeyboardInterrupt
        steps.append(1)
        return original(*args)

    steps = []
    monkeypatch.setattr(training, "meta_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", progress=False)
    stopped = read_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    monkeypatch.setattr(training, "meta_step", original)
    del calls[:]
    for point in range(1, stopped["selection"]["best_point"] + stopped["selection"]["wait"] + 1):
        calls.append(point)  # the validations already done: the script continues where it was
    resumed = train(config, tmp_path / "resumed", resume=True, progress=False)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    without_time = lambda d: [{k: v for k, v in r.items() if k != "time_s"}  # noqa: E731
                              for r in read_metrics(tmp_path / d / "metrics.jsonl")]
    assert without_time("straight") == without_time("resumed")
    times = [r["time_s"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")]
    assert times == sorted(times), "time_s counts on across the resume"


def test_a_saved_protonet_comes_back_with_its_running_averages_in_eval(tmp_path, omniglot):
    config = TrainConfig(algo="protonet", n_way=5, k_shot=1, n_query=2, iterations=2, val_every=0, log_every=1)
    train(config, tmp_path, progress=False, data=omniglot)
    blob = read_checkpoint(tmp_path / "checkpoint.pt")
    _, algorithm, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    assert not algorithm.model.training
    for name, buffer in algorithm.model.named_buffers():
        assert torch.equal(buffer, blob["buffers"][name]), name
    assert int(blob["buffers"]["features.0.1.num_batches_tracked"]) == 2  # one batch per episode


# ---------------------------------------------------------------- Reptile

def published_minibatches(samples, batch_size, num_batches, shuffle):
    """supervised-reptile's _mini_batches (without replacement), with the shuffle passed in."""
    cur_batch, batch_count, samples = [], 0, list(samples)
    while True:
        shuffle(samples)
        for sample in samples:
            cur_batch.append(sample)
            if len(cur_batch) < batch_size:
                continue
            yield cur_batch
            cur_batch = []
            batch_count += 1
            if batch_count == num_batches:
                return


def test_minibatches_cycle_through_reshuffled_passes_like_the_published_code():
    generator = torch.Generator().manual_seed(0)
    order = minibatch_order(7, 3, 5, generator)  # 15 images from 7: three passes, batches running across passes
    replay = torch.Generator().manual_seed(0)

    def shuffle(items):
        items[:] = [items[i] for i in torch.randperm(len(items), generator=replay).tolist()]

    assert order.tolist() == list(published_minibatches(range(7), 3, 5, shuffle))
    assert minibatch_order(4, 0, 2, generator).tolist() == [[0, 1, 2, 3]] * 2


def test_reptile_inner_adam_equals_torch_adam_carried_across_tasks():
    """The published inner loop: one Adam(beta1=0) whose state outlives the tasks (only the weights are reset per
    task), stepping on each task's mini-batches. Reference: torch.optim.Adam on a model, reset by hand."""
    torch.manual_seed(0)
    model = mlp(in_features=3, hidden=8, out_features=4)
    algorithm = Reptile(model, inner_lr=0.01, inner_steps=3, inner_optimizer="adam", inner_batch=4, seed=5)
    params = algorithm.init_params()
    gen = torch.Generator().manual_seed(1)
    tasks = Episode(torch.randn(2, 8, 3, generator=gen), torch.randint(0, 4, (2, 8), generator=gen),
                    torch.randn(2, 4, 3, generator=gen), torch.randint(0, 4, (2, 4), generator=gen))
    grads, _ = algorithm.meta_gradient(params, tasks)

    reference = mlp(in_features=3, hidden=8, out_features=4)
    adam = torch.optim.Adam(reference.parameters(), lr=0.01, betas=(0.0, 0.999), eps=1e-8)
    orders = torch.Generator().manual_seed(5)
    phis = []
    for xs, ys in zip(tasks.x_support, tasks.y_support):
        with torch.no_grad():
            for name, p in reference.named_parameters():
                p.copy_(params[name])  # the weights are reset for every task, the optimizer's state is not
        for indices in minibatch_order(8, 4, 3, orders):
            adam.zero_grad()
            F.cross_entropy(reference(xs[indices]), ys[indices]).backward()
            adam.step()
        phis.append({name: p.detach().clone() for name, p in reference.named_parameters()})
    for name in params:
        expected = params[name].detach() - (phis[0][name] + phis[1][name]) / 2
        torch.testing.assert_close(grads[name], expected, rtol=1e-5, atol=1e-6)
    for i, (name, p) in enumerate(reference.named_parameters()):
        torch.testing.assert_close(algorithm.adam_v[name], adam.state[p]["exp_avg_sq"], rtol=1e-5, atol=1e-9)
    assert int(algorithm.adam_count) == 6


def test_reptile_test_time_adaptation_leaves_the_inner_state_alone():
    torch.manual_seed(0)
    algorithm = Reptile(mlp(in_features=3, hidden=8, out_features=4), inner_lr=0.01, inner_steps=2,
                        inner_optimizer="adam", inner_batch=4, eval_inner_batch=2)
    params = algorithm.init_params()
    task = Episode(torch.randn(1, 8, 3), torch.randint(0, 4, (1, 8)), torch.randn(1, 4, 3), torch.randint(0, 4, (1, 4)))
    algorithm.meta_gradient(params, task)
    state = {k: v.clone() for k, v in algorithm.adam_v.items()}
    first = algorithm.predict(params, *task[:3], inner_steps=5)
    second = algorithm.predict(params, *task[:3], inner_steps=5)
    torch.testing.assert_close(first, second)  # the mini-batch order is a function of the task, the start state fixed
    for k in state:
        assert torch.equal(algorithm.adam_v[k], state[k])
    assert not torch.allclose(first, functional_call(algorithm.model, params, (task.x_query[0],))[None])


# ---------------------------------------------------------------- Lake's one-shot protocol and the validation loss

def test_lake_tasks_take_one_alphabet_and_two_drawers(omniglot):
    sample = lake_one_shot_tasks(omniglot, n_way=20)
    where = {}  # image bytes -> (character, drawer) of every drawing (first one when two drawings are identical)
    for c in range(len(omniglot)):
        for d in range(omniglot.images.shape[1]):
            where.setdefault(omniglot.images[c, d].numpy().tobytes(), (c, d))
    evaluation = set((~omniglot.background).nonzero().squeeze(1).tolist())
    alphabets = set()
    for seed in range(25):
        task = sample(1, seed)
        assert task.x_support.shape == task.x_query.shape == (1, 20, 1, 28, 28)
        assert torch.equal(task.y_support, task.y_query) and task.y_support.tolist() == [list(range(20))]
        found = []  # (character, drawer) of every image, looked up in the whole data set
        for x in torch.cat([task.x_support[0], task.x_query[0]]):
            key = x[0].mul(255).round().to(torch.uint8).numpy().tobytes()
            assert key in where, "every image is an Omniglot drawing"
            found.append(where[key])
        support, query = found[:20], found[20:]
        characters = [c for c, _ in support]
        assert [c for c, _ in query] == characters and len(set(characters)) == 20
        assert set(characters) <= evaluation
        assert len({omniglot.alphabets[c] for c in characters}) == 1, "one alphabet per task"
        assert len({d for _, d in support}) == 1 and len({d for _, d in query}) == 1, "one drawer per set"
        assert support[0][1] != query[0][1], "support and queries by two different drawers"
        alphabets.add(omniglot.alphabets[characters[0]])
    assert len(alphabets) > 5


def test_evaluate_reports_the_mean_query_cross_entropy():
    torch.manual_seed(0)
    algorithm = ProtoNet(Conv4(n_way=None, hidden=4, pool=True))
    params = algorithm.init_params()
    tasks = [episode(seed=s) for s in range(3)]
    result = evaluate(algorithm, params, lambda n, seed: tasks[seed % 3], tasks=3, seed=0, progress=False,
                      batch=2, transductive=True)
    from fastadapt.evaluate import task_seed

    expected = [F.cross_entropy(algorithm.predict(params, *tasks[task_seed(0, i) % 3][:3])[0],
                                tasks[task_seed(0, i) % 3].y_query[0]).item() for i in range(3)]
    assert result["loss"] == pytest.approx(sum(expected) / 3, rel=1e-5)


# ---------------------------------------------------------------- GPU-step pieces that the CPU can check

def test_adam_is_fused_only_for_parameters_on_a_gpu():
    from fastadapt.algorithms.base import adam

    params = {"w": torch.zeros(3, requires_grad=True)}
    assert not adam(params, 1e-3).defaults["fused"]  # CPU: the default for-each implementation


def test_a_device_generator_on_the_cpu_draws_the_cpu_generators_episodes():
    from fastadapt import EpisodeSampler

    images = torch.randint(0, 255, (12, 6, 1, 4, 4), dtype=torch.uint8)
    plain = EpisodeSampler(images).sample(3, 4, 2, 1, seed=5, rotate=True)
    on_device = EpisodeSampler(images, device_generator=True).sample(3, 4, 2, 1, seed=5, rotate=True)
    for a, b in zip(plain, on_device):
        assert torch.equal(a, b)


def test_the_command_line_evaluates_a_lake_model_with_lakes_protocol(tmp_path, capsys, omniglot, monkeypatch):
    from fastadapt import cli

    monkeypatch.setattr("fastadapt.cli._omniglot", lambda folder: omniglot)
    lake = TrainConfig(algo="protonet", split="lake", train_part="trainval", n_way=5, k_shot=1, n_query=1,
                       iterations=1, val_every=0)
    train(lake, tmp_path / "lake", progress=False, data=omniglot)
    cli.main(["evaluate", "--checkpoint", str(tmp_path / "lake" / "checkpoint.pt"), "--protocol", "lake", "--tasks",
              "2", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert (result["n_way"], result["k_shot"], result["tasks"], result["transductive"]) == (20, 1, 2, False)
    vinyals = replace(lake, split="vinyals")
    train(vinyals, tmp_path / "vinyals", progress=False, data=omniglot)
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--checkpoint", str(tmp_path / "vinyals" / "checkpoint.pt"), "--protocol", "lake"])
    assert "--split lake" in capsys.readouterr().err


def test_a_checkpoint_written_before_the_new_settings_loads_and_resumes_as_it_was_trained(tmp_path, omniglot):
    """Checkpoints of this version written before inner_optimizer, patience, ... existed: those runs used plain
    gradient descent and no model selection, and they load and resume that way (not with today's Reptile row)."""
    from fastadapt.checkpoints import ADDED

    config = TrainConfig(algo="reptile", n_way=5, k_shot=1, n_query=1, meta_batch_size=2, inner_steps=1,
                         iterations=2, val_every=0, **ADDED)
    train(config, tmp_path, progress=False, data=omniglot)
    blob = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for name in ADDED:
        del blob["config"][name]
    blob["iteration"] = 1  # as if the run had stopped half way (Reptile's schedule spans its 2 iterations)
    torch.save(blob, tmp_path / "checkpoint.pt")
    loaded, algorithm, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (loaded.inner_optimizer, algorithm.inner_optimizer, loaded.inner_batch) == ("sgd", "sgd", 0)
    train(config, tmp_path, resume=True, progress=False, data=omniglot)
    assert read_checkpoint(tmp_path / "checkpoint.pt")["iteration"] == 2
