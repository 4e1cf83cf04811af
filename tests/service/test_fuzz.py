"""Property-based fuzzing of the whole OpenAPI document with schemathesis, with a valid admin key.

Every operation gets generated requests (valid and invalid); responses must never be 5xx and must
match the documented status codes, media types and schemas. Operations that start long jobs are
left out (they are exercised by the jobs tests), and so are the DICOMweb pull/STOW routes (they
need a PACS: tests/pacs runs them against a real Orthanc); the rest run on the tiny zoo, so even a generated
segmentation of a real volume stays cheap. A volume and a segmentation exist beforehand so that
generated ids are not the only ones the routes ever see.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from tests.service.tinyzoo_app import UNET, new_key, tiny_pool, tiny_settings, upload

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
_DATA = Path(tempfile.mkdtemp(prefix="msl-fuzz-"))
atexit.register(shutil.rmtree, _DATA, True)
_SETTINGS = tiny_settings(_DATA)
APP = create_app(_SETTINGS, pool=tiny_pool(_SETTINGS.zoo_dir))
# The document is read from the app itself; heavy job submissions and deletes are left out.
schema = (
    schemathesis.openapi.from_asgi("/openapi.json", APP)
    .exclude(path_regex=r"^/v1/jobs", method="POST")
    .exclude(operation_id="delete_volume")
    # DICOMweb pull/STOW talk to a PACS (502/503 without one): tests/pacs runs them against Orthanc
    .exclude(path_regex=r"/dicomweb$")
)


@pytest.fixture(scope="module")
def headers() -> Iterator[dict[str, str]]:
    """Run the app's lifespan for the module; a volume and a segmentation exist; an admin key."""
    from fastapi.testclient import TestClient

    with TestClient(APP, raise_server_exceptions=False) as client:
        key = {"X-API-Key": new_key(_SETTINGS)}
        vid = upload(client, key)
        r = client.post(
            "/v1/segmentations", json={"volume_id": vid, "model_id": UNET, "top_k": 2}, headers=key
        )
        assert r.status_code == 201, r.text
        yield key


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_responses_match_schema(case, headers):
    case.call_and_validate(headers=headers, checks=CHECKS)
