"""DICOM upload -> stored volume -> segmentation -> DICOM SEG, against the NIfTI path (tiny zoo)."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.pacs.helpers import dcm_parts, write_case_study, zip_dir
from tests.service.builders import AFFINE, load_bytes
from tests.service.tinyzoo_app import UNET, tiny_client, upload


def _segment(client, headers, vid):
    r = client.post(
        "/v1/segmentations", json={"volume_id": vid, "model_id": UNET, "top_k": 3}, headers=headers
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    m = client.get(f"/v1/segmentations/{sid}/mask", headers=headers)
    img = load_bytes(m.content)
    return sid, np.asarray(img.dataobj), img.affine


@pytest.mark.parametrize("reverse", [False, True], ids=["ascending", "reverse-files"])
def test_dicom_upload_segments_like_nifti_and_seg_reads_back(tmp_path, reverse):
    info, images, _ = write_case_study(tmp_path / "dcm", reverse=reverse)
    with tiny_client(tmp_path) as (client, headers):
        vn = upload(client, headers, label=False)
        r = client.post(
            "/v1/volumes/dicom",
            files={"file": ("study.zip", zip_dir(tmp_path / "dcm"), "application/zip")},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["dicom"]["study_instance_uid"] == info["study_instance_uid"]
        assert body["dicom"]["resampled_onto_t1c"] == []
        assert {m: s["slices"] for m, s in body["dicom"]["series"].items()} == dict.fromkeys(
            ("t1n", "t1c", "t2w", "t2f"), 20
        )
        vd = body["id"]
        assert body["shape"] == client.get(f"/v1/volumes/{vn}", headers=headers).json()["shape"]
        sn, mn, an = _segment(client, headers, vn)
        sd, md, ad = _segment(client, headers, vd)
        np.testing.assert_allclose(ad, AFFINE, atol=1e-6)
        np.testing.assert_allclose(an, ad, atol=1e-6)
        assert mn.shape == md.shape
        assert np.array_equal(mn, md)  # the DICOM path segments exactly like the NIfTI path
        assert set(np.unique(md)) > {0}  # the tiny model finds tumour: the SEG has content

        r = client.get(f"/v1/segmentations/{sd}/seg.dcm", headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/dicom"
        ds = pydicom.dcmread(io.BytesIO(r.content))
        assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
        assert ds.FrameOfReferenceUID == info["frame_of_reference_uid"]
        assert ds.StudyInstanceUID == info["study_instance_uid"]
        labels = [s.SegmentLabel for s in ds.SegmentSequence]
        assert labels[0].startswith("NCR") and "oedema" in labels[1] and labels[2].startswith("ET")
        assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in ds.SegmentSequence] == [
            "6574001",
            "79654002",
            "108369006",
        ]
        assert all("RecommendedDisplayCIELabValue" in s for s in ds.SegmentSequence)
        alg = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert alg.AlgorithmName == f"medseglens:{UNET}" and len(alg.AlgorithmVersion) == 64
        # frames = the DICOM-path mask voxel for voxel, over the t1c instances sorted by position
        src = [s["series_instance_uid"] for m, s in body["dicom"]["series"].items() if m == "t1c"]
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src[0]
        np.testing.assert_array_equal(seg_labels(ds, tmp_path / "dcm"), md)

        r = client.get(f"/v1/segmentations/{sd}/seg.dcm", params={"type": "labelmap"}, headers=headers)
        assert r.status_code == 200, r.text
        lm = pydicom.dcmread(io.BytesIO(r.content))
        assert lm.SegmentationType == "LABELMAP"
        ref_uids = [
            str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        ]
        back = hd.seg.Segmentation.from_dataset(lm).get_pixels_by_source_instance(
            source_sop_instance_uids=_sorted_t1c(tmp_path / "dcm", ref_uids),
            segment_numbers=[1, 2, 3],
            combine_segments=True,
        )
        np.testing.assert_array_equal(np.transpose(back, (2, 1, 0)), md)

        r = client.get(f"/v1/segmentations/{sn}/seg.dcm", headers=headers)
        assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"].endswith("/no-dicom-source")


def seg_labels(ds, dcm_dir):
    """The label map ``(X, Y, Z)`` a DICOM SEG encodes over the t1c instances under ``dcm_dir``."""
    refs = [
        str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    ]
    got = hd.seg.Segmentation.from_dataset(ds).get_pixels_by_source_instance(
        source_sop_instance_uids=_sorted_t1c(dcm_dir, refs),
        segment_numbers=[1, 2, 3],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    return np.transpose(got, (2, 1, 0))


def _sorted_t1c(folder, uids):
    """t1c SOP instance UIDs sorted by slice position (z here), restricted to ``uids``."""
    items = []
    for p in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        if ds.SeriesDescription.endswith("t1c"):
            items.append((float(ds.ImagePositionPatient[2]), str(ds.SOPInstanceUID)))
    ordered = [u for _, u in sorted(items)]
    assert set(uids) <= set(ordered)
    return ordered


def test_dicom_upload_as_separate_files_with_series_map(tmp_path):
    info, _, _ = write_case_study(tmp_path / "dcm")
    with tiny_client(tmp_path) as (client, headers):
        # descriptions that the default rules cannot map: a series_map by description is needed
        for p in (tmp_path / "dcm").rglob("*.dcm"):
            ds = pydicom.dcmread(p)
            ds.SeriesDescription = {"BraTS t1n": "A", "BraTS t1c": "B", "BraTS t2w": "C", "BraTS t2f": "D"}[
                ds.SeriesDescription
            ]
            ds.save_as(p)
        r = client.post("/v1/volumes/dicom", files=dcm_parts(tmp_path / "dcm"), headers=headers)
        assert r.status_code == 422, r.text
        assert len(r.json()["series"]) == 4 and "No series maps" in r.json()["detail"]
        smap = '{"A": "t1n", "B": "t1c", "C": "t2w", "D": "t2f"}'
        r = client.post(
            "/v1/volumes/dicom", files=dcm_parts(tmp_path / "dcm"), data={"series_map": smap}, headers=headers
        )
        assert r.status_code == 201, r.text
        assert r.json()["dicom"]["series"]["t1c"]["series_description"] == "B"


LPS_AFFINE = np.array([[-2.0, 0, 0, 46.0], [0, -2.0, 0, 54.0], [0, 0, 2.0, -19.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("reverse", [False, True], ids=["ascending", "reverse-files"])
def test_lps_voxel_order_round_trip_is_exact(tmp_path, reverse):
    """A case stored in LPS voxel order (x, y flipped; axial, not oblique): same affine, same mask."""
    from tests.service.builders import multipart, nifti_bytes

    info, images, _ = write_case_study(
        tmp_path / "dcm", affine=LPS_AFFINE, case_id="PACS-LPS", reverse=reverse
    )
    with tiny_client(tmp_path) as (client, headers):
        r = client.post(
            "/v1/volumes",
            files=multipart({m: nifti_bytes(a, LPS_AFFINE) for m, a in images.items()}),
            headers=headers,
        )
        assert r.status_code == 201, r.text
        vn = r.json()["id"]
        r = client.post(
            "/v1/volumes/dicom",
            files={"file": ("study.zip", zip_dir(tmp_path / "dcm"), "application/zip")},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        _, mn, an = _segment(client, headers, vn)
        sd, md, ad = _segment(client, headers, r.json()["id"])
        np.testing.assert_allclose(ad, LPS_AFFINE, atol=1e-6)
        np.testing.assert_allclose(an, ad, atol=1e-6)
        assert np.array_equal(mn, md) and set(np.unique(md)) > {0}
        ds = pydicom.dcmread(
            io.BytesIO(client.get(f"/v1/segmentations/{sd}/seg.dcm", headers=headers).content)
        )
        np.testing.assert_array_equal(seg_labels(ds, tmp_path / "dcm"), md)
