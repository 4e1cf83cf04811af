"""Tenancy and audit: the route matrix x {own project, other project, no key, revoked, expired key}.

Project A's key uploads a volume, segments it, edits it and queues a job; project B's key (every
scope) must get 404 on each of A's ids, never see them in a list, and be unable to derive anything
from them; requests without a key, with a revoked or an expired key are 401. On SQLite and
PostgreSQL (``database_url`` from conftest). The audit log holds a row for every state-changing
request of the matrix, scoped to its project, without any key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service.app import create_app
from service.auth import SCOPES, create_key, create_project, revoke_key
from service.db import create_tables, make_engine, make_sessionmaker, session_scope
from service.models_db import AuditEvent, utcnow
from tests.service.tinyzoo_app import UNET, UNET_SAE, tiny_pool, tiny_settings, upload

ALL = ",".join(SCOPES)


@dataclass
class World:
    client: TestClient
    keys: dict[str, str]
    ids: dict[str, str]
    engine: object

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"} if who != "none" else {}


@pytest.fixture
def world(tmp_path, database_url: str) -> Iterator[World]:
    settings = tiny_settings(tmp_path, database_url)
    engine = make_engine(settings.database_url)
    create_tables(engine)
    keys: dict[str, str] = {}
    with session_scope(make_sessionmaker(engine)) as s:
        create_project(s, "pa")
        create_project(s, "pb")
        keys["a"] = create_key(s, "a", ALL, project="pa")[1]
        keys["b"] = create_key(s, "b", ALL, project="pb")[1]
        row, keys["revoked"] = create_key(s, "r", ALL, project="pa")
        revoke_key(s, row.id)
        keys["expired"] = create_key(s, "e", ALL, project="pa", expires=utcnow() - timedelta(seconds=1))[1]
        keys["demo"] = create_key(s, "demo", ALL)[1]  # the default project
    app = create_app(settings, pool=tiny_pool(settings.zoo_dir))
    with TestClient(app, raise_server_exceptions=False) as client:
        w = World(client, keys, {}, engine)
        vid = upload(client, w.h("a"))
        seg = client.post(
            "/v1/segmentations",
            json={"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE},
            headers=w.h("a"),
        )
        assert seg.status_code == 201, seg.text
        body = {
            "volume_id": vid,
            "model_id": UNET,
            "sae_id": UNET_SAE,
            "edits": [{"latent": 0, "op": "ablate"}],
        }
        itv = client.post("/v1/interventions", json=body, headers=w.h("a"))
        assert itv.status_code == 201, itv.text
        job = client.post(
            "/v1/jobs/recovery",
            json={"model_id": UNET, "target": "ssa", "protocol": "oracle"},
            headers=w.h("a"),
        )
        assert job.status_code == 202, job.text
        w.ids = {"vid": vid, "sid": seg.json()["id"], "iid": itv.json()["id"], "jid": job.json()["id"]}
        yield w
    engine.dispose()


def _reads(ids: dict[str, str]) -> list[tuple[str, str, dict | None]]:
    vid, sid, iid, jid = ids["vid"], ids["sid"], ids["iid"], ids["jid"]
    return [
        ("GET", f"/v1/volumes/{vid}", None),
        ("GET", f"/v1/volumes/{vid}/preview.png", None),
        ("GET", f"/v1/segmentations/{sid}", None),
        ("GET", f"/v1/segmentations/{sid}/mask", None),
        ("GET", f"/v1/segmentations/{sid}/overlay.png", None),
        ("GET", f"/v1/segmentations/{sid}/latents/0/map", None),
        ("GET", f"/v1/segmentations/{sid}/seg.dcm", None),
        ("GET", f"/v1/interventions/{iid}", None),
        ("GET", f"/v1/interventions/{iid}/mask", None),
        ("GET", f"/v1/interventions/{iid}/seg.dcm", None),
        ("GET", f"/v1/jobs/{jid}", None),
        ("GET", f"/v1/jobs/{jid}/result", None),
    ]


def _writes(ids: dict[str, str]) -> list[tuple[str, str, dict | None]]:
    vid, sid, iid, jid = ids["vid"], ids["sid"], ids["iid"], ids["jid"]
    edit = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE, "edits": []}
    return [
        ("POST", "/v1/segmentations", {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE}),
        ("POST", "/v1/interventions", edit),
        ("POST", "/v1/jobs/sae-training", {"model_id": UNET, "volume_ids": [vid]}),
        ("POST", f"/v1/segmentations/{sid}/dicomweb", {}),
        ("POST", f"/v1/interventions/{iid}/dicomweb", {}),
        ("DELETE", f"/v1/jobs/{jid}", None),
        ("DELETE", f"/v1/volumes/{vid}", None),
    ]


LISTS = ("/v1/volumes", "/v1/segmentations", "/v1/jobs")


def _ids_in(page: dict) -> set[str]:
    return {str(x.get("id")) for x in page["items"]}


ID_PARAMS = ("{volume_id}", "{segmentation_id}", "{intervention_id}", "{job_id}")


def test_the_matrix_covers_every_route_with_a_project_owned_id(world: World):
    ids = world.ids
    back = {ids["vid"]: "{volume_id}", ids["sid"]: "{segmentation_id}", ids["iid"]: "{intervention_id}"}
    back[ids["jid"]] = "{job_id}"
    covered = set()
    for method, path, _ in _reads(ids) + _writes(ids):
        for value, name in back.items():
            path = path.replace(value, name)
        covered.add((method, path.replace("/latents/0/", "/latents/{latent}/")))
    doc = world.client.get("/openapi.json").json()
    owned = {
        (m.upper(), p) for p, item in doc["paths"].items() for m in item if any(x in p for x in ID_PARAMS)
    }
    assert owned - covered == set(), "add these routes to the tenancy matrix"


def test_route_matrix(world: World):
    c, ids = world.client, world.ids
    mine = set(ids.values())
    writes: list[str] = []  # request ids of every state-changing request: each must be audited

    def call(method: str, path: str, body: dict | None, who: str):
        r = c.request(method, path, json=body, headers=world.h(who))
        if method != "GET":
            writes.append(r.headers["x-request-id"])
        return r

    # Other project: every id of A is unknown (404, never 403), every list lacks them.
    for method, path, body in _reads(ids) + _writes(ids):
        r = call(method, path, body, "b")
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    for path in LISTS:
        page = c.get(path, headers=world.h("b")).json()
        assert not _ids_in(page) & mine and page["total"] == 0, (path, page)
        assert not _ids_in(c.get(path, headers=world.h("demo")).json()) & mine  # default project
    assert c.get(f"/v1/segmentations?volume_id={ids['vid']}", headers=world.h("b")).json()["total"] == 0
    # No key, revoked key, expired key: 401 on every route, reads and writes alike.
    for who in ("none", "revoked", "expired"):
        for method, path, body in [*_reads(ids), *_writes(ids), *(("GET", p, None) for p in LISTS)]:
            r = call(method, path, body, who)
            assert r.status_code == 401, (who, method, path, r.status_code)
    # Own project: everything is there.
    for path in LISTS:
        assert mine & _ids_in(c.get(path, headers=world.h("a")).json())
    for method, path, _ in _reads(ids):
        r = c.request(method, path, headers=world.h("a"))
        # found (a NIfTI upload has no DICOM SEG: 409; a job still running has no result: 404)
        expected = {"seg.dcm": 409, "result": 404}.get(path.rsplit("/", 1)[-1], 200)
        assert r.status_code in (200, expected), (path, r.status_code, r.text)
    assert call("DELETE", f"/v1/jobs/{ids['jid']}", None, "a").status_code in (202, 409)
    assert call("DELETE", f"/v1/volumes/{ids['vid']}", None, "a").status_code == 204
    assert c.get(f"/v1/volumes/{ids['vid']}", headers=world.h("a")).status_code == 404
    # The shared catalog stays visible to every project.
    for who in ("a", "b"):
        assert UNET in {m["id"] for m in c.get("/v1/models", headers=world.h(who)).json()["items"]}
    # 100% of the state-changing requests above have their audit row.
    with world.engine.connect() as conn:
        audited = {r[0] for r in conn.execute(text(f"SELECT request_id FROM {AuditEvent.__tablename__}"))}
    assert len(writes) == 4 * len(_writes(ids)) + 2 and set(writes) <= audited


def test_new_rows_carry_the_callers_project(world: World):
    with world.engine.connect() as conn:
        pa = conn.execute(text("SELECT id FROM projects WHERE name = 'pa'")).scalar_one()
        for table, key in (
            ("volumes", "vid"),
            ("segmentations", "sid"),
            ("interventions", "iid"),
            ("jobs", "jid"),
        ):
            got = conn.execute(text(f"SELECT project_id FROM {table} WHERE id = :i"), {"i": world.ids[key]})
            assert got.scalar_one() == pa, table


def test_audit_log(world: World):
    c, ids = world.client, world.ids
    c.delete(f"/v1/volumes/{ids['vid']}", headers=world.h("b"))  # B's failed attempt: B's row, not A's
    c.get(f"/v1/segmentations/{ids['sid']}/mask", headers=world.h("a"))  # a download: logged
    c.get(f"/v1/volumes/{ids['vid']}", headers=world.h("a"))  # a plain read: not logged
    r = c.get("/v1/audit", headers=world.h("a"), params={"limit": 1000})
    assert r.status_code == 200, r.text
    rows = r.json()["items"]
    assert {x["project"] for x in rows} == {"pa"}
    by_action = {(x["action"], x["resource_id"]): x for x in rows}
    assert by_action[("create_volume", ids["vid"])]["outcome"] == "201"
    assert by_action[("create_segmentation", ids["sid"])]["outcome"] == "201"
    assert by_action[("create_intervention", ids["iid"])]["outcome"] == "201"
    assert by_action[("create_recovery_job", ids["jid"])]["outcome"] == "202"
    assert by_action[("get_segmentation_mask", ids["sid"])]["outcome"] == "200"
    assert ("get_volume", ids["vid"]) not in by_action
    requests = [x for x in rows if not x["action"].startswith("job_")]
    assert requests and all(x["request_id"] and x["key_id"] for x in requests)
    # job transitions: queued at submission, then whatever the run went through, in A's project
    assert by_action[("job_queued", ids["jid"])]["outcome"] == "queued"
    text_all = str(rows)
    assert all(k not in text_all for k in world.keys.values())
    b_rows = c.get("/v1/audit", headers=world.h("b")).json()["items"]
    assert [(x["action"], x["outcome"]) for x in b_rows] == [("delete_volume", "404")]
    assert c.get("/v1/audit?resource=segmentations", headers=world.h("a")).json()["items"]
    assert {
        x["resource"] for x in c.get("/v1/audit?resource=volumes", headers=world.h("a")).json()["items"]
    } == {"volumes"}
    page = c.get("/v1/audit?limit=1&offset=1", headers=world.h("a")).json()  # reads of the log: not logged
    assert page["items"] == rows[1:2] and page["total"] == len(rows)
    inverted = c.get("/v1/audit?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", headers=world.h("a"))
    assert inverted.status_code == 422 and inverted.headers["content-type"].startswith(
        "application/problem+json"
    )
    future = c.get("/v1/audit?since=2999-01-01T00:00:00Z", headers=world.h("a")).json()
    assert future["items"] == [] and future["total"] == 0
    # admin only; append-only
    with session_scope(make_sessionmaker(world.engine)) as s:
        reader = create_key(s, "reader", "read", project="pa")[1]
    assert c.get("/v1/audit", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    with pytest.raises(Exception, match="append-only"), world.engine.begin() as conn:
        conn.execute(text(f"DELETE FROM {AuditEvent.__tablename__}"))


def _downgrade(engine) -> None:
    """Turn the database back into the schema before projects existed (data kept)."""
    from service.models_db import TENANT_MODELS

    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {AuditEvent.__tablename__}"))
        conn.execute(text("DROP TABLE projects"))
        for model in TENANT_MODELS:
            table = model.__tablename__
            conn.execute(text(f"DROP INDEX ix_{table}_project_id"))
            conn.execute(text(f"ALTER TABLE {table} DROP COLUMN project_id"))
        conn.execute(text("ALTER TABLE api_keys DROP COLUMN expires"))
        conn.execute(text("ALTER TABLE api_keys DROP COLUMN last_used"))


def test_migration_of_an_old_database(tmp_path, database_url: str):
    settings = tiny_settings(tmp_path, database_url)
    engine = make_engine(settings.database_url)
    create_tables(engine)
    with session_scope(make_sessionmaker(engine)) as s:
        demo = create_key(s, "demo", ALL)[1]
    demo_h = {"Authorization": f"Bearer {demo}"}
    with TestClient(
        create_app(settings, pool=tiny_pool(settings.zoo_dir)), raise_server_exceptions=False
    ) as c:
        vid = upload(c, demo_h)
    _downgrade(engine)
    with engine.connect() as conn:
        assert "project_id" not in str(conn.execute(text("SELECT * FROM volumes")).keys())
    create_tables(engine)  # what every start runs
    create_tables(engine)  # idempotent
    with session_scope(make_sessionmaker(engine)) as s:
        create_project(s, "pb")
        other = create_key(s, "b", ALL, project="pb")[1]
    with TestClient(
        create_app(settings, pool=tiny_pool(settings.zoo_dir)), raise_server_exceptions=False
    ) as c:
        assert c.get(f"/v1/volumes/{vid}", headers=demo_h).status_code == 200  # the demo key still works
        assert vid in _ids_in(c.get("/v1/volumes", headers=demo_h).json())
        assert c.get(f"/v1/volumes/{vid}", headers={"Authorization": f"Bearer {other}"}).status_code == 404
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT p.name FROM volumes v JOIN projects p ON p.id = v.project_id")).all()
        assert [r[0] for r in rows] == ["default"]
        keys = conn.execute(
            text("SELECT p.name FROM api_keys k JOIN projects p ON p.id = k.project_id")
        ).all()
        assert sorted(r[0] for r in keys) == ["default", "pb"]
    engine.dispose()


def test_project_keys_superuser_and_deleted_project(world: World):
    from service.auth import delete_project

    c, ids = world.client, world.ids
    made = c.post("/v1/keys", json={"name": "ci", "scopes": ["read"], "expires": "1d"}, headers=world.h("a"))
    assert made.status_code == 201, made.text
    new = made.json()
    assert new["project"] == "pa" and new["key"].startswith("msl_") and new["expires"]
    new_h = {"Authorization": f"Bearer {new['key']}"}
    assert c.get(f"/v1/volumes/{ids['vid']}", headers=new_h).status_code == 200
    listed = c.get("/v1/keys", headers=world.h("a")).json()["items"]
    assert {k["project"] for k in listed} == {"pa"} and all(k.get("key") is None for k in listed)
    assert new["id"] in {k["id"] for k in listed}
    assert not {k["id"] for k in c.get("/v1/keys", headers=world.h("b")).json()["items"]} & {new["id"]}
    assert c.delete(f"/v1/keys/{new['id']}", headers=world.h("b")).status_code == 404  # B cannot revoke it
    bad = c.post("/v1/keys", json={"scopes": ["superuser"]}, headers=world.h("a"))
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
    assert c.delete(f"/v1/keys/{new['id']}", headers=world.h("a")).status_code == 200
    assert c.get(f"/v1/volumes/{ids['vid']}", headers=new_h).status_code == 401  # revoked: the next request
    # last_used is kept
    with world.engine.connect() as conn:
        assert conn.execute(text("SELECT last_used FROM api_keys WHERE id = :i"), {"i": new["id"]}).scalar()
    # superuser (CLI-made) sees every project; a deleted project's keys are refused
    with session_scope(make_sessionmaker(world.engine)) as s:
        su = create_key(s, "su", "superuser", project="pb")[1]
    su_h = {"Authorization": f"Bearer {su}"}
    assert c.get(f"/v1/volumes/{ids['vid']}", headers=su_h).status_code == 200
    assert ids["vid"] in _ids_in(c.get("/v1/volumes", headers=su_h).json())
    with session_scope(make_sessionmaker(world.engine)) as s:
        delete_project(s, "pa")
    r = c.get(f"/v1/volumes/{ids['vid']}", headers=world.h("a"))
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")


def test_cli_projects_keys_audit(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from service.cli import _register, app
    from service.config import get_settings

    monkeypatch.setenv("MEDSEGLENS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MEDSEGLENS_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    _register()
    run = CliRunner().invoke
    assert run(app, ["projects", "create", "pa"]).exit_code == 0
    dup = run(app, ["projects", "create", "pa"])
    assert dup.exit_code == 2 and "exists already" in dup.output
    assert "pa" in run(app, ["projects", "list"]).output
    made = run(app, ["keys", "create", "--project", "pa", "--scopes", "read,admin", "--expires", "30d"])
    assert made.exit_code == 0, made.output
    key = made.output.split()[-1]
    assert key.startswith("msl_") and "project=pa" in made.output
    unknown = run(app, ["keys", "create", "--project", "nope"])
    assert unknown.exit_code == 2 and "No project 'nope'" in unknown.output
    assert run(app, ["keys", "create", "--expires", "soon"]).exit_code == 2
    listed = run(app, ["keys", "list"]).output
    assert "project=pa" in listed and key not in listed
    key_id = made.output.split("id=")[1].split()[0]
    assert run(app, ["keys", "revoke", key_id]).exit_code == 0
    out = run(app, ["audit", "export", "--since", "1d"])
    assert out.exit_code == 0
    assert all(json.loads(line) for line in out.output.splitlines())
    inverted = run(app, ["audit", "export", "--since", "2026-02-01", "--until", "2026-01-01"])
    assert inverted.exit_code == 2 and "after" in inverted.output
    assert run(app, ["projects", "delete", "default"]).exit_code == 2
    assert run(app, ["projects", "delete", "pa"]).exit_code == 0
    get_settings.cache_clear()
