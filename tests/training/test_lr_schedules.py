"""rlhfctl's learning-rate schedules give transformers' ``get_scheduler`` learning rates at every step, and the
worker builds them without importing ``transformers.optimization`` (which pulls in peft)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rlhfctl.training.lr_schedules import build_lr_scheduler


def _rates(scheduler, optimizer, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("name", ["linear", "cosine", "constant", "constant_with_warmup", "polynomial"])
@pytest.mark.parametrize("warmup", [0, 3])
def test_schedules_equal_transformers_get_scheduler(name, warmup):
    transformers = pytest.importorskip("transformers")
    total = 11
    expected_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    expected = transformers.get_scheduler(name, expected_optimizer, num_warmup_steps=warmup, num_training_steps=total)
    ours_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    ours = build_lr_scheduler(ours_optimizer, name, num_warmup_steps=warmup, num_training_steps=total)
    assert _rates(ours, ours_optimizer, total + 2) == _rates(expected, expected_optimizer, total + 2)


def test_a_saved_schedule_resumes_where_it_stopped():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(optimizer, "linear", num_warmup_steps=2, num_training_steps=10)
    _rates(scheduler, optimizer, 4)
    state = scheduler.state_dict()
    resumed_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = build_lr_scheduler(resumed_optimizer, "linear", num_warmup_steps=2, num_training_steps=10)
    resumed.load_state_dict(state)
    resumed_optimizer.param_groups[0]["lr"] = scheduler.get_last_lr()[0]
    assert _rates(resumed, resumed_optimizer, 3) == _rates(scheduler, optimizer, 3)


def test_the_default_schedule_does_not_import_transformers_optimization():
    code = ("import sys, torch\n"
            "from rlhfctl.training.lr_schedules import build_lr_scheduler\n"
            "opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)\n"
            "build_lr_scheduler(opt, 'linear', num_warmup_steps=0, num_training_steps=5)\n"
            "print('transformers.optimization' in sys.modules, 'peft' in sys.modules)\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.split() == ["False", "False"]
