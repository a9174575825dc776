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
