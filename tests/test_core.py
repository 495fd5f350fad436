"""The functional core checked against references: the autograd.grad loop, finite differences, hand algebra."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fastadapt.core import accuracy, adapt, batched_loss, batched_query_outputs, maml_loss_reference
from fastadapt.models import BatchNorm, Conv4, mlp, params_of


def conv_problem(dtype=torch.float32, tasks=3, hidden=8, seed=0):
    """A small Conv4 and random 5-way 1-shot tasks of 28x28 images, 2 query points per class."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Conv4(n_way=5, hidden=hidden).to(dtype)
    xs = torch.randn(tasks, 5, 1, 28, 28, generator=gen, dtype=dtype)  # (tasks, 5, 1, 28, 28)
    xq = torch.randn(tasks, 10, 1, 28, 28, generator=gen, dtype=dtype)  # (tasks, 10, 1, 28, 28)
    ys = torch.arange(5).repeat(tasks, 1)  # (tasks, 5)
    yq = torch.arange(5).repeat(tasks, 2)  # (tasks, 10)
    return model, (xs, ys, xq, yq), F.cross_entropy, 0.4


def sine_problem(dtype=torch.float32, tasks=3, hidden=40, seed=0):
    """The sinusoid MLP and random sinusoid tasks, 10 support and 10 query points, MSE loss."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = mlp(1, hidden, 1).to(dtype)
    x = torch.rand(tasks, 20, 1, generator=gen, dtype=dtype) * 10 - 5  # (tasks, 20, 1)
    amplitude = torch.rand(tasks, 1, 1, generator=gen, dtype=dtype) * 4.9 + 0.1
    phase = torch.rand(tasks, 1, 1, generator=gen, dtype=dtype) * torch.pi
    y = amplitude * torch.sin(x - phase)  # (tasks, 20, 1)
    return model, (x[:, :10], y[:, :10], x[:, 10:], y[:, 10:]), F.mse_loss, 0.01


PROBLEMS = {"conv4": conv_problem, "sine": sine_problem}


def meta_grad(model, params, data, loss_fn, lr, steps, vectorize, first_order=False, **kwargs):
    """autograd.grad of batched_loss(batched_query_outputs(...)): the package's meta-gradient."""
    xs, ys, xq, yq = data
    outputs = batched_query_outputs(model, params, xs, ys, xq, vectorize=vectorize, inner_steps=steps,
                                    inner_lr=lr, loss_fn=loss_fn, first_order=first_order, **kwargs)
    loss = batched_loss(outputs, yq, loss_fn)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))


def reference_grad(model, params, data, loss_fn, lr, steps, first_order=False):
    """The same gradient from core.maml_loss_reference (autograd.grad with create_graph=True)."""
    loss = maml_loss_reference(model, params, *data, inner_steps=steps, inner_lr=lr, loss_fn=loss_fn,
                               first_order=first_order)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def assert_grads_close(actual, expected, rtol=1e-4, atol=1e-5):
    assert actual.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(actual[k], expected[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def dot(grads, direction):
    return sum(float((grads[k] * direction[k]).sum()) for k in direction)


def max_abs(grads):
    return max(float(g.abs().max()) for g in grads.values())


# ---------------------------------------------------------------- meta-gradient: loop, vmap, reference

@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("problem", ["conv4", "sine"])
def test_loop_meta_gradient_equals_reference(problem, steps):
    model, data, loss_fn, lr = PROBLEMS[problem]()
    params = params_of(model)
    loop = meta_grad(model, params, data, loss_fn, lr, steps, vectorize=False)
    reference = reference_grad(model, params, data, loss_fn, lr, steps)
    assert max_abs(reference) > 1e-3  # a real, non-zero gradient
    assert_grads_close(loop, reference)


@pytest.mark.parametrize("steps", [1, 3])
def test_vmap_meta_gradient_equals_loop_and_reference_sine(steps):
    model, data, loss_fn, lr = sine_problem()
    params = params_of(model)
    vmapped = meta_grad(model, params, data, loss_fn, lr, steps, vectorize=True)
    assert_grads_close(vmapped, meta_grad(model, params, data, loss_fn, lr, steps, vectorize=False))
    assert_grads_close(vmapped, reference_grad(model, params, data, loss_fn, lr, steps))


@pytest.mark.parametrize("steps", [1, 3])
def test_vmap_meta_gradient_equals_loop_and_reference_conv4(steps):
    model, data, loss_fn, lr = conv_problem()
    params = params_of(model)
    vmapped = meta_grad(model, params, data, loss_fn, lr, steps, vectorize=True)
    assert_grads_close(vmapped, reference_grad(model, params, data, loss_fn, lr, steps))
    assert_grads_close(vmapped, meta_grad(model, params, data, loss_fn, lr, steps, vectorize=False))


def test_vmap_conv4_outputs_and_first_order_gradient_equal_loop():
    """What vmap does get right on Conv4: the adapted predictions and the first-order meta-gradient."""
    model, data, loss_fn, lr = conv_problem()
    params = params_of(model)
    xs, ys, xq, _ = data
    kwargs = dict(inner_steps=2, inner_lr=lr, loss_fn=loss_fn)
    torch.testing.assert_close(batched_query_outputs(model, params, xs, ys, xq, vectorize=True, **kwargs),
                               batched_query_outputs(model, params, xs, ys, xq, vectorize=False, **kwargs),
                               rtol=1e-4, atol=1e-5)
    vmapped = meta_grad(model, params, data, loss_fn, lr, 2, vectorize=True, first_order=True)
    assert_grads_close(vmapped, reference_grad(model, params, data, loss_fn, lr, 2, first_order=True))


def test_vmap_conv4_second_order_when_only_the_head_adapts():
    """ANIL-style adaptation (BatchNorm parameters not adapted) is second-order correct under vmap."""
    model, data, loss_fn, lr = conv_problem()
    params = params_of(model)
    head = ["head.weight", "head.bias"]
    vmapped = meta_grad(model, params, data, loss_fn, lr, 2, vectorize=True, adapt_keys=head)
    loop = meta_grad(model, params, data, loss_fn, lr, 2, vectorize=False, adapt_keys=head)
    assert max_abs({k: v for k, v in loop.items() if not k.startswith("head.")}) > 1e-3
    assert_grads_close(vmapped, loop)


# ---------------------------------------------------------------- second order, by finite differences

def finite_difference_check(model, data, loss_fn, lr, steps, eps=1e-6):
    """(directional derivative of the meta-loss by central differences, grad . d, first-order grad . d)."""
    params = params_of(model)
    gen = torch.Generator().manual_seed(1)
    direction = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in params.items()}

    def meta_loss(t: float) -> float:
        moved = {k: (p + t * direction[k]).detach().requires_grad_(True) for k, p in params.items()}
        xs, ys, xq, yq = data
        outputs = batched_query_outputs(model, moved, xs, ys, xq, vectorize=False, inner_steps=steps,
                                        inner_lr=lr, loss_fn=loss_fn)
        return float(batched_loss(outputs, yq, loss_fn).detach())

    numeric = (meta_loss(eps) - meta_loss(-eps)) / (2 * eps)
    analytic = dot(meta_grad(model, params, data, loss_fn, lr, steps, vectorize=False), direction)
    first = dot(meta_grad(model, params, data, loss_fn, lr, steps, vectorize=False, first_order=True), direction)
    return numeric, analytic, first


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_finite_differences_mlp(steps):
    model, data, loss_fn, _ = sine_problem(dtype=torch.float64, tasks=2, hidden=4)
    numeric, analytic, first = finite_difference_check(model, data, loss_fn, lr=0.1, steps=steps)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    assert abs(first - numeric) > 1e-3 * max(1.0, abs(numeric))  # the second-order terms matter here


def test_second_order_meta_gradient_matches_finite_differences_conv4():
    model, data, loss_fn, lr = conv_problem(dtype=torch.float64, tasks=2, hidden=4)
    numeric, analytic, first = finite_difference_check(model, data, loss_fn, lr, steps=1)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    assert abs(first - numeric) > 1e-2 * max(1.0, abs(numeric))


# ---------------------------------------------------------------- first-order MAML

@pytest.mark.parametrize("vectorize", [False, True])
@pytest.mark.parametrize("problem", ["conv4", "sine"])
def test_first_order_equals_reference_and_differs_from_second_order(problem, vectorize):
    model, data, loss_fn, lr = PROBLEMS[problem]()
    params = params_of(model)
    first = meta_grad(model, params, data, loss_fn, lr, 2, vectorize=vectorize, first_order=True)
    assert_grads_close(first, reference_grad(model, params, data, loss_fn, lr, 2, first_order=True))
    second = reference_grad(model, params, data, loss_fn, lr, 2)
    difference = max(float((first[k] - second[k]).abs().max()) for k in params)
    assert difference > 1e-2 * max_abs(second)


def test_first_order_adapted_params_are_the_same_values_without_second_order_graph():
    model, (xs, ys, _, _), loss_fn, lr = sine_problem()
    params = params_of(model)
    second = adapt(model, params, xs[0], ys[0], inner_steps=2, inner_lr=lr, loss_fn=loss_fn)
    first = adapt(model, params, xs[0], ys[0], inner_steps=2, inner_lr=lr, loss_fn=loss_fn, first_order=True)
    for k in params:
        torch.testing.assert_close(first[k], second[k])
    # d(first-order phi)/d(theta) is the identity: the vector-Jacobian product returns the vector itself.
    v = {k: torch.randn_like(p) for k, p in params.items()}
    vjp = torch.autograd.grad(list(first.values()), list(params.values()), grad_outputs=list(v.values()))
    for k, g in zip(params, vjp):
        torch.testing.assert_close(g, v[k])


# ---------------------------------------------------------------- adapt

def test_adapt_zero_steps_returns_params_unchanged():
    model, (xs, ys, _, _), loss_fn, lr = conv_problem()
    params = params_of(model)
    adapted = adapt(model, params, xs[0], ys[0], inner_steps=0, inner_lr=lr, loss_fn=loss_fn)
    assert adapted.keys() == params.keys()
    for k in params:
        assert torch.equal(adapted[k], params[k])


def test_adapt_keys_adapts_only_those_keys():
    model, (xs, ys, _, _), loss_fn, lr = conv_problem()
    params = params_of(model)
    keys = ["head.weight", "features.3.0.weight"]
    adapted = adapt(model, params, xs[0], ys[0], inner_steps=2, inner_lr=lr, loss_fn=loss_fn, adapt_keys=keys)
    assert set(adapted) == set(params)
    for k in params:
        if k in keys:
            assert not torch.allclose(adapted[k], params[k]), k
        else:
            assert torch.equal(adapted[k], params[k]), k
    # The adapted subset equals full adaptation's update computed with the others frozen, by hand.
    frozen = {k: v.detach() for k, v in params.items()}
    fast = {k: params[k].detach().clone().requires_grad_(True) for k in keys}
    for _ in range(2):
        loss = loss_fn(functional_call(model, {**frozen, **fast}, (xs[0],)), ys[0])
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {k: (w - lr * g).detach().requires_grad_(True) for (k, w), g in zip(fast.items(), grads)}
    for k in keys:
        torch.testing.assert_close(adapted[k], fast[k], rtol=1e-4, atol=1e-6)


def test_per_parameter_inner_lr_dict_equals_float():
    model, (xs, ys, _, _), loss_fn, lr = conv_problem()
    params = params_of(model)
    with_float = adapt(model, params, xs[0], ys[0], inner_steps=2, inner_lr=lr, loss_fn=loss_fn)
    lrs = {k: torch.full_like(p, lr) for k, p in params.items()}
    with_dict = adapt(model, params, xs[0], ys[0], inner_steps=2, inner_lr=lrs, loss_fn=loss_fn)
    for k in params:
        torch.testing.assert_close(with_dict[k], with_float[k], rtol=1e-6, atol=1e-7)
    # and a dict with one entry doubled changes exactly that entry's update
    lrs["head.bias"] = torch.full_like(params["head.bias"], 2 * lr)
    one_step = adapt(model, params, xs[0], ys[0], inner_steps=1, inner_lr=lrs, loss_fn=loss_fn)
    reference = adapt(model, params, xs[0], ys[0], inner_steps=1, inner_lr=lr, loss_fn=loss_fn)
    torch.testing.assert_close(one_step["head.bias"] - params["head.bias"],
                               2 * (reference["head.bias"] - params["head.bias"]))


def test_linear_model_one_step_by_hand():
    """y = w * x with MSE: w' = w - lr * mean(2 (w x - y) x), and the meta-gradient is
    mean(2 (w' xq - yq) xq) * (1 - 2 lr mean(xs^2))."""
    model = nn.Linear(1, 1, bias=False).double()
    w = torch.tensor([[1.5]], dtype=torch.float64, requires_grad=True)
    params = {"weight": w}
    xs = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    ys = torch.tensor([[3.0], [1.0], [0.5]], dtype=torch.float64)
    xq = torch.tensor([[0.5], [-2.0]], dtype=torch.float64)
    yq = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    lr = 0.1
    w0 = 1.5
    dl_dw = sum(2 * (w0 * x - y) * x for x, y in [(1.0, 3.0), (2.0, 1.0), (-1.0, 0.5)]) / 3  # = 3.0
    w1 = w0 - lr * dl_dw  # = 1.2
    adapted = adapt(model, params, xs, ys, inner_steps=1, inner_lr=lr, loss_fn=F.mse_loss)
    assert float(adapted["weight"].detach()) == pytest.approx(w1, rel=1e-12)
    assert w1 == pytest.approx(1.2)

    meta = sum(2 * (w1 * x - y) * x for x, y in [(0.5, 1.0), (-2.0, 2.0)]) / 2
    meta *= 1 - 2 * lr * (1 + 4 + 1) / 3  # d w1 / d w0
    for vectorize in (False, True):
        outputs = batched_query_outputs(model, params, xs[None], ys[None], xq[None], vectorize=vectorize,
                                        inner_steps=1, inner_lr=lr, loss_fn=F.mse_loss)
        (g,) = torch.autograd.grad(batched_loss(outputs, yq[None], F.mse_loss), [w])
        assert float(g) == pytest.approx(meta, rel=1e-12)


def test_batched_loss_is_mean_of_task_losses():
    gen = torch.Generator().manual_seed(0)
    outputs = torch.randn(4, 6, 5, generator=gen)
    targets = torch.randint(0, 5, (4, 6), generator=gen)
    expected = torch.stack([F.cross_entropy(o, t) for o, t in zip(outputs, targets)]).mean()
    torch.testing.assert_close(batched_loss(outputs, targets), expected)


# ---------------------------------------------------------------- BatchNorm and accuracy

def test_conv4_batchnorm_keeps_no_running_stats_and_eval_changes_nothing():
    for pool in (False, True):
        model = Conv4(n_way=5, hidden=8, pool=pool)
        norms = [m for m in model.modules() if isinstance(m, BatchNorm)]
        assert len(norms) == 4
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        assert list(model.buffers()) == []
        x = torch.randn(10, 1, 28, 28)
        model.train()
        train_out = model(x)
        model.eval()
        eval_out = model(x)
        assert torch.equal(train_out, eval_out)
        # and each batch is normalised with its own statistics: the output depends on the rest of the batch
        assert not torch.allclose(model(x[:5]), eval_out[:5])


def test_accuracy_on_hand_made_logits():
    logits = torch.tensor([
        [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0]],  # argmax 0, 1, 2
        [[0.0, 1.0, 0.0], [9.0, 1.0, 1.0], [0.0, 0.0, 1.0]],  # argmax 1, 0, 2
    ])  # (2 tasks, 3 points, 3 ways)
    labels = torch.tensor([[0, 1, 1], [0, 0, 0]])
    torch.testing.assert_close(accuracy(logits, labels), torch.tensor([2 / 3, 1 / 3]))
    assert accuracy(logits, labels).shape == (2,)
