"""The zoo recipe: step budgets (no seconds), a stable config hash, the weights' sha256 per build."""

from __future__ import annotations

import dataclasses
import json

from medseglens_core.zoo import ZooConfig, ZooModelSpec, config_sha256, weights_sha256


def test_the_zoo_budgets_training_in_steps_and_tokens_only():
    names = {f.name for f in dataclasses.fields(ZooModelSpec)}
    assert "steps" in names and not any("time" in n for n in names)
    cfg = ZooConfig()
    assert all(spec.steps > 0 for spec in cfg.models) and cfg.sae_tokens > 0 and cfg.threads == 1


def test_config_sha256_is_canonical_and_follows_the_recipe():
    cfg = ZooConfig()
    as_dict = json.loads(json.dumps(dataclasses.asdict(cfg)))  # what zoo.json stores
    assert config_sha256(cfg) == config_sha256(as_dict) == config_sha256(dict(reversed(as_dict.items())))
    assert config_sha256(dataclasses.replace(cfg, seed=1)) != config_sha256(cfg)
    spec = dataclasses.replace(cfg.models[0], steps=cfg.models[0].steps + 1)
    assert config_sha256(dataclasses.replace(cfg, models=(spec, *cfg.models[1:]))) != config_sha256(cfg)


def test_weights_sha256_lists_what_the_cards_record(tmp_path):
    for kind, name, sha in (("models", "m", "a" * 64), ("saes", "s", "b" * 64)):
        (tmp_path / kind / name).mkdir(parents=True)
        (tmp_path / kind / name / "card.json").write_text(json.dumps({"weights_sha256": sha}))
    assert weights_sha256(tmp_path) == {"models/m": "a" * 64, "saes/s": "b" * 64}
