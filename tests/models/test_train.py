"""Training: the loss falls in a few steps, the card records the run, the CLI trains and saves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseglens_core.data.slices import SliceDataset, augment
from medseglens_core.models.card import load_model
from medseglens_core.models.train import TrainConfig, lr_factor, split_dirs, train_on_cases
from tests.models.conftest import planted_case, write_case_dir

TINY = {
    "unet": {"input_size": 32, "channels": (8, 16, 32), "strides": (2, 2)},
    "segformer": {"input_size": 32},
}


def test_tumour_balanced_sampling_and_augment():
    data = SliceDataset.from_cases([planted_case(seed=s) for s in range(2)], 32)
    tumour = set(data.tumour_slices.tolist())
    assert 0 < len(tumour) < len(data)
    gen = torch.Generator().manual_seed(0)
    x, y = data.sample(20, gen, tumour_fraction=0.75)
    assert x.shape == (20, 4, 32, 32) and x.dtype == torch.float32 and y.shape == (20, 1, 32, 32)
    assert (y[:15].flatten(1).amax(dim=1) > 0).all()  # the first 15 are tumour slices
    xa, ya = augment(x, y, gen)
    for i in range(20):
        flipped = not torch.equal(ya[i], y[i])
        xi, yi = (x[i].flip(1), y[i].flip(1)) if flipped else (x[i], y[i])
        assert torch.equal(ya[i], yi)
        # background stays 0; the brain is scaled by 0.9..1.1 and shifted by -0.1..0.1 per channel
        assert torch.equal(xa[i] == 0, xi == 0) or torch.equal((xa[i] == 0).all(0), (xi == 0).all(0))
        brain = (xi != 0).any(0)
        ratio = (xa[i][:, brain] - xi[:, brain]).abs().amax(dim=1)
        assert torch.all(ratio <= 0.1 * xi[:, brain].abs().amax(dim=1) + 0.1 + 1e-5)


def test_lr_schedule_warms_up_then_decays():
    assert lr_factor(0.0, 0.1) == pytest.approx(0.02)
    assert lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor(1.0, 0.1) == pytest.approx(0.02)
    assert lr_factor(0.55, 0.1) == pytest.approx(0.51)


@pytest.mark.parametrize("arch", ["unet", "segformer"])
def test_a_few_steps_reduce_the_loss(arch):
    cases = [planted_case(seed=s, case_id=f"p{s}") for s in range(3)]
    events = []
    cfg = TrainConfig(
        arch=arch, model=TINY[arch], steps=40, val_every=20, batch_size=8, lr=5e-3, device="cpu"
    )
    result = train_on_cases(cfg, cases[:2], cases[2:], progress=events.append)
    losses = [e["loss"] for e in result.history]
    assert len(losses) == 2 and losses[1] < losses[0]
    card = result.card
    assert card["training"]["case_ids"] == ["p0", "p1"] and card["training"]["val_case_ids"] == ["p2"]
    assert card["training"]["cohorts"] == ["adult"] and card["training"]["steps"] == 40
    assert set(card["validation_dice"]["adult"]) >= {"WT", "TC", "ET", "SNFH", "n_cases"}
    assert not result.model.training


def test_split_dirs_holds_out_cases_deterministically(tmp_path):
    for i in range(6):
        case = planted_case(shape=(20, 20, 6), seed=i, case_id=f"k{i}")
        write_case_dir(case, tmp_path / "adult" / f"k{i}", np.eye(4))
    train, val = split_dirs(tmp_path, "adult")
    assert [p.name for p in val] == ["k4"] and len(train) == 5
    assert split_dirs(tmp_path, "adult") == (train, val)


def test_train_model_cli_writes_a_loadable_model(tmp_path):
    from service.cli import _register, app

    _register()
    for i in range(3):
        case = planted_case(shape=(24, 24, 6), seed=i, case_id=f"t{i}")
        split = "val" if i == 2 else "train"
        write_case_dir(case, tmp_path / "data" / "adult" / split / f"t{i}", np.diag([2.0, 2.0, 2.0, 1.0]))
    out = tmp_path / "zoo" / "models" / "unet-tiny"
    args = ["train-model", "--arch", "unet", "--data", str(tmp_path / "data"), "--out", str(out)]
    args += ["--steps", "4", "--val-every", "2", "--input-size", "32", "--batch-size", "4", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model, card = load_model(out)
    assert card["id"] == "unet-tiny" and card["training"]["case_ids"] == ["t0", "t1"]
    assert card["training"]["val_case_ids"] == ["t2"] and "adult" in card["validation_dice"]
    assert json.loads((out / "card.json").read_text())["weights_sha256"] == card["weights_sha256"]


def _train_cli(tmp_path, out, seed: int, threads: int = 1) -> bytes:
    from service.cli import _register, app

    _register()
    args = ["train-model", "--arch", "unet", "--data", str(tmp_path / "data"), "--out", str(out)]
    args += ["--steps", "6", "--val-every", "3", "--input-size", "32", "--batch-size", "4", "--device", "cpu"]
    args += ["--seed", str(seed), "--threads", str(threads)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.rindex('{\n  "id"') :])
    assert printed["weights_sha256"] == json.loads((out / "card.json").read_text())["weights_sha256"]
    return (out / "weights.safetensors").read_bytes()


def test_same_seed_and_steps_give_byte_identical_weights(tmp_path):
    for i in range(3):
        case = planted_case(shape=(24, 24, 6), seed=i, case_id=f"d{i}")
        split = "val" if i == 2 else "train"
        write_case_dir(case, tmp_path / "data" / "adult" / split / f"d{i}", np.diag([2.0, 2.0, 2.0, 1.0]))
    torch.set_num_threads(2)  # the run fixes its own thread count, whatever the caller's
    first = _train_cli(tmp_path, tmp_path / "a", seed=3)
    torch.set_num_threads(1)
    assert _train_cli(tmp_path, tmp_path / "b", seed=3) == first
    assert torch.get_num_threads() == 1 and not torch.are_deterministic_algorithms_enabled()  # restored
    assert _train_cli(tmp_path, tmp_path / "c", seed=4) != first


def test_the_wall_clock_limit_aborts_with_a_message_and_never_shortens_the_run():
    from medseglens_core.models.train import TrainingTimeLimit

    cases = [planted_case(seed=s, case_id=f"p{s}") for s in range(2)]
    cfg = TrainConfig(
        arch="unet", model=TINY["unet"], steps=3, batch_size=4, device="cpu", time_budget_s=1e-9
    )
    with pytest.raises(TrainingTimeLimit, match="past the wall-clock limit"):
        train_on_cases(cfg, cases)
    roomy = TrainConfig(
        arch="unet", model=TINY["unet"], steps=3, batch_size=4, device="cpu", time_budget_s=3600
    )
    assert train_on_cases(roomy, cases).card["training"]["steps"] == 3
