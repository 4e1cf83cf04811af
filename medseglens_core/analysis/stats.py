"""Statistics shared by the diffs: case-level tests, FDR, effect sizes, one-to-one matching.

Everything here is plain NumPy/SciPy on small arrays (cases x latents, latents x latents) so
it is easy to check by hand. Conventions:

- p-values are two-sided unless stated; ``q`` are Benjamini-Hochberg adjusted p-values.
- Effect sizes are signed so that a positive value means "larger in the target group".
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import false_discovery_control, mannwhitneyu, ttest_ind

from medseglens_core.errors import InvalidInput


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``q``), same shape as ``p``.

    NaN p-values (an untestable latent, e.g. constant in both groups) are treated as 1.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return p.copy()
    flat = np.nan_to_num(p.ravel(), nan=1.0)
    if np.any((flat < 0) | (flat > 1)):
        raise InvalidInput("p-values must lie in [0, 1]; got values outside that range")
    return false_discovery_control(flat, method="bh").reshape(p.shape)


def case_level_test(target: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Mann-Whitney U test per column, one row per CASE.

    Args:
        target: ``(n_target, d)`` per-case values (e.g. firing rates) of the target cohort.
        reference: ``(n_reference, d)`` per-case values of the reference cohort(s).

    Returns:
        ``(p, rank_biserial)``, each ``(d,)``. ``rank_biserial = 2U/(n1 n2) - 1`` lies in
        [-1, 1]; +1 means every target case exceeds every reference case. Columns that are
        constant over both groups get ``p = 1`` and effect 0.
    """
    target, reference = _check_groups(target, reference)
    n1, n2 = target.shape[0], reference.shape[0]
    d = target.shape[1]
    p = np.ones(d)
    effect = np.zeros(d)
    both = np.concatenate([target, reference], axis=0)
    testable = np.ptp(both, axis=0) > 0
    if testable.any():
        res = mannwhitneyu(target[:, testable], reference[:, testable], alternative="two-sided", axis=0)
        p[testable] = np.nan_to_num(np.asarray(res.pvalue, dtype=np.float64), nan=1.0)
        effect[testable] = 2.0 * np.asarray(res.statistic, dtype=np.float64) / (n1 * n2) - 1.0
    return p, effect


def _check_groups(target: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    target = np.asarray(target, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if target.ndim != 2 or reference.ndim != 2 or target.shape[1] != reference.shape[1]:
        raise InvalidInput(
            f"case-level tests need (n1, d) and (n2, d) arrays; got {target.shape} and {reference.shape}"
        )
    if target.shape[0] < 2 or reference.shape[0] < 2:
        raise InvalidInput(
            f"need at least 2 cases per group for a case-level test; got {target.shape[0]} and "
            f"{reference.shape[0]}"
        )
    return target, reference


def permutation_test(
    target: np.ndarray, reference: np.ndarray, n_perm: int = 10000, seed: int = 0
) -> np.ndarray:
    """Two-sided case-label permutation test of the difference in means, per column.

    Args:
        target: ``(n1, d)`` per-case values (e.g. log firing rates), one row per CASE.
        reference: ``(n2, d)`` per-case values.
        n_perm: when ``C(n1 + n2, n1) <= n_perm`` every relabelling is enumerated (exact p);
            otherwise ``n_perm`` random relabellings (seeded) and ``p = (1 + #{|null| >= |obs|}) /
            (1 + n_perm)``, which is a valid p-value. Default 10000.

    Returns:
        ``(d,)`` p-values in (0, 1]. The smallest attainable p is about ``2 / C(n1 + n2, n1)``
        (exact) or ``1 / (1 + n_perm)``: with 6 vs 6 cases that is 0.0022, too coarse to survive
        Benjamini-Hochberg over hundreds of latents; 10 vs 10 reaches 1e-4.
    """
    target, reference = _check_groups(target, reference)
    x = np.concatenate([target, reference], axis=0)
    n1, n = target.shape[0], x.shape[0]
    obs = np.abs(target.mean(axis=0) - reference.mean(axis=0))
    total = comb(n, n1)
    if total <= n_perm:
        groups = np.array(list(combinations(range(n), n1)))
        in_target = np.zeros((total, n), dtype=bool)
        np.put_along_axis(in_target, groups, True, axis=1)
    else:
        rng = np.random.default_rng(seed)
        order = np.argsort(rng.random((n_perm, n)), axis=1)
        in_target = np.zeros((n_perm, n), dtype=bool)
        np.put_along_axis(in_target, order[:, :n1], True, axis=1)
    weights = np.where(in_target, 1.0 / n1, -1.0 / (n - n1))
    null = np.abs(weights @ x)  # (n_relabellings, d)
    # a relative tolerance so that the observed labelling counts as "as extreme" despite rounding
    hits = (null >= obs - 1e-9 * np.maximum(obs, 1.0)).sum(axis=0)
    if total <= n_perm:
        return hits / total
    return (1.0 + hits) / (1.0 + n_perm)


def welch_test(target: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Two-sided Welch t-test per column on per-case values; ``(d,)`` p (constant columns get 1)."""
    target, reference = _check_groups(target, reference)
    p = np.ones(target.shape[1])
    both = np.concatenate([target, reference], axis=0)
    testable = np.ptp(both, axis=0) > 0
    if testable.any():
        with np.errstate(all="ignore"):
            res = ttest_ind(target[:, testable], reference[:, testable], axis=0, equal_var=False)
        p[testable] = np.nan_to_num(np.asarray(res.pvalue, dtype=np.float64), nan=1.0)
    return p


def log2_ratio(a: np.ndarray, b: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """``log2((a + eps) / (b + eps))`` elementwise; ``eps`` keeps never-firing latents finite."""
    return np.log2((np.asarray(a, dtype=np.float64) + eps) / (np.asarray(b, dtype=np.float64) + eps))


@dataclass(frozen=True)
class Matching:
    """A one-to-one matching between the rows of ``a`` and the rows of ``b``.

    ``rows[i]`` of ``a`` is matched to ``cols[i]`` of ``b`` with similarity ``score[i]``;
    ``len(rows) == min(n_a, n_b)``; sorted by descending score.
    """

    rows: np.ndarray
    cols: np.ndarray
    score: np.ndarray

    def fraction_above(self, threshold: float, denominator: int | None = None) -> float:
        """Fraction of matched pairs with ``score >= threshold`` (over ``denominator`` pairs)."""
        n = len(self.score) if denominator is None else denominator
        return float((self.score >= threshold).sum() / n) if n else 0.0


def hungarian(similarity: np.ndarray) -> Matching:
    """Maximum-total-similarity one-to-one matching of a ``(n_a, n_b)`` similarity matrix."""
    sim = np.nan_to_num(np.asarray(similarity, dtype=np.float64), nan=-1.0)
    if sim.ndim != 2 or 0 in sim.shape:
        raise InvalidInput(f"similarity must be a non-empty 2-D matrix; got shape {sim.shape}")
    rows, cols = linear_sum_assignment(sim, maximize=True)
    score = sim[rows, cols]
    order = np.argsort(-score, kind="stable")
    return Matching(rows=rows[order], cols=cols[order], score=score[order])


def decoder_cosine(w_a: np.ndarray, w_b: np.ndarray) -> np.ndarray:
    """Cosine similarity ``(d_a, d_b)`` between decoder rows ``w_a (d_a, d_in)``, ``w_b (d_b, d_in)``."""
    w_a = np.asarray(w_a, dtype=np.float64)
    w_b = np.asarray(w_b, dtype=np.float64)
    if w_a.ndim != 2 or w_b.ndim != 2 or w_a.shape[1] != w_b.shape[1]:
        raise InvalidInput(
            f"decoders must be (d_sae, d_in) with the same d_in; got {w_a.shape} and {w_b.shape}. "
            "Cross-cohort alignment needs SAEs trained on the same model and hook."
        )
    na = np.linalg.norm(w_a, axis=1, keepdims=True)
    nb = np.linalg.norm(w_b, axis=1, keepdims=True)
    return (w_a / np.maximum(na, 1e-12)) @ (w_b / np.maximum(nb, 1e-12)).T
