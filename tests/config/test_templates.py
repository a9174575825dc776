"""Templates: generated from the schema, found from the repo, rendered with comments kept, and every one valid."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from rlhfctl.config.keys import (
    default_value,
    example_value,
    field_info,
    is_required,
    known_keys,
    markers,
    stage_fields,
)
from rlhfctl.config.loader import load_config
from rlhfctl.config.schema import CONFIG_CLASSES, STAGES
from rlhfctl.config.schema.markers import LiveExample
from rlhfctl.config.templates import (
    COMMENT_OUT,
    list_templates,
    render_template,
    template_path,
    template_text,
    toml_value,
    write_templates,
)
from rlhfctl.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("stage", STAGES)
def test_template_files_are_the_generated_text(stage: str) -> None:
    assert template_text(stage) == render_template(stage), (
        f"templates/{stage}.toml is stale: regenerate the templates with python -m rlhfctl.config.templates")


@pytest.mark.parametrize("stage", STAGES)
def test_template_shows_every_key_once_with_its_default_or_example(stage: str) -> None:
    text = render_template(stage)
    lines = text.splitlines()
    assert lines[0] == f"# {CONFIG_CLASSES[stage].summary}"
    shown = [match.group(1) for line in lines[4:] if (match := re.match(r"(?:# )?([a-z_]+) = ", line))]
    assert shown == [key.split(".")[1] for key in stage_fields(stage)]
    data = tomllib.loads(text)
    for key, field in stage_fields(stage).items():
        section, name = key.split(".")
        if markers(field, LiveExample):  # a key the stage needs one of (GRPO's reward model): its example, live
            assert data[section][name] == example_value(field, stage)
        elif name in data.get(section, {}) and not is_required(field):
            assert data[section][name] == default_value(field), f"{key}: the template changes the default"
        elif not is_required(field):
            assert f"# {name} = " in text  # optional, or an example besides the default: commented out


@pytest.mark.parametrize("stage", STAGES)
def test_the_optional_lora_section_is_commented_out_until_a_key_is_given(stage: str) -> None:
    assert "lora" not in tomllib.loads(render_template(stage))  # a template must not turn LoRA on
    assert "\n# [lora]\n" in render_template(stage)
    data = tomllib.loads(render_template(stage, {"lora.r": 4}))
    assert data["lora"] == {"r": 4, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear",
                            "merge_on_export": True}


def test_write_templates_writes_only_what_changed(tmp_path: Path) -> None:
    assert sorted(path.name for path in write_templates(tmp_path)) == sorted(f"{stage}.toml" for stage in STAGES)
    assert (tmp_path / "rm.toml").read_text() == render_template("rm")
    assert write_templates(tmp_path) == []


@pytest.mark.parametrize("stage", STAGES)
def test_template_is_found_in_the_repository_and_declares_its_stage(stage: str) -> None:
    assert template_path(stage) == REPO / "templates" / f"{stage}.toml"
    data = tomllib.loads(template_text(stage))
    assert data["stage"] == stage


@pytest.mark.parametrize("stage", STAGES)
def test_every_live_key_has_a_comment_line_above_it_and_is_a_schema_key(stage: str) -> None:
    lines = template_text(stage).splitlines()
    section = ""
    for number, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#") and "=" in line:
            key = line.split("=")[0].strip()
            assert lines[number - 1].startswith("# "), f"{stage}.toml: {key} has no comment"
            if section:
                assert f"{section}.{key}" in known_keys(stage)


@pytest.mark.parametrize("stage", STAGES)
def test_template_is_valid_once_its_files_exist(stage: str, tmp_path: Path) -> None:
    path = tmp_path / f"{stage}.toml"
    path.write_text(template_text(stage))
    data = tomllib.loads(path.read_text())
    (tmp_path / data["dataset"]["train_file"]).parent.mkdir(parents=True)
    (tmp_path / data["dataset"]["train_file"]).write_text("{}\n")
    assert load_config(path).stage == stage


def test_render_substitutes_values_and_keeps_comments() -> None:
    text = render_template("rm", {
        "general.base_model": "./models/tiny",
        "training.learning_rate": 3e-5,
        "training.resources_per_worker": {"CPU": 4, "GPU": 1},
        "dataset.validation_file": "val.jsonl",
        "dataset.validation_split_percentage": COMMENT_OUT,
    })
    original = template_text("rm")
    assert [line for line in text.splitlines() if line.startswith("# ") and "=" not in line] == [
        line for line in original.splitlines() if line.startswith("# ") and "=" not in line]
    data = tomllib.loads(text)
    assert data["general"]["base_model"] == "./models/tiny"
    assert data["training"]["learning_rate"] == 3e-5
    assert data["training"]["resources_per_worker"] == {"CPU": 4, "GPU": 1}
    assert data["dataset"]["validation_file"] == "val.jsonl"
    assert "validation_split_percentage" not in data["dataset"]
    assert "# validation_split_percentage = 5" in text


def test_render_refuses_keys_the_template_lacks() -> None:
    with pytest.raises(KeyError, match="training.kl_coeff"):
        render_template("rm", {"training.kl_coeff": 0.1})


def test_render_makes_a_commented_out_key_live_and_a_live_one_commented() -> None:
    text = render_template("ppo", {"training.score_clip": 3.0, "general.trust_remote_code": True,
                                   "training.kl_horizon": COMMENT_OUT})
    assert "\nscore_clip = 3.0\n" in text and "\ntrust_remote_code = true\n" in text
    assert "\n# kl_horizon = 256\n" in text
    assert field_info("ppo", "training.kl_horizon").default == 256


def test_toml_value() -> None:
    assert toml_value(True) == "true"
    assert toml_value(1e-5) == "1e-05"
    assert toml_value('a "quoted"\npath') == '"a \\"quoted\\"\\npath"'
    assert toml_value({"CPU": 2, "my res": 1.5}) == '{ CPU = 2, "my res" = 1.5 }'
    assert tomllib.loads(f"v = {toml_value('ünï ✓')}")["v"] == "ünï ✓"
    with pytest.raises(ValueError):
        toml_value(float("inf"))


def test_list_templates_and_unknown_stage() -> None:
    infos = list_templates()
    assert [info.stage for info in infos] == list(STAGES)
    assert all(info.summary.startswith("rlhfctl") for info in infos)
    with pytest.raises(UserError):
        template_path("kto")


def test_packaged_templates_take_precedence(tmp_path: Path, monkeypatch) -> None:
    """An installed wheel carries rlhfctl/templates (pyproject force-include): that copy is used first."""
    import importlib.resources

    package = tmp_path / "rlhfctl"
    (package / "templates").mkdir(parents=True)
    (package / "templates" / "rm.toml").write_text("# packaged\n")
    monkeypatch.setattr(importlib.resources, "files", lambda name: package)
    assert template_path("rm") == package / "templates" / "rm.toml"
    assert template_path("sft") == REPO / "templates" / "sft.toml"  # not packaged here: the repo's copy


def test_pyproject_ships_the_templates_in_the_wheel() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    force_include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert force_include["templates"] == "rlhfctl/templates"
