"""CLI `keys` and `openapi`, settings from the environment, and logs free of patient identifiers."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.app import create_app
from service.cli import _register, app
from service.config import Settings, get_settings
from tests.service.builders import case_files, multipart

COMMITTED = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


@pytest.fixture
def env_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEGLENS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEDSEGLENS_MAX_VOXELS", "12345")
    monkeypatch.setenv("MEDSEGLENS_DEVICE", "cpu")
    get_settings.cache_clear()
    _register()
    yield get_settings()
    get_settings.cache_clear()


def test_settings_defaults_and_environment(env_settings, tmp_path):
    assert env_settings.data_dir == tmp_path / "data"
    assert env_settings.database_url == f"sqlite:///{tmp_path / 'data' / 'medseglens.db'}"
    assert env_settings.zoo == tmp_path / "data" / "zoo" and env_settings.max_voxels == 12345
    with pytest.raises(ValueError):
        Settings(device="gpu0")


def test_keys_create_list_revoke(env_settings):
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "--scopes", "read,segment", "--name", "pacs-bridge"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("msl_")
    listed = runner.invoke(app, ["keys", "list"]).stdout
    assert "pacs-bridge" in listed and "read,segment" in listed and key not in listed
    key_id = listed.split()[0]

    with TestClient(create_app(env_settings)) as c:
        assert c.get("/v1/volumes", headers={"X-API-Key": key}).status_code == 200
        assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
        assert c.get("/v1/volumes", headers={"X-API-Key": key}).status_code == 401
    assert runner.invoke(app, ["keys", "revoke", "0" * 32]).exit_code == 2
    assert runner.invoke(app, ["keys", "create", "--scopes", "root"]).exit_code != 0


def test_openapi_command_prints_the_committed_document(env_settings):
    out = CliRunner().invoke(app, ["openapi"]).stdout
    assert out == COMMITTED.read_text() and out.endswith("}\n")
    assert json.loads(out)["info"]["title"] == "Med-SegLens"


def test_logs_carry_request_id_but_no_file_names_or_header_text(settings, make_key):
    key = make_key("read,segment")
    stream = io.StringIO()
    with TestClient(create_app(settings)) as c:
        logger = logging.getLogger("medseglens")
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logger.handlers[0].formatter)  # the app's JSON formatter
        logger.addHandler(handler)
        logger.setLevel("INFO")
        try:
            files = case_files(descrip="DOE^JOHN 1961-02-03")
            r = c.post(
                "/v1/volumes", headers={"X-API-Key": key, "X-Request-ID": "rid-42"}, files=multipart(files)
            )
            bad = {**files, "t1n": files["t1n"][:100]}
            c.post("/v1/volumes", headers={"X-API-Key": key}, files=multipart(bad))
        finally:
            logger.removeHandler(handler)
    assert r.status_code == 201
    assert "DOE" not in r.text and "PATIENT" not in r.text
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [entry for entry in lines if entry["logger"] == "medseglens.access"]
    assert {"request_id": "rid-42", "route": "/v1/volumes", "status": 201}.items() <= access[0].items()
    assert access[1]["status"] == 400
    text = stream.getvalue()
    assert "DOE" not in text and "PATIENT" not in text and "JOHN" not in text
