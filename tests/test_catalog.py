"""The zoo catalogue: one rule for a model's main SAE, gate SAE and data splits, used everywhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medseglens_core import catalog
from medseglens_core.catalog import Catalog, SaeRef

MAIN, GATE, COHORT_SAE = "unet-tiny-sae", "unet-tiny-a-gate", "unet-tiny-0-ssa"


def _card(sid: str, model: str = "m", **extra) -> SaeRef:
    return SaeRef(sid, {"id": sid, "model_id": model, "hook": "x", **extra})


def test_main_sae_is_read_from_the_card_role_not_the_id_order() -> None:
    saes = [
        _card("a-gate", role="gate", cohorts=["adult", "ssa", "pediatric"]),  # first by id, most cohorts
        _card("b-per-cohort", cohort="ssa"),
        _card("c-other-hook", hook="y", cohorts=["adult", "ssa"]),
        _card("d-main", cohorts=["adult"]),
        _card("e-other-model", model="n"),
    ]
    assert catalog.main_sae(saes, "m", {"default_hook": "x"}).sae_id == "d-main"  # the model's hook first
    assert catalog.main_sae(saes, "m").sae_id == "c-other-hook"  # no default hook: most cohorts
    assert catalog.gate_sae(saes, "m").sae_id == "a-gate"
    assert {c: s.sae_id for c, s in catalog.cohort_saes(saes, "m").items()} == {"ssa": "b-per-cohort"}
    assert catalog.main_sae(saes[:2], "m") is None and catalog.gate_sae(saes, "n") is None
    assert [catalog.sae_role(s.card) for s in saes[:4]] == ["gate", "cohort", "steering", "steering"]


def test_catalog_reads_a_zoo_and_lists_unreadable_cards(tmp_path) -> None:
    from medseglens_core.errors import InvalidInput

    (tmp_path / "models" / "m-dir").mkdir(parents=True)
    (tmp_path / "models" / "m-dir" / "card.json").write_text(json.dumps({"id": "m"}))
    for sid, extra in (("m-a-gate", {"role": "gate"}), ("m-b-main", {})):
        (tmp_path / "saes" / sid).mkdir(parents=True)
        (tmp_path / "saes" / sid / "card.json").write_text(
            json.dumps({"model_id": "m", "hook": "x", **extra})
        )
    (tmp_path / "saes" / "broken").mkdir()
    (tmp_path / "saes" / "broken" / "card.json").write_text("{")
    (tmp_path / "saes" / ".staging-job").mkdir()
    (tmp_path / "saes" / ".staging-job" / "card.json").write_text(json.dumps({"model_id": "m"}))
    cat = Catalog.read(tmp_path)
    assert [s.sae_id for s in cat.saes] == ["m-a-gate", "m-b-main"] and list(cat.unreadable) == [
        "saes/broken"
    ]
    for name in ("m", "m-dir"):  # the card id and the folder name are the same model
        assert cat.main_sae(name).sae_id == "m-b-main" and cat.gate_sae(name).sae_id == "m-a-gate"
    with pytest.raises(InvalidInput, match="broken/card.json"):
        Catalog.read(tmp_path, strict=True)


def test_data_splits(tmp_path) -> None:
    from medseglens_core import zoo as zoo_build
    from medseglens_core.errors import InvalidInput

    assert catalog.data_split(tmp_path, "ssa", "val") == tmp_path / "data" / "val" / "ssa"
    assert catalog.test_data_dir(tmp_path) == zoo_build.test_data_dir(tmp_path) == tmp_path / "data" / "test"
    assert zoo_build.train_data_dir(tmp_path) == tmp_path / "data" / "train"
    with pytest.raises(InvalidInput, match="unknown split"):
        catalog.split_dir(tmp_path, "holdout")
    assert catalog.held_out_data(tmp_path) is None
    (tmp_path / "data" / "train" / "adult").mkdir(parents=True)
    assert catalog.held_out_data(tmp_path) is None  # only a training split: nothing held out
    (tmp_path / "data" / "adult").mkdir()
    assert catalog.held_out_data(tmp_path) == tmp_path / "data"  # an unsplit zoo
    (tmp_path / "data" / "test" / "adult").mkdir(parents=True)
    assert catalog.held_out_data(tmp_path) == tmp_path / "data" / "test"
    (tmp_path / "data" / "adult" / "test").mkdir()
    assert catalog.cohort_case_root(tmp_path / "data", "adult") == tmp_path / "data" / "adult" / "test"
    assert catalog.cohort_case_root(tmp_path / "data", "ssa") == tmp_path / "data" / "ssa"


def _gate_first_zoo(tmp_path: Path) -> Path:
    """The tiny test zoo plus, for the U-Net, a gate SAE and a per-cohort SAE whose ids sort before
    its main SAE and whose cards list more cohorts."""
    from tests.service.tinyzoo_app import tiny_zoo

    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo(), zoo, symlinks=True)
    main = json.loads((zoo / "saes" / MAIN / "card.json").read_text())
    for sid, extra in ((GATE, {"role": "gate"}), (COHORT_SAE, {"cohort": "ssa"})):
        shutil.copytree(zoo / "saes" / MAIN, zoo / "saes" / sid)
        card = {**main, "id": sid, "cohorts": ["adult", "ssa", "pediatric", "healthy"], **extra}
        (zoo / "saes" / sid / "card.json").write_text(json.dumps(card))
    assert sorted(p.name for p in (zoo / "saes").iterdir() if p.name.startswith("unet"))[0] == COHORT_SAE
    return zoo


def test_every_entry_point_picks_the_same_main_sae(tmp_path, monkeypatch) -> None:
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from medseglens_core.analysis.zoo import discover_zoo
    from medseglens_core.interventions.zoo import gate_sae_id, load_gate_sae, load_sae_for
    from service.app import create_app
    from service.cli import _register, app
    from service.config import Settings
    from service.routes.jobs import default_sae
    from tests.service.tinyzoo_app import UNET, new_key, tiny_pool, tiny_settings, upload

    zoo = _gate_first_zoo(tmp_path)
    assert Catalog.read(zoo).main_sae(UNET).sae_id == MAIN

    # reports (the diff report and the diff job's provenance) and the CLI/recovery loaders
    assert {e.model_id: e.sae_id for e in discover_zoo(zoo)}[UNET] == MAIN
    assert {e.model_id: e.cohort_saes for e in discover_zoo(zoo)}[UNET] == {"ssa": zoo / "saes" / COHORT_SAE}
    assert load_sae_for(zoo, UNET)[1]["id"] == MAIN  # recovery job and CLI `recover` without --sae
    assert gate_sae_id(zoo, UNET) == GATE and load_gate_sae(zoo, UNET)[2] == GATE

    # CLI `segment --json`: its provenance names the SAE its OOD flag read
    monkeypatch.setenv("MEDSEGLENS_DATA_DIR", str(tmp_path / "cli-data"))
    _register()
    case = next((zoo / "data" / "test" / "adult").iterdir())
    args = ["segment", "--model", str(zoo / "models" / UNET), "--case", str(case)]
    args += ["--out", str(tmp_path / "seg.nii.gz"), "--device", "cpu", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["provenance"]["sae_id"] == MAIN

    # HTTP: a segmentation without sae_id, the jobs' default, latent cards of that SAE
    settings = Settings(**{**tiny_settings(tmp_path).model_dump(), "zoo": zoo})
    headers = {"Authorization": f"Bearer {new_key(settings)}"}
    with TestClient(create_app(settings, pool=tiny_pool(zoo)), raise_server_exceptions=False) as client:
        vid = upload(client, headers)
        seg = client.post("/v1/segmentations", json={"volume_id": vid, "model_id": UNET}, headers=headers)
        assert seg.status_code == 201, seg.text
        assert seg.json()["sae_id"] == MAIN
        assert default_sae(zoo, UNET) == MAIN  # what POST /v1/jobs/recovery checks
        card = client.get(f"/v1/saes/{MAIN}/latents/0", headers=headers)
        assert card.status_code == 200, card.text
        held_out = catalog.held_out_data(zoo)
        assert set(card.json()["firing_rate"]) == {p.name for p in held_out.iterdir() if p.is_dir()}
