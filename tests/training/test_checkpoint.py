"""TrainState <-> checkpoint folder: weights, optimizer, scheduler, RNG and counters survive a round trip."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rlhfctl.training.checkpoint import (
    TrainState,
    checkpoint_name,
    is_complete,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)


def _objects(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    from transformers import get_scheduler

    scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=2, num_training_steps=10)
    return model, optimizer, scheduler


def _train_steps(model, optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        inputs = torch.randn(16, 4)  # consumes the torch RNG: resumed runs must draw the same numbers
        loss = model(inputs).pow(2).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def test_round_trip_continues_exactly_like_an_uninterrupted_run(tmp_path):
    model, optimizer, scheduler = _objects()
    _train_steps(model, optimizer, scheduler, 3)
    state = TrainState(step=3, epoch=1, batch_in_epoch=5, models={"m": model}, optimizers={"m": optimizer},
                       schedulers={"m": scheduler}, extra={"kl_coeff": 0.05})
    random.seed(7)
    write_checkpoint(state, tmp_path / checkpoint_name(3))
    python_draw = random.random()
    _train_steps(model, optimizer, scheduler, 3)
    expected = [p.detach().clone() for p in model.parameters()]
    expected_lr = scheduler.get_last_lr()

    fresh_model, fresh_optimizer, fresh_scheduler = _objects(seed=123)  # different init on purpose
    restored = read_checkpoint(tmp_path / checkpoint_name(3), TrainState(
        models={"m": fresh_model}, optimizers={"m": fresh_optimizer}, schedulers={"m": fresh_scheduler}))
    assert (restored.step, restored.epoch, restored.batch_in_epoch) == (3, 1, 5)
    assert restored.extra == {"kl_coeff": 0.05}
    assert random.random() == python_draw  # python RNG restored
    _train_steps(fresh_model, fresh_optimizer, fresh_scheduler, 3)
    for got, want in zip(fresh_model.parameters(), expected):
        assert torch.equal(got, want)
    assert fresh_scheduler.get_last_lr() == expected_lr


def test_files_are_safetensors_and_json_only(tmp_path):
    model, optimizer, scheduler = _objects()
    _train_steps(model, optimizer, scheduler, 1)
    folder = write_checkpoint(TrainState(step=1, models={"m": model}, optimizers={"m": optimizer},
                                         schedulers={"m": scheduler}), tmp_path / "c")
    names = sorted(path.name for path in folder.iterdir())
    assert names == ["model.m.safetensors", "optim.m.safetensors", "state.json"]
    document = json.loads((folder / "state.json").read_text())
    assert set(document["files"]) == {"model.m.safetensors", "optim.m.safetensors"}
    raw = read_checkpoint(folder)  # without targets: raw state dicts
    assert set(raw.models["m"]) == set(model.state_dict())
    assert raw.optimizers["m"]["state"][0]["exp_avg"].shape == next(model.parameters()).shape


def test_incomplete_checkpoints_are_never_picked(tmp_path):
    model, optimizer, scheduler = _objects()
    for step in (2, 4):
        write_checkpoint(TrainState(step=step, models={"m": model}, optimizers={"m": optimizer}),
                         tmp_path / checkpoint_name(step))
    assert latest_checkpoint(tmp_path).name == checkpoint_name(4)
    # A write interrupted after state.json but with a truncated weights file, and one with no state.json at all.
    weights = tmp_path / checkpoint_name(4) / "model.m.safetensors"
    weights.write_bytes(weights.read_bytes()[:10])
    (tmp_path / checkpoint_name(6)).mkdir()
    (tmp_path / checkpoint_name(6) / "model.m.safetensors").write_bytes(b"partial")
    assert not is_complete(tmp_path / checkpoint_name(4))
    assert latest_checkpoint(tmp_path).name == checkpoint_name(2)
    assert latest_checkpoint(tmp_path / "missing") is None


def test_non_finite_extra_is_refused(tmp_path):
    with pytest.raises(ValueError):
        write_checkpoint(TrainState(step=1, extra={"x": float("nan")}), tmp_path / "c")


def _frozen_base(seed: int = 0):
    """A model whose first layer is frozen (a LoRA base) and an optimizer over the rest."""
    model, _, _ = _objects(seed)
    model[0].requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    return model, optimizer


def test_a_model_with_a_frozen_base_stores_only_its_trainable_parameters(tmp_path):
    from safetensors.torch import load_file

    from rlhfctl.training.checkpoint import parameter_counts

    model, optimizer = _frozen_base()
    _train_steps(model, optimizer, _objects()[2], 2)
    folder = write_checkpoint(TrainState(step=2, models={"m": model}, optimizers={"m": optimizer}), tmp_path / "c")
    assert set(load_file(str(folder / "model.m.safetensors"))) == {"1.weight", "1.bias", "2.weight", "2.bias"}
    assert json.loads((folder / "state.json").read_text())["model_contents"] == {"m": "trainable"}
    assert parameter_counts(model, model) == (8 + 8 + 8 + 1, 4 * 8 + 8 + 8 + 8 + 8 + 1)  # a shared model once

    fresh, fresh_optimizer = _frozen_base(seed=0)  # the base comes from the model source again: same frozen weights
    read_checkpoint(folder, TrainState(models={"m": fresh}, optimizers={"m": fresh_optimizer}))
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters()))


def test_resuming_with_other_trainable_parameters_is_a_user_error(tmp_path):
    from rlhfctl.errors import UserError

    model, optimizer = _frozen_base()
    folder = write_checkpoint(TrainState(models={"m": model}, optimizers={"m": optimizer}), tmp_path / "c")
    other, _ = _frozen_base()
    other[2].requires_grad_(False)  # e.g. other lora.target_modules
    with pytest.raises(UserError, match="trainable parameters of 'm'"):
        read_checkpoint(folder, TrainState(models={"m": other}))
