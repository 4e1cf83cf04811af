"""Every segmentation and intervention carries ``ood`` and ``provenance``; sha256 values are the files'."""

from __future__ import annotations

import hashlib
import json
import shutil
from types import SimpleNamespace

import numpy as np

from service import trust
from tests.service.tinyzoo_app import UNET, UNET_SAE, tiny_client, tiny_pool, tiny_zoo, upload


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_segmentation_and_intervention_carry_ood_and_provenance(tmp_path):
    zoo = tiny_zoo()
    with tiny_client(tmp_path) as (client, headers):
        vid = upload(client, headers)
        body = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE, "top_k": 3}
        seg = client.post("/v1/segmentations", json=body, headers=headers)
        assert seg.status_code == 201, seg.text
        j = seg.json()
        prov = j["provenance"]
        assert prov["model_id"] == UNET and prov["model_sha256"] == _sha(
            zoo / "models" / UNET / "weights.safetensors"
        )
        assert prov["sae_id"] == UNET_SAE
        assert prov["sae_sha256"] == _sha(zoo / "saes" / UNET_SAE / "sae_weights.safetensors")
        assert prov["device"] == "cpu" and prov["torch_version"] and prov["package_version"]
        assert str(zoo) not in json.dumps(prov) and "/" not in "".join(str(v) for v in prov.values())
        ood = j["ood"]  # the tiny zoo has no training/validation cases: nothing to calibrate on
        assert ood["calibrated"] is False and ood["score"] is None and ood["flagged"] is False
        assert "no training cases" in ood["note"]
        assert client.get(f"/v1/segmentations/{j['id']}", headers=headers).json()["provenance"] == prov
        edit = {
            "volume_id": vid,
            "model_id": UNET,
            "sae_id": UNET_SAE,
            "edits": [{"latent": 0, "op": "ablate"}],
        }
        r = client.post("/v1/interventions", json=edit, headers=headers)
        assert r.status_code == 201, r.text
        assert r.json()["provenance"] == prov and r.json()["ood"]["calibrated"] is False


def _zoo_with_cases(tmp_path):
    """The tiny zoo's models and SAEs plus train/val cases of two cohorts (ssa: bright FLAIR blob)."""
    from tests.analysis.tinyzoo import write_case

    zoo = tmp_path / "zoo"
    for kind in ("models", "saes"):
        shutil.copytree(tiny_zoo() / kind, zoo / kind)
    rng = np.random.default_rng(1)
    for cohort, blob in (("adult", 1.0), ("ssa", 3.0)):
        for split, n in (("train", 4), ("val", 2)):
            for i in range(n):
                cid = f"{cohort}-{split}-{i}"
                write_case(zoo / "data" / split / cohort / cid, cid, rng, blob)
    return zoo


def test_calibration_is_computed_once_cached_and_tied_to_the_weights(tmp_path):
    zoo = _zoo_with_cases(tmp_path)
    pool = tiny_pool(tiny_zoo())
    pool.load()
    pool.zoo = zoo  # the resident objects, over the zoo that has cases
    m, a = pool.models[UNET], pool.saes[UNET_SAE]
    model = SimpleNamespace(id=m.id, obj=m.obj, card=m.card, device="cpu", path=zoo / "models" / UNET)
    sae = SimpleNamespace(id=a.id, obj=a.obj, card=a.card, device="cpu", path=zoo / "saes" / UNET_SAE)
    cal = trust.calibration(pool, model, sae, tmp_path / "data")
    # per cohort: split_cases holds out max(1, 4 // 5) = 1 training case, plus the 2 val cases
    assert (
        cal["calibrated"] is True and cal["n_calibration"] == 6 and sorted(cal["cohorts"]) == ["adult", "ssa"]
    )
    assert cal["model_sha256"] == _sha(zoo / "models" / UNET / "weights.safetensors")
    worst = max(c["latent"] for c in cal["calibration_cases"])
    assert cal["thresholds"]["latent"] == 1.25 * worst
    cached = list((tmp_path / "data" / "ood").glob(f"{UNET_SAE}-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text()) == json.loads(json.dumps(cal))
    assert trust.calibration(pool, model, sae, tmp_path / "data") is cal  # memory
    assert not (zoo / "ood").exists()  # nothing written into the zoo


def test_a_bf16_network_is_calibrated_on_its_own_rates(tmp_path):
    import copy

    zoo = _zoo_with_cases(tmp_path)
    pool = tiny_pool(tiny_zoo())
    pool.load()
    pool.zoo = zoo
    m, a = pool.models[UNET], pool.saes[UNET_SAE]
    sae = SimpleNamespace(id=a.id, obj=a.obj, card=a.card, device="cpu", path=zoo / "saes" / UNET_SAE)

    def resident(obj):
        return SimpleNamespace(id=m.id, obj=obj, card=m.card, device="cpu", path=zoo / "models" / UNET)

    fp32 = trust.calibration(pool, resident(m.obj), sae, tmp_path / "data")
    bf16 = trust.calibration(
        pool, resident(copy.deepcopy(m.obj).set_precision("bf16")), sae, tmp_path / "data"
    )
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16" and bf16 is not fp32
    assert len(list((tmp_path / "data" / "ood").glob(f"{UNET_SAE}-*.json"))) == 2  # one cache file each
    # a zoo file written in float32 is not read for a bf16 network
    (zoo / "ood").mkdir()
    (zoo / "ood" / f"{UNET_SAE}.json").write_text(json.dumps({**fp32, "precision": "fp32"}))
    trust._memory.clear()
    assert (
        trust.calibration(pool, resident(copy.deepcopy(m.obj).set_precision("bf16")), sae, None)["precision"]
        == "bf16"
    )
    assert trust.calibration(pool, resident(m.obj), sae, None) == {**fp32, "precision": "fp32"}
