"""Recipe fixtures: a tiny SFT policy and reward model trained once per session (PPO and GRPO start from them)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory, tiny_model_dir):
    """A tiny SFT policy and a tiny trained RM (one in-process worker each: no Ray start-up)."""
    from rlhfctl.config.schema import RMConfig, SFTConfig
    from rlhfctl.recipes import rm, sft

    root = tmp_path_factory.mktemp("trained-models")
    common = {"seed": 0, "base_model": str(tiny_model_dir)}
    sft_config = SFTConfig.model_validate({
        "general": {**common, "output_dir": str(root / "sft_run"), "checkpoint_dir": str(root / "sft")},
        "dataset": {"train_file": str(DATA / "sft.jsonl"), "max_length": 96},
        "training": {"batch_size": 16, "epochs": 4, "learning_rate": 3e-3, "lr_scheduler": "cosine",
                     "num_training_workers": 1},
    })
    rm_config = RMConfig.model_validate({
        "general": {**common, "output_dir": str(root / "rm_run"), "checkpoint_dir": str(root / "rm")},
        "dataset": {"train_file": str(DATA / "rm.jsonl"), "max_length": 96},
        "training": {"batch_size": 16, "epochs": 2, "learning_rate": 1e-3, "lr_scheduler": "cosine",
                     "num_training_workers": 1},
    })
    sft.run(sft_config)
    rm.run(rm_config)
    return root / "sft", root / "rm"
