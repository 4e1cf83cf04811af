"""Job submission naming a corrupted zoo SAE or model: 503 zoo-entry-unavailable, nothing queued."""

from __future__ import annotations

import shutil

import pytest

import service.pool
from medseglens_core.catalog import HELD_OUT
from service.errors import ZooEntryUnavailable
from service.pool import WEIGHTS_FILES
from service.routes.jobs import default_sae
from tests.service.test_corrupt_zoo_entry import (
    CORRUPTIONS,
    _flip_last_byte,
    _problem,
    _truncate,
    _zoo_copy,
    app_over,
)
from tests.service.tinyzoo_app import SEGFORMER, SEGFORMER_SAE, UNET, UNET_SAE, tiny_pool, upload


class _Spy:
    """Wraps the job service's dispatcher: counts what reaches the queue."""

    def __init__(self, client):
        self.jobs = client.app.state.jobs
        self.enqueued: list[str] = []
        real = self.jobs.dispatcher.enqueue

        def enqueue(job_id, *args, **kwargs):
            self.enqueued.append(job_id)
            return real(job_id, *args, **kwargs)

        self.jobs.dispatcher.enqueue = enqueue

    def rows(self) -> int:
        return self.jobs.list(limit=10, offset=0)[1]


def _assert_unavailable(r, entry: str) -> None:
    p = _problem(r, 503, "zoo-entry-unavailable")
    assert p["entry"] == entry and entry.split(":", 1)[1] in p["detail"], p


@pytest.mark.parametrize("corrupt", sorted(CORRUPTIONS))
def test_jobs_naming_a_corrupted_sae_are_refused_and_not_queued(tmp_path, corrupt):
    zoo = _zoo_copy(tmp_path)
    assert default_sae(zoo, UNET) == UNET_SAE  # so the sae_id-less submissions read the broken SAE
    CORRUPTIONS[corrupt](zoo / "saes" / UNET_SAE / WEIGHTS_FILES["sae"])
    with app_over(tmp_path, zoo) as (client, headers):
        spy = _Spy(client)
        target = sorted(p.name for p in (zoo / "data" / HELD_OUT).iterdir())[0]
        for path, body in (
            ("/v1/jobs/recovery", {"model_id": UNET, "sae_id": UNET_SAE, "target": target}),
            ("/v1/jobs/recovery", {"model_id": UNET, "target": target}),  # the main SAE
            ("/v1/jobs/recovery-suite", {"model_ids": [UNET]}),
            ("/v1/jobs/recovery-suite", {"model_ids": [SEGFORMER, UNET]}),
        ):
            _assert_unavailable(client.post(path, json=body, headers=headers), f"sae:{UNET_SAE}")
        assert spy.enqueued == [] and spy.rows() == 0
        listed = client.get("/v1/jobs", headers=headers)
        assert listed.status_code == 200 and listed.json()["total"] == 0
        # an unknown SAE is still 404, not 503
        r = client.post(
            "/v1/jobs/recovery", json={"model_id": UNET, "sae_id": "nope", "target": target}, headers=headers
        )
        _problem(r, 404, "not-found")
        assert spy.enqueued == [] and spy.rows() == 0


def test_a_job_on_a_corrupted_model_is_refused_and_the_other_model_still_queues(tmp_path):
    zoo = _zoo_copy(tmp_path)
    CORRUPTIONS["truncated"](zoo / "models" / UNET / WEIGHTS_FILES["model"])
    with app_over(tmp_path, zoo) as (client, headers):
        spy = _Spy(client)
        vid = upload(client, headers)
        target = sorted(p.name for p in (zoo / "data" / HELD_OUT).iterdir())[0]
        for path, body in (
            ("/v1/jobs/sae-training", {"model_id": UNET, "volume_ids": [vid]}),
            ("/v1/jobs/recovery", {"model_id": UNET, "sae_id": UNET_SAE, "target": target}),
            ("/v1/jobs/recovery-suite", {"model_ids": [UNET]}),
        ):
            _assert_unavailable(client.post(path, json=body, headers=headers), f"model:{UNET}")
        assert spy.enqueued == [] and spy.rows() == 0
        r = client.post(
            "/v1/jobs/sae-training",
            json={"model_id": SEGFORMER, "volume_ids": [vid], "steps": 1},
            headers=headers,
        )
        assert r.status_code == 202, r.text
        assert spy.enqueued == [r.json()["id"]] and spy.rows() == 1
        client.delete(f"/v1/jobs/{r.json()['id']}", headers=headers)


def test_a_model_copied_in_after_start_is_checked_once_per_version(tmp_path, monkeypatch):
    """An entry the pool never loaded (copied in after start): checked on disk, the verdict cached."""
    zoo = _zoo_copy(tmp_path)
    calls: list[str] = []
    real = service.pool.check_entry

    def counting(kind, path):
        calls.append(f"{kind}:{path.name}")
        return real(kind, path)

    with app_over(tmp_path, zoo) as (client, headers):
        spy = _Spy(client)
        vid = upload(client, headers)
        monkeypatch.setattr(service.pool, "check_entry", counting)
        late = zoo / "models" / "late-model"
        shutil.copytree(zoo / "models" / SEGFORMER, late)
        CORRUPTIONS["flipped-byte"](late / WEIGHTS_FILES["model"])  # header parses: only the sha256 sees it
        body = {"model_id": "late-model", "volume_ids": [vid]}
        for _ in range(3):
            r = client.post("/v1/jobs/sae-training", json=body, headers=headers)
            _assert_unavailable(r, "model:late-model")
        assert calls == ["model:late-model"]  # hashed once, not per request
        assert spy.enqueued == [] and spy.rows() == 0


def test_entry_usable_rechecks_an_entry_whose_files_changed(tmp_path, monkeypatch):
    zoo = _zoo_copy(tmp_path)
    pool = tiny_pool(zoo)
    pool.load()
    calls: list[str] = []
    real = service.pool.check_entry
    monkeypatch.setattr(
        service.pool, "check_entry", lambda kind, path: calls.append(path.name) or real(kind, path)
    )
    late = zoo / "saes" / "late-sae"
    shutil.copytree(zoo / "saes" / SEGFORMER_SAE, late)
    weights = late / WEIGHTS_FILES["sae"]
    good = weights.read_bytes()
    _truncate(weights)
    for _ in range(2):
        with pytest.raises(ZooEntryUnavailable, match="late-sae.*not a readable safetensors"):
            pool.entry_usable("sae", "late-sae")
    assert calls == ["late-sae"]
    weights.write_bytes(good)  # repaired (another size): checked again, then cached
    assert pool.entry_usable("sae", "late-sae") is True
    assert pool.entry_usable("sae", "late-sae") is True
    assert calls == ["late-sae", "late-sae"]
    assert pool.entry_usable("sae", SEGFORMER_SAE) is True  # resident: checked when loaded
    assert pool.entry_usable("sae", "absent") is False
    assert calls == ["late-sae", "late-sae"]
    _flip_last_byte(zoo / "saes" / UNET_SAE / WEIGHTS_FILES["sae"])  # resident: not re-read per request
    assert pool.entry_usable("sae", UNET_SAE) is True


@pytest.mark.parametrize("kind", ["model", "sae"])
def test_jobs_over_every_model_check_every_entry_they_read(tmp_path, kind):
    """The diff report and a suite without model_ids read every model with a main SAE."""
    zoo = _zoo_copy(tmp_path)
    entry = UNET if kind == "model" else UNET_SAE
    CORRUPTIONS["truncated"](zoo / f"{kind}s" / entry / WEIGHTS_FILES[kind])
    with app_over(tmp_path, zoo) as (client, headers):
        spy = _Spy(client)
        for path in ("/v1/jobs/diff-report", "/v1/jobs/recovery-suite"):
            _assert_unavailable(client.post(path, json={}, headers=headers), f"{kind}:{entry}")
        assert spy.enqueued == [] and spy.rows() == 0


def test_a_recovery_whose_gate_sae_is_broken_is_refused(tmp_path):
    """The recovery's population gate reads the model's gate SAE: a broken one is 503 up front."""
    import json

    zoo = _zoo_copy(tmp_path)
    gate = zoo / "saes" / "segformer-tiny-gate"
    shutil.copytree(zoo / "saes" / SEGFORMER_SAE, gate)
    card = json.loads((gate / "card.json").read_text())
    (gate / "card.json").write_text(json.dumps({**card, "id": gate.name, "role": "gate"}))
    CORRUPTIONS["truncated"](gate / WEIGHTS_FILES["sae"])
    with app_over(tmp_path, zoo) as (client, headers):
        spy = _Spy(client)
        target = sorted(p.name for p in (zoo / "data" / HELD_OUT).iterdir())[0]
        for path, body in (
            ("/v1/jobs/recovery", {"model_id": SEGFORMER, "sae_id": SEGFORMER_SAE, "target": target}),
            ("/v1/jobs/recovery-suite", {"model_ids": [SEGFORMER]}),
        ):
            _assert_unavailable(client.post(path, json=body, headers=headers), f"sae:{gate.name}")
        assert spy.enqueued == [] and spy.rows() == 0
        r = client.post("/v1/jobs/recovery", json={"model_id": UNET, "target": target}, headers=headers)
        assert r.status_code == 202, r.text  # the other model has no gate SAE and is fine
        client.delete(f"/v1/jobs/{r.json()['id']}", headers=headers)
