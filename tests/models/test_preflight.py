"""[lora] and gradient checkpointing checked against the models in the driver, before any worker starts (exit 2,
naming the key and the model), in-process or, on the Ray path, in a child process that keeps torch out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfctl.config import load_config
from rlhfctl.config.schema import LoraConfig
from rlhfctl.errors import ConfigError
from rlhfctl.models.preflight import AdaptedModel, check_model_settings, inspect_models
from rlhfctl.recipes import ppo, rm, sft

REPO_ROOT = Path(__file__).resolve().parents[2]
SFT_CONFIG = REPO_ROOT / "examples" / "configs" / "sft.toml"


def _sft(tmp_path: Path, model: Path, *overrides: str):
    return load_config(SFT_CONFIG, overrides=[f"general.base_model={model}", f"general.output_dir={tmp_path / 'run'}",
                                              f"general.checkpoint_dir={tmp_path / 'out'}", *overrides])


def _issues(error: ConfigError) -> dict[str, str]:
    """Each key's messages, one per line."""
    found: dict[str, str] = {}
    for issue in error.issues:
        found[issue.key] = (found[issue.key] + "\n" if issue.key in found else "") + issue.message
    return found


def test_nothing_is_checked_or_imported_without_lora_or_checkpointing(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr("rlhfctl.models.preflight.inspect_models", lambda request: pytest.fail("checked"))
    check_model_settings(_sft(tmp_path, tiny_model_dir), [AdaptedModel("general.base_model", "/nowhere", "causal")])


def test_a_target_name_that_matches_nothing_lists_the_models_linear_layers(tmp_path, tiny_model_dir):
    config = _sft(tmp_path, tiny_model_dir, 'lora.target_modules=["c_attn", "q_proj"]', "training.num_training_workers=1")
    with pytest.raises(ConfigError) as info:
        sft.build_job(config)
    message = _issues(info.value)["lora.target_modules"]
    assert f"'q_proj' matches no module of GPT2LMHeadModel ({tiny_model_dir}, general.base_model)" in message
    assert "c_attn, c_fc, c_proj" in message  # what the user can name instead
    assert not (tmp_path / "run").exists()


def test_a_layer_peft_cannot_adapt_names_the_key_and_the_model(tmp_path, tiny_model_dir):
    config = _sft(tmp_path, tiny_model_dir, 'lora.target_modules=["ln_f"]', "training.num_training_workers=1")
    with pytest.raises(ConfigError) as info:
        sft.build_job(config)
    message = _issues(info.value)["lora.target_modules"]
    assert f"'ln_f' names LayerNorm layers of GPT2LMHeadModel ({tiny_model_dir}, general.base_model), which LoRA " \
           "cannot adapt" in message


def test_checkpointing_a_model_without_support_is_refused(tmp_path, tiny_model_dir):
    """GPT-NeoX Japanese is a transformers causal LM without gradient checkpointing (only config.json is read)."""
    from transformers import GPTNeoXJapaneseConfig

    folder = tmp_path / "neox-ja"
    GPTNeoXJapaneseConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_multiple_size=2).save_pretrained(folder)
    request = {"uses": [{"key": "general.base_model", "source": str(folder), "kind": "causal"}], "lora": None,
               "gradient_checkpointing": True, "trust_remote_code": False}
    assert inspect_models(request) == [(
        "training.gradient_checkpointing",
        f"GPTNeoXJapaneseForCausalLM ({folder}, general.base_model) does not support gradient checkpointing; "
        "set it to false")]


def test_ppo_checks_the_policy_and_the_value_model(tmp_path, tiny_model_dir):
    from tests.recipes.test_ppo import make_config

    config = make_config(tmp_path, tiny_model_dir, tiny_model_dir).model_copy(
        update={"lora": LoraConfig(target_modules=["score"])})
    with pytest.raises(ConfigError) as info:
        ppo.prepare(config)
    policy, value = _issues(info.value)["lora.target_modules"].splitlines()
    assert f"'score' matches no module of GPT2LMHeadModel ({tiny_model_dir}, general.model_name)" in policy
    assert f"'score' matches no module of GPT2ForSequenceClassification ({tiny_model_dir}, general.rm_name) (the " \
           "score head is trained in full anyway)" in value


def test_an_adapter_export_of_a_model_loaded_from_an_adapter_folder_is_refused(tmp_path, tiny_model_dir):
    adapter = tmp_path / "sft-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    config = load_config(REPO_ROOT / "examples" / "configs" / "rm.toml", overrides=[
        f"general.base_model={adapter}", f"general.output_dir={tmp_path / 'run'}",
        f"general.checkpoint_dir={tmp_path / 'out'}", "lora.merge_on_export=false", "training.num_training_workers=1"])
    with pytest.raises(ConfigError) as info:
        rm.build_job(config)
    assert "is itself an adapter folder" in _issues(info.value)["lora.merge_on_export"]


def test_the_ray_path_checks_in_a_child_process_and_keeps_torch_out(tmp_path, tiny_model_dir):
    """Two workers: the driver never imports torch; the check runs in `python -m rlhfctl.models.preflight`."""
    overrides = [f"general.base_model={tiny_model_dir}", f"general.output_dir={tmp_path / 'run'}",
                 f"general.checkpoint_dir={tmp_path / 'out'}", "training.num_training_workers=2"]
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from rlhfctl.cli.app import app\n"
        f"result = CliRunner().invoke(app, ['sft', 'train', {str(SFT_CONFIG)!r}, *{overrides!r}, *sys.argv[1:]])\n"
        "print(result.output)\n"
        "print('IMPORTED', sorted(m for m in ('ray', 'torch', 'transformers', 'peft') if m in sys.modules))\n"
        "sys.exit(result.exit_code)\n"
    )

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                              cwd=REPO_ROOT)

    bad = run('lora.target_modules=["q_proj"]', "training.gradient_checkpointing=true")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "lora.target_modules: 'q_proj' matches no module of GPT2LMHeadModel" in bad.stdout
    assert "IMPORTED []" in bad.stdout or "IMPORTED ['ray']" in bad.stdout  # Ray starts while the data is read
    assert not (tmp_path / "run").exists()
    good = run("lora.r=4", "training.gradient_checkpointing=true", "--dry-run")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "IMPORTED []" in good.stdout
