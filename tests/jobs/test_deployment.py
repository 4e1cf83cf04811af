"""Docker cannot run here: parse the compose file and the Dockerfile and check what they promise."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _cmd(service: dict) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def _cli_commands() -> set[str]:
    from service.cli import _register, app

    _register()
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    return names | {g.name for g in app.registered_groups}


def test_services_commands_and_profiles(compose):
    svc = compose["services"]
    assert {"redis", "api", "worker", "postgres", "worker-gpu"} <= set(svc)
    assert _cmd(svc["api"])[:2] == ["medseglens", "serve"] and "0.0.0.0" in _cmd(svc["api"])
    assert _cmd(svc["worker"])[:2] == ["medseglens", "worker"]
    assert _cmd(svc["worker-gpu"])[:2] == ["medseglens", "worker"]
    assert svc["postgres"]["profiles"] == ["postgres"] and svc["worker-gpu"]["profiles"] == ["gpu"]
    assert "profiles" not in svc["api"] and "profiles" not in svc["worker"]  # the default stack
    commands = _cli_commands()
    for name in ("api", "worker", "worker-gpu"):
        assert _cmd(svc[name])[1] in commands


def test_every_service_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} lacks a healthcheck"
    assert compose["services"]["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert "pg_isready" in compose["services"]["postgres"]["healthcheck"]["test"]
    assert "/healthz" in " ".join(compose["services"]["api"]["healthcheck"]["test"])
    assert compose["services"]["api"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_gpu_reservation_and_shared_volumes(compose):
    svc = compose["services"]
    devices = svc["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert {"data", "zoo"} <= set(compose["volumes"])
    for name in ("api", "worker", "worker-gpu"):
        assert {"data:/data", "zoo:/zoo"} <= set(svc[name]["volumes"])
        env = svc[name]["environment"]
        assert env["MEDSEGLENS_REDIS_URL"] == "redis://redis:6379/0"
        assert env["MEDSEGLENS_DATA_DIR"] == "/data" and env["MEDSEGLENS_ZOO"] == "/zoo"


def test_dockerfile_uses_the_readme_install_and_serve_commands():
    docker = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", docker, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", docker, re.M)
    assert re.search(r"^RUN .*\bmake setup\b", docker, re.M)  # the same install as `make run`/`make test`
    assert re.search(r"^setup:", makefile, re.M) and "medseglens serve" in makefile
    assert "make run" in readme
    cmd = re.search(r"^CMD (\[.*\])$", docker, re.M)
    assert cmd and yaml.safe_load(cmd.group(1))[:2] == ["medseglens", "serve"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
