"""Dangling rows (files gone on disk): ``medseglens storage check`` lists them, ``/readyz`` counts them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import _register, app
from service.db import make_engine, make_sessionmaker, session_scope
from service.models_db import Job, JobState
from service.storage import new_id
from service.storage_check import KINDS, CachedScan
from tests.service.tinyzoo_app import UNET, UNET_SAE, tiny_client, tiny_settings, upload


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """The CLI pointed at the same data directory, database and zoo as ``tiny_client(tmp_path)``."""
    settings = tiny_settings(tmp_path)
    monkeypatch.setenv("MEDSEGLENS_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MEDSEGLENS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("MEDSEGLENS_ZOO", str(settings.zoo_dir))
    _register()
    return CliRunner()


def _check(runner: CliRunner, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["storage", "check", *args])
    return result.exit_code, result.stdout


def _tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` but the SQLite files, with its size (what a read-only scan keeps)."""
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("test.db")
    }


def _add_succeeded_recovery_job(database_url: str) -> str:
    """A succeeded recovery job row whose result file (``jobs/<id>/recovery.json``) was never written."""
    job_id = new_id()
    engine = make_engine(database_url)
    with session_scope(make_sessionmaker(engine)) as session:
        ref = f"/v1/jobs/{job_id}/result"
        session.add(Job(id=job_id, kind="recovery", state=JobState.succeeded.value, result_ref=ref))
    engine.dispose()
    return job_id


def test_deleted_files_are_listed_by_storage_check_and_counted_by_readyz(tmp_path, cli_env):
    with tiny_client(tmp_path) as (client, headers):
        vid = upload(client, headers)
        other = upload(client, headers, seed=1)
        body = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE, "top_k": 3}
        seg = client.post("/v1/segmentations", json=body, headers=headers).json()
        kept = client.post("/v1/segmentations", json={**body, "volume_id": other}, headers=headers).json()
        edit = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE}
        edit["edits"] = [{"latent": seg["top_latents"][0]["latent"], "op": "ablate"}]
        iid = client.post("/v1/interventions", json=edit, headers=headers).json()["id"]
        job_id = _add_succeeded_recovery_job(tiny_settings(tmp_path).database_url)
        _add_succeeded_recovery_job(tiny_settings(tmp_path).database_url)

        # The jobs have no result file yet; everything else is in place.
        code, out = _check(cli_env, "--json")
        report = json.loads(out)
        assert code == 1 and report["dangling"] == 2 and report["by_kind"]["job"] == 2

        data = tmp_path / "data"
        (data / "jobs" / job_id).mkdir(parents=True)
        (data / "jobs" / job_id / "recovery.json").write_text("{}")
        shutil.rmtree(data / "segmentations" / seg["id"])
        (data / "interventions" / iid / "mask.nii.gz").unlink()
        volume_file = next((data / "volumes" / vid).glob("t2f.nii*"))
        volume_file.unlink()

        before = _tree(tmp_path)
        code, out = _check(cli_env, "--json")
        assert code == 1, out
        report = json.loads(out)
        assert report["by_kind"] == {
            "volume": 1, "segmentation": 1, "intervention": 1, "diff_report": 0, "job": 1
        }  # fmt: skip
        assert report["checked_by_kind"]["segmentation"] == 2 and report["truncated"] is False
        rows = {(r["kind"], r["id"]): r["missing"] for r in report["rows"]}
        assert rows[("segmentation", seg["id"])] == [
            f"segmentations/{seg['id']}/mask.nii.gz",
            f"segmentations/{seg['id']}/labels.npy",
        ]
        assert rows[("intervention", iid)] == [f"interventions/{iid}/mask.nii.gz"]
        assert rows[("volume", vid)] == [f"volumes/{vid}/{volume_file.name}"]
        assert ("segmentation", kept["id"]) not in rows and ("volume", other) not in rows
        assert _tree(tmp_path) == before  # read-only: nothing made, nothing removed

        code, text = _check(cli_env)
        assert code == 1 and f"segmentation {seg['id']}" in text
        assert (
            text.strip()
            .splitlines()[-1]
            .endswith("4 dangling: volume 1, segmentation 1, intervention 1, job 1")
        )
        code, text = _check(cli_env, "--limit", "2")
        assert code == 1 and "stopped after 2 rows" in text

        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text  # dangling rows are reported, not a reason for 503
        storage = ready.json()["checks"]["storage"]
        assert storage["dangling"] == 4 and storage["by_kind"] == report["by_kind"]
        assert seg["id"] not in ready.text  # counts only: the probe is unauthenticated
        # The artefact routes still answer 410 for the rows the scan found.
        assert client.get(f"/v1/segmentations/{seg['id']}/mask", headers=headers).status_code == 410


def test_storage_check_is_clean_on_a_healthy_data_dir(tmp_path, cli_env):
    with tiny_client(tmp_path) as (client, headers):
        upload(client, headers)
        assert client.get("/readyz").json()["checks"]["storage"] == {
            "dangling": 0, "by_kind": dict.fromkeys(KINDS, 0), "checked": 1, "truncated": False
        }  # fmt: skip
    code, out = _check(cli_env)
    assert code == 0 and out.strip() == "1 rows checked, 0 dangling"


def test_storage_check_without_a_database_is_one_line_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEGLENS_DATA_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv("MEDSEGLENS_DATABASE_URL", raising=False)
    _register()
    result = CliRunner().invoke(app, ["storage", "check"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no database at") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "nowhere").exists()


def test_the_readyz_scan_is_cached_for_its_ttl(tmp_path):
    with tiny_client(tmp_path) as (client, headers):
        state = client.app.state
        scan = CachedScan(ttl_s=3600)
        assert scan.summary(state.sessionmaker, state.storage, tmp_path)["checked"] == 0
        upload(client, headers)
        assert scan.summary(state.sessionmaker, state.storage, tmp_path)["checked"] == 0  # cached
        scan.ttl_s = 0
        assert scan.summary(state.sessionmaker, state.storage, tmp_path)["checked"] == 1
