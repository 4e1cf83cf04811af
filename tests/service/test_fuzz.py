"""Property-based fuzzing of the whole OpenAPI document with schemathesis, over a real uvicorn server.

The app (tiny zoo, its own temporary data dir and SQLite database, a valid admin key) is served
by uvicorn on a free loopback port for the module; schemathesis generates from the app's document
(checked equal to what the server serves at ``/openapi.json``) and sends every request over HTTP. Every operation gets generated
requests (valid and invalid, ``max_examples`` each); responses must never be 5xx and must match
the documented status codes, media types and schemas. Operations that start long jobs are left
out (they are exercised by the jobs tests), and so are the DICOMweb pull/STOW routes (they need
a PACS: tests/pacs runs them against a real Orthanc); the rest run on the tiny zoo, so even a
generated segmentation of a real volume stays cheap. A volume and a segmentation exist
beforehand so that generated ids are not the only ones the routes ever see.

Generated integers stay near the documented bounds, so a second test walks the FULL integer
range of every integer parameter (query, path, and the JSON body integers of the segmentation
and intervention requests): each bound, one past it, and values SQLite, NumPy or torch cannot
hold (``2**63``, ``2**64``, ``-2**63 - 1``, ``10**30``), and checks that the request really
carried the value and that nothing answers 5xx.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from tests.service.builders import case_files, multipart
from tests.service.tinyzoo_app import UNET, UNET_SAE, new_key, tiny_pool, tiny_settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
_DATA = Path(tempfile.mkdtemp(prefix="msl-fuzz-"))
atexit.register(shutil.rmtree, _DATA, True)
_SETTINGS = tiny_settings(_DATA)
APP = create_app(_SETTINGS, pool=tiny_pool(_SETTINGS.zoo_dir))
# Past every int64 / float64-exact range the storage and the tensors could hit.
HUGE = (2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30))


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """uvicorn serving ``APP`` (lifespan on) on a free loopback port, in a thread, for the module."""
    # port 0: the OS picks a free port at bind time (no race with another test process)
    server = uvicorn.Server(uvicorn.Config(APP, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="fuzz-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def known(base_url: str) -> dict[str, Any]:
    """An admin key's headers, and the ids of a stored volume and segmentation (made over HTTP)."""
    headers = {"X-API-Key": new_key(_SETTINGS)}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as http:
        assert http.get("/openapi.json").json() == json.loads(json.dumps(DOCUMENT))
        r = http.post("/v1/volumes", files=multipart(case_files(label=True, seed=0)))
        assert r.status_code == 201, r.text
        vid = r.json()["id"]
        r = http.post("/v1/segmentations", json={"volume_id": vid, "model_id": UNET, "top_k": 2})
        assert r.status_code == 201, r.text
        return {
            "base_url": base_url,
            "headers": headers,
            "volume_id": vid,
            "segmentation_id": r.json()["id"],
        }


# Parametrised at collection, before the server runs, so the document comes from the app itself;
# ``known`` checks that the server serves exactly this document, and every request goes to it over
# HTTP (``base_url``). (``schemathesis.pytest.from_fixture`` would load it from the server, but its
# lazy schemas read ``Function._nodeid``, which pytest 9 no longer has.)
DOCUMENT = APP.openapi()
schema = (
    schemathesis.openapi.from_dict(DOCUMENT)
    .exclude(path_regex=r"^/v1/jobs", method="POST")
    .exclude(operation_id="delete_volume")
    # DICOMweb pull/STOW talk to a PACS (502/503 without one): tests/pacs runs them against Orthanc
    .exclude(path_regex=r"/dicomweb$")
)


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_responses_match_schema(case, known):
    case.call_and_validate(base_url=known["base_url"], headers=known["headers"], checks=CHECKS, timeout=60)


# ----- the full integer range, explicitly --------------------------------------------------------


def _int_schemas(s: dict) -> list[dict]:
    if s.get("type") == "integer":
        return [s]
    return [x for alt in s.get("anyOf", []) for x in _int_schemas(alt)]


def _integer_parameters() -> list[tuple[str, str, str, str, dict]]:
    """``(method, path, name, location, integer schema)`` of every integer query/path parameter."""
    found = []
    for path, ops in APP.openapi()["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                for s in _int_schemas(p.get("schema", {})):
                    found.append((method, path, p["name"], p["in"], s))
    return found


def _values(s: dict) -> list[int]:
    """The bounds, one past each, and :data:`HUGE`."""
    edge = [
        v
        for b in ("minimum", "maximum")
        if b in s
        for v in (int(s[b]), int(s[b]) + (1 if b == "maximum" else -1))
    ]
    return [*edge, -1, 0, *HUGE]


def _in_range(s: dict, v: int) -> bool:
    return s.get("minimum", -float("inf")) <= v <= s.get("maximum", float("inf"))


INT_PARAMS = _integer_parameters()


def test_every_integer_parameter_is_covered():
    names = {(m, p, n) for m, p, n, _, _ in INT_PARAMS}
    assert ("get", "/v1/volumes", "offset") in names and ("get", "/v1/segmentations", "offset") in names
    assert any(loc == "path" for *_, loc, _ in INT_PARAMS)


def _path_values(path: str, known: dict[str, Any]) -> dict[str, Any]:
    ids = {"sae_id": UNET_SAE, "model_id": UNET, "volume_id": known["volume_id"]}
    ids["segmentation_id"] = known["segmentation_id"]
    return {name: value for name, value in ids.items() if "{" + name + "}" in path}


@pytest.mark.parametrize(("method", "path", "name", "location", "int_schema"), INT_PARAMS)
def test_integer_parameters_over_their_full_range(known, method, path, name, location, int_schema):
    operation = schema[path][method.upper()]
    for value in _values(int_schema):
        params = _path_values(path, known)
        query = None
        if location == "path":
            params[name] = value
        else:
            query = {name: value}
        case = operation.Case(path_parameters=params, query=query)
        response = case.call(base_url=known["base_url"], headers=known["headers"], timeout=60)
        # the deliberate check: the value itself went over the wire, digits intact
        assert str(value) in unquote(response.request.url), response.request.url
        assert response.status_code < 500, f"{method.upper()} {response.request.url}: {response.text}"
        assert response.status_code not in (401, 403), response.text  # it reached the route
        if not _in_range(int_schema, value):
            assert response.status_code in (404, 422), f"{response.request.url}: {response.status_code}"
        case.validate_response(response, checks=CHECKS)


def _bodies(known: dict[str, Any], value: int) -> list[tuple[str, dict]]:
    """Segmentation/intervention requests with ``value`` in each of their integer fields."""
    seg = {"volume_id": known["volume_id"], "model_id": UNET, "sae_id": UNET_SAE}
    edit = {"latent": 0, "op": "ablate"}
    edits = [
        {**edit, "latent": value},
        {**edit, "scope": "box", "box": [0, 0, 0, value, value, value]},
        {**edit, "scope": "box", "box": [value, 0, 0, 4, 4, 4]},
        {**edit, "scope": "slices", "slices": [0, value]},
        {**edit, "scope": "slices", "slices": [value, value]},
        {**edit, "scope": "predicted_region", "region": "WT", "dilation": value},
    ]
    gate = {"latents": [value], "weights": [1.0], "threshold": 0.0}
    return [
        ("/v1/segmentations", {**seg, "top_k": value}),
        *[("/v1/interventions", {**seg, "edits": [e]}) for e in edits],
        ("/v1/interventions", {**seg, "edits": [edit], "gate": gate}),
    ]


@pytest.mark.parametrize("value", [-1, *HUGE])
def test_json_body_integers_over_their_full_range(known, value):
    for path, body in _bodies(known, value):
        case = schema[path]["POST"].Case(body=body, media_type="application/json")
        response = case.call(base_url=known["base_url"], headers=known["headers"], timeout=120)
        assert str(value) in response.request.body.decode(), body
        assert response.status_code < 500, f"POST {path} {json.dumps(body)}: {response.text}"
        assert response.status_code not in (401, 403), response.text  # it reached the route
        case.validate_response(response, checks=CHECKS)
