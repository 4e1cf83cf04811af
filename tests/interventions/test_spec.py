"""Spec validation: good specs parse, bad ones fail with messages that name the problem."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from medseglens_core.interventions.errors import InvalidSpec
from medseglens_core.interventions.spec import Edit, InterventionSpec, parse_spec


def test_valid_spec_round_trips_through_json() -> None:
    spec = InterventionSpec(
        edits=[
            Edit(latent=3, op="scale", value=2.0, scope="predicted_region", region="WT", dilation=2),
            Edit(latent=0, op="patch", reference_cohort="adult", scope="box", box=[0, 0, 0, 4, 4, 4]),
            Edit(latent=7, op="ablate", scope="slices", slices=[2, 5]),
        ]
    )
    again = parse_spec(spec.model_dump_json())
    assert again == spec
    assert again.reference_cohorts == {"adult"}
    assert not again.needs_mask


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ({"latent": 1, "op": "scale"}, "needs a numeric 'value'"),
        ({"latent": 1, "op": "ablate", "value": 3}, "takes no 'value'"),
        ({"latent": 1, "op": "patch"}, "needs 'reference_cohort'"),
        ({"latent": 1, "op": "ablate", "scope": "predicted_region"}, "needs 'region'"),
        ({"latent": 1, "op": "ablate", "scope": "box", "box": [0, 0, 0, 1, 1]}, "needs 'box'"),
        ({"latent": 1, "op": "ablate", "scope": "box", "box": [3, 0, 0, 1, 1, 1]}, "start < end"),
        ({"latent": 1, "op": "ablate", "scope": "slices", "slices": [5, 2]}, "z0 < z1"),
        ({"latent": -1, "op": "ablate"}, "latent"),
        ({"latent": 1, "op": "boost", "value": 1}, "op"),
        ({"latent": 1, "op": "ablate", "colour": "red"}, "colour"),
    ],
)
def test_invalid_edits_say_what_is_wrong(edit: dict, needle: str) -> None:
    with pytest.raises(InvalidSpec, match="invalid intervention spec") as info:
        parse_spec(json.dumps({"edits": [edit]}))
    assert needle in str(info.value)
    with pytest.raises(ValidationError):
        Edit.model_validate(edit)


def test_json_schema_is_exportable_for_openapi() -> None:
    schema = InterventionSpec.model_json_schema()
    edit = schema["$defs"]["Edit"]
    assert set(edit["properties"]["op"]["enum"]) == {"ablate", "clamp", "scale", "add", "patch"}
    assert "latent" in edit["required"] and "op" in edit["required"]


def test_empty_spec_is_valid() -> None:
    assert parse_spec("{}").edits == []
