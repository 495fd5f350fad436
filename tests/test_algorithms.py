"""The algorithms checked against references, and a short real meta-training run of each one."""
import math
import time

import numpy as np

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastadapt import TrainConfig, build_algorithm, build_model, meta_step, read_metrics, task_source, train
from fastadapt.algorithms import (ALGORITHMS, ANIL, FOMAML, MAML, MetaSGD, ProtoNet, Reptile, make_algorithm,
                                  prototype_logits)
from fastadapt.core import adapt, batched_loss, maml_loss_reference
from fastadapt.evaluate import evaluate
from fastadapt.models import Conv4, mlp
from fastadapt.tasks import Episode

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


def test_metasgd_learning_rate_gradient_matches_finite_differences():
    """d meta-loss / d (learned rates) against central differences in float64, along a random direction."""
    torch.manual_seed(0)
    model = mlp(1, 6, 1).double()
    algorithm = MetaSGD(model, inner_lr=0.05, inner_steps=2, loss_fn=F.mse_loss, vectorize=False)
    params = algorithm.init_params()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 16, 1, generator=gen, dtype=torch.float64) * 10 - 5  # (tasks, 16, 1)
    y = 3 * torch.sin(x - 0.5)  # (tasks, 16, 1)
    episode = Episode(x[:, :8], y[:, :8], x[:, 8:], y[:, 8:])
    lr_keys = [k for k in params if k.startswith("lr.")]
    direction = {k: torch.randn(params[k].shape, generator=gen, dtype=torch.float64) for k in lr_keys}

    def meta_loss(t: float) -> float:
        moved = {k: (p + t * direction[k] if k in direction else p).detach() for k, p in params.items()}
        outputs = algorithm.predict(moved, *episode[:3])
        return float(batched_loss(outputs, episode.y_query, F.mse_loss).detach())

    eps = 1e-6
    numeric = (meta_loss(eps) - meta_loss(-eps)) / (2 * eps)
    grads, _ = algorithm.meta_gradient(params, episode)
    analytic = sum(float((grads[k] * direction[k]).sum()) for k in lr_keys)
    assert abs(numeric) > 1e-3, "a direction along which the rates matter"
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def anil_meta_loss_numpy(w: dict, xs, ys, xq, yq, steps: int, lr: float) -> float:
    """ANIL's meta-loss for the sinusoid MLP written out in numpy: the body runs once, the head takes
    `steps` closed-form gradient steps of the support MSE, then the query MSE of the adapted head."""
    def features(x):  # (points, 1) -> (points, hidden), the body
        h = np.maximum(x @ w["body.0.weight"].T + w["body.0.bias"], 0)
        return np.maximum(h @ w["body.2.weight"].T + w["body.2.bias"], 0)

    losses = []
    for task in range(len(xs)):
        hs, hq = features(xs[task]), features(xq[task])
        head_w, head_b = w["head.weight"], w["head.bias"]  # (1, hidden), (1,)
        for _ in range(steps):
            residual = hs @ head_w.T + head_b - ys[task]  # (points, 1)
            head_w = head_w - lr * 2 * residual.T @ hs / len(hs)  # d mean(r^2) / d W
            head_b = head_b - lr * 2 * residual.mean(0)
        losses.append(((hq @ head_w.T + head_b - yq[task]) ** 2).mean())
    return float(np.mean(losses))


def test_anil_on_the_sinusoid_mlp_against_a_numpy_computation():
    """The MLP's last layer is `head`, so ANIL adapts it (and only it); the meta-loss equals a numpy
    computation and the meta-gradient equals its central finite differences."""
    torch.manual_seed(0)
    model = mlp(1, 5, 1).double()
    algorithm = ANIL(model, inner_lr=0.1, inner_steps=2, loss_fn=F.mse_loss, vectorize=False)
    params = algorithm.init_params()
    assert sorted(algorithm.adapt_kwargs(params)["adapt_keys"]) == ["head.bias", "head.weight"]
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(3, 12, 1, generator=gen, dtype=torch.float64) * 10 - 5  # (tasks, 12, 1)
    y = 2 * torch.sin(x + 1.0)  # (tasks, 12, 1)
    episode = Episode(x[:, :6], y[:, :6], x[:, 6:], y[:, 6:])
    numpy_episode = [t.numpy() for t in episode]
    weights = {k: v.detach().numpy() for k, v in params.items()}

    grads, metrics = algorithm.meta_gradient(params, episode)
    assert float(metrics["loss"]) == pytest.approx(anil_meta_loss_numpy(weights, *numpy_episode, 2, 0.1), rel=1e-10)
    direction = {k: torch.randn(p.shape, generator=gen, dtype=torch.float64).numpy() for k, p in params.items()}
    eps = 1e-6
    plus, minus = ({k: w + sign * eps * direction[k] for k, w in weights.items()} for sign in (1, -1))
    numeric = (anil_meta_loss_numpy(plus, *numpy_episode, 2, 0.1)
               - anil_meta_loss_numpy(minus, *numpy_episode, 2, 0.1)) / (2 * eps)
    analytic = sum(float((grads[k].numpy() * direction[k]).sum()) for k in params)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    assert max(float(grads[k].abs().max()) for k in params if k.startswith("body.")) > 1e-4  # the body is meta-learned


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
    """Reptile on y = w . x + b with MSE: each task's weights after 3 SGD steps computed by hand in numpy,
    then theta + eps * (mean(phi) - theta)."""
    model = torch.nn.Linear(2, 1).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)  # (tasks, points, 2)
    y = torch.randn(3, 4, 1, generator=gen, dtype=torch.float64)  # (tasks, points, 1)
    episode = Episode(x, y, x[:, :2], y[:, :2])
    algorithm = Reptile(model, inner_lr=0.1, inner_steps=3, loss_fn=F.mse_loss, vectorize=False)
    params = algorithm.init_params()
    w0, b0 = params["weight"].detach().numpy().copy(), params["bias"].detach().numpy().copy()  # (1, 2), (1,)
    phis = []
    for xs, ys in zip(x.numpy(), y.numpy()):
        w, b = w0, b0
        for _ in range(3):
            residual = xs @ w.T + b - ys  # (points, 1)
            w, b = w - 0.1 * 2 * residual.T @ xs / len(xs), b - 0.1 * 2 * residual.mean(0)
        phis.append((w, b))
    expected = {"weight": torch.from_numpy(w0 + eps * (np.mean([w for w, _ in phis], 0) - w0)),
                "bias": torch.from_numpy(b0 + eps * (np.mean([b for _, b in phis], 0) - b0))}

    grads, metrics = algorithm.meta_gradient(params, episode)
    optimizer = torch.optim.SGD(list(params.values()), lr=eps)
    for k, p in params.items():
        p.grad = grads[k]
    optimizer.step()
    assert_grads_close(params, expected, rtol=1e-10, atol=1e-12)
    assert max_diff(params, {"weight": torch.from_numpy(w0), "bias": torch.from_numpy(b0)}, params) > 1e-3  # it moved
    assert math.isfinite(metrics["loss"])

    # train.meta_step does the same
    params2 = algorithm.init_params()
    meta_step(algorithm, params2, torch.optim.SGD(list(params2.values()), lr=eps), episode)
    assert_grads_close(params2, expected, rtol=1e-10, atol=1e-12)


def test_reptile_anneals_its_step_size_to_zero():
    """Reptile's own schedule: SGD with step size meta_lr * (1 - t / T) at iteration t."""
    algorithm = Reptile(small_conv())
    params = algorithm.init_params()
    optimizer, scheduler = algorithm.make_optimizer(params, meta_lr=0.8, iterations=4)
    assert isinstance(optimizer, torch.optim.SGD)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert optimizer.param_groups[0]["lr"] == 0


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


def test_protonet_predict_against_prototypes_and_distances_by_hand():
    model = small_conv(n_way=None, pool=True)
    algorithm = ProtoNet(model)
    params = algorithm.init_params()
    episode = random_episode(tasks=2, n_way=4, k_shot=3, n_query=2)
    logits = algorithm.predict(params, episode.x_support, episode.y_support, episode.x_query).detach()
    assert logits.shape == (2, 8, 4)
    for t in range(2):
        with torch.no_grad():  # support and query embedded together, as one batch (the model holds the same weights)
            features = model(torch.cat([episode.x_support[t], episode.x_query[t]])).tolist()  # 12 + 8 rows of 8
        support, query, labels = features[:12], features[12:], episode.y_support[t].tolist()
        for c in range(4):
            members = [support[j] for j in range(12) if labels[j] == c]
            prototype = [sum(column) / len(members) for column in zip(*members)]
            for i, q in enumerate(query):
                distance = sum((a - b) ** 2 for a, b in zip(q, prototype))
                assert float(logits[t, i, c]) == pytest.approx(-distance, rel=1e-4, abs=1e-4)
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
# Every run: Omniglot 5-way 1-shot, published vinyals split, CPU, evaluated on the same 100 test tasks
# (2 queries per class). Untrained (iteration 0) accuracies on those tasks, measured: maml/metasgd 0.43,
# fomaml (inner_lr 0.2) 0.43, anil 0.25, protonet 0.54, reptile (3 steps of 0.1) 0.46; trained, measured:
# maml 0.59, fomaml 0.52, anil 0.42, metasgd 0.61, reptile 0.50, protonet 0.66. The thresholds sit above the
# untrained accuracies on the same tasks (a paired comparison), so a run that learns nothing fails.

SMOKE = {
    "maml": (dict(iterations=20, meta_batch_size=4, n_query=1, meta_lr=3e-3), 0.53),
    "fomaml": (dict(iterations=40, meta_batch_size=4, n_query=1, meta_lr=3e-3, inner_lr=0.2), 0.48),
    "anil": (dict(iterations=20, meta_batch_size=4, n_query=1, meta_lr=3e-3), 0.33),
    "metasgd": (dict(iterations=20, meta_batch_size=4, n_query=1, meta_lr=3e-3), 0.53),
    # Reptile learns slowly: train on 5-shot support sets (evaluated 1-shot), 3 steps of 0.1
    "reptile": (dict(iterations=20, meta_batch_size=4, n_query=1, k_shot=5, meta_lr=1.0, inner_lr=0.1,
                     inner_steps=3), 0.48),
    "protonet": (dict(iterations=20, meta_batch_size=4, n_query=1, meta_lr=3e-3, inner_steps=0), 0.60),
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


@pytest.mark.parametrize("vectorize", [False, True])
def test_anil_body_features_once_equals_adapting_through_the_whole_network(vectorize):
    """ANIL's fast path (body features computed once per set, inner steps on the head alone) against
    core.adapt through the whole network with only the head adapted: outputs and second-order meta-gradients."""
    model, episode = small_conv(n_way=5), random_episode(tasks=2, n_way=5, k_shot=2, n_query=2)
    anil = ANIL(model, inner_lr=0.4, inner_steps=3, vectorize=vectorize)
    params = anil.init_params()
    head = [k for k in params if k.startswith("head.")]

    def whole_network(params):
        outputs = [functional_call(model, adapt(model, params, xs, ys, inner_steps=3, inner_lr=0.4, adapt_keys=head),
                                   (xq,)) for xs, ys, xq in zip(*episode[:3])]
        return torch.stack(outputs)

    expected = whole_network(params)
    torch.testing.assert_close(anil.predict(params, *episode[:3]), expected, rtol=1e-4, atol=1e-5)
    grads, _ = anil.meta_gradient(params, episode)
    reference = torch.autograd.grad(batched_loss(expected, episode.y_query), list(params.values()))
    assert_grads_close(grads, dict(zip(params, reference)))


@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd"])
def test_the_compiled_step_equals_the_eager_step(algo):
    """functional_meta_gradient (one torch.func function) equals the algorithm's own meta_gradient, and the same
    function captured by torch.compile (AOTAutograd's graphs, run eagerly: backend aot_eager, quick to build on
    a CPU; the benchmark compiles with inductor) equals it too, second order included."""
    from fastadapt.training import compiled_meta_gradient, functional_meta_gradient

    torch.manual_seed(0)
    algorithm = make_algorithm(algo, Conv4(n_way=5, hidden=4), inner_lr=0.4, inner_steps=2, vectorize=False)
    params = algorithm.init_params()
    episode = random_episode(tasks=2)
    eager, eager_metrics = algorithm.meta_gradient(params, episode)
    functional, _ = functional_meta_gradient(algorithm)(params, episode)
    compiled, compiled_metrics = compiled_meta_gradient(algorithm, backend="aot_eager", fullgraph=True)(params, episode)
    assert_grads_close(functional, eager)
    assert_grads_close(compiled, eager)
    for name in ("loss", "accuracy"):
        torch.testing.assert_close(compiled_metrics[name], eager_metrics[name])
