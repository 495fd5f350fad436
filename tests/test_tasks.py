"""EpisodeSampler and the sinusoid family.

Invariants are checked on small synthetic tensors whose pixels encode (class, example) ids, so
the source of every sampled image can be decoded; the real Omniglot classes check shapes,
limits and that a sampler never leaves its split.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastadapt.data import omniglot_classes
from fastadapt.tasks import Episode, EpisodeSampler, make_generator, sample_sinusoids

FAST = settings(max_examples=25, deadline=None)


# --------------------------------------------------------------------------------------------
# Synthetic data whose pixels say where they came from
# --------------------------------------------------------------------------------------------


def _id_images(sizes: list[int], class_ids: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(items, 1, 2, 2) float images plus labels; pixel [0, 0, 0] is the class id, [0, 0, 1] the example id."""
    class_ids = list(range(len(sizes))) if class_ids is None else class_ids
    images, labels = [], []
    for c, n in zip(class_ids, sizes):
        for e in range(n):
            image = torch.zeros(1, 2, 2)
            image[0, 0, 0], image[0, 0, 1], image[0, 1, 1] = c, e, 0.5
            images.append(image)
            labels.append(c)
    return torch.stack(images), torch.tensor(labels)


def _decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class id, example id) of each image in (..., 1, 2, 2)."""
    return x[..., 0, 0, 0].round().long(), x[..., 0, 0, 1].round().long()


def _check_episode(episode: Episode, tasks: int, n_way: int, k_shot: int, n_query: int) -> None:
    """The invariants every N-way K-shot episode must satisfy, decoded from the id pixels."""
    xs, ys, xq, yq = episode
    assert xs.shape[:2] == (tasks, n_way * k_shot) and ys.shape == (tasks, n_way * k_shot)
    assert xq.shape[:2] == (tasks, n_way * n_query) and yq.shape == (tasks, n_way * n_query)
    assert ys.dtype == yq.dtype == torch.int64
    cs, es = _decode(xs)
    cq, eq = _decode(xq)
    for t in range(tasks):
        for y, k in ((ys[t], k_shot), (yq[t], n_query)):
            assert torch.equal(torch.bincount(y, minlength=n_way), torch.full((n_way,), k))
        label_to_class = {}
        for c, y in zip(torch.cat([cs[t], cq[t]]).tolist(), torch.cat([ys[t], yq[t]]).tolist()):
            assert label_to_class.setdefault(y, c) == c, "one label, two source classes"
        assert len(set(label_to_class.values())) == n_way, "two labels, one source class"
        support = set(zip(cs[t].tolist(), es[t].tolist()))
        query = set(zip(cq[t].tolist(), eq[t].tolist()))
        assert len(support) == n_way * k_shot and len(query) == n_way * n_query, "an example repeated"
        assert not support & query, "support and query share an example"


@st.composite
def sampler_settings(draw, ragged: bool):
    n_way = draw(st.integers(1, 5))
    k_shot = draw(st.integers(1, 3))
    n_query = draw(st.integers(1, 3))
    n_classes = draw(st.integers(n_way, 7))
    shots = k_shot + n_query
    if ragged:
        sizes = draw(st.lists(st.integers(shots, shots + 4), min_size=n_classes, max_size=n_classes))
    else:
        sizes = [draw(st.integers(shots, shots + 4))] * n_classes
    tasks = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    return sizes, tasks, n_way, k_shot, n_query, seed


@FAST
@given(sampler_settings(ragged=False))
def test_invariants_equal_classes(setting):
    sizes, tasks, n_way, k_shot, n_query, seed = setting
    images, _ = _id_images(sizes)
    sampler = EpisodeSampler(images.view(len(sizes), sizes[0], 1, 2, 2))  # (classes, examples, C, H, W)
    assert sampler.n_classes == len(sizes)
    _check_episode(sampler.sample(tasks, n_way, k_shot, n_query, seed=seed), tasks, n_way, k_shot, n_query)


@FAST
@given(sampler_settings(ragged=True), st.randoms(use_true_random=False))
def test_invariants_ragged_labelled(setting, rnd):
    sizes, tasks, n_way, k_shot, n_query, seed = setting
    class_ids = rnd.sample(range(100), len(sizes))  # arbitrary, non-contiguous labels
    images, labels = _id_images(sizes, class_ids)
    shuffle = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    sampler = EpisodeSampler(images[shuffle], labels[shuffle])  # items in any order
    episode = sampler.sample(tasks, n_way, k_shot, n_query, seed=seed)
    _check_episode(episode, tasks, n_way, k_shot, n_query)
    # every decoded (class, example) exists in the source (no reads past a short class)
    size_of = dict(zip(class_ids, sizes))
    for x in (episode.x_support, episode.x_query):
        c, e = _decode(x)
        assert all(0 <= ei < size_of[ci] for ci, ei in zip(c.flatten().tolist(), e.flatten().tolist()))


def test_ragged_short_class_examples_all_used():
    """A class with exactly k_shot + n_query examples gives all of them; long classes give all over time."""
    sizes = [3, 9, 4, 7]
    images, labels = _id_images(sizes)
    sampler = EpisodeSampler(images, labels)
    episode = sampler.sample(200, 4, 2, 1, seed=0)
    c = torch.cat([_decode(episode.x_support)[0], _decode(episode.x_query)[0]], 1)
    e = torch.cat([_decode(episode.x_support)[1], _decode(episode.x_query)[1]], 1)
    seen = {(ci, ei) for ci, ei in zip(c.flatten().tolist(), e.flatten().tolist())}
    assert seen == {(ci, ei) for ci, n in enumerate(sizes) for ei in range(n)}


def test_all_classes_and_examples_are_used():
    """Sampling is not stuck on the first classes or examples, and class order varies across tasks."""
    images, _ = _id_images([6] * 10)
    sampler = EpisodeSampler(images.view(10, 6, 1, 2, 2))
    episode = sampler.sample(300, 3, 1, 1, seed=1)
    c, e = _decode(torch.cat([episode.x_support, episode.x_query], 1))
    assert set(c.flatten().tolist()) == set(range(10))
    assert set(e.flatten().tolist()) == set(range(6))
    first_class = c[:, 0]  # the class given label 0 in each task
    assert len(set(first_class.tolist())) == 10
    # each class is labelled 0 roughly equally often (300 tasks, 10 classes: 30 expected)
    assert torch.bincount(first_class, minlength=10).min() >= 10


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_sampler():
    images = torch.randint(0, 256, (12, 6, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    return EpisodeSampler(images)


def _episodes_equal(a: Episode, b: Episode) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b))


def test_same_seed_same_episodes(small_sampler):
    a = small_sampler.sample(4, 5, 2, 3, seed=11, rotate=True)
    torch.manual_seed(999)  # the global RNG must not matter
    b = small_sampler.sample(4, 5, 2, 3, seed=11, rotate=True)
    assert _episodes_equal(a, b)
    assert not _episodes_equal(a, small_sampler.sample(4, 5, 2, 3, seed=12, rotate=True))


def test_generator_seed(small_sampler):
    from_int = small_sampler.sample(4, 5, 2, 3, seed=5)
    generator = torch.Generator().manual_seed(5)
    first = small_sampler.sample(4, 5, 2, 3, seed=generator)
    assert _episodes_equal(first, from_int)
    second = small_sampler.sample(4, 5, 2, 3, seed=generator)  # the generator moved on
    assert not _episodes_equal(first, second)
    assert make_generator(generator) is generator


def test_seed_none_is_refused(small_sampler):
    with pytest.raises(ValueError, match="seed"):
        small_sampler.sample(4, 5, 1, 1, seed=None)
    with pytest.raises(ValueError, match="seed"):
        sample_sinusoids(4, 5, 5, seed=None)


# --------------------------------------------------------------------------------------------
# Rotations
# --------------------------------------------------------------------------------------------


def test_rotate_one_turn_per_class(small_sampler):
    """With rotate=True every image of a class in a task is rot90(source, k) for one k of that class."""
    source = small_sampler.items.view(12, 6, 8, 8).float() / 255  # (classes, examples, H, W)
    rotated = {k: np.rot90(source.numpy(), k, axes=(-2, -1)) for k in range(4)}
    lookup = {}
    for k in range(4):
        for c in range(12):
            for e in range(6):
                lookup[rotated[k][c, e].tobytes()] = (c, e, k)
    assert len(lookup) == 4 * 12 * 6  # random images: every rotation of every image is distinct
    tasks, n_way, k_shot, n_query = 40, 4, 2, 2
    episode = small_sampler.sample(tasks, n_way, k_shot, n_query, seed=3, rotate=True)
    turns_seen = set()
    for t in range(tasks):
        found = {}
        for x, y in ((episode.x_support[t], episode.y_support[t]), (episode.x_query[t], episode.y_query[t])):
            for image, label in zip(x[:, 0].numpy(), y.tolist()):
                c, e, k = lookup[np.ascontiguousarray(image).tobytes()]  # KeyError: not a rotated source image
                found.setdefault(label, set()).add((c, k))
        for label, pairs in found.items():
            assert len(pairs) == 1, f"task {t} label {label}: {pairs}"  # one class, one turn
            turns_seen |= {k for _, k in pairs}
        assert len({c for pairs in found.values() for c, _ in pairs}) == n_way
    assert turns_seen == {0, 1, 2, 3}


def test_no_rotation_by_default(small_sampler):
    source = {img.tobytes() for img in (small_sampler.items[:, 0].float() / 255).numpy()}
    episode = small_sampler.sample(20, 5, 1, 1, seed=4)
    for image in torch.cat([episode.x_support, episode.x_query], 1).flatten(0, 1)[:, 0].numpy():
        assert image.tobytes() in source


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_n_way_larger_than_classes(small_sampler):
    with pytest.raises(ValueError, match=r"n_way=13.*12 classes"):
        small_sampler.sample(2, 13, 1, 1, seed=0)
    small_sampler.sample(2, 12, 1, 1, seed=0)  # the limit itself is fine


@pytest.fixture(scope="module")
def train_sampler(omniglot):
    return EpisodeSampler(omniglot_classes("vinyals", "train", data=omniglot))


def test_shots_beyond_twenty_drawers(train_sampler):
    with pytest.raises(ValueError, match=r"16 \+ 5 = 21.*only 20 examples"):
        train_sampler.sample(2, 5, 16, 5, seed=0)
    episode = train_sampler.sample(2, 5, 15, 5, seed=0)  # exactly 20 is fine
    assert episode.x_query.shape == (2, 25, 1, 28, 28)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_way=0),
        dict(n_way=-1),
        dict(k_shot=0),
        dict(k_shot=-2),
        dict(n_query=0),
        dict(tasks=0),
        dict(n_way=2.0),
        dict(k_shot=True),
    ],
)
def test_non_positive_sizes(small_sampler, kwargs):
    args = dict(tasks=2, n_way=3, k_shot=1, n_query=1, **{})
    args.update(kwargs)
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer"):
        small_sampler.sample(**args, seed=0)


def test_mismatched_labels():
    images, labels = _id_images([3, 3])
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        EpisodeSampler(images, labels[:5])


# --------------------------------------------------------------------------------------------
# Real Omniglot classes
# --------------------------------------------------------------------------------------------


def _hashes(images_uint8: torch.Tensor) -> set[bytes]:
    """Byte strings of (..., 28, 28) uint8 images, one per image."""
    flat = images_uint8.reshape(-1, 28 * 28).numpy()
    return {row.tobytes() for row in flat}


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Sampled [0, 1] floats back to the exact uint8 pixels they came from."""
    return (x * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def train_hashes(omniglot):
    return _hashes(omniglot_classes("vinyals", "train", data=omniglot))


def test_omniglot_shapes_32_tasks_5way_1shot(train_sampler, train_hashes):
    episode = train_sampler.sample(32, 5, 1, 1, seed=0)
    xs, ys, xq, yq = episode
    assert xs.shape == (32, 5, 1, 28, 28) and xq.shape == (32, 5, 1, 28, 28)
    assert xs.dtype == xq.dtype == torch.float32
    assert 0 <= float(xs.min()) and float(xs.max()) <= 1 and float(xs.max()) > 0.9
    for y in (ys, yq):
        assert y.shape == (32, 5)
        assert all(sorted(row) == list(range(5)) for row in y.tolist())
    # every image is an exact image of the train classes, and no task shows one twice
    images = _to_uint8(torch.cat([xs, xq], 1))  # (32, 10, 1, 28, 28)
    assert torch.allclose(images.float() / 255, torch.cat([xs, xq], 1))
    assert _hashes(images) <= train_hashes
    for task in images:
        assert len(_hashes(task)) == 10
    # 32 tasks of 5 classes from 4,112 classes: most of the 160 class picks are distinct
    assert len(_hashes(images[:, :5])) > 150


def test_omniglot_20way_5shot(train_sampler):
    episode = train_sampler.sample(4, 20, 5, 15, seed=2)
    assert episode.x_support.shape == (4, 100, 1, 28, 28) and episode.x_query.shape == (4, 300, 1, 28, 28)
    for y, k in ((episode.y_support, 5), (episode.y_query, 15)):
        assert all(torch.equal(torch.bincount(row, minlength=20), torch.full((20,), k)) for row in y)


def test_tasks_never_leave_their_split(omniglot, train_hashes):
    test_classes = omniglot_classes("vinyals", "test", data=omniglot)
    test_hashes = _hashes(test_classes)
    episode = EpisodeSampler(test_classes).sample(16, 5, 1, 5, seed=0)
    sampled = _hashes(_to_uint8(torch.cat([episode.x_support, episode.x_query], 1)))
    assert len(sampled) > 400
    assert sampled <= test_hashes
    assert not sampled & train_hashes


# --------------------------------------------------------------------------------------------
# Sinusoids
# --------------------------------------------------------------------------------------------


@FAST
@given(st.integers(1, 8), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_sinusoids(tasks, k_shot, n_query, seed):
    batch = sample_sinusoids(tasks, k_shot, n_query, seed=seed)
    (xs, ys, xq, yq), amplitude, phase = batch
    assert xs.shape == ys.shape == (tasks, k_shot, 1)
    assert xq.shape == yq.shape == (tasks, n_query, 1)
    assert amplitude.shape == phase.shape == (tasks,)
    assert ((0.1 <= amplitude) & (amplitude <= 5.0)).all()
    assert ((0 <= phase) & (phase <= math.pi)).all()
    for x, y in ((xs, ys), (xq, yq)):
        assert ((-5 <= x) & (x <= 5)).all()
        for t in range(tasks):
            # exactly the formula, evaluated in the same precision ...
            assert torch.equal(y[t], amplitude[t] * torch.sin(x[t] - phase[t]))
            # ... and the analytic function itself, evaluated in double precision
            a, p = float(amplitude[t]), float(phase[t])
            reference = torch.tensor([[a * math.sin(float(v) - p)] for v in x[t, :, 0]], dtype=torch.float64)
            assert torch.allclose(y[t].double(), reference, atol=1e-5)
    again = sample_sinusoids(tasks, k_shot, n_query, seed=seed)
    assert all(torch.equal(u, v) for u, v in zip(batch.episode, again.episode))
    assert torch.equal(batch.amplitude, again.amplitude) and torch.equal(batch.phase, again.phase)


def test_sinusoid_ranges_are_covered():
    """Over many tasks the parameters fill their ranges (catches a mis-scaled uniform)."""
    batch = sample_sinusoids(2000, 10, 1, seed=0)
    assert float(batch.amplitude.min()) < 0.2 and float(batch.amplitude.max()) > 4.9
    assert float(batch.phase.min()) < 0.05 and float(batch.phase.max()) > math.pi - 0.05
    x = batch.episode.x_support
    assert float(x.min()) < -4.99 and float(x.max()) > 4.99
    assert abs(float(x.mean())) < 0.15
    different = sample_sinusoids(2000, 10, 1, seed=1)
    assert not torch.equal(batch.amplitude, different.amplitude)
