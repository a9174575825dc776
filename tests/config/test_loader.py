"""load_config: every kind of problem reported at once, with file, line, key, value and a suggestion; overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rlhfctl.config.loader import (
    apply_overrides,
    detect_stage,
    known_keys,
    load_config,
    parse_override,
    validate_config_dict,
)
from rlhfctl.config.schema import PPOConfig, RMConfig
from rlhfctl.errors import ConfigError

VALID_RM = """\
stage = "rm"

[general]
base_model = "openai-community/gpt2"
output_dir = "runs/rm"
checkpoint_dir = "checkpoints/rm"

[dataset]
train_file = "rm.jsonl"

[training]
learning_rate = 2e-5
"""


@pytest.fixture
def rm_dir(tmp_path: Path) -> Path:
    (tmp_path / "rm.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    (tmp_path / "rm.toml").write_text(VALID_RM)
    return tmp_path


def _problems(path: Path, **kwargs) -> dict[str, tuple[str, int | None]]:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return {issue.key: (issue.message, issue.line) for issue in info.value.issues}


def _edit(path: Path, old: str, new: str) -> Path:
    path.write_text(path.read_text().replace(old, new))
    return path


def test_valid_config_resolves_relative_paths_against_the_files_folder(rm_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir("/")
    config = load_config(rm_dir / "rm.toml")
    assert isinstance(config, RMConfig)
    assert config.dataset.train_file == rm_dir / "rm.jsonl"
    assert config.general.output_dir == rm_dir / "runs" / "rm"
    assert config.general.base_model == "openai-community/gpt2"  # a hub id is not a path
    assert config.training.learning_rate == 2e-5
    assert config.training.resources_per_worker == {"CPU": 1.0}


def test_wrong_types_are_reported_with_line_and_value(rm_dir: Path) -> None:
    path = _edit(rm_dir / "rm.toml", "learning_rate = 2e-5", 'learning_rate = "2e-5"\nepochs = 1.5\n'
                 'max_grad_norm = true')
    problems = _problems(path)
    assert problems["training.learning_rate"] == ("expected a number, found '2e-5'", 12)
    assert problems["training.epochs"][0] == "expected an integer, found 1.5"
    assert problems["training.max_grad_norm"][0] == "expected a number, found True"


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ("learning_rate = -1e-5", "training.learning_rate", "must be greater than 0"),
        ("num_training_workers = 0", "training.num_training_workers", 'expected "auto" or a whole number'),
        ("warmup_ratio = 1.5", "training.warmup_ratio", "must be at most 1"),
        ("max_grad_norm = -1.0", "training.max_grad_norm", "must be at least 0"),
        ("learning_rate = inf", "training.learning_rate", "expected a finite number"),
        ("resources_per_worker = { CPU = 0 }", "training.resources_per_worker", "at least some CPU or GPU"),
        ('mixed_precision = "fp8"', "training.mixed_precision", "expected one of 'no', 'bf16' or 'fp16'"),
        ('optimizer = "adamw"', "training.optimizer", "did you mean 'AdamW'?"),
        ('lr_scheduler = "cosin"', "training.lr_scheduler", "did you mean 'cosine'?"),
    ],
)
def test_out_of_range_and_not_allowed_values(rm_dir: Path, line: str, key: str, message: str) -> None:
    path = _edit(rm_dir / "rm.toml", "learning_rate = 2e-5", line)
    problems = _problems(path)
    assert list(problems) == [key]
    assert message in problems[key][0]
    assert problems[key][1] == 12


@pytest.mark.parametrize("percent", [-1, 100, 250])
def test_split_percentage_outside_0_to_100(rm_dir: Path, percent: int) -> None:
    path = _edit(rm_dir / "rm.toml", 'train_file = "rm.jsonl"',
                 f'train_file = "rm.jsonl"\nvalidation_split_percentage = {percent}')
    problems = _problems(path)
    assert list(problems) == ["dataset.validation_split_percentage"]
    assert f"found {percent}" in problems["dataset.validation_split_percentage"][0]


def test_validation_file_and_split_together_are_refused(rm_dir: Path) -> None:
    (rm_dir / "val.jsonl").write_text("{}\n")
    path = _edit(rm_dir / "rm.toml", 'train_file = "rm.jsonl"',
                 'train_file = "rm.jsonl"\nvalidation_file = "val.jsonl"\nvalidation_split_percentage = 10')
    problems = _problems(path)
    assert "not both" in problems["dataset"][0]


def test_unknown_keys_at_every_depth_get_suggestions(rm_dir: Path) -> None:
    path = _edit(rm_dir / "rm.toml", "learning_rate = 2e-5",
                 "learnig_rate = 2e-5\nkl_coeff = 0.1\n\n[genral]\nseed = 1\n\n[dataset.extra]\nx = 1")
    path.write_text('max_length = 3\n' + path.read_text())
    problems = _problems(path)
    assert problems["training.learnig_rate"] == ("unknown key; did you mean 'training.learning_rate'?", 13)
    assert problems["training.kl_coeff"][0] == "unknown key; it is a setting of the ppo stage, not 'rm'"
    assert problems["genral"] == ("unknown key; did you mean 'general'?", 16)
    assert problems["max_length"][0] == "unknown key; did you mean 'dataset.max_length'?"
    assert problems["dataset.extra"][0].startswith("unknown key")


def test_missing_required_keys_and_files_are_all_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "ppo.toml"
    path.write_text('stage = "ppo"\n[general]\nmodel_name = "./policy"\noutput_dir = "o"\ncheckpoint_dir = "c"\n'
                    'rm_pretrain = "rm-export"\n[dataset]\ntrain_file = "prompts.jsonl"\n[training]\nepochs = 0\n')
    problems = _problems(path)
    assert problems["general.rm_name"][0].startswith("required key is missing")
    assert problems["general.model_name"] == (f"local model folder not found: {tmp_path / 'policy'}", 3)
    assert problems["general.rm_pretrain"][0].startswith(f"export folder not found: {tmp_path / 'rm-export'}")
    assert problems["dataset.train_file"] == (f"file not found: {tmp_path / 'prompts.jsonl'}", 8)
    assert "must be greater than 0" in problems["training.epochs"][0]
    # reported in file order
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = [issue.line for issue in info.value.issues if issue.line]
    assert lines == sorted(lines)


def test_file_checks_can_be_skipped(tmp_path: Path) -> None:
    path = tmp_path / "rm.toml"
    path.write_text(VALID_RM)
    assert load_config(path, check_files=False).dataset.train_file == tmp_path / "rm.jsonl"


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('stage = "rm"\n[general]\nbase_model = "gpt2\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (issue,) = info.value.issues
    assert issue.line == 3
    assert issue.message.startswith("TOML syntax error")
    assert f"{path}:3: TOML syntax error" in str(info.value)


def test_missing_config_file_and_stage_problems(tmp_path: Path) -> None:
    assert "does not exist" in str(_problems(tmp_path / "nope.toml"))
    path = tmp_path / "x.toml"
    path.write_text('[general]\nbase_model = "m"\n')
    assert "cannot tell which stage" in _problems(path)["stage"][0]
    path.write_text('stage = "kto"\n')
    assert "expected one of sft, rm, ppo, dpo, grpo" in _problems(path)["stage"][0]
    path.write_text(VALID_RM)
    assert "configures the 'rm' stage, not 'ppo'" in _problems(path, stage="ppo")["stage"][0]


def test_seed_section_spellings_are_accepted(rm_dir: Path) -> None:
    text = VALID_RM.replace("[general]", "[General]").replace("[dataset]", "[Dataset]").replace("[training]",
                                                                                                "[Training]")
    (rm_dir / "rm.toml").write_text(text)
    config = load_config(rm_dir / "rm.toml", overrides=["Training.epochs=3", "General.seed=7"])
    assert config.training.epochs == 3
    assert config.general.seed == 7


def test_checkpoint_dir_must_not_hold_the_run_directory(rm_dir: Path) -> None:
    path = _edit(rm_dir / "rm.toml", 'checkpoint_dir = "checkpoints/rm"', 'checkpoint_dir = "runs"')
    assert "checkpoint_dir must be a folder of its own" in _problems(path)["general"][0]


# ------------------------------------------------------------------------------------------------ overrides


def test_overrides_are_typed_by_toml_and_by_the_schema(rm_dir: Path) -> None:
    config = load_config(rm_dir / "rm.toml", overrides=[
        "training.learning_rate=3e-4", "general.seed=3", "training.resources_per_worker={ CPU = 2, GPU = 1 }",
        "general.base_model=123", "training.mixed_precision=bf16", "general.trust_remote_code=true",
        "training.resources_per_worker.CPU=4",
    ])
    assert config.training.learning_rate == 3e-4
    assert config.general.seed == 3
    assert config.general.base_model == "123"  # a text key keeps the literal spelling
    assert config.training.mixed_precision == "bf16"
    assert config.general.trust_remote_code is True
    assert config.training.resources_per_worker == {"CPU": 4.0, "GPU": 1.0}


def test_path_overrides_are_relative_to_the_current_directory(rm_dir: Path, tmp_path_factory, monkeypatch) -> None:
    elsewhere = tmp_path_factory.mktemp("cwd")
    (elsewhere / "other.jsonl").write_text("{}\n")
    monkeypatch.chdir(elsewhere)
    config = load_config(rm_dir / "rm.toml", overrides=["dataset.train_file=other.jsonl"])
    assert config.dataset.train_file == elsewhere / "other.jsonl"


def test_bad_overrides_are_rejected_with_suggestions_alongside_file_problems(rm_dir: Path) -> None:
    (rm_dir / "rm.jsonl").unlink()
    problems = _problems(rm_dir / "rm.toml", overrides=[
        "training.learnin_rate=1", "generation.top_k=3", "seed=3", "justtext", "training.epochs=two",
        "training.batch_size=-2",
    ])
    assert problems["training.learnin_rate"] == (
        "unknown key (set on the command line); did you mean 'training.learning_rate'?", None)
    assert "setting of the ppo and grpo stage" in problems["generation.top_k"][0]
    assert "must name a section and a key" in problems["seed"][0]
    assert "must look like section.key=value" in problems["justtext"][0]
    assert problems["training.epochs"] == ("expected an integer, found 'two' (set on the command line)", None)
    assert problems["training.batch_size"][0].startswith("must be greater than 0, found -2")
    assert "dataset.train_file" in problems  # the file's own problems are still reported


def test_overriding_one_validation_source_replaces_the_other(rm_dir: Path) -> None:
    (rm_dir / "val.jsonl").write_text("{}\n")
    path = _edit(rm_dir / "rm.toml", 'train_file = "rm.jsonl"',
                 'train_file = "rm.jsonl"\nvalidation_split_percentage = 10')
    config = load_config(path, overrides=[f"dataset.validation_file={rm_dir / 'val.jsonl'}"])
    assert config.dataset.validation_file == rm_dir / "val.jsonl"
    assert "validation_split_percentage" not in config.dataset.model_fields_set
    _edit(path, "validation_split_percentage = 10", 'validation_file = "val.jsonl"')
    config = load_config(path, overrides=["dataset.validation_split_percentage=20"])
    assert (config.dataset.validation_file, config.dataset.validation_split_percentage) == (None, 20)
    problems = _problems(path, overrides=["dataset.validation_split_percentage=20",
                                          f"dataset.validation_file={rm_dir / 'val.jsonl'}"])
    assert "not both" in problems["dataset"][0]


def test_parse_override() -> None:
    assert parse_override("training.learning_rate=2e-5") == (["training", "learning_rate"], 2e-5)
    assert parse_override("general.base_model=gpt2") == (["general", "base_model"], "gpt2")
    assert parse_override("Training.epochs = 3") == (["training", "epochs"], 3)
    assert parse_override('general.ray_address="ray://h:10001"') == (["general", "ray_address"], "ray://h:10001")
    with pytest.raises(ConfigError):
        parse_override("training.epochs")


def test_apply_overrides_does_not_mutate_its_input() -> None:
    data = {"training": {"epochs": 1}}
    out = apply_overrides(data, ["training.epochs=2", "general.seed=1"])
    assert data == {"training": {"epochs": 1}}
    assert out == {"training": {"epochs": 2}, "general": {"seed": 1}}


def test_validate_config_dict_and_known_keys() -> None:
    config = validate_config_dict({"general": {"model_name": "m", "rm_name": "r", "output_dir": "o",
                                               "checkpoint_dir": "c"}, "dataset": {"train_file": "p.jsonl"},
                                   "training": {"kl_coeff": 0.05}},
                                  check_files=False)
    assert isinstance(config, PPOConfig)  # inferred from the PPO-only keys
    assert config.policy_source == "m"
    assert "training.kl_coeff" in known_keys("ppo") and "training.kl_coeff" not in known_keys("rm")
    assert "generation.max_new_tokens" in known_keys("ppo")


@pytest.mark.parametrize(("data", "stage"), [
    ({"training": {"completion_only_loss": False}}, "sft"),
    ({"training": {"center_rewards_coefficient": 0.1}}, "rm"),
    ({"generation": {}, "training": {"kl_coeff": 0.1}}, "ppo"),
    ({"general": {"rm_name": "r"}}, None),  # PPO and GRPO both have it: a tie names no stage
    ({"general": {"model_name": "m"}, "training": {"num_generations": 4}}, "grpo"),
    ({"general": {"base_model": "m"}, "training": {"beta": 0.1}}, "dpo"),
    ({"general": {"model_name": "m"}, "training": {"completion_only_loss": True, "kl_coeff": 0.1}}, "ppo"),
    ({"general": {"base_model": "m"}, "training": {"epochs": 1}}, None),
])
def test_detect_stage_from_the_keys_only_one_stage_has(data: dict, stage: str | None) -> None:
    assert detect_stage(data, None) == stage
    assert detect_stage({**data, "stage": "rm"}, None) == "rm"
    assert detect_stage(data, "sft") == "sft"


def test_list_items_are_named_by_index_and_found_in_their_table(tmp_path: Path) -> None:
    """Errors inside a list of tables (GRPO's [[reward.functions]]) name the item by index, without the tag pydantic
    adds for a list told apart by ``name``, and point at the item's own line."""
    path = tmp_path / "grpo.toml"
    path.write_text(textwrap.dedent("""\
        stage = "grpo"
        [general]
        model_name = "m"
        output_dir = "runs"
        checkpoint_dir = "ckpt"
        [dataset]
        train_file = "p.jsonl"

        [[reward.functions]]
        name = "contains"
        text = "x"

        [[reward.functions]]
        name = "regex"
        pattern = "(unclosed"
        extra = 1

        [[reward.functions]]
        name = "contain"
    """))
    problems = _problems(path)
    assert problems["reward.functions[1].pattern"][1] == 15
    assert problems["reward.functions[1].pattern"][0].startswith("not a valid regular expression")
    assert problems["reward.functions[1].extra"] == ("unknown key", 16)
    assert problems["reward.functions[2]"] == ("unknown name 'contain'; expected one of exact_match, contains, "
                                               "regex, length, python; did you mean 'contains'?", 18)
    inline = tmp_path / "inline.toml"
    inline.write_text(path.read_text().split("[[reward.functions]]")[0] + '[reward]\nfunctions = [{ name = "x" }]\n')
    assert _problems(inline)["reward.functions[0]"][1] == 10  # written inline: the key's own line


def test_monitor_problems_name_the_key_and_line_and_overrides_reach_the_section(rm_dir: Path) -> None:
    path = rm_dir / "rm.toml"
    path.write_text(path.read_text() + '[monitor]\nkl_action = "halt"\nkl_max = 0\n')
    problems = _problems(path)
    assert set(problems) == {"monitor.kl_action", "monitor.kl_max"}
    line = path.read_text().splitlines().index('kl_action = "halt"') + 1
    assert problems["monitor.kl_action"] == ("expected one of 'warn' or 'stop', found 'halt'", line)
    path.write_text(VALID_RM)
    config = load_config(path, overrides=["monitor.length_bias_action=stop", "general.report_to=wandb"])
    assert config.monitor.length_bias_action == "stop" and config.general.report_to == ["wandb"]
    assert config.monitor.health_settings().length_bias_action == "stop"
