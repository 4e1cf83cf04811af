"""Synthetic cohorts: determinism, label conventions, MRI-like contrast measured on generated images,
the ssa shift, cohort overrides and offline generation."""

from __future__ import annotations

import functools
import socket

import numpy as np
import pytest

from medseglens_core.data.synthetic import (
    COHORTS,
    InvalidCohortParams,
    UnknownCohort,
    case_seed,
    generate_case,
    get_cohort,
    load_templates,
)

# Undeformed, unscaled anatomy: the template's tissue maps then say which voxel is which tissue.
ALIGNED = {"deform_mm": 0.0, "head_scale": (1.0, 1.0)}


@functools.cache
def _case(cohort: str, seed: int, aligned: bool = False):
    params = get_cohort(cohort, ALIGNED if aligned else None)
    return generate_case(params, seed, 2)


def _tissues(case):
    """Boolean masks of pure tissue away from the lesion, from the (aligned) template maps."""
    tpl = load_templates(2)
    csf = tpl.mask * np.clip(1 - tpl.gm - tpl.wm, 0, 1)
    free = case.label == 0
    return {
        "wm": (tpl.wm > 0.95) & free,
        "gm": (tpl.gm > 0.8) & free,
        "csf": (csf > 0.9) & free & (case.images["t1n"] > 0),
        "ncr": case.label == 1,
        "et": case.label == 3,
        "snfh": case.label == 2,
    }


def _means(case, modality):
    img = case.images[modality]
    return {t: float(img[m].mean()) for t, m in _tissues(case).items() if m.sum() >= 10}


def test_same_seed_gives_identical_case_and_other_seed_differs():
    a = _case("adult", 1)
    b = generate_case(COHORTS["adult"], 1, 2)
    c = _case("adult", 2)
    for m in a.images:
        np.testing.assert_array_equal(a.images[m], b.images[m])
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.label, c.label)
    assert not np.allclose(a.images["t1n"], c.images["t1n"])


def test_case_seed_depends_on_seed_index_and_cohort():
    seeds = {case_seed(s, i, c) for s in (0, 1) for i in (0, 1, 2) for c in ("adult", "ssa")}
    assert len(seeds) == 12
    assert case_seed(0, 3, "adult") == case_seed(0, 3, "adult")


def test_output_grid_dtype_and_skull_stripping():
    case = _case("adult", 1)
    tpl = load_templates(2)
    assert case.label.shape == tpl.mask.shape == (99, 117, 95)
    assert case.label.dtype == np.uint8
    np.testing.assert_array_equal(case.affine, tpl.affine)
    brain = case.images["t1n"] > 0
    for m, img in case.images.items():
        assert img.dtype == np.float32, m
        assert np.isfinite(img).all()
        np.testing.assert_array_equal(img > 0, brain)  # same skull-stripping mask for every modality
    # The deformed brain is about the template's size (scale 0.97-1.03 -> volume 0.91-1.09).
    assert 0.85 < brain.sum() / tpl.mask.sum() < 1.15
    assert (case.label[~brain] == 0).all()


@pytest.mark.parametrize("cohort", ["adult", "pediatric", "ssa"])
@pytest.mark.parametrize("seed", [1, 2])
def test_lesion_cohorts_have_oedema_and_a_core(cohort, seed):
    values = set(np.unique(_case(cohort, seed).label).tolist())
    assert values <= {0, 1, 2, 3}
    assert 2 in values
    assert values & {1, 3}


def test_healthy_has_only_background():
    for seed in (1, 2):
        assert np.unique(_case("healthy", seed).label).tolist() == [0]


def test_pediatric_heads_are_smaller_and_tumours_infratentorial_or_midline():
    adult = (_case("adult", 1).images["t1n"] > 0).sum()
    ped = (_case("pediatric", 1).images["t1n"] > 0).sum()
    assert ped / adult < 0.85  # scale ~0.9 -> volume ~0.73
    tpl = load_templates(2)
    for seed in (1, 2):
        case = _case("pediatric", seed)
        info = case.info["lesion"]
        assert info["location"] in ("posterior_fossa", "midline")
        z_mm = (tpl.affine @ [*info["centre_voxel"], 1])[2]
        assert z_mm < 20  # below the supratentorial hemispheres' bulk


def test_contrast_ordering_per_modality():
    case = _case("adult", 4, aligned=True)
    assert case.info["lesion"]["enhancing"]
    t1n, t1c, t2w, t2f = (_means(case, m) for m in ("t1n", "t1c", "t2w", "t2f"))
    assert t1n["wm"] > t1n["gm"] > t1n["csf"]
    assert t2w["csf"] > max(t2w["gm"], t2w["wm"], t2w["snfh"])
    assert t2f["csf"] < min(t2f["wm"], t2f["gm"])
    assert t2f["snfh"] > t2f["wm"]
    assert t1c["et"] > t1c["ncr"] and t1c["et"] > t1c["wm"]
    # Enhancement is a T1c effect: ET is not bright on T1n.
    assert t1n["et"] < t1n["wm"]


def _flair_oedema_contrast(case):
    m = _means(case, "t2f")
    return (m["snfh"] - m["wm"]) / m["wm"]


def _relative_noise(case):
    """Noise sd / mean in pure WM from differences of x-neighbours (signal varies slowly)."""
    img = case.images["t2f"]
    wm = _tissues(case)["wm"]
    pair = wm[1:] & wm[:-1]
    diff = (img[1:] - img[:-1])[pair]
    return float(diff.std() / np.sqrt(2) / img[wm].mean())


def test_ssa_has_weaker_oedema_contrast_and_more_noise_than_adult():
    adult = [_case("adult", s, aligned=True) for s in (4, 5)]
    ssa = [_case("ssa", s, aligned=True) for s in (4, 5)]
    c_adult = np.mean([_flair_oedema_contrast(c) for c in adult])
    c_ssa = np.mean([_flair_oedema_contrast(c) for c in ssa])
    assert c_ssa < 0.8 * c_adult
    assert c_ssa > 0  # weak, not inverted
    n_adult = np.mean([_relative_noise(c) for c in adult])
    n_ssa = np.mean([_relative_noise(c) for c in ssa])
    assert n_ssa > 2 * n_adult


def test_generation_works_with_network_off(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    load_templates.cache_clear()  # re-read the bundled templates with the network off
    case = generate_case(COHORTS["ssa"], 11, 2)
    assert 2 in case.label


def test_unknown_cohort_and_bad_overrides_raise_typed_errors():
    with pytest.raises(UnknownCohort, match="adult, pediatric, ssa, healthy"):
        get_cohort("martian")
    with pytest.raises(InvalidCohortParams, match="unknown cohort parameter"):
        get_cohort("adult", {"snrr": 10})
    with pytest.raises(InvalidCohortParams, match="snr"):
        get_cohort("adult", {"snr": -1})
    with pytest.raises(InvalidCohortParams, match="head_scale"):
        get_cohort("adult", {"head_scale": [1.0]})
    with pytest.raises(InvalidCohortParams, match="resolution"):
        generate_case(COHORTS["adult"], 0, 3)


def test_overrides_apply_and_presets_are_untouched():
    p = get_cohort("adult", {"snr": 20, "locations": [["midline", 1]], "tumour_radius_mm": [8, 9]})
    assert p.snr == 20.0 and p.locations == (("midline", 1.0),) and p.tumour_radius_mm == (8.0, 9.0)
    assert COHORTS["adult"].snr == 40.0
    case = generate_case(p, 3, 2)
    assert case.info["lesion"]["location"] == "midline"
    assert 8.0 <= case.info["lesion"]["radius_mm"] <= 9.0


def test_one_millimetre_output_uses_the_1mm_template_grid():
    case = generate_case(COHORTS["healthy"], 0, 1)
    tpl = load_templates(1)
    assert case.label.shape == case.images["t2w"].shape == (197, 233, 189)
    np.testing.assert_array_equal(case.affine, tpl.affine)
    assert np.diag(case.affine)[:3].tolist() == [1.0, 1.0, 1.0]
    brain = case.images["t2w"] > 0
    assert 0.85 < brain.sum() / tpl.mask.sum() < 1.15
