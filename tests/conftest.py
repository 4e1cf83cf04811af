"""Shared test fixtures. Each test is isolated (tmp_path); nothing touches the network."""

from __future__ import annotations

import os

import pytest

# Tests never download: transformers/hub must stay offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch

    torch.manual_seed(0)
    yield
