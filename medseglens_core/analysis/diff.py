"""Cross-dataset model diffing: which latents are shared and which are population-specific.

Protocol (DESIGN.md section 6):

1. Per CASE statistics (:func:`cohort_case_stats`): for every latent, its firing rate and mean
   activation over the case's brain tokens. Tokens of one scan are not independent, so every
   test below has one observation per case.
2. :func:`compare_cohorts`: target cohort vs a reference (one cohort, several, or all others).
   Only latents whose firing rate pooled over ALL cases of both groups is at least
   ``min_pooled_rate`` are tested (a label-blind filter, so it does not bias the null, and it
   cuts the number of tests the FDR correction pays for). Per latent, a two-sided case-label
   permutation test of the difference in mean ``log10(rate + log_eps)`` (default; exact when
   the relabellings are few), or a Welch t-test on the same values, or Mann-Whitney U on the
   raw values; one Benjamini-Hochberg over the tested latents of every family (whole brain,
   tumour tokens, each labelled region's tokens: :func:`compare_cohorts`); and an effect-size
   threshold:
   ``|rank-biserial| >= min_rank_biserial`` AND ``|log2(firing-rate ratio)| >= min_log2_ratio``.
   A latent passing all three is population-specific (``direction`` "up": more in the target,
   "down": less).
3. Differential reliance: :func:`attribution` (activation x gradient of the region's logit
   through the SAE decoder and ``model.run_suffix``), averaged per case then over cases.
4. Cross-cohort SAE alignment: :func:`align_saes` matches decoder rows one-to-one (Hungarian on
   cosine similarity) and reports the fraction matched above a threshold (default 0.7).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medseglens_core.analysis.casepass import (
    AttributionMask,
    CaseRow,
    analyse_slices,
    input_size_of,
    load_if_path,
    prepare_for_analysis,
)
from medseglens_core.analysis.encode import REGION_NAMES, ModelLike, SAELike, resolve_hook
from medseglens_core.analysis.stats import (
    benjamini_hochberg,
    case_level_test,
    decoder_cosine,
    hungarian,
    log2_ratio,
    permutation_test,
    welch_test,
)
from medseglens_core.errors import InvalidInput, NotFound


@dataclass
class CohortStats:
    """Per-case arrays of one cohort; ``n`` cases, ``d`` latents (see :class:`CaseRow`)."""

    case_ids: list[str]
    firing_rate: np.ndarray  # (n, d)
    mean_activation: np.ndarray  # (n, d)
    mean_active: np.ndarray  # (n, d)
    region_mass: np.ndarray  # (n, d, 4) healthy/NCR/SNFH/ET, NaN where unlabelled
    n_tokens: np.ndarray  # (n,)
    attribution: dict[str, np.ndarray] = field(default_factory=dict)  # region -> (n, d)
    region_tokens: np.ndarray | None = None  # (n, 4) tokens per region, NaN where unlabelled

    @classmethod
    def from_rows(cls, rows: Sequence[CaseRow]) -> CohortStats:
        if not rows:
            raise InvalidInput("a cohort needs at least one case")
        regions = list(rows[0].attribution)
        return cls(
            case_ids=[r.case_id for r in rows],
            firing_rate=np.stack([r.firing_rate for r in rows]),
            mean_activation=np.stack([r.mean_activation for r in rows]),
            mean_active=np.stack([r.mean_active for r in rows]),
            region_mass=np.stack([r.region_mass for r in rows]),
            n_tokens=np.array([r.n_tokens for r in rows]),
            attribution={k: np.stack([r.attribution[k] for r in rows]) for k in regions},
            region_tokens=np.stack(
                [r.region_tokens if r.region_tokens is not None else np.full(4, np.nan) for r in rows]
            ),
        )

    @property
    def mean_code(self) -> np.ndarray:
        """``(d,)`` mean code over cases (each case weighted equally): the cohort's 'patch' target."""
        return self.mean_activation.mean(axis=0)

    @property
    def mean_active_code(self) -> np.ndarray:
        """``(d,)`` mean activation when firing, averaged over the cases where the latent fires."""
        fires = self.firing_rate > 0
        total = (self.mean_active * fires).sum(axis=0)
        return total / np.maximum(fires.sum(axis=0), 1)


@dataclass
class CaseLatentStats:
    """Per-case latent statistics for several cohorts of one (model, SAE)."""

    d_sae: int
    cohorts: dict[str, CohortStats]

    def __getitem__(self, cohort: str) -> CohortStats:
        if cohort not in self.cohorts:
            raise NotFound(f"cohort {cohort!r} not in the statistics; have {sorted(self.cohorts)}")
        return self.cohorts[cohort]

    def cohort_firing_rate(self) -> tuple[list[str], np.ndarray]:
        """``(cohort names, (n_cohorts, d) mean per-case firing rate)`` for heatmaps."""
        names = list(self.cohorts)
        return names, np.stack([self.cohorts[c].firing_rate.mean(axis=0) for c in names])

    def region_association(self) -> np.ndarray:
        """``(d, 4)`` fraction of each latent's activation mass over healthy/NCR/SNFH/ET (all cohorts)."""
        mass = np.zeros((self.d_sae, 4))
        for c in self.cohorts.values():
            mass += np.nansum(c.region_mass, axis=0)
        return mass / np.maximum(mass.sum(axis=1, keepdims=True), 1e-12)

    def region_enrichment(self) -> np.ndarray:
        """``(d, 4)`` mean activation per token of each region (healthy/NCR/SNFH/ET), all cohorts.

        Unlike :meth:`region_association` this does not favour healthy brain for being ~95% of
        the tokens: a tumour latent has its largest value in a tumour region. Falls back to the
        mass fractions when no cohort carries region token counts.
        """
        mass, tokens = np.zeros((self.d_sae, 4)), np.zeros(4)
        for c in self.cohorts.values():
            if c.region_tokens is None:
                continue
            ok = ~np.isnan(c.region_tokens).any(axis=1)
            mass += np.nansum(c.region_mass[ok], axis=0)
            tokens += c.region_tokens[ok].sum(axis=0)
        if tokens.sum() == 0:
            return self.region_association()
        return mass / np.maximum(tokens, 1e-12)


@dataclass(frozen=True)
class DiffCriteria:
    """Thresholds for calling a latent population-specific (all must hold)."""

    alpha: float = 0.05  # BH-adjusted q below this
    min_rank_biserial: float = 0.5  # |rank-biserial| of the case-level test
    min_log2_ratio: float = 1.0  # |log2 firing-rate ratio| (1.0 = two-fold)
    metric: str = "firing_rate"  # per-case value tested: firing_rate | mean_activation
    test: str = "permutation"  # permutation | welch (both on log10(value + log_eps)) | mwu
    min_pooled_rate: float = 3e-3  # test only latents firing on >= this fraction of pooled tokens
    log_eps: float = 1e-3  # about one token of a case's ~1000 brain tokens
    n_perm: int = 10000  # relabellings of the permutation test (exact when fewer exist)
    # second family: mean activation per tumour token (NCR+SNFH+ET, from the labels), same
    # test, effect and fold thresholds; one BH over all families (a latent passes on any)
    tumour_contrast: bool = True
    # one more family per region: mean activation per labelled token of that region
    region_contrasts: tuple[str, ...] = ("NCR", "SNFH", "ET")


@dataclass(frozen=True)
class LatentDiff:
    """One latent, target vs reference. ``effect`` is the rank-biserial (+: higher in target)."""

    latent: int
    p: float
    q: float
    effect: float
    log2_ratio: float
    target_rate: float
    reference_rate: float
    direction: str  # "up" | "down" | "none"
    specific: bool
    tested: bool = True  # False: below ``min_pooled_rate``, reported with p = q = 1
    families: dict[str, str] = field(default_factory=dict)  # family passed -> its direction


def cohort_case_stats(
    model: ModelLike,
    sae: SAELike,
    cases_by_cohort: Mapping[str, Iterable[Any]],
    *,
    hook: str | None = None,
    card: dict | None = None,
    input_size: int | None = None,
    regions: tuple[str, ...] = (),
    attribution_mask: AttributionMask = "predicted",
    batch_size: int = 16,
    max_slices: int | None = None,
    progress: Callable[[dict], None] | None = None,
) -> CaseLatentStats:
    """Per-case statistics for every cohort, one network pass per case.

    Args:
        cases_by_cohort: cohort -> ``Case`` objects or case folder paths (loaded lazily).
        hook: hook point; default: ``card['hook']`` / ``model.default_hook``.
        regions: also compute per-case attributions for these regions (``SNFH``...).
        max_slices: at most this many brain slices per case, evenly spaced (None: all).
    Returns:
        :class:`CaseLatentStats` with, per cohort, ``(n_cases, d_sae)`` arrays.
    """
    hook = resolve_hook(model, hook, card)
    size = input_size_of(model, card, input_size)
    cohorts: dict[str, CohortStats] = {}
    for cohort, cases in cases_by_cohort.items():
        rows = []
        for item in cases:
            case = load_if_path(item, cohort)
            _, slices, brain, labels = prepare_for_analysis(case, size)
            rows.append(
                analyse_slices(
                    model,
                    sae,
                    slices,
                    hook,
                    case_id=case.case_id,
                    brain=brain,
                    label_slices=labels,
                    regions=regions,
                    attribution_mask=attribution_mask,
                    batch_size=batch_size,
                    max_slices=max_slices,
                )
            )
            if progress:
                progress({"stage": "case_stats", "cohort": cohort, "case": case.case_id})
        cohorts[cohort] = CohortStats.from_rows(rows)
    return CaseLatentStats(d_sae=int(sae.W_dec.shape[0]), cohorts=cohorts)


def _reference_names(stats: CaseLatentStats, target: str, reference: str | Sequence[str] | None) -> list[str]:
    return (
        [c for c in stats.cohorts if c != target]
        if reference is None
        else ([reference] if isinstance(reference, str) else list(reference))
    )


def _reference_values(
    stats: CaseLatentStats, target: str, reference: str | Sequence[str] | None, metric: str
):
    names = _reference_names(stats, target, reference)
    if not names or target in names:
        raise InvalidInput(
            f"reference cohorts must be non-empty and exclude the target {target!r}; got {names}"
        )
    return np.concatenate([getattr(stats[c], metric) for c in names]), np.concatenate(
        [stats[c].firing_rate for c in names]
    )


_TESTS = ("permutation", "welch", "mwu")


def tumour_activation(cs: CohortStats, region: str | None = None) -> np.ndarray:
    """``(n_cases_with_tokens, d)`` mean activation per token of the tumour (NCR+SNFH+ET, from the
    labels) or, with ``region``, of that one region, for the cases that have labelled tokens there
    (the neighbourhood contrasts; cases without such tokens drop out)."""
    if cs.region_tokens is None:
        return np.zeros((0, cs.region_mass.shape[1]))
    cols = [REGION_NAMES.index(region)] if region is not None else [1, 2, 3]
    tokens = cs.region_tokens[:, cols]
    ok = ~np.isnan(tokens).any(axis=1) & (np.nan_to_num(tokens).sum(axis=1) > 0)
    mass = np.nansum(cs.region_mass[ok][:, :, cols], axis=2)
    return mass / tokens[ok].sum(axis=1)[:, None]


def case_level_pvalues(tgt: np.ndarray, ref: np.ndarray, criteria: DiffCriteria) -> np.ndarray:
    """``(d,)`` two-sided p of ``criteria.test`` on per-case values ``(n1, d)`` vs ``(n2, d)``."""
    if criteria.test == "mwu":
        return case_level_test(tgt, ref)[0]
    lt, lr = np.log10(tgt + criteria.log_eps), np.log10(ref + criteria.log_eps)
    if criteria.test == "welch":
        return welch_test(lt, lr)
    return permutation_test(lt, lr, n_perm=criteria.n_perm)


@dataclass
class _Family:
    """One family of case-level tests (per-case values of both groups) and its outcome."""

    name: str
    p: np.ndarray
    effect: np.ndarray
    log2_ratio: np.ndarray
    tested: np.ndarray
    q: np.ndarray | None = None
    specific: np.ndarray | None = None


def _family(name: str, tgt: np.ndarray, ref: np.ndarray, ratio: np.ndarray, tested: np.ndarray,
            criteria: DiffCriteria) -> _Family:  # fmt: skip
    p = np.ones(tgt.shape[1])
    if tested.any():
        p[tested] = case_level_pvalues(tgt[:, tested], ref[:, tested], criteria)
    return _Family(name, p, case_level_test(tgt, ref)[1], ratio, tested)


def _decide(families: list[_Family], criteria: DiffCriteria) -> None:
    """One Benjamini-Hochberg over every tested (family, latent), then each family's thresholds."""
    pooled = np.concatenate([f.p[f.tested] for f in families])
    q_all = benjamini_hochberg(pooled) if pooled.size else pooled
    at = 0
    for f in families:
        n = int(f.tested.sum())
        f.q = np.ones_like(f.p)
        f.q[f.tested] = q_all[at : at + n]
        at += n
        f.specific = f.tested & (f.q < criteria.alpha) & (np.abs(f.effect) >= criteria.min_rank_biserial)
        f.specific &= np.abs(f.log2_ratio) >= criteria.min_log2_ratio


def compare_cohorts(
    stats: CaseLatentStats,
    target: str,
    reference: str | Sequence[str] | None = None,
    criteria: DiffCriteria = DiffCriteria(),
) -> list[LatentDiff]:
    """Every latent, target vs reference (default: all other cohorts pooled), sorted by (q, -|effect|).

    Families of tests under ONE Benjamini-Hochberg correction over every tested (family, latent)
    pair, so the false discovery rate of the whole specific list is at most ``criteria.alpha``
    (per-family corrections let a same-cohort null split through: 1 latent in 1 of 6 splits of
    20 adult cases with five families). A latent is specific when it passes in any family, and is
    reported with the statistics of the first family it passes:

    * ``brain``: ``criteria.metric`` per case over the brain tokens;
    * ``tumour`` (``criteria.tumour_contrast``): mean activation per labelled tumour token;
    * one per region of ``criteria.region_contrasts`` (e.g. ``SNFH``): mean activation per
      labelled token of that region. On a cohort whose oedema looks fainter the latents that
      detect oedema fire less ON the oedema, which the whole-brain rate dilutes below detection.

    The tumour and region families need labels and at least 3 cases with such tokens in each group;
    otherwise they are skipped. ``LatentDiff.families`` maps each family a latent passes to its
    direction there. Latents below ``criteria.min_pooled_rate`` (pooled over both groups' cases) are
    not tested: they get ``p = q = 1``, ``tested = False`` and are never specific.
    """
    if criteria.metric not in ("firing_rate", "mean_activation"):
        raise InvalidInput(f"metric must be firing_rate or mean_activation; got {criteria.metric!r}")
    if criteria.test not in _TESTS:
        raise InvalidInput(f"test must be one of {_TESTS}; got {criteria.test!r}")
    bad = [r for r in criteria.region_contrasts if r not in REGION_NAMES[1:]]
    if bad:
        raise InvalidInput(f"region contrasts must be among {REGION_NAMES[1:]}; got {bad}")
    tgt = getattr(stats[target], criteria.metric)
    ref, ref_rate = _reference_values(stats, target, reference, criteria.metric)
    t_rate = stats[target].firing_rate.mean(axis=0)
    r_rate = ref_rate.mean(axis=0)
    pooled = np.concatenate([stats[target].firing_rate, ref_rate]).mean(axis=0)
    tested = pooled >= criteria.min_pooled_rate
    families = [_family("brain", tgt, ref, log2_ratio(t_rate, r_rate), tested, criteria)]
    names = _reference_names(stats, target, reference)
    regions = ([None] if criteria.tumour_contrast else []) + list(criteria.region_contrasts)
    for region in regions:
        tt = tumour_activation(stats[target], region)
        tr = np.concatenate([tumour_activation(stats[c], region) for c in names])
        if len(tt) < 3 or len(tr) < 3 or not tested.any():
            continue
        tested_r = tested & (np.concatenate([tt, tr]).mean(axis=0) > 0)
        ratio = log2_ratio(tt.mean(axis=0), tr.mean(axis=0))
        families.append(_family(region or "tumour", tt, tr, ratio, tested_r, criteria))
    _decide(families, criteria)
    out = []
    for j in range(stats.d_sae):
        passed = {f.name: ("up" if f.effect[j] > 0 else "down") for f in families if f.specific[j]}
        f = next((f for f in families if f.specific[j]), families[0])
        out.append(
            LatentDiff(
                latent=j,
                p=float(f.p[j]),
                q=float(f.q[j]),
                effect=float(f.effect[j]),
                log2_ratio=float(f.log2_ratio[j]),
                target_rate=float(t_rate[j]),
                reference_rate=float(r_rate[j]),
                direction=passed[f.name] if passed else "none",
                specific=bool(passed),
                tested=bool(tested[j]),
                families=passed,
            )
        )
    out.sort(key=lambda d: (d.q, -abs(d.effect), d.latent))
    return out


def population_specific(
    stats: CaseLatentStats,
    target: str,
    reference: str | Sequence[str] | None = None,
    criteria: DiffCriteria = DiffCriteria(),
) -> list[LatentDiff]:
    """The population-specific latents of ``target`` (see :func:`compare_cohorts`), most significant first."""
    return [d for d in compare_cohorts(stats, target, reference, criteria) if d.specific]


def attribution(
    model: ModelLike,
    sae: SAELike,
    cases: Iterable[Any],
    region: str,
    *,
    hook: str | None = None,
    card: dict | None = None,
    input_size: int | None = None,
    attribution_mask: AttributionMask = "predicted",
    batch_size: int = 16,
) -> np.ndarray:
    """``(d_sae,)`` mean over cases of each latent's attribution to ``region``'s logit.

    Rank with ``np.argsort(-attr)``: the latents the model relies on most for that region.
    """
    stats = cohort_case_stats(
        model,
        sae,
        {"cases": list(cases)},
        hook=hook,
        card=card,
        input_size=input_size,
        regions=(region,),
        attribution_mask=attribution_mask,
        batch_size=batch_size,
    )
    return stats["cases"].attribution[region].mean(axis=0)


def reliance(stats: CaseLatentStats, region: str, top_k: int = 10) -> dict[str, list[tuple[int, float]]]:
    """Per cohort, the ``top_k`` latents by mean attribution to ``region``: ``[(latent, attr), ...]``."""
    out = {}
    for name, c in stats.cohorts.items():
        if region not in c.attribution:
            raise InvalidInput(f"no attribution for {region!r}; compute stats with regions=({region!r},)")
        mean = c.attribution[region].mean(axis=0)
        order = np.argsort(-mean, kind="stable")[:top_k]
        out[name] = [(int(j), float(mean[j])) for j in order]
    return out


@dataclass(frozen=True)
class SAEAlignment:
    """One-to-one decoder matching of two SAEs on the same model/hook."""

    pairs: list[tuple[int, int, float]]  # (latent in a, latent in b, cosine), best first
    threshold: float
    fraction_above: float  # matched pairs with cosine >= threshold / min(d_a, d_b)


def align_saes(w_dec_a: Any, w_dec_b: Any, threshold: float = 0.7) -> SAEAlignment:
    """Hungarian matching of decoder rows ``(d_a, d_in)`` vs ``(d_b, d_in)`` by cosine similarity.

    Accepts tensors or arrays (pass ``sae.W_dec``). Random directions in ``d_in`` dimensions
    have cosine about ``1/sqrt(d_in)``, far below the default threshold of 0.7.
    """
    a = _as_numpy(w_dec_a)
    b = _as_numpy(w_dec_b)
    m = hungarian(decoder_cosine(a, b))
    return SAEAlignment(
        pairs=[(int(r), int(c), float(s)) for r, c, s in zip(m.rows, m.cols, m.score, strict=True)],
        threshold=threshold,
        fraction_above=m.fraction_above(threshold),
    )


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)
