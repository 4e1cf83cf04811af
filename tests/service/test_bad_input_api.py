"""Bad input over HTTP, one test each; every error is problem+json and leaves nothing on disk."""

from __future__ import annotations

import gzip
import json

import anyio
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.builders import arrays, case_files, multipart, nifti_bytes

PROBLEM = "application/problem+json"


def assert_problem(r: httpx.Response, status: int, slug: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["type"] == f"https://medseglens.dev/problems/{slug}"
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["instance"]
    assert body["request_id"] == r.headers["x-request-id"]
    return body


def assert_nothing_stored(client: TestClient, settings) -> None:
    assert list((settings.data_dir / "volumes").iterdir()) == []
    assert list((settings.data_dir / "tmp").iterdir()) == []
    assert client.get("/v1/volumes", headers=client.headers).json()["total"] == 0


@pytest.fixture
def authed(client, admin_headers):
    client.headers.update(admin_headers)
    return client


def post(client: TestClient, files: dict[str, bytes], **data: str) -> httpx.Response:
    return client.post("/v1/volumes", files=multipart(files), data=data)


def test_truncated_gzip(authed, settings):
    files = case_files()
    files["t1c"] = files["t1c"][: len(files["t1c"]) // 2]
    body = assert_problem(post(authed, files), 400, "truncated-gzip")
    assert "PATIENT" not in json.dumps(body)
    assert_nothing_stored(authed, settings)


def test_nan_voxels(authed, settings):
    images, _ = arrays()
    images["t2f"][3, 4, 5] = np.nan
    files = {**case_files(), "t2f": nifti_bytes(images["t2f"])}
    assert_problem(post(authed, files), 422, "non-finite-voxels")
    assert_nothing_stored(authed, settings)


def test_mismatched_shapes(authed, settings):
    files = {**case_files(), "t2w": nifti_bytes(np.ones((24, 28, 18), np.float32))}
    assert_problem(post(authed, files), 422, "modality-shape-mismatch")
    assert_nothing_stored(authed, settings)


def test_not_nifti(authed, settings):
    files = {**case_files(), "t1n": b"this is a text file, not an image" * 20}
    assert_problem(post(authed, files), 400, "not-nifti")
    assert_nothing_stored(authed, settings)


def test_wrong_content_type(authed, settings):
    r = authed.post("/v1/volumes", json={"t1n": "aGVsbG8="})
    assert_problem(r, 415, "unsupported-media-type")
    assert_nothing_stored(authed, settings)


def test_missing_modality_and_bad_fields(authed, settings):
    files = case_files()
    del files["t2f"]
    assert "t2f" in assert_problem(post(authed, files), 422, "invalid-upload")["detail"]
    assert_problem(post(authed, case_files(), metadata="{not json"), 422, "invalid-upload")
    assert_problem(post(authed, case_files(), cohort="../../etc"), 422, "invalid-upload")
    assert_problem(post(authed, {**case_files(), "evil": b"x"}), 422, "invalid-upload")
    r = authed.post(
        "/v1/volumes", files={"image": ("a.nii.gz", nifti_bytes(np.ones((4, 4, 4, 4), np.float32)))}
    )
    assert "modality_order" in assert_problem(r, 422, "invalid-upload")["detail"]
    assert_nothing_stored(authed, settings)


def test_too_many_voxels(authed, settings):
    big = np.zeros((60, 60, 40), np.float32)  # 144000 voxels > max_voxels=100000, few bytes gzipped
    files = {m: nifti_bytes(big) for m in ("t1n", "t1c", "t2w", "t2f")}
    assert_problem(post(authed, files), 413, "too-many-voxels")
    assert_nothing_stored(authed, settings)


def test_oversize_upload_streamed_without_content_length(authed, settings):
    files = {**case_files(), "t1n": b"\x00" * (3 * 2**20)}  # over the 2 MiB limit

    body, ctype = _encode(files)

    def chunks():  # a generator: sent chunked, with no Content-Length, so only counting can stop it
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    r = authed.post("/v1/volumes", content=chunks(), headers={"content-type": ctype})
    assert_problem(r, 413, "payload-too-large")
    assert_nothing_stored(authed, settings)


def _encode(files: dict[str, bytes]) -> tuple[bytes, str]:
    req = httpx.Request("POST", "http://x/v1/volumes", files=multipart(files))
    return req.read(), req.headers["content-type"]


def test_oversize_upload_refused_before_reading_the_body(settings, make_key):
    """A declared Content-Length over the limit is refused with 413 before one body chunk is read."""
    key = make_key("segment")
    app = create_app(settings)
    consumed: list[int] = []

    async def body():
        for i in range(100):
            consumed.append(i)
            yield b"\x00" * 65536

    async def main() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                return await c.post(
                    "/v1/volumes",
                    content=body(),
                    headers={
                        "Authorization": f"Bearer {key}",
                        "Content-Type": "multipart/form-data; boundary=xyz",
                        "Content-Length": str(100 * 65536),
                    },
                )

    r = anyio.run(main)
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    assert "limit of 2097152 bytes" in r.json()["detail"]
    assert consumed == []


def test_unknown_ids(authed):
    for path in ("/v1/volumes/" + "0" * 32, "/v1/volumes/" + "f" * 32 + "/preview.png", "/v1/models/nope",
                 "/v1/saes/nope", "/v1/diff-reports/nope", "/v1/diff-reports/nope/html", "/v1/nothing-here"):  # fmt: skip
        assert_problem(authed.get(path), 404, "not-found")
    assert_problem(authed.delete("/v1/volumes/" + "0" * 32), 404, "not-found")


PATH_LIKE = (
    "/v1/volumes/..%2F..%2Fetc",
    "/v1/volumes/..%2F..%2Fetc%2Fpasswd/preview.png",
    "/v1/volumes/%2E%2E",
    "/v1/volumes/ABCDEF0123456789ABCDEF0123456789",
    "/v1/diff-reports/..%2F..%2Fetc%2Fpasswd",
    "/v1/diff-reports/%2E%2E/html",
    "/v1/models/..%2Fsaes",
)


def test_path_like_ids(authed):
    for path in PATH_LIKE:
        for method in ("GET", "DELETE"):
            r = authed.request(method, path)
            assert r.status_code in (404, 405, 422), (path, r.text)
            assert r.headers["content-type"] == PROBLEM
            assert "root:" not in r.text


def test_validation_error_is_problem(authed):
    body = assert_problem(authed.get("/v1/volumes?limit=0"), 422, "validation-error")
    assert body["errors"][0]["loc"] == ["query", "limit"]


def test_missing_and_invalid_key(client, make_key, settings):
    assert_problem(client.get("/v1/volumes"), 401, "unauthorized")
    assert_problem(client.get("/v1/volumes", headers={"X-API-Key": "msl_wrong"}), 401, "unauthorized")
    assert_problem(client.get("/v1/volumes", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
    # auth comes before lookups and validation: no existence leak
    assert_problem(client.get("/v1/volumes/" + "0" * 32), 401, "unauthorized")
    assert_problem(client.post("/v1/volumes", files=multipart(case_files())), 401, "unauthorized")
    assert client.get("/v1/volumes", headers={"X-API-Key": make_key("read")}).status_code == 200


def test_wrong_scope(client, make_key, settings):
    read = {"Authorization": f"Bearer {make_key('read')}"}
    body = assert_problem(
        client.post("/v1/volumes", headers=read, files=multipart(case_files())), 403, "forbidden"
    )
    assert "segment" in body["detail"]
    segment_only = {"X-API-Key": make_key("segment")}
    assert_problem(client.get("/v1/volumes", headers=segment_only), 403, "forbidden")
    assert_problem(client.delete("/v1/volumes/" + "0" * 32, headers=read), 403, "forbidden")
    assert list((settings.data_dir / "volumes").iterdir()) == []


def test_revoked_key(client, settings):
    from service.auth import create_key, revoke_key
    from service.db import session_scope

    with session_scope(client.app.state.sessionmaker) as session:
        row, plain = create_key(session, "temp", "read")
    assert client.get("/v1/volumes", headers={"X-API-Key": plain}).status_code == 200
    with session_scope(client.app.state.sessionmaker) as session:
        assert revoke_key(session, row.id)
    assert_problem(client.get("/v1/volumes", headers={"X-API-Key": plain}), 401, "unauthorized")


def test_unexpected_error_is_a_problem_without_internals(settings):
    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("secret internal path /srv/x")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom", headers={"X-Request-ID": "req-123"})
    body = assert_problem(r, 500, "internal-error")
    assert "secret" not in r.text and body["request_id"] == "req-123"


def test_gzip_garbage_in_label(authed, settings):
    files = {**case_files(), "label": gzip.compress(b"not a nifti at all" * 30)}
    assert_problem(post(authed, files), 400, "not-nifti")
    assert_nothing_stored(authed, settings)


def test_malformed_multipart_and_interrupted_body(authed, settings):
    r = authed.post(
        "/v1/volumes", content=b"--xyz\r\ngarbage", headers={"content-type": "multipart/form-data"}
    )
    assert_problem(r, 400, "bad-request")  # no boundary parameter
    body, ctype = _encode(case_files())
    r = authed.post("/v1/volumes", content=body[: len(body) // 2], headers={"content-type": ctype})
    assert "cut short" in assert_problem(r, 400, "bad-request")["detail"]
    assert_nothing_stored(authed, settings)
