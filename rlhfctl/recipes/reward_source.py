"""The reward model a PPO or GRPO run points at: its export's score statistics and whether it has a trained head.

Both read files only (no weights loaded, no torch): ``reward_stats.json`` written by ``rlhfctl rm train`` next to
its export (the score normalisation PPO applies), and the tensor names in the safetensors headers of a local folder
(a reward model without ``score.weight`` would be scored by a freshly initialised head).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from rlhfctl.config.schema import PPOConfig
from rlhfctl.errors import ConfigError, ConfigIssue
from rlhfctl.runfiles import REWARD_STATS_FILE


@dataclass(frozen=True)
class RewardStats:
    """The reward model's score mean and std (its export's ``reward_stats.json``), for score normalisation."""

    mean: float
    std: float  # > 0



def read_reward_stats(config: PPOConfig, *, required: bool = True) -> RewardStats | None:
    """The reward mean/std stored by ``rlhfctl rm train`` in ``rm_pretrain/reward_stats.json``.

    Without ``general.rm_pretrain`` or without the file: a ConfigError when ``required``, else ``None`` (scores
    stay raw). A file that exists but holds no usable statistics is an error either way.
    """
    folder = config.general.rm_pretrain
    path = None if folder is None else Path(folder) / REWARD_STATS_FILE
    if path is None or not path.is_file():
        if not required:
            return None
        problem = ("needs general.rm_pretrain (an RM export with reward_stats.json) to normalise scores"
                   if path is None else f"{path} does not exist (is general.rm_pretrain an export of `rlhfctl rm "
                                        "train`?)")
        raise ConfigError([ConfigIssue("training.normalize_scores", problem, config.training.normalize_scores)])
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
        mean = float(stats.get("mean", stats.get("reward_mean")))
        std = float(stats.get("std", stats.get("reward_std")))
        if math.isfinite(mean) and math.isfinite(std) and std > 0:
            return RewardStats(mean=mean, std=std)
        problem = f"{path} holds mean={mean}, std={std}; expected finite values and std > 0"
    except (OSError, ValueError, TypeError, AttributeError):
        problem = f"{path} is not JSON with numeric 'mean' and 'std'"
    raise ConfigError([ConfigIssue("training.normalize_scores", problem + " (set training.normalize_scores = false "
                                   "to use raw scores)", config.training.normalize_scores)])


def reward_head_warning(reward_source: str) -> str | None:
    """A warning when the reward model's folder has no trained score head (PPO against a random reward).

    Checks the safetensors headers of a local folder for a ``score.weight`` tensor; an RM export (with
    ``reward_stats.json``) is trusted. Hub ids cannot be checked offline here; the worker checks the load report.
    """
    folder = Path(reward_source)
    if not folder.is_dir() or (folder / REWARD_STATS_FILE).exists():
        return None
    names: set[str] = set()
    for weights in folder.glob("*.safetensors"):
        names |= _safetensors_names(weights)
    if any(name == "score.weight" or name.endswith(".score.weight") for name in names):
        return None
    return (f"the reward model {reward_source} has no trained score head (no 'score.weight' in its weights): it "
            "will be freshly initialised and PPO will optimise a random reward. Point general.rm_pretrain at an "
            "export of `rlhfctl rm train`.")


def _safetensors_names(path: Path) -> set[str]:
    """Tensor names from a safetensors header (8-byte little-endian length, then JSON) without loading weights."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        return {name for name in header if name != "__metadata__"}
    except (OSError, ValueError, struct.error):
        return set()
