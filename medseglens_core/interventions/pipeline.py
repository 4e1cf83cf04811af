"""One recovery run from a zoo and a data folder: what ``medseglens recover`` and the recovery job call.

:func:`recover_from_zoo` loads the model, its SAE (the main one unless named), the gate SAE, the
source and target cases, the extra source cases the blind protocols check harm on, and (protocol
``diff``) the diff report's target-specific latents; it runs each protocol
(:func:`~medseglens_core.interventions.recovery.run_recovery`, baselines included) and returns
the ``recovery.json`` documents with ``sae_id``, ``gate_sae_id`` and ``provenance``. Nothing is
written: the caller writes the documents (:func:`~.report.write_recovery`).

Harm cases (blind protocols): every case of ``source_calibration`` when given, else the first
``config.harm_cases`` (14) of the zoo's ``data/val/<source>`` then ``data/test/<source>`` cases
(each split by case id) whose folder names are not among the data folder's source cases (the
model never trained on either split).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medseglens_core.errors import InvalidInput
from medseglens_core.interventions.recovery import DIFF_PROTOCOLS, PROTOCOLS, RecoveryConfig, run_recovery

Progress = Callable[[dict[str, Any]], None] | None


def parse_protocols(protocol: str | Sequence[str]) -> list[str]:
    """``"all"``, a comma list or a list -> protocol names (InvalidInput on an unknown one)."""
    if isinstance(protocol, str):
        names = (
            list(PROTOCOLS) if protocol == "all" else [p.strip() for p in protocol.split(",") if p.strip()]
        )
    else:
        names = list(protocol)
    bad = [p for p in names if p not in PROTOCOLS]
    if bad or not names:
        raise InvalidInput(f"unknown protocol {bad or protocol!r}; choose from {list(PROTOCOLS)} or 'all'")
    return names


def default_diff_report(zoo: Path) -> Path:
    """The zoo's own diff report (built by ``zoo build``)."""
    return Path(zoo) / "reports" / "zoo" / "report.json"


def harm_case_paths(
    zoo: Path, source: str, taken: set[str], source_calibration: Path | None, limit: int
) -> list[Path]:
    """The blind protocols' extra harm-check case folders (module docs): every case of
    ``source_calibration``, else the first ``limit`` of the zoo's held-out ``source`` cases, val
    first; folders named in ``taken`` (the data folder's source cases) are left out."""
    from medseglens_core.catalog import data_split
    from medseglens_core.io import find_cases

    if source_calibration:
        return [p for p in find_cases(source_calibration) if p.name not in taken]
    dirs = [data_split(zoo, source, s) for s in ("val", "test")]
    return [p for d in dirs if d.is_dir() for p in find_cases(d) if p.name not in taken][:limit]


def recover_from_zoo(
    zoo: Path,
    data: Path,
    model_id: str,
    target: str,
    protocols: str | Sequence[str] = "blind",
    *,
    config: RecoveryConfig = RecoveryConfig(),
    sae_id: str | None = None,
    gate_sae_id: str | None = None,
    source_calibration: Path | None = None,
    diff_report: Path | None = None,
    model: tuple[Any, dict[str, Any]] | None = None,
    device: str | None = None,
    progress: Progress = None,
) -> list[dict[str, Any]]:
    """Run ``protocols`` of the recovery benchmark (module docs); returns one document each.

    ``model``: an already loaded ``(net, card)`` of ``model_id`` (the service's model pool).
    """
    from medseglens_core.interventions.diffrepair import diff_latents
    from medseglens_core.interventions.spec import RegionName
    from medseglens_core.interventions.zoo import (
        cohort_cases,
        load_gate_sae,
        load_items,
        load_model_dir,
        load_sae_for,
        source_cohort,
    )
    from medseglens_core.provenance import provenance

    names = parse_protocols(protocols)
    if config.region not in RegionName.__args__:  # type: ignore[attr-defined]
        raise InvalidInput(f"unknown region {config.region!r}; choose one of {list(RegionName.__args__)}")  # type: ignore[attr-defined]
    net, card = model if model is not None else load_model_dir(zoo, model_id)
    sparse, sae_card = load_sae_for(zoo, model_id, sae_id)
    sid = str(sae_card.get("id", sae_id))
    gate_sparse, gate_hook, gate_id = load_gate_sae(zoo, model_id, gate_sae_id)
    source = source_cohort(card)
    if source == target:
        raise InvalidInput(f"target {target!r} is the model's training cohort; pick another cohort")
    src_paths, tgt_paths = cohort_cases(data, source), cohort_cases(data, target)
    sae_dir = Path(zoo) / "saes" / sid
    prov = provenance(Path(zoo) / "models" / model_id, sae_dir, zoo=zoo, device=device)
    diff = None
    if any(p in DIFF_PROTOCOLS for p in names):
        report = diff_report or default_diff_report(zoo)
        diff = diff_latents(report, model_id, sid, target, prov.get("sae_sha256"))
    blind = [p for p in names if p != "oracle"]
    if blind and len(tgt_paths) <= config.calib_n:  # fail before loading anything
        raise InvalidInput(
            f"{blind[0]} needs more than {config.calib_n} target cases (calibration + held-out); got {len(tgt_paths)}"
        )
    hook = sae_card.get("hook") or net.default_hook
    src_items = load_items(net, hook, src_paths, source, progress=progress)
    tgt_items = load_items(net, hook, tgt_paths, target, progress=progress)
    harm_items = None
    if blind:
        taken = {p.name for p in src_paths}
        harm_paths = harm_case_paths(zoo, source, taken, source_calibration, config.harm_cases)
        harm_items = load_items(net, hook, harm_paths, source, progress=progress) or None
    docs = []
    for p in names:
        doc = run_recovery(
            sparse, src_items, tgt_items, p, model_id=model_id, source=source, target=target, config=config,
            harm_items=harm_items, progress=progress, gate_sae=gate_sparse, gate_hook=gate_hook,
            diff=diff if p in DIFF_PROTOCOLS else None,
        )  # fmt: skip
        doc["sae_id"] = sid
        doc["gate_sae_id"] = gate_id
        doc["provenance"] = prov
        docs.append(doc)
    return docs
