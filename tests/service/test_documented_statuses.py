"""Every status a zoo-backed route answers is one its OpenAPI operation lists (503 for a broken entry).

The app runs on a tiny zoo with the U-Net's weights and the SegFormer SAE's weights corrupted; each
route that looks up a model or SAE is called so that it answers 503 ``zoo-entry-unavailable``, and
the answer's status must be in that operation's documented responses, as problem+json. A route
whose code reaches the pool's lookups but has no case here fails the coverage check.
"""

from __future__ import annotations

import inspect

from fastapi.routing import APIRoute

from medseglens_core.catalog import HELD_OUT
from service.pool import WEIGHTS_FILES
from service.routes import v1_routers
from tests.service.test_corrupt_zoo_entry import CORRUPTIONS, _problem, _zoo_copy, app_over
from tests.service.tinyzoo_app import SEGFORMER, SEGFORMER_SAE, UNET, UNET_SAE, upload

# Names through which a route handler reaches ModelPool.require_model/require_sae/entry_usable.
POOL_LOOKUPS = ("resident_model", "resident_sae", "require_model", "require_sae", "card_store", "_check_zoo")
NAMES_NO_ENTRY = {("post", "/v1/jobs/diff-report")}  # its _check_zoo names a cohort only: never a 503


def _cases(vid: str, target: str) -> list[tuple[str, str, str, dict | None, str]]:
    """(method, path template, path, JSON body, broken entry named) per call."""
    edit = [{"latent": 0, "op": "ablate"}]
    return [
        ("post", "/v1/segmentations", "/v1/segmentations", {"volume_id": vid, "model_id": UNET}, f"model:{UNET}"),
        ("post", "/v1/segmentations", "/v1/segmentations",
         {"volume_id": vid, "model_id": SEGFORMER, "sae_id": SEGFORMER_SAE}, f"sae:{SEGFORMER_SAE}"),
        ("post", "/v1/interventions", "/v1/interventions",
         {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE, "edits": edit}, f"model:{UNET}"),
        ("post", "/v1/interventions", "/v1/interventions",
         {"volume_id": vid, "model_id": SEGFORMER, "sae_id": SEGFORMER_SAE, "edits": edit},
         f"sae:{SEGFORMER_SAE}"),
        ("get", "/v1/models/{model_id}", f"/v1/models/{UNET}", None, f"model:{UNET}"),
        ("get", "/v1/saes/{sae_id}", f"/v1/saes/{SEGFORMER_SAE}", None, f"sae:{SEGFORMER_SAE}"),
        ("get", "/v1/saes/{sae_id}/latents/{latent}", f"/v1/saes/{SEGFORMER_SAE}/latents/0", None,
         f"sae:{SEGFORMER_SAE}"),
        ("get", "/v1/saes/{sae_id}/latents/{latent}/examples.png",
         f"/v1/saes/{SEGFORMER_SAE}/latents/0/examples.png", None, f"sae:{SEGFORMER_SAE}"),
        ("post", "/v1/jobs/sae-training", "/v1/jobs/sae-training",
         {"model_id": UNET, "volume_ids": [vid]}, f"model:{UNET}"),
        ("post", "/v1/jobs/recovery", "/v1/jobs/recovery",
         {"model_id": SEGFORMER, "sae_id": SEGFORMER_SAE, "target": target}, f"sae:{SEGFORMER_SAE}"),
        ("post", "/v1/jobs/recovery-suite", "/v1/jobs/recovery-suite", {"model_ids": [UNET]}, f"model:{UNET}"),
    ]  # fmt: skip


def test_a_broken_zoo_entry_answers_only_documented_statuses(tmp_path):
    zoo = _zoo_copy(tmp_path)
    CORRUPTIONS["truncated"](zoo / "models" / UNET / WEIGHTS_FILES["model"])
    CORRUPTIONS["flipped-byte"](zoo / "saes" / SEGFORMER_SAE / WEIGHTS_FILES["sae"])
    target = sorted(p.name for p in (zoo / "data" / HELD_OUT).iterdir())[0]
    with app_over(tmp_path, zoo) as (client, headers):
        spec = client.app.openapi()
        vid = upload(client, headers)
        undocumented = []
        for method, template, path, body, entry in _cases(vid, target):
            r = client.request(method.upper(), path, json=body, headers=headers)
            assert _problem(r, 503, "zoo-entry-unavailable")["entry"] == entry, (path, body)
            documented = spec["paths"][template][method]["responses"]
            if str(r.status_code) not in documented:
                undocumented.append(f"{method.upper()} {template} -> {r.status_code}")
                continue
            content = documented[str(r.status_code)]["content"]
            assert content == {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }
        assert undocumented == []  # statuses these routes answer but their OpenAPI does not list


def test_every_route_that_looks_up_the_pool_has_a_case():
    covered = {(m, t) for m, t, *_ in _cases("0" * 32, "x")}
    reaching = set()
    for router in v1_routers():
        for route in router.routes:
            if isinstance(route, APIRoute) and any(
                n in inspect.getsource(route.endpoint) for n in POOL_LOOKUPS
            ):
                reaching |= {(m.lower(), "/v1" + route.path_format) for m in route.methods}
    assert {"/v1/segmentations", "/v1/jobs/recovery"} <= {t for _, t in reaching}  # the scan sees them
    assert reaching - covered - NAMES_NO_ENTRY == set(), (
        "a route reaches the pool's lookups but has no 503 case above"
    )
