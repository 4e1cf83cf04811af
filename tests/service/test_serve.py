"""`medseglens serve` under real uvicorn: demo key printed once, 413 before the body is sent."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MEDSEGLENS_DATA_DIR": str(tmp_path / "data"), "MEDSEGLENS_MAX_UPLOAD_BYTES": "1000000",
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    cmd = [sys.executable, "-c", "from service.cli import main; main()", "serve", "--zoo", str(tmp_path / "zoo"),
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.communicate()[1][-2000:]}")


def _read_reply(sock: socket.socket) -> str:
    """Everything the server sends until it closes the connection (it answers `Connection: close`)."""
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks).decode("latin-1")


def _stop(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


@pytest.mark.slow
def test_serve_demo_key_once_and_early_413(tmp_path):
    port = _free_port()
    proc = _start(tmp_path, port)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # Headers only: the server must answer 413 without waiting for the 50 MB it was promised.
            sock.sendall(
                b"POST /v1/volumes HTTP/1.1\r\nHost: x\r\nX-API-Key: msl_none\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 50000000\r\n\r\n"
            )
            first = sock.recv(4096).decode("latin-1")  # 401 keeps the connection: read the head only
        assert first.startswith("HTTP/1.1 401")  # auth runs first: an unknown key learns nothing more
    finally:
        out, _ = _stop(proc)
    key = out.strip().splitlines()[-1]
    assert key.startswith("msl_")

    proc = _start(tmp_path, port)  # second start: same database, no new demo key
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/volumes HTTP/1.1\r\nHost: x\r\nX-API-Key: " + key.encode() + b"\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 50000000\r\n\r\n"
            )
            reply = _read_reply(sock)
        assert reply.startswith("HTTP/1.1 413"), reply
        assert "application/problem+json" in reply and "payload-too-large" in reply
        assert (
            httpx.get(f"http://127.0.0.1:{port}/v1/volumes", headers={"X-API-Key": key}).json()["total"] == 0
        )
    finally:
        out2, _ = _stop(proc)
    assert "msl_" not in out2
