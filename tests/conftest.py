"""Shared fixtures. Omniglot comes from $FASTADAPT_DATA (set by make/.ci/run), else it is downloaded."""
import pytest
import torch

from fastadapt.data import load_omniglot


@pytest.fixture(scope="session")
def omniglot():
    """The preprocessed Omniglot tensor (built once per cache folder, then loaded in milliseconds)."""
    return load_omniglot()


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test problems are small: one intra-op thread is faster, much faster on a busy 2-core CPU,
    and leaves the other core to the second process of the distributed tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
