"""The multipart edge cases of both uploads (NIfTI ``POST /v1/volumes``, DICOM ``POST /v1/volumes/dicom``).

Both stream through one receiver (``service.uploads.MultipartReceiver``); each malformed part must map
to the same problem type on either route, and nothing may be stored.
"""

from __future__ import annotations

import pytest

from tests.service.test_bad_input_api import assert_problem
from tests.service.tinyzoo_app import tiny_client

ROUTES = {"nifti": "/v1/volumes", "dicom": "/v1/volumes/dicom"}
FILE = {"nifti": "t1n", "dicom": "file"}
BOUNDARY = "b0und4ry"


def _part(name: str | None, data: bytes, filename: str | None = None) -> bytes:
    disposition = "form-data" + (f'; name="{name}"' if name is not None else "")
    if filename:
        disposition += f'; filename="{filename}"'
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


def _body(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


@pytest.fixture
def api(tmp_path):
    with tiny_client(tmp_path) as (client, headers):
        client.headers.update(headers)
        yield client, tmp_path / "data"


def _post(client, route: str, body: bytes):
    return client.post(
        ROUTES[route], content=body, headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    )


def _nothing_stored(client, data_dir) -> None:
    assert list((data_dir / "volumes").iterdir()) == []
    assert list((data_dir / "tmp").iterdir()) == []
    assert client.get("/v1/volumes").json()["total"] == 0


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_malformed_parts_map_to_the_same_problems_on_both_routes(api, route):
    client, data_dir = api
    f = FILE[route]
    blob = b"\x00" * 64
    cases = [
        (_body(_part(None, blob, "x.bin")), 400, "bad-request", "has no name"),
        (_body(_part("evil", blob, "x.bin")), 422, "invalid-upload", "'evil'"),
        (_body(_part("x" * 40, blob, "x.bin")), 422, "invalid-upload", "unexpected name"),
        (_body(_part("cohort", b"a"), _part("cohort", b"b")), 422, "invalid-upload", "sent twice"),
        (_body(_part(f, b"", "x.bin")), 422, "invalid-upload", "empty"),
        (_body(_part("cohort", b"c" * (64 * 1024 + 1))), 422, "invalid-upload", "over 65536 bytes"),
        (_body(_part("cohort", b"\xff\xfe")), 422, "invalid-upload", "not UTF-8"),
        (_body(_part(f, blob, "x.bin"), close=False), 400, "bad-request", "cut short"),
        (b"--" + BOUNDARY.encode() + b"\r\ngarbage\r\n\r\n\r\n", 400, "bad-request", ""),
    ]
    for body, status, slug, needle in cases:
        p = assert_problem(_post(client, route, body), status, slug)
        assert needle in p["detail"], (route, needle, p)
    _nothing_stored(client, data_dir)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_media_type_and_byte_limits_on_both_routes(api, route):
    client, data_dir = api
    r = client.post(ROUTES[route], content=b"x", headers={"content-type": "application/octet-stream"})
    assert_problem(r, 415, "unsupported-media-type")
    r = client.post(ROUTES[route], content=b"x", headers={"content-type": "multipart/form-data"})
    assert "no boundary" in assert_problem(r, 400, "bad-request")["detail"]
    body = _body(_part(FILE[route], b"\x00" * (5 * 2**20), "x.bin"))  # over the 4 MiB limit

    def chunks():  # no Content-Length: only counting the streamed bytes can stop it
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    r = client.post(
        ROUTES[route], content=chunks(), headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    )
    assert_problem(r, 413, "payload-too-large")
    _nothing_stored(client, data_dir)


def test_nifti_file_parts_are_once_each_and_dicom_file_parts_repeat(api):
    client, _ = api
    twice = _body(_part("t1n", b"\x1f\x8b" + b"\x00" * 30, "a"), _part("t1n", b"\x00" * 32, "b"))
    assert "sent twice" in assert_problem(_post(client, "nifti", twice), 422, "invalid-upload")["detail"]
    # DICOM: many 'file' parts are one study; these are not DICOM, so the reader (not the receiver) refuses
    many = _body(_part("file", b"\x00" * 200, "a.dcm"), _part("files", b"\x00" * 200, "b.dcm"))
    r = _post(client, "dicom", many)
    assert "not a DICOM Part 10 file" in assert_problem(r, 422, "invalid-upload")["detail"]
