"""Key metadata is derived from the schema's fields, not kept in lists: path keys, model sources, files that must
exist, section spellings, keys that exclude each other and the keys that tell stages apart."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Optional

import pytest

from rlhfctl.config.keys import (
    SEED_SECTIONS,
    example_value,
    exclusive_key_groups,
    field_info,
    first_sentence,
    is_table_field,
    known_keys,
    markers,
    model_source_keys,
    must_exist_keys,
    path_keys,
    stage_fields,
    stage_unique_keys,
    value_type,
)
from rlhfctl.config.loader import validate_config_dict
from rlhfctl.config.schema import CONFIG_CLASSES, STAGES
from rlhfctl.config.schema.markers import ModelSource, MustExist
from rlhfctl.config.templates import render_template


def _every_key() -> set[str]:
    return {key for stage in STAGES for key in stage_fields(stage)}


def test_path_keys_are_the_path_typed_fields_and_validate_strings_into_paths() -> None:
    assert path_keys() == {"general.output_dir", "general.checkpoint_dir", "general.model_pretrain",
                           "general.rm_pretrain", "dataset.train_file", "dataset.validation_file"}
    for stage in STAGES:
        paths = {key: f"some/{key}" for key in path_keys() & set(stage_fields(stage))}
        config = validate_config_dict(tomllib.loads(render_template(stage, paths)), check_files=False)
        for key, text in paths.items():
            section, name = key.split(".")
            assert getattr(getattr(config, section), name) == Path(text)
        assert not any(value_type(field_info(stage, key).annotation) is Path
                       for key in set(stage_fields(stage)) - path_keys())


def test_model_sources_and_files_that_must_exist() -> None:
    assert model_source_keys() == {"general.base_model", "general.model_name", "general.rm_name", "general.ref_model"}
    needed = must_exist_keys()
    assert set(needed) == model_source_keys() | {"dataset.train_file", "dataset.validation_file",
                                                  "general.model_pretrain", "general.rm_pretrain"}
    assert needed["dataset.train_file"] == MustExist("file")
    assert isinstance(needed["general.rm_name"], ModelSource)
    assert needed["general.rm_pretrain"].what == "export folder"
    assert "general.output_dir" not in needed  # an output: created by the run


def test_seed_section_spellings_cover_every_section() -> None:
    sections = {name for cls in CONFIG_CLASSES.values() for name in cls.sections()}
    assert SEED_SECTIONS == {name.capitalize(): name for name in sections}
    assert SEED_SECTIONS["General"] == "general" and SEED_SECTIONS["Generation"] == "generation"


def test_exclusive_keys() -> None:
    assert exclusive_key_groups() == (("dataset.validation_file", "dataset.validation_split_percentage"),)
    assert all(key in _every_key() for group in exclusive_key_groups() for key in group)


def test_each_stage_has_keys_no_other_stage_has() -> None:
    unique = stage_unique_keys()
    assert "training.completion_only_loss" in unique["sft"]
    assert unique["rm"] == {"training.center_rewards_coefficient"}
    assert {"training.kl_coeff", "training.value_model_init"} <= unique["ppo"]
    assert {"general.model_name", "generation"}.isdisjoint(unique["ppo"])  # GRPO has them too
    assert {"general.ref_model", "training.loss_type", "training.label_smoothing"} <= unique["dpo"]
    assert {"training.num_generations", "training.rloo", "reward", "reward.functions"} <= unique["grpo"]
    for stage in STAGES:
        others = {key for other in STAGES if other != stage for key in known_keys(other)}
        assert not unique[stage] & others


def test_known_keys_field_info_and_tables() -> None:
    assert known_keys("rm")[0] == "stage" and "training.center_rewards_coefficient" in known_keys("rm")
    assert field_info("ppo", "generation.top_k").default == 0
    assert field_info("rm", "generation.top_k") is None and field_info("rm", "nope") is None
    assert is_table_field("rm", "training.resources_per_worker") and not is_table_field("rm", "training.epochs")


def test_value_types_markers_and_examples() -> None:
    field = field_info("rm", "dataset.validation_file")
    assert value_type(field.annotation) is Path
    assert markers(field, MustExist) == [MustExist("file")]  # found inside Optional[Annotated[...]]
    assert value_type(Optional[int]) is int
    assert example_value(field, "rm") == "data/rm_validation.jsonl"  # "{stage}" filled in
    assert example_value(field_info("rm", "training.epochs"), "rm") is None


@pytest.mark.parametrize(("text", "first"), [
    ("Peak learning rate.", "Peak learning rate."),
    ("Minutes to wait. Counted in attempts, e.g. 2.", "Minutes to wait."),
    ('Resources, e.g. { CPU = 8 }. More.', "Resources, e.g. { CPU = 8 }."),
])
def test_first_sentence(text: str, first: str) -> None:
    assert first_sentence(text) == first
