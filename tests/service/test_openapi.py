"""The committed OpenAPI document matches the app; operationIds, tags, security and errors are documented."""

from __future__ import annotations

import json
from pathlib import Path

from service.app import create_app
from service.cli.server import openapi_text
from service.config import Settings

COMMITTED = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def _schema(tmp_path: Path) -> dict:
    return create_app(Settings(data_dir=tmp_path)).openapi()


def test_committed_openapi_is_current(tmp_path):
    current = openapi_text(create_app(Settings(data_dir=tmp_path)))
    assert COMMITTED.read_text() == current, "openapi/openapi.json is stale: run `make openapi` and commit it"


def test_operation_ids_tags_security_and_problems(tmp_path):
    schema = _schema(tmp_path)
    ops = {
        op["operationId"]: (method, path, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
    }
    for expected in ("create_volume", "list_volumes", "get_volume", "delete_volume", "get_volume_preview",
                     "list_models", "get_model", "list_saes", "get_sae", "list_diff_reports",
                     "get_diff_report", "get_diff_report_html", "healthz", "readyz", "metrics"):  # fmt: skip
        assert expected in ops
    assert ops["create_volume"][:2] == ("post", "/v1/volumes")
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert schema["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-Key"
    assert "multipart/form-data" in ops["create_volume"][2]["requestBody"]["content"]
    for op_id, (_, path, op) in ops.items():
        assert op.get("tags"), op_id
        if path.startswith("/v1/"):
            assert op["security"] == [{"bearer": []}, {"apiKey": []}], op_id
            assert {"401", "403", "422"} <= set(op["responses"]), op_id
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                assert list(response["content"]) == ["application/problem+json"], (op_id, status)
    assert set(ops["create_volume"][2]["responses"]) >= {"201", "400", "413", "415"}
    assert json.loads(json.dumps(schema)) == schema
