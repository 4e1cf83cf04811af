"""The demo zoo: synthetic cohorts, both segmentation models, one SAE per model, the diff report.

``build_zoo(out)`` is what ``medseglens zoo build`` and the service's first start run. Every
step is skipped when its output already exists, so an interrupted build resumes. Layout::

    ZOO/data/{train,val,test}/<cohort>/<case_id>/...   BraTS-2023 case folders (2 mm)
    ZOO/models/<model_id>/{weights.safetensors,card.json}
    ZOO/saes/<sae_id>/{cfg.json,sae_weights.safetensors,card.json}
    ZOO/reports/<report_id>/{report.json,report.html}
    ZOO/zoo.json                                          what was built, with timings

The models are trained on ``adult`` only (the paper's source cohort); every cohort's test
split is scored and the Dice per cohort and region goes on the model card under
``test_dice`` so the dataset shift is measured, not assumed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseglens_core import __version__
from medseglens_core.catalog import data_split, test_data_dir, train_data_dir  # the split rule; re-exported
from medseglens_core.determinism import TRAIN_THREADS
from medseglens_core.io.case import Case

COHORTS = ("adult", "pediatric", "ssa", "healthy")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ZooModelSpec:
    """One segmentation model of the zoo.

    Attributes:
        model_id: directory name under ``ZOO/models``.
        arch: registry name ("segformer" or "unet").
        config: architecture config passed to ``build_model``.
        sae_hook: hook point the zoo's SAE reads. SegFormer ``stage3``: the last stage at 1/16
            resolution that still has a spatial grid fine enough (6x6 at 96 px) to localise
            oedema while carrying high-level features, as in the paper's mid/late choice.
            U-Net ``dec1``: the deepest decoder block's output (64 channels, 12x12), where the
            bottleneck meets the deepest skip connection. The bottleneck itself is a poor place to
            steer: a U-Net segments largely through its skips, and on the demo zoo the oracle
            recovered 57% of ssa failures from bottleneck edits against 93% from ``dec1``.
        steps: optimiser steps of the model's training run (the budget: a step count, never
            seconds, so every build of the same config gives the same weights). SegFormer 360
            and U-Net 600 steps take about 180 s and 120 s on the 2-core development machine.
        gate_hook: hook of a second SAE (card ``role: gate``) that the recovery benchmark's
            population gate reads instead of the steering SAE. SegFormer ``stage2``: its latents
            tell ssa scans from adult ones (leave-one-out on the calibration scans: 0-1 errors
            of 13, vs 4-8 at ``stage3``), while steering works at ``stage3``.
        sae_tokens: this model's SAE token budget (None: ``ZooConfig.sae_tokens``). The U-Net's
            ``dec1`` SAE (64 -> 256 latents) needs 8M tokens for explained variance >= 0.9
            (0.895 at 4M).
    """

    model_id: str
    arch: str
    config: dict[str, Any]
    sae_hook: str
    steps: int
    sae_tokens: int | None = None
    gate_hook: str | None = None


@dataclass(frozen=True)
class ZooConfig:
    """What ``build_zoo`` makes.

    Attributes:
        resolution: mm of the synthetic volumes (2 keeps the CPU build under 10 minutes).
        seed: base seed; split ``s`` of a cohort uses ``seed + SPLIT_OFFSETS[s]``.
        splits: cases per split per cohort. Only ``adult`` train/val train the models; the
            other cohorts' train splits feed the SAEs (tokens pooled from all four cohorts).
        models: the segmentation models.
        sae_expansion, sae_k, sae_tokens: SAE width (d_sae = expansion * d_in), BatchTopK k and
            training token budget (a model's ``sae_tokens`` overrides the budget).
        threads: torch CPU threads of every training run. The weights' bits depend on it, so
            it is part of the config (and of ``config_sha256``); 1 is as fast as 2 on a busy
            2-core machine and gives the same weights on any core count.
    """

    resolution: int = 2
    seed: int = 0
    splits: dict[str, dict[str, int]] = field(
        default_factory=lambda: {
            "adult": {"train": 24, "val": 4, "test": 20},
            "pediatric": {"train": 6, "test": 20},
            "ssa": {"train": 6, "test": 20},
            "healthy": {"train": 4, "test": 20},
        }
    )
    models: tuple[ZooModelSpec, ...] = (
        ZooModelSpec("segformer-b0-adult", "segformer", {"variant": "b0"}, "stage3", 360, gate_hook="stage2"),
        ZooModelSpec("unet-adult", "unet", {}, "dec1", 600, sae_tokens=8_000_000),
    )
    sae_expansion: int = 4
    sae_k: int = 32
    sae_tokens: int = 4_000_000
    threads: int = TRAIN_THREADS


def config_sha256(cfg: ZooConfig | dict[str, Any]) -> str:
    """sha256 of a zoo config as canonical JSON (sorted keys): the same for the same build recipe."""
    data = asdict(cfg) if isinstance(cfg, ZooConfig) else cfg
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


SPLIT_OFFSETS = {"train": 0, "val": 1000, "test": 2000}


def _say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def build_data(zoo: Path, cfg: ZooConfig, progress: Progress | None = None) -> None:
    """Generate every cohort split that is not there yet (a split is done when its dataset.json exists)."""
    from medseglens_core.data.synthetic import write_cohort

    for cohort, splits in cfg.splits.items():
        for split, n in splits.items():
            out = data_split(zoo, cohort, split)
            if (out / "dataset.json").is_file():
                continue
            t0 = time.perf_counter()
            write_cohort(out, cohort, n, seed=cfg.seed + SPLIT_OFFSETS[split], resolution=cfg.resolution)
            _say(progress, f"data: {cohort}/{split} {n} cases in {time.perf_counter() - t0:.1f}s")


def load_split(zoo: Path, cohort: str, split: str) -> list[Case]:
    """Load every case of one split, tagged with its cohort."""
    from medseglens_core.io import find_cases, load_case

    return [load_case(p, cohort=cohort) for p in find_cases(data_split(zoo, cohort, split))]


def evaluate_cohorts(model, zoo: Path, cohorts: tuple[str, ...] = COHORTS) -> dict[str, dict[str, float]]:
    """Mean Dice per region/label and mean HD95 (mm) on each cohort's test split.

    Healthy cases have no tumour: their row reports the mean predicted WT volume (mL), the
    false-positive burden, since Dice is 1 or 0 there by convention.
    """
    from medseglens_core.metrics import region_volumes_ml, score_segmentation
    from medseglens_core.models.inference import segment_case

    out: dict[str, dict[str, float]] = {}
    for cohort in cohorts:
        rows = []
        for case in load_split(zoo, cohort, "test"):
            seg = segment_case(model, case, device="auto")
            spacing = case.geometry.spacing
            if cohort == "healthy":
                rows.append({"false_positive_WT_ml": region_volumes_ml(seg.labels, spacing)["WT"]})
                continue
            s = score_segmentation(seg.labels, case.label, spacing)
            row = {f"{k}_dice": v["dice"] for k, v in s["regions"].items()}
            row.update({f"{k}_hd95": v["hd95"] for k, v in s["regions"].items()})
            row.update({f"{k}_label_dice": v["dice"] for k, v in s["labels"].items() if k != "ET"})
            rows.append(row)
        if rows:
            out[cohort] = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
            out[cohort]["n_cases"] = len(rows)
    return out


def build_models(zoo: Path, cfg: ZooConfig, progress: Progress | None = None) -> None:
    """Train each zoo model on ``adult`` (train/val splits), score all cohorts, save weights + card."""
    from medseglens_core.models.card import save_model
    from medseglens_core.models.train import TrainConfig, train_on_cases

    train = val = None
    for spec in cfg.models:
        out = Path(zoo) / "models" / spec.model_id
        if (out / "card.json").is_file():
            continue
        if train is None:
            train, val = load_split(zoo, "adult", "train"), load_split(zoo, "adult", "val")
        _say(progress, f"model: training {spec.model_id} ({spec.arch}) for {spec.steps} steps")
        tcfg = TrainConfig(
            arch=spec.arch,
            model=dict(spec.config),
            steps=spec.steps,
            seed=cfg.seed,
            num_threads=cfg.threads,
        )
        result = train_on_cases(tcfg, train, val, progress_bar=progress is not None)
        _say(progress, f"model: scoring {spec.model_id} on every cohort's test split")
        test = evaluate_cohorts(result.model, zoo)
        card = {
            **result.card,
            "id": spec.model_id,
            "default_hook": spec.sae_hook,
            "training_cohorts": ["adult"],
            "test_dice": test,
        }
        tmp = out.with_name(out.name + ".partial")
        save_model(result.model, card, tmp)
        tmp.replace(out)
        _say(progress, f"model: {spec.model_id} test Dice {json.dumps(test)}")


def build_saes(zoo: Path, cfg: ZooConfig, progress: Progress | None = None) -> None:
    """Train each zoo model's SAE (and gate SAE) on tokens pooled from all four cohorts' train splits."""
    from medseglens_core.sae.pipeline import train_sae_for_model

    for spec in cfg.models:
        jobs = [(spec.sae_hook, None)] + ([(spec.gate_hook, {"role": "gate"})] if spec.gate_hook else [])
        for hook, extra in jobs:
            sae_id = f"{spec.model_id}-{hook}-batchtopk"
            out = Path(zoo) / "saes" / sae_id
            if (out / "card.json").is_file():
                continue
            _say(progress, f"sae: training {sae_id}")
            card = train_sae_for_model(
                model_dir=Path(zoo) / "models" / spec.model_id,
                data_dir=train_data_dir(zoo),
                cohorts=list(cfg.splits),
                hook=hook,
                arch="batchtopk",
                expansion=cfg.sae_expansion,
                k=cfg.sae_k,
                out=out,
                token_budget=spec.sae_tokens or cfg.sae_tokens,
                seed=cfg.seed,
                card_extra=extra,
                threads=cfg.threads,
            )
            m = card.get("metrics", {})
            keys = ("explained_variance", "dead_fraction")
            _say(progress, f"sae: {sae_id} " + json.dumps({k: m.get(k) for k in keys}))


def build_report(zoo: Path, cfg: ZooConfig, progress: Progress | None = None) -> None:
    """The zoo's diff report (both models, all four cohorts' test splits) under ``reports/zoo``."""
    from medseglens_core.analysis.report import build_diff_report

    out = Path(zoo) / "reports" / "zoo"
    if (out / "report.json").is_file():
        return
    _say(progress, "report: cross-cohort and cross-architecture diff")
    build_diff_report(zoo, test_data_dir(zoo), out, source="adult")


def build_zoo(
    out: str | Path, cfg: ZooConfig | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Build (or finish building) the demo zoo under ``out``; returns the ``zoo.json`` summary."""
    cfg = cfg or ZooConfig()
    zoo = Path(out)
    zoo.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    for name, step in (
        ("data", build_data),
        ("models", build_models),
        ("saes", build_saes),
        ("report", build_report),
    ):
        t0 = time.perf_counter()
        step(zoo, cfg, progress)
        timings[name] = round(time.perf_counter() - t0, 1)
    summary = {
        "package_version": __version__,
        "source_commit": source_commit(),
        "config": asdict(cfg),
        "config_sha256": config_sha256(cfg),
        "weights_sha256": weights_sha256(zoo),
        "timings_s": timings,
    }
    (zoo / "zoo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def source_commit() -> str | None:
    """The git commit of the package's source tree, when it runs from a checkout (else None)."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = done.stdout.strip()
    return sha if done.returncode == 0 and len(sha) == 40 else None


def weights_sha256(zoo: str | Path) -> dict[str, str]:
    """``{"models/<id>": sha256, "saes/<id>": sha256}`` of every weights file, as the cards record them."""
    out: dict[str, str] = {}
    for kind in ("models", "saes"):
        for card in sorted(Path(zoo).glob(f"{kind}/*/card.json")):
            sha = json.loads(card.read_text()).get("weights_sha256")
            if sha:
                out[f"{kind}/{card.parent.name}"] = sha
    return out


def is_built(zoo: str | Path) -> bool:
    """True when the zoo has at least one model and one SAE."""
    z = Path(zoo)
    return any(z.glob("models/*/card.json")) and any(z.glob("saes/*/card.json"))
