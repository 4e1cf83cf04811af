"""An intervention on a DICOM-sourced volume: its edited mask as DICOM SEG, carrying the spec's id."""

from __future__ import annotations

import io

import numpy as np
import pydicom

from tests.pacs.helpers import write_case_study, zip_dir
from tests.pacs.test_dicom_api import seg_labels
from tests.pacs.test_orthanc import _delete_study, orthanc  # noqa: F401 - the fixture
from tests.service.builders import load_bytes
from tests.service.tinyzoo_app import UNET, UNET_SAE, tiny_client


def test_intervention_seg_frames_equal_the_edited_mask(tmp_path):
    info, _, _ = write_case_study(tmp_path / "dcm", case_id="PACS-EDIT")
    with tiny_client(tmp_path) as (client, headers):
        r = client.post(
            "/v1/volumes/dicom",
            files={"file": ("study.zip", zip_dir(tmp_path / "dcm"), "application/zip")},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        body = {"volume_id": r.json()["id"], "model_id": UNET, "sae_id": UNET_SAE, "top_k": 3}
        seg = client.post("/v1/segmentations", json=body, headers=headers)
        assert seg.status_code == 201, seg.text
        latent = seg.json()["top_latents"][0]["latent"]
        edit = {k: v for k, v in body.items() if k != "top_k"}
        edit["edits"] = [{"latent": latent, "op": "ablate"}]
        iv = client.post("/v1/interventions", json=edit, headers=headers)
        assert iv.status_code == 201, iv.text
        iid = iv.json()["id"]
        mask = np.asarray(
            load_bytes(client.get(f"/v1/interventions/{iid}/mask", headers=headers).content).dataobj
        )

        r = client.get(f"/v1/interventions/{iid}/seg.dcm", headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom", r.text
        ds = pydicom.dcmread(io.BytesIO(r.content))
        assert ds.Modality == "SEG" and ds.StudyInstanceUID == info["study_instance_uid"]
        assert ds.FrameOfReferenceUID == info["frame_of_reference_uid"]
        alg = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert alg.AlgorithmName == f"medseglens:{UNET}"
        assert f"intervention_spec_id={iid}:" in str(alg.AlgorithmParameters)  # "key=value,..." (highdicom)
        np.testing.assert_array_equal(seg_labels(ds, tmp_path / "dcm"), mask)
        # the segmentation's SEG is a different instance
        plain = pydicom.dcmread(
            io.BytesIO(client.get(f"/v1/segmentations/{seg.json()['id']}/seg.dcm", headers=headers).content)
        )
        assert plain.SOPInstanceUID != ds.SOPInstanceUID


def test_intervention_seg_stow_to_orthanc(tmp_path, orthanc):  # noqa: F811 - the fixture
    import httpx

    info, _, _ = write_case_study(tmp_path / "dcm", case_id="PACS-EDIT-STOW")
    study = info["study_instance_uid"]
    _delete_study(orthanc, study)
    try:
        with tiny_client(tmp_path) as (client, headers):
            r = client.post(
                "/v1/volumes/dicom",
                files={"file": ("study.zip", zip_dir(tmp_path / "dcm"), "application/zip")},
                headers=headers,
            )
            body = {"volume_id": r.json()["id"], "model_id": UNET, "sae_id": UNET_SAE, "top_k": 3}
            seg = client.post("/v1/segmentations", json=body, headers=headers).json()
            edit = {k: v for k, v in body.items() if k != "top_k"}
            edit["edits"] = [{"latent": seg["top_latents"][0]["latent"], "op": "ablate"}]
            iid = client.post("/v1/interventions", json=edit, headers=headers).json()["id"]
            first = client.post(f"/v1/interventions/{iid}/dicomweb", headers=headers)
            assert first.status_code in (200, 201), first.text
            again = client.post(f"/v1/interventions/{iid}/dicomweb", headers=headers).json()
            assert again["sop_instance_uid"] == first.json()["sop_instance_uid"] and again["already_stored"]
        found = httpx.post(
            f"{orthanc}/tools/find",
            json={"Level": "Instance", "Query": {"SOPInstanceUID": first.json()["sop_instance_uid"]}},
        ).json()
        assert len(found) == 1
        ds = pydicom.dcmread(io.BytesIO(httpx.get(f"{orthanc}/instances/{found[0]}/file").content))
        assert ds.Modality == "SEG" and iid in str(
            ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
        )
    finally:
        _delete_study(orthanc, study)
