"""JSON nested past MAX_JSON_DEPTH: 422 problem+json naming the limit, before anything recurses into
it (JSON bodies and the JSON form fields of POST /v1/volumes); the error renderer never fails."""

from __future__ import annotations

import json

import pytest
from starlette.requests import Request

from service.errors import problem_response
from service.jsonlimits import MAX_JSON_DEPTH, json_too_deep, loads_bounded
from tests.service.builders import case_files, multipart
from tests.service.tinyzoo_app import UNET, tiny_client, upload

JSON_ROUTES = ("/v1/segmentations", "/v1/interventions", "/v1/jobs/sae-training", "/v1/keys")


def _deep(n: int, leaf: str = "1") -> str:
    return '{"a":' * n + leaf + "}" * n


def _too_deep(r, what: str) -> dict:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    p = r.json()
    assert p["type"].endswith("/json-too-deep") and f"deeper than {MAX_JSON_DEPTH} levels" in p["detail"]
    assert what in p["detail"]
    return p


def test_the_scan_counts_brackets_outside_strings_only():
    assert not json_too_deep("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    assert json_too_deep("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))
    assert json_too_deep(_deep(MAX_JSON_DEPTH + 1)) and not json_too_deep(_deep(MAX_JSON_DEPTH))
    assert not json_too_deep(json.dumps({"s": "[" * 5000, "t": '\\"{{{{' * 100}))
    assert not json_too_deep("[" + "[1]," * 10_000 + "[1]]")  # wide, not deep
    assert json_too_deep(b"[" * 100_000)  # unbalanced bombs too, without recursion
    assert loads_bounded(_deep(3), "'x'") == {"a": {"a": {"a": 1}}}


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 3000, 100_000])
def test_json_bodies_nested_too_deep_are_422_naming_the_limit(tmp_path, depth):
    with tiny_client(tmp_path) as (client, headers):
        for path in JSON_ROUTES:
            for body in ("[" * depth + "]" * depth, '{"volume_id": ' + _deep(depth) + "}"):
                r = client.post(path, content=body, headers={**headers, "content-type": "application/json"})
                p = _too_deep(r, "JSON body")
                assert p["instance"] == path and p["request_id"] == r.headers["x-request-id"]


def test_bodies_within_the_limit_reach_validation_as_before(tmp_path):
    with tiny_client(tmp_path) as (client, headers):
        vid = upload(client, headers)
        ok = client.post("/v1/segmentations", json={"volume_id": vid, "model_id": UNET}, headers=headers)
        assert ok.status_code == 201, ok.text
        brackets_in_strings = {"volume_id": "[" * 500, "model_id": UNET}
        r = client.post("/v1/segmentations", json=brackets_in_strings, headers=headers)
        assert r.status_code == 422 and r.json()["type"].endswith("/validation-error")
        r = client.post("/v1/segmentations", json={"volume_id": json.loads(_deep(30))}, headers=headers)
        assert r.status_code == 422 and r.json()["type"].endswith("/validation-error")


def test_form_json_fields_nested_too_deep_are_422_and_nothing_is_stored(tmp_path):
    with tiny_client(tmp_path) as (client, headers):
        for field, value in (("metadata", _deep(5000)), ("metadata", _deep(MAX_JSON_DEPTH + 1))):
            r = client.post(
                "/v1/volumes", files=multipart(case_files()), data={field: value}, headers=headers
            )
            _too_deep(r, f"'{field}'")
        files = multipart({"image": case_files()["t1n"]})
        r = client.post(
            "/v1/volumes", files=files, data={"modality_order": "[" * 5000 + "]" * 5000}, headers=headers
        )
        _too_deep(r, "'modality_order'")
        assert client.get("/v1/volumes", headers=headers).json()["total"] == 0
        r = client.post(
            "/v1/volumes", files=multipart(case_files()), data={"metadata": _deep(20)}, headers=headers
        )
        assert r.status_code == 201 and r.json()["metadata"] == json.loads(_deep(20))


def test_the_error_renderer_answers_even_when_its_extras_do_not_render():
    scope = {"type": "http", "method": "POST", "path": "/v1/x", "headers": [], "query_string": b""}
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    r = problem_response(
        Request(scope), status=422, slug="validation-error", title="t", detail="d", errors=deep
    )
    assert r.status_code == 422
    body = json.loads(r.body)
    assert body["detail"] == "d" and "errors" not in body
