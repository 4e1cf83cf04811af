"""Synthetic BraTS-2023-style glioma cohorts on real anatomy (nilearn's bundled MNI152 maps).

Every case is a smoothly deformed, rescaled MNI152 brain with (except ``healthy``) one glioma:
an irregular necrotic core (label 1), an enhancing rim (3) and oedema (2) that spreads along white
matter; four pseudo-modalities from a tissue contrast table, a bias field, Rician noise and
optionally thick slices. Nothing is downloaded. See :mod:`medseglens_core.data.cohorts` for the
presets and every parameter.
"""

from medseglens_core.data.cohorts import (
    COHORTS,
    CohortParams,
    InvalidCohortParams,
    UnknownCohort,
    apply_overrides,
    get_cohort,
)
from medseglens_core.data.synthetic.anatomy import load_templates
from medseglens_core.data.synthetic.generate import (
    LABELS,
    SyntheticCase,
    case_id_for,
    case_seed,
    generate_case,
    write_case,
    write_cohort,
)
from medseglens_core.io.case import MODALITIES

__all__ = [
    "COHORTS",
    "LABELS",
    "MODALITIES",
    "CohortParams",
    "InvalidCohortParams",
    "SyntheticCase",
    "UnknownCohort",
    "apply_overrides",
    "case_id_for",
    "case_seed",
    "generate_case",
    "get_cohort",
    "load_templates",
    "write_case",
    "write_cohort",
]
