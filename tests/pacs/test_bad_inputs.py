"""Bad DICOM uploads: each a 4xx problem+json naming the series (or file) and the problem; nothing stored.

Every case starts from the builders' planted case written as a valid four-series study (which the
happy-path tests upload successfully) and breaks exactly one thing.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.pacs.helpers import dcm_parts, write_case_study, zip_dir
from tests.service.tinyzoo_app import tiny_client


def _series_files(folder: Path, modality: str) -> list[Path]:
    return sorted(next(folder.glob(f"*-{modality}")).glob("*.dcm"))


def _edit(path: Path, **attrs) -> None:
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path)


def _post_zip(client, headers, blob: bytes):
    return client.post(
        "/v1/volumes/dicom", files={"file": ("study.zip", blob, "application/zip")}, headers=headers
    )


def _assert_problem(client, headers, r, status: int, *needles: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    for needle in needles:
        assert needle in body["detail"], (needle, body["detail"])
    assert client.get("/v1/volumes", headers=headers).json()["total"] == 0  # nothing stored
    return body


def _volumes_on_disk(tmp_path: Path) -> list[Path]:
    root = tmp_path / "data" / "volumes"
    return [p for p in root.iterdir()] if root.is_dir() else []


def _non_mr(folder: Path) -> None:
    for p in _series_files(folder, "t2w"):
        _edit(p, Modality="CT")


def _missing_slice(folder: Path) -> None:
    _series_files(folder, "t2w")[7].unlink()  # a hole in the middle of the stack


def _duplicated_slice(folder: Path) -> None:
    src = _series_files(folder, "t2w")[7]
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.InstanceNumber = 999
    ds.save_as(src.with_name("0999.dcm"))  # a second slice at the same position


def _inconsistent_orientation(folder: Path) -> None:
    _edit(
        _series_files(folder, "t2w")[3],
        ImageOrientationPatient=["1", "0", "0", "0", "0.9950042", "0.0998334"],
    )


def _inconsistent_spacing(folder: Path) -> None:
    _edit(_series_files(folder, "t2w")[3], PixelSpacing=["2.5", "2.5"])


def _three_series(folder: Path) -> None:
    for p in _series_files(folder, "t2f"):
        p.unlink()


CASES = {
    "non-MR": (_non_mr, ("series 3", "'BraTS t2w'", "modality 'CT'", "only MR")),
    "missing-slice": (_missing_slice, ("series 3", "'BraTS t2w'", "not evenly spaced", "missing slices")),
    "duplicated-slice": (_duplicated_slice, ("series 3", "'BraTS t2w'", "duplicated slices")),
    "inconsistent-orientation": (
        _inconsistent_orientation,
        ("'BraTS t2w'", "different ImageOrientationPatient"),
    ),
    "inconsistent-spacing": (_inconsistent_spacing, ("'BraTS t2w'", "different PixelSpacing")),
    "three-series": (_three_series, ("No series maps to t2f", "'BraTS t1n'", "'BraTS t1c'", "'BraTS t2w'")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_study_is_a_422_naming_the_series(tmp_path, case):
    breaker, needles = CASES[case]
    write_case_study(tmp_path / "dcm")
    breaker(tmp_path / "dcm")
    with tiny_client(tmp_path) as (client, headers):
        body = _assert_problem(
            client, headers, _post_zip(client, headers, zip_dir(tmp_path / "dcm")), 422, *needles
        )
        assert body["type"].endswith("/invalid-upload")
        if case == "three-series":
            assert sorted(s["series_description"] for s in body["series"]) == [
                "BraTS t1c",
                "BraTS t1n",
                "BraTS t2w",
            ]
        # the same files as separate .dcm parts fail the same way
        _assert_problem(
            client,
            headers,
            client.post("/v1/volumes/dicom", files=dcm_parts(tmp_path / "dcm"), headers=headers),
            422,
            *needles,
        )
    assert _volumes_on_disk(tmp_path) == []


def test_mixed_studies_in_one_upload(tmp_path):
    write_case_study(tmp_path / "a", case_id="STUDY-A")
    write_case_study(tmp_path / "b", case_id="STUDY-B")
    for p in _series_files(tmp_path / "a", "t2f"):
        p.unlink()
    b_t2f = next((tmp_path / "b").glob("*-t2f"))
    b_t2f.rename(tmp_path / "a" / b_t2f.name)  # t2f of another study
    with tiny_client(tmp_path) as (client, headers):
        _assert_problem(
            client, headers, _post_zip(client, headers, zip_dir(tmp_path / "a")), 422, "mixes 2 studies"
        )
    assert _volumes_on_disk(tmp_path) == []


@pytest.mark.parametrize(
    ("blob", "needle"),
    [
        (b"patient notes, not DICOM\n", "is not a DICOM Part 10 file"),
        (b"\x00" * 200, "is not a DICOM Part 10 file"),
        (b"DICM" * 64, "is DICOM but not an image"),  # a preamble and magic, then garbage
    ],
    ids=["text", "zeros", "fake-magic"],
)
def test_non_dicom_file_in_the_zip(tmp_path, blob, needle):
    write_case_study(tmp_path / "dcm")
    zipped = zip_dir(tmp_path / "dcm", extra={"t1n/README.dcm": blob})
    n = len(zipfile.ZipFile(io.BytesIO(zipped)).infolist())
    with tiny_client(tmp_path) as (client, headers):
        _assert_problem(
            client, headers, _post_zip(client, headers, zipped), 422, f"File #{n} in the zip", needle
        )
    assert _volumes_on_disk(tmp_path) == []


def test_a_part_that_is_neither_zip_nor_dicom(tmp_path):
    with tiny_client(tmp_path) as (client, headers):
        r = client.post(
            "/v1/volumes/dicom", files={"file": ("x.dcm", b"hello", "application/dicom")}, headers=headers
        )
        _assert_problem(client, headers, r, 422, "File #1", "not a DICOM")


def test_zip_inflating_over_the_byte_limit_is_413(tmp_path):
    write_case_study(tmp_path / "dcm")
    # a few KB on the wire, over the 4 MiB upload limit of the test settings once inflated
    bomb = {"padding.dcm": np.zeros(5 * 2**20, np.uint8).tobytes()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted((tmp_path / "dcm").rglob("*.dcm")):
            zf.write(p, p.relative_to(tmp_path / "dcm").as_posix())
        for name, data in bomb.items():
            zf.writestr(name, data)
    assert len(buf.getvalue()) < 4 * 2**20
    with tiny_client(tmp_path) as (client, headers):
        _assert_problem(client, headers, _post_zip(client, headers, buf.getvalue()), 413, "over the limit")
    assert _volumes_on_disk(tmp_path) == []


def test_bad_series_map_is_a_422(tmp_path):
    write_case_study(tmp_path / "dcm")
    with tiny_client(tmp_path) as (client, headers):
        for smap, needle in (
            ("{not json", "not JSON"),
            ('["t1n"]', "JSON object"),
            ('{"BraTS t1n": "ct"}', "series_map values"),
        ):
            r = client.post(
                "/v1/volumes/dicom",
                files={"file": ("study.zip", zip_dir(tmp_path / "dcm"), "application/zip")},
                data={"series_map": smap},
                headers=headers,
            )
            _assert_problem(client, headers, r, 422, needle)


def test_no_patient_attribute_in_logs_or_answers(tmp_path, caplog):
    caplog.set_level("DEBUG")
    write_case_study(tmp_path / "dcm", case_id="DOE-JANE-0451")  # PatientName/PatientID carry it
    good = zip_dir(tmp_path / "dcm")
    _non_mr(tmp_path / "dcm")
    with tiny_client(tmp_path) as (client, headers):
        bad = _post_zip(client, headers, zip_dir(tmp_path / "dcm"))
        assert bad.status_code == 422
        ok = _post_zip(client, headers, good)
        assert ok.status_code == 201, ok.text
    for text in (caplog.text, bad.text, ok.text):
        assert "DOE" not in text.upper() and "JANE" not in text.upper()


def test_compressed_pixel_data_decoded_or_415(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    from medseglens_core.io.dicom import datasets_from_bytes, read_study

    write_case_study(tmp_path / "dcm")
    plain = read_study(
        datasets_from_bytes((p.name, p.read_bytes()) for p in sorted((tmp_path / "dcm").rglob("*.dcm")))
    )
    for p in _series_files(tmp_path / "dcm", "t2w"):  # RLE: pydicom decodes it natively
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless)
        ds.save_as(p)
    rle = read_study(
        datasets_from_bytes((p.name, p.read_bytes()) for p in sorted((tmp_path / "dcm").rglob("*.dcm")))
    )
    np.testing.assert_array_equal(rle.series["t2w"].data, plain.series["t2w"].data)
    with tiny_client(tmp_path) as (client, headers):
        r = _post_zip(client, headers, zip_dir(tmp_path / "dcm"))
        assert r.status_code == 201, r.text
        client.delete(f"/v1/volumes/{r.json()['id']}", headers=headers)
        p = _series_files(tmp_path / "dcm", "t2f")[4]  # a transfer syntax no installed handler decodes
        ds = pydicom.dcmread(p)
        ds.PixelData = encapsulate([b"\x00" * 64])
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile
        ds.save_as(p)
        r = _post_zip(client, headers, zip_dir(tmp_path / "dcm"))
        assert r.status_code == 415 and r.headers["content-type"] == "application/problem+json", r.text
        assert "'BraTS t2f'" in r.json()["detail"] and "1.2.840.10008.1.2.4.100" in r.json()["detail"]
        assert client.get("/v1/volumes", headers=headers).json()["total"] == 0


def test_dicomweb_pull_without_a_configured_server_is_503(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSEGLENS_DICOMWEB_URL", raising=False)
    with tiny_client(tmp_path) as (client, headers):
        r = client.post("/v1/volumes/dicomweb", json={"study_instance_uid": "1.2.3.4"}, headers=headers)
        assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json", r.text
        assert "MEDSEGLENS_DICOMWEB_URL" in r.json()["detail"]
        r = client.post("/v1/volumes/dicomweb", json={"study_instance_uid": "not a uid"}, headers=headers)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
        assert client.get("/v1/volumes", headers=headers).json()["total"] == 0
