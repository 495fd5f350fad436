"""Shared fixtures. Omniglot comes from $FASTADAPT_DATA (set by make/.ci/run), else it is downloaded."""
import pytest
import torch

from fastadapt.data import load_omniglot


@pytest.fixture(scope="session")
def omniglot():
    """The preprocessed Omniglot tensor (built once per cache folder, then loaded in milliseconds)."""
    return load_omniglot()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
