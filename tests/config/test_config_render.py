"""Config -> TOML round trip (config show, the resolved config written into each run)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from rlhfctl.config.loader import load_config
from rlhfctl.config.render import config_to_toml, write_resolved_config


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n')
    source = tmp_path / "ppo.toml"
    source.write_text('stage = "ppo"\n[general]\nmodel_name = "m"\nrm_name = "r"\noutput_dir = "o"\n'
                      'checkpoint_dir = "c"\n[dataset]\ntrain_file = "p.jsonl"\n')
    config = load_config(source, overrides=["training.kl_coeff=0.3"])
    text = config_to_toml(config)
    data = tomllib.loads(text)
    assert data["stage"] == "ppo" and text.startswith('stage = "ppo"')
    assert data["training"]["kl_coeff"] == 0.3
    assert "score_clip" not in data["training"]  # unset optional keys are left out
    written = write_resolved_config(config, tmp_path / "run")
    assert load_config(written) == config


def test_resolved_config_with_a_validation_file_loads_again(tmp_path: Path) -> None:
    # validation_file set -> the default validation_split_percentage is not written beside it (the two exclude
    # each other, so the resolved config of such a run used to fail validation on load).
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n')
    (tmp_path / "v.jsonl").write_text('{"prompt": "y"}\n')
    source = tmp_path / "ppo.toml"
    source.write_text('stage = "ppo"\n[general]\nmodel_name = "m"\nrm_name = "r"\noutput_dir = "o"\n'
                      'checkpoint_dir = "c"\n[dataset]\ntrain_file = "p.jsonl"\nvalidation_file = "v.jsonl"\n')
    config = load_config(source)
    data = tomllib.loads(config_to_toml(config))
    assert "validation_split_percentage" not in data["dataset"]
    assert data["dataset"]["validation_file"].endswith("v.jsonl")
    assert load_config(write_resolved_config(config, tmp_path / "run")) == config


def test_resolved_config_keeps_an_explicit_split(tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n')
    source = tmp_path / "ppo.toml"
    source.write_text('stage = "ppo"\n[general]\nmodel_name = "m"\nrm_name = "r"\noutput_dir = "o"\n'
                      'checkpoint_dir = "c"\n[dataset]\ntrain_file = "p.jsonl"\nvalidation_split_percentage = 10.0\n')
    data = tomllib.loads(config_to_toml(load_config(source)))
    assert data["dataset"]["validation_split_percentage"] == 10.0
