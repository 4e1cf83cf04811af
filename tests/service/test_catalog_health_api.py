"""Health, readiness, metrics, and the zoo catalog (models, SAEs, diff reports) over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app


def write_zoo(zoo: Path) -> None:
    for kind, item, card in (
        (
            "models",
            "unet-adult",
            {
                "architecture": "unet",
                "hook_points": ["bottleneck"],
                "default_hook": "bottleneck",
                "training": {"cohorts": ["adult"]},
            },
        ),
        ("models", "segformer-adult", {"architecture": "segformer", "default_hook": "stage3"}),
        ("models", "broken", {"architecture": "unet"}),
        (
            "saes",
            "unet-adult-bt",
            {
                "architecture": "batchtopk",
                "d_sae": 512,
                "model_id": "unet-adult",
                "hook": "bottleneck",
                "d_in": 256,
                "k": 16,
            },
        ),
    ):
        (zoo / kind / item).mkdir(parents=True)
        (zoo / kind / item / "card.json").write_text(json.dumps(card))
    (zoo / "models" / "no-card").mkdir()  # ignored: no card.json
    (zoo / "reports" / "adult-vs-ssa").mkdir(parents=True)
    (zoo / "reports" / "adult-vs-ssa" / "report.json").write_text(
        json.dumps({"title": "Adult vs SSA", "n": 3})
    )
    (zoo / "reports" / "adult-vs-ssa" / "report.html").write_text("<html><body>diff</body></html>")
    (zoo / "reports" / "json-only").mkdir()
    (zoo / "reports" / "json-only" / "report.json").write_text(json.dumps({"title": "J"}))


def stub_loader(path: Path):
    if path.name == "broken":
        raise OSError("weights file missing")
    return object(), json.loads((path / "card.json").read_text())


def test_healthz_and_readyz_without_models(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["checks"]["database"] is True and body["checks"]["models"]["ready"] is False
    assert "models" in body["detail"]


def test_catalog_and_readiness_with_a_zoo(settings, pool_factory, admin_headers):
    write_zoo(settings.zoo_dir)
    pool = pool_factory(model_loader=stub_loader, sae_loader=stub_loader)
    with TestClient(create_app(settings, pool=pool)) as c:
        c.headers.update(admin_headers)
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["models"] == {
            "ready": True, "models": 2, "saes": 1, "errors": ["model:broken"],
            "unavailable": {"model:broken": "OSError: weights file missing"},
        }  # fmt: skip
        assert ready.json()["checks"]["storage"]["dangling"] == 0
        models = c.get("/v1/models").json()["items"]
        assert [m["id"] for m in models] == ["segformer-adult", "unet-adult"]
        unet = models[1]
        assert {k: unet[k] for k in ("id", "architecture", "hook_points", "default_hook", "training_cohorts")} == {
            "id": "unet-adult", "architecture": "unet", "hook_points": ["bottleneck"],
            "default_hook": "bottleneck", "training_cohorts": ["adult"],
        }  # fmt: skip
        assert unet["device"] == "cpu" and unet["card"]["id"] == "unet-adult"
        assert c.get("/v1/models/segformer-adult").json()["default_hook"] == "stage3"
        broken = c.get("/v1/models/broken")  # in the zoo but failed to load: 503 naming it, not 404
        assert broken.status_code == 503 and broken.json()["entry"] == "model:broken"
        assert c.get("/v1/models", params={}).json()["unavailable"] == [
            {"id": "broken", "model_id": None, "available": False, "error": "OSError: weights file missing"}
        ]
        assert c.get("/v1/models/no-such-model").status_code == 404
        assert [s["id"] for s in c.get("/v1/saes").json()["items"]] == ["unet-adult-bt"]
        sae = c.get("/v1/saes/unet-adult-bt").json()
        assert (sae["model_id"], sae["hook"], sae["d_in"], sae["d_sae"], sae["k"]) == (
            "unet-adult",
            "bottleneck",
            256,
            512,
            16,
        )
        assert (
            c.get("/v1/saes", params={"model_id": "unet-adult"}).json()["items"][0]["id"] == "unet-adult-bt"
        )
        assert c.get("/v1/saes", params={"model_id": "segformer-adult"}).json()["items"] == []

        reports = c.get("/v1/diff-reports").json()["items"]
        assert reports == [
            {"id": "adult-vs-ssa", "title": "Adult vs SSA", "has_html": True},
            {"id": "json-only", "title": "J", "has_html": False},
        ]
        assert c.get("/v1/diff-reports/adult-vs-ssa").json() == {"title": "Adult vs SSA", "n": 3}
        html = c.get("/v1/diff-reports/adult-vs-ssa/html")
        assert html.headers["content-type"].startswith("text/html") and "diff" in html.text
        assert c.get("/v1/diff-reports/json-only/html").status_code == 404


def test_metrics_report_route_templates_and_models(client, admin_headers):
    client.get("/v1/volumes/" + "0" * 32, headers=admin_headers)
    client.get("/v1/volumes", headers=admin_headers)
    text = client.get("/metrics").text
    assert 'route="/v1/volumes/{volume_id}"' in text and 'status="404"' in text
    assert "0" * 32 not in text  # templates, never raw ids
    assert 'medseglens_models_loaded{kind="model"} 0.0' in text
    assert "medseglens_inference_seconds" in text and "medseglens_queue_depth" in text


def test_request_id_round_trip(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    fresh = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert len(fresh) == 32 and " " not in fresh


def test_readyz_reports_unreachable_queue(tmp_path):
    from service.config import Settings

    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", log_level="WARNING")
    with TestClient(create_app(settings)) as c:
        body = c.get("/readyz").json()
    assert body["status"] == 503 and body["checks"]["queue"] is False
