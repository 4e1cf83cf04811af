"""Cross-architecture alignment: planted matches are recovered; unrelated SAEs are not significant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseglens_core.analysis.crossarch import align_maps, common_grid_maps
from medseglens_core.errors import InvalidInput
from tests.analysis.planted import TinySAE


def _sparse_maps(s: int, d: int, g: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(s, d, g, g, generator=gen) - 1.0)
    return x


def test_planted_latent_permutation_is_recovered_and_significant():
    a = _sparse_maps(30, 10, 8, seed=1)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    b = a[:, perm] * 2.0 + 0.05 * _sparse_maps(30, 10, 8, seed=3)
    res = align_maps(a, b, n_perm=50, seed=0, regions_a=["SNFH"] * 10, regions_b=["ET"] * 10)
    got = {p.latent_a: p.latent_b for p in res.pairs}
    assert all(perm[got[j]].item() == j for j in range(10))
    assert all(p.corr > 0.9 and p.p == pytest.approx(1 / 51) for p in res.pairs)
    assert res.shared_fraction == 1.0
    assert res.pairs[0].region_a == "SNFH" and res.pairs[0].region_b == "ET"


def test_unrelated_maps_get_high_p():
    res = align_maps(_sparse_maps(30, 10, 8, seed=4), _sparse_maps(30, 12, 8, seed=5), n_perm=50)
    ps = np.array([p.p for p in res.pairs])
    assert len(ps) == 10 and np.median(ps) > 0.3 and res.shared_fraction <= 0.1


def test_dead_latents_are_left_out_and_shapes_are_checked():
    a = _sparse_maps(10, 5, 4, seed=6)
    a[:, 2] = 0
    res = align_maps(a, a.clone(), n_perm=5)
    assert res.n_alive_a == 4 and all(p.latent_a != 2 for p in res.pairs)
    with pytest.raises(InvalidInput):
        align_maps(a, a[:5], n_perm=5)


def test_common_grid_maps_shape_and_nonnegative():
    h = torch.randn(3, 4, 6, 6)
    m = common_grid_maps(TinySAE(), h, grid=24)
    assert m.shape == (3, 8, 24, 24) and float(m.min()) >= 0.0


def test_shared_position_prior_alone_is_not_significant():
    """Latents that only share WHERE they usually fire (a centre bias) must not match."""
    gen = torch.Generator().manual_seed(7)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    prior = torch.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 8.0)  # the same bump for everyone
    a = torch.relu(prior * 2 + 0.3 * torch.randn(40, 6, 8, 8, generator=gen))
    b = torch.relu(prior * 2 + 0.3 * torch.randn(40, 6, 8, 8, generator=gen))
    res = align_maps(a, b, n_perm=100)
    assert res.shared_fraction <= 1 / 6
    # without centring, every pair would correlate strongly through the prior
    raw = torch.corrcoef(torch.stack([a[:, 0].flatten(), b[:, 0].flatten()]))[0, 1]
    assert raw > 0.5


def test_brain_mask_restricts_the_correlation():
    a = _sparse_maps(30, 4, 8, seed=8)
    b = a.clone()
    b[:, :, :, 4:] = _sparse_maps(30, 4, 8, seed=9)[:, :, :, 4:]  # right half unrelated
    brain = torch.zeros(30, 8, 8, dtype=torch.bool)
    brain[:, :, :4] = True  # only the left half is brain
    res = align_maps(a, b, n_perm=50, brain=brain)
    assert all(p.latent_a == p.latent_b and p.corr == pytest.approx(1.0, abs=1e-5) for p in res.pairs)
    assert res.shared_fraction == 1.0
