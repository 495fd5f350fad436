"""fastadapt.baselines against hand-made cases and closed-form least squares."""
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.baselines import pixel_nearest_neighbour, pretrain_pooled
from fastadapt.tasks import Episode


def test_pixel_nearest_neighbour_hand_made_case():
    support = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[5.0, 5.0]]]).view(1, 3, 1, 1, 2)  # 3 "images" of 2 pixels
    query = torch.tensor([[[0.9, 1.2]], [[4.0, 4.0]], [[0.1, -0.2]], [[2.9, 3.0]]]).view(1, 4, 1, 1, 2)
    y_support = torch.tensor([[2, 0, 1]])
    # distances by hand: q0 nearest s1 (label 0); q1 -> s2 (1); q2 -> s0 (2); q3: |(2.9,3)-(1,1)|^2 = 7.61 < 8.41 -> s1 (0)
    episode = Episode(support, y_support, query, torch.zeros(1, 4, dtype=torch.long))
    assert pixel_nearest_neighbour(episode).tolist() == [[0, 1, 2, 0]]


def test_pretrain_pooled_reaches_the_pooled_least_squares_solution():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 10, 1, generator=gen)
    y = torch.randn(4, 1, 1, generator=gen) * x + torch.randn(4, 1, 1, generator=gen)  # 4 linear tasks
    batch = Episode(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    losses = pretrain_pooled(model, lambda tasks, seed: batch, iterations=3000, tasks_per_batch=4, lr=0.01,
                             seed=0, loss_fn=F.mse_loss)
    design = torch.cat([x.flatten(0, 1), torch.ones(40, 1)], dim=1)  # (40, 2): pooled points and a bias column
    solution = torch.linalg.lstsq(design, y.flatten(0, 1)).solution.flatten()  # (slope, intercept)
    torch.testing.assert_close(torch.cat([model.weight.flatten(), model.bias]).detach(), solution, atol=1e-3, rtol=1e-3)
    assert len(losses) == 3000 and losses[-1] < losses[0]


# --- pre-training and frozen-feature heads (pretrain_classifier, linear_probe, fine_tune_head, FrozenFeatures)

import copy  # noqa: E402

import pytest  # noqa: E402

from fastadapt.baselines import (  # noqa: E402
    FrozenFeatures, embed_tasks, fine_tune_head, linear_cka, linear_probe, pretrain_classifier,
)


def random_features(tasks=3, support=12, query=7, dim=6, n_way=4, seed=0):
    """Random features with every class in every task's support set, and labels for them."""
    gen = torch.Generator().manual_seed(seed)
    y_support = torch.arange(n_way).repeat(support // n_way).expand(tasks, -1)  # (tasks, support)
    centres = torch.randn(tasks, n_way, dim, generator=gen, dtype=torch.float64)
    support = centres.gather(1, y_support[..., None].expand(-1, -1, dim)) + torch.randn(
        tasks, y_support.shape[1], dim, generator=gen, dtype=torch.float64)
    query = torch.randn(tasks, query, dim, generator=gen, dtype=torch.float64)
    return support, y_support, query


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("C", [0.1, 1.0, 10.0])
def test_linear_probe_equals_sklearn_logistic_regression(normalize, C):
    from sklearn.linear_model import LogisticRegression

    support, y_support, query = random_features()
    probabilities = linear_probe(support, y_support, query, C=C, normalize=normalize, max_iter=500).softmax(-1)
    for t in range(support.shape[0]):
        xs, xq = support[t], query[t]
        if normalize:
            xs, xq = xs / xs.norm(dim=1, keepdim=True), xq / xq.norm(dim=1, keepdim=True)
        reference = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(xs.numpy(), y_support[t].numpy())
        expected = torch.from_numpy(reference.predict_proba(xq.numpy()))
        torch.testing.assert_close(probabilities[t], expected, atol=1e-5, rtol=1e-4)


def test_fine_tune_head_one_step_from_zero_is_the_hand_computed_step():
    support, y_support, query = random_features(tasks=2, n_way=3, support=9)
    lr = 0.3
    logits = fine_tune_head(support, y_support, query, steps=1, lr=lr)
    for t in range(2):
        # at W = 0, b = 0 the softmax is uniform: the mean gradient is (1/N - onehot) x / n, so one step adds
        # lr * mean over the support set of (onehot - 1/3) x^T to W and lr * mean of (onehot - 1/3) to b
        residual = F.one_hot(y_support[t], 3).double() - 1 / 3  # (support, 3)
        weight = lr * residual.T @ support[t] / len(support[t])  # (3, dim)
        bias = lr * residual.mean(0)
        torch.testing.assert_close(logits[t], query[t] @ weight.T + bias)


def test_heads_separate_a_separable_case():
    # two tasks, 3 classes on the axes of a 3-D space; queries are scaled and slightly moved copies
    support = torch.eye(3, dtype=torch.float64).repeat(2, 2, 1)  # (2 tasks, 6 support, 3)
    y_support = torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 2]])
    query = 2 * torch.eye(3, dtype=torch.float64).flip(0).expand(2, 3, 3) + 0.1  # classes 2, 1, 0
    for logits in (linear_probe(support, y_support, query), fine_tune_head(support, y_support, query, steps=50)):
        assert logits.argmax(-1).tolist() == [[2, 1, 0], [2, 1, 0]]


def test_pretrain_classifier_learns_separable_classes_and_resumes_exactly():
    gen = torch.Generator().manual_seed(1)
    centres = 4 * torch.randn(5, 1, 8, generator=gen)
    images = centres + torch.randn(5, 20, 8, generator=gen)  # (classes, examples, features): 5 separable blobs
    torch.manual_seed(0)
    model = nn.Linear(8, 5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    losses = pretrain_classifier(model, images, steps=300, batch_size=32, lr=0.05, seed=3)
    predicted = model(images.flatten(0, 1)).argmax(-1)
    assert (predicted == torch.arange(5).repeat_interleave(20)).all()
    assert len(losses) == 300 and losses[-1] < 0.1 * losses[0]

    resumed = nn.Linear(8, 5)
    resumed.load_state_dict(start)
    saved = {}

    def keep(done, optimizer, losses):  # what a script would save as a checkpoint
        saved[done] = ({k: v.clone() for k, v in resumed.state_dict().items()}, copy.deepcopy(optimizer.state_dict()))

    pretrain_classifier(resumed, images, steps=300, batch_size=32, lr=0.05, seed=3, every=120, callback=keep)
    assert sorted(saved) == [120, 240, 300]
    weights, optimizer_state = saved[120]  # restart from the checkpoint taken after 120 steps
    again = nn.Linear(8, 5)
    again.load_state_dict(weights)
    optimizer = torch.optim.Adam(again.parameters(), lr=0.05)
    optimizer.load_state_dict(optimizer_state)
    pretrain_classifier(again, images, steps=300, batch_size=32, lr=0.05, seed=3, start=120, optimizer=optimizer)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)


def test_pretrain_classifier_refuses_a_batch_larger_than_the_data():
    with pytest.raises(ValueError, match="only 10 images"):
        pretrain_classifier(nn.Linear(2, 5), torch.zeros(5, 2, 2), steps=1, batch_size=11, lr=0.1, seed=0)


def test_linear_cka_equals_the_kernel_formula_and_its_invariances():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    noise = torch.randn(30, 7, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(5, 7, generator=gen, dtype=torch.float64) + 0.5 * noise
    centring = torch.eye(30, dtype=torch.float64) - 1 / 30  # H = I - 11^T / n

    def hsic(k, l):
        return torch.trace(k @ centring @ l @ centring)

    k, l = x @ x.T, y @ y.T  # linear kernels
    torch.testing.assert_close(linear_cka(x, y), hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))
    rotation = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64)).Q
    torch.testing.assert_close(linear_cka(x, 3 * x @ rotation + 2), torch.tensor(1.0, dtype=torch.float64))
    assert linear_cka(x, torch.randn(30, 5, generator=gen, dtype=torch.float64)) < 0.5


def test_frozen_features_equals_a_probe_on_each_task_embedded_alone():
    from fastadapt.models import Conv4, params_of

    torch.manual_seed(0)
    model = Conv4(n_way=None)
    params = params_of(model)
    gen = torch.Generator().manual_seed(2)
    x_support, x_query = torch.rand(3, 6, 1, 28, 28, generator=gen), torch.rand(3, 4, 1, 28, 28, generator=gen)
    y_support = torch.tensor([0, 1, 2, 0, 1, 2]).expand(3, -1)
    learner = FrozenFeatures(model, head="linear_probe", head_settings={"C": 2.0})
    logits = learner.predict(params, x_support, y_support, x_query)
    with torch.no_grad():  # the loop the learner replaces: every task's images through the network on their own
        support = torch.stack([model(xs) for xs in x_support])
        query = torch.stack([model(xq) for xq in x_query])
    torch.testing.assert_close(embed_tasks(model, params, x_support), support, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, linear_probe(support, y_support, query, C=2.0), atol=1e-4, rtol=1e-4)
    alone = learner.predict_each_query(params, x_support[0], y_support[0], x_query[0])
    with torch.no_grad():
        each = torch.stack([model(torch.cat([x_support[0], q[None]]))[-1] for q in x_query[0]])
    expected = linear_probe(support[:1], y_support[:1], each[None], C=2.0)[0]
    torch.testing.assert_close(alone, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="Unknown head"):
        FrozenFeatures(model, head="svm")


def test_save_and_load_pretrained_keep_the_features_and_drop_the_head(tmp_path):
    from fastadapt.baselines import load_pretrained, save_pretrained
    from fastadapt.models import Conv4

    torch.manual_seed(0)
    network = Conv4(n_way=40)
    save_pretrained(tmp_path / "net.pt", network, steps=7, network={"pool": False})
    model, params, info = load_pretrained(tmp_path / "net.pt")
    assert info == {"steps": 7, "network": {"pool": False}} and model.head is None
    assert set(params) == {k for k in network.state_dict() if not k.startswith("head.")}
    x = torch.rand(6, 1, 28, 28)
    torch.testing.assert_close(model(x), network.embed(x))
    with pytest.raises(ValueError, match="not a pre-trained network"):
        torch.save({"version": 99}, tmp_path / "other.pt")
        load_pretrained(tmp_path / "other.pt")
