"""Fixtures of the SAE tests: one torch thread (small ops; avoids OpenMP contention on shared
CPUs) and a planted-dictionary data set written as shards."""

from __future__ import annotations

import pytest
import torch

from medseglens_core.sae.shards import ShardWriter


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def planted(n: int, d: int = 32, atoms: int = 64, k: int = 3, seed: int = 0):
    """Tokens ``x = z @ D + 0.5`` with unit-norm atoms ``D (atoms, d)`` and k-sparse ``z >= 0.5``."""
    g = torch.Generator().manual_seed(seed)
    dic = torch.randn(atoms, d, generator=g)
    dic /= dic.norm(dim=1, keepdim=True)
    idx = torch.rand(n, atoms, generator=g).argsort(1)[:, :k]
    z = torch.zeros(n, atoms).scatter(1, idx, 0.5 + torch.rand(n, k, generator=g))
    return z @ dic + 0.5, dic


@pytest.fixture
def planted_shards(tmp_path):
    x, dic = planted(40_000)
    w = ShardWriter(tmp_path / "acts", 32, shard_tokens=8192, dtype="float32")
    c = w.add_case("case0", "adult")
    w.add(x.numpy(), case=c, z=0, y=0, x=0, label=0)
    return w.close(), dic
