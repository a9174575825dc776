"""InitAnswers -> commented config: values land in the right keys, paths follow the config's folder; the questions
and flags come from the schema."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from rlhfctl.config.keys import field_info, is_table_field, value_type
from rlhfctl.config.templates import template_defaults
from rlhfctl.config.wizard import InitAnswers, init_flags, init_questions, render_config
from rlhfctl.errors import ConfigError


def test_answers_fill_the_stage_keys() -> None:
    answers = InitAnswers("ppo", model="pol", rm_model="rew", rm_pretrain="checkpoints/rm", train_file="p.jsonl",
                          validation_file="v.jsonl", output_dir="runs/x", checkpoint_dir="ck/x", workers=3,
                          cpus_per_worker=2.0, use_gpu=True, learning_rate=2e-6, epochs=2, batch_size=4,
                          kl_coeff=0.2, max_new_tokens=16)
    data = tomllib.loads(render_config(answers))
    assert data["general"] == {"model_name": "pol", "rm_name": "rew", "rm_pretrain": "checkpoints/rm",
                               "output_dir": "runs/x", "checkpoint_dir": "ck/x", "seed": 42}
    assert data["dataset"]["validation_file"] == "v.jsonl"
    assert "validation_split_percentage" not in data["dataset"]
    assert data["training"]["resources_per_worker"] == {"CPU": 2, "GPU": 1}
    assert (data["training"]["num_training_workers"], data["training"]["learning_rate"]) == (3, 2e-6)
    assert (data["training"]["epochs"], data["training"]["batch_size"], data["training"]["kl_coeff"]) == (2, 4, 0.2)
    assert data["generation"]["max_new_tokens"] == 16
    assert answers.missing() == []


def test_unset_answers_keep_the_template_values() -> None:
    answers = InitAnswers("sft", epochs=3)
    data = tomllib.loads(render_config(answers))
    assert data["training"]["epochs"] == 3
    assert data["general"]["base_model"] == "openai-community/gpt2"
    assert "kl_coeff" in InitAnswers("ppo").missing() and "kl_coeff" not in answers.missing()
    assert "model" in answers.missing()


def test_invalid_answers_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="training.learning_rate: must be greater than 0"):
        render_config(InitAnswers("rm", learning_rate=-1.0), shown_as="rm.toml (not written)")


def test_paths_typed_in_the_current_directory_are_rewritten_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    answers = InitAnswers("rm", model="models/tiny", train_file="data/rm.jsonl", output_dir="/abs/runs")
    moved = answers.relative_to(tmp_path / "configs", tmp_path)
    assert moved.model == "../models/tiny"
    assert moved.train_file == "../data/rm.jsonl"
    assert moved.output_dir == "/abs/runs"
    same_dir = answers.relative_to(tmp_path, tmp_path)
    assert same_dir.model == "./models/tiny"  # "./" so the loader treats it as a folder, not a hub id
    assert InitAnswers("rm", model="org/name").relative_to(tmp_path / "c", tmp_path).model == "org/name"


# ------------------------------------------------------------------------------------------------ from the schema

FLAGS = ["--model", "--model-pretrain", "--rm-model", "--rm-pretrain", "--train-file", "--validation-file",
         "--output-dir", "--checkpoint-dir", "--workers", "--cpus-per-worker", "--gpu/--no-gpu", "--learning-rate",
         "--epochs", "--batch-size", "--kl-coeff", "--max-new-tokens"]


def test_init_flags_come_from_the_schema_and_each_sets_a_key_of_its_stages() -> None:
    flags = init_flags()
    assert [flag.declaration for flag in flags] == FLAGS
    for flag in flags:
        for question in flag.questions:
            field = field_info(question.stage, question.key)
            assert field is not None, f"{flag.declaration} -> {question.stage} {question.key}"
            if question.ask.entry:
                assert is_table_field(question.stage, question.key)
            elif question.words:  # a number or a word ("auto"): typed as text, parsed by the question
                assert flag.value_type is str and question.parse("3") == 3 and question.parse("auto") == "auto"
            else:
                kind = value_type(field.annotation)
                assert flag.value_type is (str if kind is Path else kind)
    ppo_only = {flag.declaration for flag in flags if flag.stages == ("ppo",)}
    assert ppo_only == {"--kl-coeff"}
    on_policy = {flag.declaration for flag in flags if flag.stages == ("ppo", "grpo")}
    assert on_policy == {"--model-pretrain", "--rm-model", "--rm-pretrain", "--max-new-tokens"}
    by_name = {flag.name: flag for flag in flags}
    assert [question.key for question in by_name["model"].questions] == [
        "general.base_model", "general.base_model", "general.model_name", "general.base_model", "general.model_name"]
    assert by_name["kl_coeff"].help.startswith("PPO: ") and "(training.kl_coeff)" in by_name["kl_coeff"].help
    assert by_name["epochs"].smallest == 1 and by_name["learning_rate"].smallest is None


def test_questions_come_in_wizard_order() -> None:
    assert [question.name for question in init_questions("rm")] == [
        "model", "train_file", "validation_file", "output_dir", "checkpoint_dir", "workers", "cpus_per_worker",
        "use_gpu", "learning_rate", "epochs", "batch_size"]
    assert [question.name for question in init_questions("ppo")] == [
        "model", "model_pretrain", "rm_model", "rm_pretrain", "train_file", "validation_file", "output_dir",
        "checkpoint_dir", "workers", "cpus_per_worker", "use_gpu", "learning_rate", "epochs", "batch_size",
        "kl_coeff", "max_new_tokens"]


def test_question_texts_and_checks_follow_the_field() -> None:
    questions = {question.name: question for question in init_questions("ppo")}
    template = template_defaults("ppo")
    assert questions["validation_file"].text(template) == (
        "Validation data file (empty: hold out 5% of the training data):")
    assert questions["validation_file"].optional and questions["validation_file"].validator() is None
    assert questions["workers"].validator()("0") == 'enter a whole number greater than 0 or "auto"'
    assert questions["workers"].validator()("auto") is None and questions["workers"].validator()("2") is None
    assert questions["workers"].template_value(template) == "auto"
    assert questions["kl_coeff"].validator()("-1") == "enter a number of 0 or more"
    assert questions["kl_coeff"].validator()("x") == "enter a number, e.g. 0.05"
    assert questions["learning_rate"].validator()("0") == "enter a number greater than 0"
    assert questions["cpus_per_worker"].validator()("0.5") is None
    assert questions["model"].validator()(" ") == "this cannot be empty"
    assert questions["use_gpu"].template_value(template) is False
    assert questions["model"].is_model_source and questions["rm_pretrain"].is_path


def test_unknown_answers_and_answers_for_another_stage() -> None:
    with pytest.raises(TypeError, match="lerning_rate"):
        InitAnswers("rm", lerning_rate=1.0)
    answers = InitAnswers("rm", kl_coeff=0.1, epochs=2)
    assert [flag.declaration for flag in answers.not_for_this_stage()] == ["--kl-coeff"]
    assert answers.epochs == 2 and answers.kl_coeff == 0.1


def test_gpu_answers_add_or_remove_the_table_entry() -> None:
    assert InitAnswers("rm", use_gpu=True).template_values() == {"training.resources_per_worker": {"CPU": 1,
                                                                                                   "GPU": 1}}
    assert InitAnswers("rm", use_gpu=False).template_values() == {"training.resources_per_worker": {"CPU": 1}}
    assert InitAnswers("rm", cpus_per_worker=0.5).template_values() == {
        "training.resources_per_worker": {"CPU": 0.5}}
