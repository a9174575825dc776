"""Learning-rate schedules: transformers' own formulas for the common ones, without importing its optimization module.

``transformers.get_scheduler`` lives in ``transformers.optimization``, which imports ``transformers.trainer_utils``,
which imports peft: about 0.4 s of a GRPO run's start-up on the 2-core benchmark machine (``-X importtime``, under
load; benchmarks/README.md, issue 17) for a ``LambdaLR`` with a one-line factor. ``linear`` (the default),
``cosine``, ``constant`` and ``constant_with_warmup`` are computed here with transformers' formulas
(``transformers/optimization.py``; a golden test compares every step); the other names go to ``get_scheduler``.
The factors are ``functools.partial`` objects with keyword arguments, as transformers builds them, so a
``LambdaLR`` state dict saved by either loads into the other.
"""

from __future__ import annotations

import math
from functools import partial


def linear_factor(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    """0 -> 1 over the warm-up, then linearly down to 0 at ``num_training_steps``."""
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    return max(0.0, float(num_training_steps - step) / float(max(1, num_training_steps - num_warmup_steps)))


def cosine_factor(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    """0 -> 1 over the warm-up, then half a cosine down to 0 at ``num_training_steps``."""
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def constant_with_warmup_factor(step: int, *, num_warmup_steps: int) -> float:
    """0 -> 1 over the warm-up, then 1."""
    if step < num_warmup_steps:
        return float(step) / float(max(1.0, num_warmup_steps))
    return 1.0


def constant_factor(step: int) -> float:
    return 1.0


def build_lr_scheduler(optimizer, name: str, *, num_warmup_steps: int, num_training_steps: int):
    """What ``transformers.get_scheduler(name, optimizer, num_warmup_steps=..., num_training_steps=...)`` returns."""
    from torch.optim.lr_scheduler import LambdaLR

    if name in ("linear", "cosine"):
        factor = linear_factor if name == "linear" else cosine_factor
        return LambdaLR(optimizer, partial(factor, num_warmup_steps=num_warmup_steps,
                                           num_training_steps=num_training_steps))
    if name == "constant_with_warmup":
        return LambdaLR(optimizer, partial(constant_with_warmup_factor, num_warmup_steps=num_warmup_steps))
    if name == "constant":
        return LambdaLR(optimizer, constant_factor)
    from transformers import get_scheduler

    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=num_warmup_steps,
                         num_training_steps=num_training_steps)
