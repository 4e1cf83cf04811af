"""Embedded mode (no Redis): the API runs jobs in its own threads with the same states, progress, cancel."""

from __future__ import annotations

import hashlib

import pytest

from tests.jobs import fake_tasks  # noqa: F401 - registers the fake trainer behind sae_training
from tests.jobs.helpers import FAST_JOB_ENV, Api, make_zoo, published_saes


@pytest.fixture
def env(tmp_path, monkeypatch):
    for k, v in FAST_JOB_ENV.items():
        monkeypatch.setenv(k, v)
    zoo = make_zoo(tmp_path / "zoo")
    api = Api(tmp_path / "data", zoo, None)
    yield api, tmp_path, zoo
    api.close()


def test_submit_progress_succeeds_and_sae_is_listed(env):
    api, _, zoo = env
    r = api.submit({"tokens": 20})
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/v1/jobs/{r.json()['id']}"
    job_id = r.json()["id"]
    seen = api.wait(job_id, lambda j: j["state"] == "running" and j["metrics"].get("step", 0) > 0)
    assert 0 < seen["progress"] < 1 and "loss" in seen["metrics"] and "l0" in seen["metrics"]
    done = api.wait(job_id, lambda j: j["state"] in ("succeeded", "failed"))
    assert done["state"] == "succeeded", done
    assert done["progress"] == 1.0 and done["metrics"]["step"] == 20
    sae_id = done["metrics"]["result"]["sae_id"]
    assert done["result_link"] == f"/v1/saes/{sae_id}"
    assert published_saes(zoo) == [sae_id]  # staging removed, one entry published
    prov = done["metrics"]["result"]["provenance"]
    weights = zoo / "saes" / sae_id / "sae_weights.safetensors"
    assert prov["sae_id"] == sae_id and prov["sae_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert prov["model_id"] == "tiny" and prov["device"] == "cpu"
    listed = api.client.get("/v1/saes", headers=api.h(api.read_key)).json()
    assert sae_id in str(listed)


def test_cancel_running_job_leaves_no_sae(env):
    api, _, zoo = env
    job_id = api.submit({"tokens": 400}).json()["id"]
    api.wait(job_id, lambda j: j["metrics"].get("step", 0) >= 2)
    r = api.client.delete(f"/v1/jobs/{job_id}", headers=api.h())
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    done = api.wait(job_id, lambda j: j["state"] != "running", timeout=3.0)
    assert done["state"] == "cancelled"
    assert done["metrics"]["step"] < 400
    assert published_saes(zoo) == []
    assert api.client.delete(f"/v1/jobs/{job_id}", headers=api.h()).status_code == 202  # idempotent


def test_failure_is_recorded_with_reason(env):
    api, _, zoo = env
    job_id = api.submit({"seed": 666}).json()["id"]
    done = api.wait(job_id, lambda j: j["state"] in ("succeeded", "failed"))
    assert done["state"] == "failed" and "planted failure" in done["error"]
    assert published_saes(zoo) == []
    assert api.client.delete(f"/v1/jobs/{job_id}", headers=api.h()).status_code == 409


def test_restart_keeps_jobs_and_resumes_interrupted_one(env):
    api, tmp_path, zoo = env
    finished = api.submit({"tokens": 2}).json()["id"]
    api.wait(finished, lambda j: j["state"] == "succeeded")
    running = api.submit({"tokens": 400}).json()["id"]
    api.wait(running, lambda j: j["metrics"].get("step", 0) >= 2)
    api.close()  # graceful stop: the running job goes back to the queue
    api2 = Api(tmp_path / "data", zoo, None)
    try:
        assert api2.job(finished)["state"] == "succeeded"
        resumed = api2.wait(running, lambda j: j["state"] == "running" and j["attempts"] == 2)
        assert resumed["id"] == running
        api2.client.delete(f"/v1/jobs/{running}", headers=api2.h())
        assert api2.wait(running, lambda j: j["state"] == "cancelled", timeout=3.0)
    finally:
        api2.close()


def test_idempotency_key_returns_same_job_and_conflicts_on_other_body(env):
    api, _, _ = env
    a = api.submit({"tokens": 2}, **{"Idempotency-Key": "k-1"})
    b = api.submit({"tokens": 2}, **{"Idempotency-Key": "k-1"})
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"] and b.headers["Idempotent-Replayed"] == "true"
    c = api.submit({"tokens": 3}, **{"Idempotency-Key": "k-1"})
    assert c.status_code == 409 and c.headers["content-type"].startswith("application/problem+json")
    assert api.client.get("/v1/jobs", headers=api.h(api.read_key)).json()["total"] == 1


def test_scopes_validation_and_listing(env):
    api, _, _ = env
    assert api.submit().status_code == 202
    r = api.client.post(
        "/v1/jobs/sae-training", json={"model_id": "tiny", "cohorts": ["adult"]}, headers=api.h(api.read_key)
    )
    assert r.status_code == 403
    r = api.client.post("/v1/jobs/sae-training", json={"model_id": "tiny"}, headers=api.h())
    assert r.status_code == 422
    r = api.client.post(
        "/v1/jobs/sae-training", json={"model_id": "nope", "cohorts": ["adult"]}, headers=api.h()
    )
    assert r.status_code == 404
    assert api.client.get("/v1/jobs/" + "0" * 32, headers=api.h(api.read_key)).status_code == 404
    page = api.client.get("/v1/jobs?kind=sae_training&limit=1", headers=api.h(api.read_key)).json()
    assert page["total"] == 1 and len(page["items"]) == 1
    assert api.client.get("/v1/jobs?state=failed", headers=api.h(api.read_key)).json()["total"] == 0


def _fake_report(zoo_dir, data_dir, out_dir, *, progress, n_perm=100, **kw):
    import json
    import time

    for i in range(n_perm):
        progress({"stage": "cases", "progress": (i + 1) / n_perm})
        time.sleep(0.02)
    (out_dir / "report.json").write_text(json.dumps({"models": {"tiny": {}}}))
    (out_dir / "report.html").write_text("<html></html>")
    return {"models": {"tiny": {}}}


def test_diff_report_job_publishes_a_listed_report_and_cancels(env, monkeypatch):
    import medseglens_core.analysis.report as report_mod

    monkeypatch.setattr(report_mod, "build_diff_report", _fake_report)
    api, _, zoo = env
    r = api.client.post("/v1/jobs/diff-report", json={"n_perm": 10}, headers=api.h())
    assert r.status_code == 202, r.text
    done = api.wait(r.json()["id"], lambda j: j["state"] in ("succeeded", "failed"))
    assert done["state"] == "succeeded", done
    report_id = done["metrics"]["result"]["report_id"]
    assert done["result_link"] == f"/v1/diff-reports/{report_id}"
    assert sorted(p.name for p in (zoo / "reports").iterdir()) == [report_id]
    assert api.client.get(done["result_link"], headers=api.h(api.read_key)).status_code == 200
    # Cancel: the core builder has no should_stop; the progress callback stops it.
    job_id = api.client.post("/v1/jobs/diff-report", json={"n_perm": 5000}, headers=api.h()).json()["id"]
    api.wait(job_id, lambda j: j["progress"] > 0)
    api.client.delete(f"/v1/jobs/{job_id}", headers=api.h())
    assert api.wait(job_id, lambda j: j["state"] != "running", timeout=3)["state"] == "cancelled"
    assert sorted(p.name for p in (zoo / "reports").iterdir()) == [report_id]


def _tiny_zoo_api(tmp_path, monkeypatch):
    """The tiny zoo with its cases as the held-out split, and an embedded-jobs API over it."""
    from tests.analysis.tinyzoo import build_tiny_zoo

    for k, v in FAST_JOB_ENV.items():
        monkeypatch.setenv(k, v)
    zoo, data = build_tiny_zoo(tmp_path / "t")
    (zoo / "data").mkdir()
    (zoo / "data" / "test").symlink_to(data, target_is_directory=True)
    return zoo, Api(tmp_path / "data", zoo, None)


@pytest.mark.slow
def test_recovery_job_runs_the_real_benchmark_on_a_tiny_zoo(tmp_path, monkeypatch):
    """POST /v1/jobs/recovery -> the real run_recovery on the tiny zoo's test split -> recovery.json."""
    zoo, api = _tiny_zoo_api(tmp_path, monkeypatch)
    try:
        body = {"model_id": "unet-tiny", "target": "ssa", "protocol": "oracle"}
        r = api.client.post("/v1/jobs/recovery", json=body, headers=api.h())
        assert r.status_code == 202, r.text
        done = api.wait(r.json()["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=240)
        assert done["state"] == "succeeded", done
        doc = api.client.get(done["result_link"], headers=api.h(api.read_key)).json()
        assert doc["protocol"] == "oracle" and doc["target"] == "ssa" and doc["n_cases"] == 3
        assert doc["sae_id"] == "unet-tiny-sae" and doc["gate_sae_id"] is None
        assert 0.0 <= doc["recovered_fraction"] <= 1.0 and doc["dice_after"] >= doc["dice_before"]
        assert done["metrics"]["result"]["summary"]["n_cases"] == 3
        weights = zoo / "models" / "unet-tiny" / "weights.safetensors"
        assert doc["provenance"]["model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        assert done["metrics"]["result"]["provenance"] == doc["provenance"]
    finally:
        api.close()


@pytest.mark.slow
def test_recovery_suite_job_runs_every_protocol_per_shift_on_a_tiny_zoo(tmp_path, monkeypatch):
    """POST /v1/jobs/recovery-suite -> fresh shifted cases, diff, protocol + baselines -> suite.json."""
    zoo, api = _tiny_zoo_api(tmp_path, monkeypatch)
    try:
        for bad, status in (({"shifts": ["lens_flare"]}, 422), ({"calib_n": 3, "n_target": 3}, 422),
                            ({"model_ids": ["nope"]}, 404)):  # fmt: skip
            r = api.client.post("/v1/jobs/recovery-suite", json=bad, headers=api.h())
            assert r.status_code == status, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
        body = {"model_ids": ["unet-tiny"], "shifts": ["rician_noise"], "protocols": ["blind", "diff", "diff-unlabelled"],
                "n_target": 3, "calib_n": 1, "n_source": 2, "n_diff": 3}  # fmt: skip
        r = api.client.post("/v1/jobs/recovery-suite", json=body, headers=api.h())
        assert r.status_code == 202, r.text
        done = api.wait(r.json()["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=600)
        assert done["state"] == "succeeded", done
        doc = api.client.get(done["result_link"], headers=api.h(api.read_key)).json()
        assert doc["shifts"] == ["rician_noise"] and doc["models"] == ["unet-tiny"]
        latent = [r for r in doc["rows"] if r["kind"] == "latent"]
        assert [r["protocol"] for r in latent] == ["blind", "diff", "diff-unlabelled"]
        assert all(r["shift"] == "rician_noise" and r["design_shift"] is False for r in doc["rows"])
        if latent[0]["n_failures"]:  # the tiny model may fail no shifted case: then said so
            assert len([r for r in doc["rows"] if r["kind"] == "baseline"]) == 4
        else:
            assert "no failures" in latent[0]["note"]
        assert "unet-tiny" in doc["summary"]
        workdir = tmp_path / "data" / "jobs" / done["id"]
        assert (workdir / "suite" / "suite.html").read_text().count("<tr") == len(doc["rows"]) + 1
    finally:
        api.close()
