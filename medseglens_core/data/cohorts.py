"""Cohort presets for the synthetic glioma generator.

A :class:`CohortParams` fixes everything that differs between populations and scanners: where the
tumour grows and how big, whether it enhances, how far the oedema spreads, the tissue contrast
table, the scanner gain, noise, bias field and slice thickness. Every field is documented below with
its unit and the reason for each preset's value; any field can be overridden with
:func:`get_cohort` (``overrides={"snr": 20.0}``).

Intensities are relative (0..1, before gain, noise and bias). The base table follows DESIGN.md §3:

======  =====  =====  =====  ========
tissue  T1n    T1c    T2w    T2-FLAIR
======  =====  =====  =====  ========
CSF     0.20   0.20   1.00   0.10
GM      0.55   0.55   0.60   0.60
WM      0.75   0.75   0.45   0.50
NCR     0.25   0.25   0.90   0.40
ET      0.45   0.95   0.70   0.70
SNFH    0.50   0.50   0.80   0.90
======  =====  =====  =====  ========
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from medseglens_core.errors import InvalidInput, NotFound

#: Tissue classes of the contrast table; the first three come from the MNI152 maps.
TISSUES: tuple[str, ...] = ("csf", "gm", "wm", "ncr", "et", "snfh")
#: Tumour location names understood by the generator (see ``CohortParams.locations``).
LOCATIONS: tuple[str, ...] = ("supratentorial", "posterior_fossa", "midline")

Range = tuple[float, float]
Quad = tuple[float, float, float, float]


def _base_table() -> dict[str, Quad]:
    return {
        "csf": (0.20, 0.20, 1.00, 0.10),
        "gm": (0.55, 0.55, 0.60, 0.60),
        "wm": (0.75, 0.75, 0.45, 0.50),
        "ncr": (0.25, 0.25, 0.90, 0.40),
        "et": (0.45, 0.95, 0.70, 0.70),
        "snfh": (0.50, 0.50, 0.80, 0.90),
    }


class UnknownCohort(NotFound):
    """A cohort name that is not one of the presets."""


class InvalidCohortParams(InvalidInput):
    """A cohort parameter out of its allowed range, or an override naming no field."""


@dataclass(frozen=True)
class CohortParams:
    """Everything the generator needs to draw one population's cases. All ranges are ``(low, high)``
    and drawn uniformly per case. Defaults are the ``adult`` preset."""

    name: str = "adult"
    """Cohort name; upper-cased into case ids (``SYN-ADULT-s0-0003``)."""

    description: str = "GLI-like adult glioma: supratentorial, ring-enhancing, large oedema, 1 mm, high SNR."
    """One line for ``dataset.json`` and the montage."""

    has_lesion: bool = True
    """False gives a tumour-free brain (label volume all 0)."""

    head_scale: Range = (0.97, 1.03)
    """Isotropic scale of the whole head relative to MNI152 (1.0 = template size). Adult heads vary
    by a few per cent; the paediatric preset uses ~0.9 (school-age brain volume ~0.75 of adult's,
    i.e. ~0.9 linear)."""

    deform_mm: float = 3.0
    """Standard deviation (mm) of each component of the random smooth displacement field (cosine
    basis, up to 2 cycles across the head), which makes every subject's anatomy different."""

    locations: tuple[tuple[str, float], ...] = (("supratentorial", 1.0),)
    """Where the tumour centre is drawn, as (location, weight). ``supratentorial``: a cerebral
    hemisphere (MNI z > -5 mm, |x| > 12 mm), in white matter; ``posterior_fossa``: cerebellum and
    pons (z < -18 mm, y < -30 mm); ``midline``: thalamus/brainstem (|x| < 10 mm, -35 < y < 5,
    -35 < z < 15 mm). Coordinates are template coordinates, i.e. before this head's scale."""

    tumour_radius_mm: Range = (14.0, 22.0)
    """Mean radius (mm) of the tumour core (NCR + ET). Adult GBM cores are ~2.5-4.5 cm across."""

    irregularity: float = 0.35
    """Amplitude of the smoothed-noise term added to the core's radial level set (relative to the
    radius): 0 gives a sphere, 0.35 a lobulated blob, > 0.6 satellite pieces."""

    p_enhancing: float = 0.95
    """Probability that a case has an enhancing (ET, label 3) rim at all. Most adult GBMs enhance;
    most paediatric midline/posterior fossa gliomas do not."""

    et_thickness_mm: Range = (2.5, 5.0)
    """Thickness (mm) of the enhancing rim inside the core's border; the rest is necrosis (NCR)."""

    et_coverage: Range = (0.9, 1.0)
    """Fraction of the rim that enhances in an enhancing case (1.0 = closed ring); the non-enhancing
    remainder is labelled NCR (1)."""

    oedema_extent_mm: Range = (12.0, 26.0)
    """How far (mm of white-matter path) the SNFH oedema reaches beyond the core."""

    oedema_gm_speed: float = 0.2
    """Relative spreading speed of oedema in pure grey matter (white matter = 1). Vasogenic oedema
    tracks along white-matter fibres and largely spares the cortex; CSF blocks it entirely."""

    oedema_strength: Range = (0.85, 1.0)
    """Per-case scale of the oedema's signal change. Within a case the change also fades linearly
    from this value next to the core to 40% of it at the oedema front."""

    intensities: dict[str, Quad] = field(default_factory=_base_table)
    """Relative mean intensity per tissue (``csf, gm, wm, ncr, et, snfh``) and modality (T1n, T1c,
    T2w, T2-FLAIR), before the contrast modifiers below, jitter, gain, bias and noise. See the table
    in the module docstring."""

    gm_wm_contrast: float = 1.0
    """Scale of every modality's GM-WM difference about their mean (1 = table, 0.6 = 40% weaker).
    Low-field and older scanners give weaker grey/white contrast."""

    oedema_contrast: Quad = (1.0, 1.0, 1.0, 1.0)
    """Per modality, scale of the oedema-vs-WM difference: oedema = WM + c * (table SNFH - table
    WM). 1 = table; the ssa preset uses 0.6 on T2w and FLAIR (the 40% reduction)."""

    intensity_jitter: float = 0.03
    """Relative standard deviation of per-case multiplicative jitter on every table entry."""

    gain: Quad = (1000.0, 1000.0, 1200.0, 800.0)
    """Scanner gain per modality (arbitrary units per relative intensity unit)."""

    gain_jitter: float = 0.1
    """Per-case relative spread (uniform, +-) of each modality's gain."""

    snr: float = 40.0
    """Signal-to-noise ratio: the Rician noise's Gaussian sigma is 1/snr on the relative scale, so
    white matter on FLAIR (0.5) sits at SNR/2. 40 is a good 3 T scan."""

    bias_strength: float = 0.08
    """Standard deviation of the log of the multiplicative bias field (smooth, up to 1.5 cycles
    across the head; shared by the four sequences with 30% per-sequence variation). 0.08 gives about
    +-15% inhomogeneity, typical of a corrected 3 T scan."""

    slice_thickness_mm: float | None = None
    """If set, the images are acquired with slices this thick along z (signal averaged over the
    slab, sampled every slab) and linearly resampled back to the output grid, as thick-slice
    clinical protocols are for BraTS. None keeps the native isotropic grid."""

    def __post_init__(self) -> None:
        def bad(msg: str) -> InvalidCohortParams:
            return InvalidCohortParams(f"cohort {self.name!r}: {msg}")

        for name in ("head_scale", "tumour_radius_mm", "et_thickness_mm", "et_coverage"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise bad(f"{name} must be a range (low, high) with 0 < low <= high, got {(lo, hi)}")
        for name in ("oedema_extent_mm", "oedema_strength"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise bad(f"{name} must be a range with 0 <= low <= high, got {(lo, hi)}")
        if self.et_coverage[1] > 1:
            raise bad("et_coverage must lie within (0, 1]")
        if not 0 <= self.p_enhancing <= 1:
            raise bad(f"p_enhancing must lie in [0, 1], got {self.p_enhancing}")
        if not 0 < self.oedema_gm_speed <= 1:
            raise bad(f"oedema_gm_speed must lie in (0, 1], got {self.oedema_gm_speed}")
        if self.snr <= 0:
            raise bad(f"snr must be positive, got {self.snr}")
        if min(self.deform_mm, self.bias_strength, self.intensity_jitter, self.gain_jitter) < 0:
            raise bad("deform_mm, bias_strength, intensity_jitter and gain_jitter must be >= 0")
        if self.slice_thickness_mm is not None and self.slice_thickness_mm <= 0:
            raise bad("slice_thickness_mm must be positive or None")
        if len(self.gain) != 4 or len(self.oedema_contrast) != 4:
            raise bad("gain and oedema_contrast need one value per modality (t1n, t1c, t2w, t2f)")
        if set(self.intensities) != set(TISSUES) or any(len(v) != 4 for v in self.intensities.values()):
            raise bad(f"intensities needs 4 values for each of {TISSUES}")
        if self.has_lesion:
            names = [loc for loc, _ in self.locations]
            if not names or any(loc not in LOCATIONS for loc in names):
                raise bad(f"locations must name some of {LOCATIONS}, got {names}")
            if any(w < 0 for _, w in self.locations) or sum(w for _, w in self.locations) <= 0:
                raise bad("location weights must be >= 0 with a positive sum")

    def to_dict(self) -> dict[str, Any]:
        """All parameters as plain JSON-serialisable values (for ``dataset.json``)."""
        return dataclasses.asdict(self)


COHORTS: dict[str, CohortParams] = {
    "adult": CohortParams(),
    "pediatric": CohortParams(
        name="pediatric",
        description="PED-like: smaller head, posterior fossa or midline tumours, rarely enhancing, little oedema.",
        head_scale=(0.86, 0.94),
        locations=(("posterior_fossa", 0.6), ("midline", 0.4)),
        tumour_radius_mm=(9.0, 16.0),
        irregularity=0.25,
        # DIPG/posterior fossa gliomas: enhancement in a minority (~30%), and then patchy.
        p_enhancing=0.3,
        et_coverage=(0.3, 0.7),
        et_thickness_mm=(2.0, 4.0),
        oedema_extent_mm=(6.0, 12.0),
        snr=35.0,
        gain=(900.0, 950.0, 1100.0, 850.0),
    ),
    "ssa": CohortParams(
        name="ssa",
        description="SSA-like low-field/older scanners: SNR/3, 3x bias, 5 mm slices, weak GM/WM and oedema contrast, larger tumours.",
        tumour_radius_mm=(17.0, 26.0),
        oedema_extent_mm=(18.0, 34.0),
        # Wider per-case spread: late presentation gives both florid and faint oedema.
        oedema_strength=(0.55, 1.0),
        gm_wm_contrast=0.6,
        # 40% weaker oedema-vs-WM difference on T2w and FLAIR; T1 hypo-intensity 20% weaker.
        oedema_contrast=(0.8, 0.8, 0.6, 0.6),
        snr=13.0,
        bias_strength=0.24,
        slice_thickness_mm=5.0,
        gain=(700.0, 750.0, 900.0, 650.0),
        gain_jitter=0.2,
    ),
    "healthy": CohortParams(
        name="healthy",
        description="IXI-like healthy volunteers: no lesion, another scanner's gains.",
        has_lesion=False,
        locations=(),
        snr=30.0,
        bias_strength=0.1,
        gain=(1300.0, 1250.0, 800.0, 1100.0),
    ),
}


def get_cohort(name: str, overrides: Mapping[str, Any] | None = None) -> CohortParams:
    """Return the preset ``name`` with ``overrides`` (field name -> value) applied.

    Raises :class:`UnknownCohort` for a name that is not a preset and
    :class:`InvalidCohortParams` for an override that names no field or is out of range.
    """
    if name not in COHORTS:
        raise UnknownCohort(f"unknown cohort {name!r}; choose one of: {', '.join(COHORTS)}")
    return apply_overrides(COHORTS[name], overrides)


def apply_overrides(params: CohortParams, overrides: Mapping[str, Any] | None) -> CohortParams:
    """``params`` with the fields named in ``overrides`` replaced (lists become tuples, as from JSON).

    Raises :class:`InvalidCohortParams` for a name that is no field or a value out of range.
    """
    if not overrides:
        return params
    known = {f.name for f in dataclasses.fields(CohortParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidCohortParams(f"unknown cohort parameter(s) {unknown}; valid names: {sorted(known)}")
    fixed = {k: _coerce(k, getattr(params, k), v) for k, v in overrides.items()}
    return dataclasses.replace(params, **fixed)


def _coerce(name: str, current: Any, value: Any) -> Any:
    """``value`` in the shape of the field's ``current`` value (JSON lists -> tuples), or raise."""

    def bad() -> InvalidCohortParams:
        return InvalidCohortParams(f"cohort parameter {name!r} must look like {current!r}, got {value!r}")

    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise bad()
        return float(v)

    try:
        if name == "locations":
            return tuple((str(loc), number(w)) for loc, w in value)
        if name == "intensities":
            return {str(t): tuple(number(x) for x in v) for t, v in dict(value).items()}
    except (TypeError, ValueError) as exc:
        raise bad() from exc
    if isinstance(current, bool | str):
        if type(value) is not type(current):
            raise bad()
        return value
    if isinstance(current, tuple):
        if not isinstance(value, list | tuple) or len(value) != len(current):
            raise bad()
        return tuple(number(x) for x in value)
    if current is None or isinstance(current, float):
        return None if value is None and name == "slice_thickness_mm" else number(value)
    return value
