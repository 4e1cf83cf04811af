"""Through a real Orthanc (DICOMweb plugin): NIfTI case -> DICOM study -> STOW -> pull by study UID ->
segment -> SEG -> STOW -> read back from Orthanc -> the SEG's frames equal the NIfTI-path mask.

Orthanc is started by ``.ci/run`` on loopback (``MEDSEGLENS_TEST_ORTHANC_URL``, default
http://127.0.0.1:8042); without it these tests skip, except under ``MEDSEGLENS_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import io
import os

import httpx
import numpy as np
import pydicom
import pytest

from tests.pacs.helpers import write_case_study
from tests.pacs.test_dicom_api import _segment, seg_labels
from tests.service.tinyzoo_app import tiny_client, upload


def _orthanc() -> str:
    url = os.environ.get("MEDSEGLENS_TEST_ORTHANC_URL", "http://127.0.0.1:8042").rstrip("/")
    try:
        httpx.get(f"{url}/system", timeout=2).raise_for_status()
        httpx.get(f"{url}/dicom-web/studies", timeout=2).raise_for_status()
    except httpx.HTTPError as exc:
        if os.environ.get("MEDSEGLENS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Orthanc with DICOMweb at {url} is required (MEDSEGLENS_REQUIRE_SERVICES=1): {exc}")
        pytest.skip(f"Orthanc with DICOMweb at {url} unreachable: {exc}")
    return url


@pytest.fixture
def orthanc(monkeypatch):
    url = _orthanc()
    monkeypatch.setenv("MEDSEGLENS_DICOMWEB_URL", f"{url}/dicom-web")
    return url


def _delete_study(url: str, study_uid: str) -> None:
    found = httpx.post(f"{url}/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
    for oid in found.json():
        httpx.delete(f"{url}/studies/{oid}")


def test_pull_segment_stow_read_back_through_orthanc(tmp_path, orthanc):
    info, _, _ = write_case_study(tmp_path / "dcm", case_id="ORTHANC-RT")
    study = info["study_instance_uid"]
    _delete_study(orthanc, study)
    try:
        for p in sorted((tmp_path / "dcm").rglob("*.dcm")):  # the PACS receives the study
            assert httpx.post(f"{orthanc}/instances", content=p.read_bytes()).status_code == 200
        with tiny_client(tmp_path) as (client, headers):
            vn = upload(client, headers, label=False)
            r = client.post("/v1/volumes/dicomweb", json={"study_instance_uid": study}, headers=headers)
            assert r.status_code == 201, r.text
            vd = r.json()["id"]
            _, mn, an = _segment(client, headers, vn)
            sd, md, ad = _segment(client, headers, vd)
            np.testing.assert_allclose(an, ad, atol=1e-6)
            assert np.array_equal(mn, md)  # pulled over DICOMweb == uploaded as NIfTI

            r = client.post(f"/v1/segmentations/{sd}/dicomweb", headers=headers)
            assert r.status_code in (200, 201), r.text
            sop = r.json()["sop_instance_uid"]
            again = client.post(f"/v1/segmentations/{sd}/dicomweb", headers=headers)
            assert again.json()["sop_instance_uid"] == sop  # idempotent per segmentation

        found = httpx.post(
            f"{orthanc}/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": sop}}
        ).json()
        assert len(found) == 1
        ds = pydicom.dcmread(io.BytesIO(httpx.get(f"{orthanc}/instances/{found[0]}/file").content))
        assert ds.Modality == "SEG" and ds.StudyInstanceUID == study
        np.testing.assert_array_equal(seg_labels(ds, tmp_path / "dcm"), mn)  # == the NIfTI-path mask
    finally:
        _delete_study(orthanc, study)


def test_unknown_study_and_unreachable_pacs_are_problems(tmp_path, orthanc, monkeypatch):
    with tiny_client(tmp_path) as (client, headers):
        r = client.post("/v1/volumes/dicomweb", json={"study_instance_uid": "1.2.3.4.5.6.7"}, headers=headers)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json", r.text
        monkeypatch.setenv("MEDSEGLENS_DICOMWEB_URL", "http://127.0.0.1:9/dicom-web")  # nothing listens
        r = client.post("/v1/volumes/dicomweb", json={"study_instance_uid": "1.2.3.4.5.6.7"}, headers=headers)
        assert r.status_code in (502, 503) and r.headers["content-type"] == "application/problem+json"
        assert client.get("/v1/volumes", headers=headers).json()["total"] == 0  # nothing stored
