"""The algorithms checked against references, and a short real meta-training run of each one."""
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastadapt.algorithms import (ALGORITHMS, ANIL, FOMAML, MAML, MetaSGD, ProtoNet, Reptile, make_algorithm,
                                  prototype_logits)
from fastadapt.core import adapt, maml_loss_reference
from fastadapt.evaluate import evaluate
from fastadapt.models import Conv4
from fastadapt.tasks import Episode
from fastadapt.train import TrainConfig, build_algorithm, build_model, meta_step, read_metrics, task_source, train

CPU = torch.device("cpu")



def random_episode(tasks=3, n_way=5, k_shot=1, n_query=2, seed=0, dtype=torch.float32) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(tasks, n_way * k_shot, 1, 28, 28, generator=gen, dtype=dtype)
    xq = torch.randn(tasks, n_way * n_query, 1, 28, 28, generator=gen, dtype=dtype)
    ys = torch.arange(n_way).repeat_interleave(k_shot).repeat(tasks, 1)  # (tasks, n_way * k_shot)
    yq = torch.arange(n_way).repeat_interleave(n_query).repeat(tasks, 1)  # (tasks, n_way * n_query)
    return Episode(xs, ys, xq, yq)


def small_conv(n_way=5, hidden=8, pool=False, seed=0):
    torch.manual_seed(seed)
    return Conv4(n_way=n_way, hidden=hidden, pool=pool)


def reference_grads(model, params, episode, steps, lr, first_order=False):
    loss = maml_loss_reference(model, params, *episode, inner_steps=steps, inner_lr=lr, first_order=first_order)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def assert_grads_close(actual, expected, keys=None, rtol=1e-4, atol=1e-5):
    for k in (expected if keys is None else keys):
        torch.testing.assert_close(actual[k], expected[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def max_diff(a, b, keys):
    return max(float((a[k] - b[k]).detach().abs().max()) for k in keys)


# ---------------------------------------------------------------- meta-gradients against references

def test_maml_meta_gradient_equals_reference():
    model, episode = small_conv(), random_episode()
    algorithm = MAML(model, inner_lr=0.4, inner_steps=2, vectorize=False)
    params = algorithm.init_params()
    grads, metrics = algorithm.meta_gradient(params, episode)
    assert_grads_close(grads, reference_grads(model, params, episode, 2, 0.4))
    assert set(metrics) == {"loss", "accuracy"} and 0 <= metrics["accuracy"] <= 1


def test_metasgd_with_learning_rates_at_inner_lr_equals_maml():
    model, episode = small_conv(), random_episode()
    metasgd = MetaSGD(model, inner_lr=0.4, inner_steps=2, vectorize=False)
    maml = MAML(model, inner_lr=0.4, inner_steps=2, vectorize=False)
    params = metasgd.init_params()
    model_keys = [k for k in params if not k.startswith("lr.")]
    lr_keys = [k for k in params if k.startswith("lr.")]
    assert sorted(k[3:] for k in lr_keys) == sorted(model_keys)
    for k in lr_keys:
        assert torch.equal(params[k], torch.full_like(params[k], 0.4))
    grads, _ = metasgd.meta_gradient(params, episode)
    maml_grads, _ = maml.meta_gradient({k: params[k] for k in model_keys}, episode)
    assert_grads_close(grads, maml_grads, keys=model_keys)
    # the learning rates get a gradient too (they are meta-learned)
    assert max(float(grads[k].abs().max()) for k in lr_keys) > 1e-4
    # and changing one learning rate changes the meta-gradient
    params["lr.head.weight"] = torch.full_like(params["lr.head.weight"], 0.1).requires_grad_(True)
    changed, _ = metasgd.meta_gradient(params, episode)
    assert max_diff(changed, maml_grads, model_keys) > 1e-4


def test_fomaml_meta_gradient_equals_first_order_reference():
    model, episode = small_conv(), random_episode()
    algorithm = FOMAML(model, inner_lr=0.4, inner_steps=2, vectorize=False)
    assert algorithm.first_order
    params = algorithm.init_params()
    grads, _ = algorithm.meta_gradient(params, episode)
    assert_grads_close(grads, reference_grads(model, params, episode, 2, 0.4, first_order=True))
    second = reference_grads(model, params, episode, 2, 0.4)
    assert max_diff(grads, second, params) > 1e-3


def test_anil_adapts_only_the_head():
    model, episode = small_conv(), random_episode()
    algorithm = ANIL(model, inner_lr=0.4, inner_steps=2, vectorize=False)
    params = algorithm.init_params()
    kwargs = algorithm.adapt_kwargs(params)
    assert sorted(kwargs["adapt_keys"]) == ["head.bias", "head.weight"]
    adapted = adapt(model, params, episode.x_support[0], episode.y_support[0], **kwargs)
    for k in params:
        if k.startswith("head."):
            assert not torch.allclose(adapted[k], params[k]), k
        else:
            assert torch.equal(adapted[k], params[k]), k
    grads, _ = algorithm.meta_gradient(params, episode)
    body = [k for k in params if not k.startswith("head.")]
    assert max(float(grads[k].abs().max()) for k in body) > 1e-4  # the body is still meta-learned
    # and the meta-gradient equals the reference that adapts the head only, by hand
    losses = []
    for xs, ys, xq, yq in zip(*episode):
        fast = {k: params[k] for k in ("head.weight", "head.bias")}
        for _ in range(2):
            loss = F.cross_entropy(functional_call(model, {**params, **fast}, (xs,)), ys)
            g = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {k: w - 0.4 * gk for (k, w), gk in zip(fast.items(), g)}
        losses.append(F.cross_entropy(functional_call(model, {**params, **fast}, (xq,)), yq))
    expected = dict(zip(params, torch.autograd.grad(torch.stack(losses).mean(), list(params.values()))))
    assert_grads_close(grads, expected)
    # ANIL differs from MAML
    assert max_diff(grads, reference_grads(model, params, episode, 2, 0.4), params) > 1e-4


@pytest.mark.parametrize("eps", [1.0, 0.5])
def test_one_reptile_step_moves_towards_the_mean_adapted_weights(eps):
    model, episode = small_conv(), random_episode(tasks=3, k_shot=2)
    algorithm = Reptile(model, inner_lr=0.1, inner_steps=3, vectorize=False)
    params = algorithm.init_params()
    theta = {k: p.detach().clone() for k, p in params.items()}
    phis = [adapt(model, theta, xs, ys, inner_steps=3, inner_lr=0.1, first_order=True)
            for xs, ys in zip(episode.x_support, episode.y_support)]
    mean_phi = {k: torch.stack([phi[k].detach() for phi in phis]).mean(0) for k in theta}
    expected = {k: theta[k] + eps * (mean_phi[k] - theta[k]) for k in theta}

    grads, metrics = algorithm.meta_gradient(params, episode)
    optimizer = torch.optim.SGD(list(params.values()), lr=eps)
    for k, p in params.items():
        p.grad = grads[k]
    optimizer.step()
    assert_grads_close(params, expected, rtol=1e-5, atol=1e-6)
    assert max_diff(params, theta, theta) > 1e-3  # it moved
    assert math.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1

    # train.meta_step does the same
    params2 = algorithm.init_params()
    meta_step(algorithm, params2, torch.optim.SGD(list(params2.values()), lr=eps), episode)
    assert_grads_close(params2, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- Prototypical Networks

def test_prototype_logits_by_hand():
    gen = torch.Generator().manual_seed(0)
    support = torch.randn(7, 4, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    query = torch.randn(5, 4, generator=gen)
    logits = prototype_logits(support, labels, query, n_way=3)
    assert logits.shape == (5, 3)
    for i in range(5):
        for c in range(3):
            members = [support[j] for j in range(7) if labels[j] == c]
            mean = sum(members) / len(members)
            distance = sum((float(query[i, d]) - float(mean[d])) ** 2 for d in range(4))
            assert float(logits[i, c]) == pytest.approx(-distance, rel=1e-5, abs=1e-5)


def test_protonet_predict_shapes_and_values():
    model = small_conv(n_way=None, pool=True)
    algorithm = ProtoNet(model)
    params = algorithm.init_params()
    episode = random_episode(tasks=2, n_way=4, k_shot=3, n_query=2)
    logits = algorithm.predict(params, episode.x_support, episode.y_support, episode.x_query)
    assert logits.shape == (2, 8, 4)
    assert (logits <= 0).all()
    for t in range(2):  # support and query embedded together, as one batch
        features = functional_call(model, params, (torch.cat([episode.x_support[t], episode.x_query[t]]),))
        expected = prototype_logits(features[:12], episode.y_support[t], features[12:], 4)
        torch.testing.assert_close(logits[t], expected, rtol=1e-4, atol=1e-4)
    grads, metrics = algorithm.meta_gradient(params, episode)
    assert grads.keys() == params.keys() and all(torch.isfinite(g).all() for g in grads.values())
    assert set(metrics) == {"loss", "accuracy"}


def test_make_algorithm():
    model = small_conv()
    for name, cls in ALGORITHMS.items():
        algorithm = make_algorithm(name, model)
        assert isinstance(algorithm, cls) and algorithm.name == name
    assert make_algorithm("maml", model, inner_lr=0.1, inner_steps=3).inner_steps == 3
    with pytest.raises(ValueError) as info:
        make_algorithm("bogus", model)
    message = str(info.value)
    assert "bogus" in message
    for name in ("maml", "fomaml", "reptile", "anil", "metasgd", "protonet"):
        assert name in message


# ---------------------------------------------------------------- short real training runs
#
# Every run: Omniglot 5-way 1-shot, vinyals split, CPU, evaluated on the same 100 test tasks
# (2 queries per class). Untrained (iteration 0) accuracies on those tasks, measured:
# maml/metasgd 0.43, fomaml (inner_lr 0.2) 0.44, anil 0.23, protonet 0.54, reptile (3 steps of 0.1) 0.51.
# The thresholds sit well above those, so a run that learns nothing fails.

SMOKE = {
    "maml": (dict(iterations=20, meta_batch_size=4, n_query=1, meta_lr=3e-3), 0.53),
    "fomaml": (dict(iterations=40, meta_batch_size=4, n_query=1, meta_lr=3e-3, inner_lr=0.2), 0.53),
    "anil": (dict(iterations=20, meta_batch_size=4, n_query=1, meta_lr=3e-3), 0.33),
    "metasgd": (dict(iterations=20, meta_batch_size=4, n_query=1, meta_lr=3e-3), 0.53),
    # Reptile learns slowly: train on 5-shot support sets (evaluated 1-shot), 3 steps of 0.1
    "reptile": (dict(iterations=20, meta_batch_size=4, n_query=1, k_shot=5, meta_lr=1.0, inner_lr=0.1,
                     inner_steps=3), 0.55),
    "protonet": (dict(iterations=20, meta_batch_size=4, n_query=1, meta_lr=3e-3, inner_steps=0), 0.63),
}


@pytest.mark.parametrize("algo", list(SMOKE))
def test_short_training_beats_untrained_and_chance(algo, omniglot, tmp_path):
    settings, threshold = SMOKE[algo]
    config = TrainConfig(algo=algo, val_every=0, log_every=5, **settings)
    started = time.perf_counter()
    params = train(config, tmp_path, device="cpu", progress=False, data=omniglot)
    model = build_model(config)
    algorithm = build_algorithm(config, model)
    sample = task_source(config, "test", CPU, k_shot=1, n_query=2, data=omniglot)
    result = evaluate(algorithm, params, sample, tasks=100, progress=False)
    elapsed = time.perf_counter() - started
    print(f"{algo}: accuracy {result['accuracy']:.3f} +- {result['ci95']:.3f} in {elapsed:.1f}s")
    assert (result["tasks"], result["n_way"], result["k_shot"]) == (100, 5, 1)
    assert result["accuracy"] > threshold
    assert [r["iteration"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(
        range(5, settings["iterations"] + 1, 5))


def test_short_sinusoid_maml_lowers_the_mse(tmp_path):
    config = TrainConfig(algo="maml", dataset="sinusoid", inner_lr=0.01, k_shot=10, n_query=10,
                         meta_batch_size=10, meta_lr=1e-2, iterations=100, val_every=0)
    torch.manual_seed(config.seed)  # the same initialisation train() starts from
    algorithm = build_algorithm(config, build_model(config))
    before = algorithm.init_params()
    params = train(config, tmp_path, device="cpu", progress=False)
    for k in before:
        assert not torch.equal(before[k], params[k])
    sample = task_source(config, "test", CPU)
    mse_before = evaluate(algorithm, before, sample, tasks=100, progress=False)["mse"]
    mse_after = evaluate(algorithm, params, sample, tasks=100, progress=False)["mse"]
    print(f"sinusoid MSE {mse_before:.3f} -> {mse_after:.3f}")
    assert mse_after < 0.75 * mse_before  # measured: 3.71 -> 2.11


def test_predict_queries_non_transductive_is_independent_of_other_queries():
    """By default each query is classified in a batch with the support set only (no query sees another)."""
    from fastadapt.evaluate import predict_queries

    torch.manual_seed(0)
    model = Conv4(n_way=5, hidden=8)
    maml = make_algorithm("maml", model, inner_lr=0.4, inner_steps=1)
    params = maml.init_params()
    episode = random_episode(tasks=1, n_way=5, k_shot=1, n_query=3)
    xs, ys, xq = episode.x_support[0], episode.y_support[0], episode.x_query[0]
    together = predict_queries(maml, params, xs, ys, xq)  # (15, 5)
    alone = torch.cat([predict_queries(maml, params, xs, ys, xq[i:i + 1]) for i in range(3)])  # (3, 5)
    torch.testing.assert_close(together[:3], alone, rtol=1e-4, atol=1e-5)
    transductive = predict_queries(maml, params, xs, ys, xq, transductive=True)  # (15, 5)
    assert not torch.allclose(transductive, together, atol=1e-3)  # query statistics do change the outputs
