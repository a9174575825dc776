"""GRPO's [reward] section as named, weighted components: each built-in function on a batch, unique names, the
keys rows must carry, and user functions (installed, marked, returning numbers)."""

from __future__ import annotations

import textwrap

import pytest

from rlhfctl.config.schema import GRPOConfig
from rlhfctl.recipes.grpo_rewards import Completions, build_reward_functions, row_keys

BATCH = Completions(
    rows=[{"prompt": "2+2?", "answer": "4"}, {"prompt": "3+3?", "answer": 6}],
    prompts=["Q: 2+2?", "Q: 3+3?"],
    responses=["I think the answer is 4. Hope that helps", "The answer is 5"],
    response_tokens=[10, 4],
)


def config_with(functions: list[dict]) -> GRPOConfig:
    return GRPOConfig.model_validate({
        "general": {"model_name": "m", "output_dir": "runs", "checkpoint_dir": "ckpt"},
        "dataset": {"train_file": "p.jsonl"}, "reward": {"functions": functions}})


def test_each_built_in_function_scores_the_batch_and_names_are_unique():
    functions = build_reward_functions(config_with([
        {"name": "exact_match", "extract": r"answer is (\d+)"},
        {"name": "contains", "text": "hope THAT", "ignore_case": True, "weight": 0.5},
        {"name": "regex", "pattern": r"^The", "full_match": False},
        {"name": "length", "min_tokens": 5, "max_tokens": 12},
        {"name": "contains", "text": "answer"},
    ]))
    assert [function.name for function in functions] == ["exact_match", "contains", "regex", "length", "contains_2"]
    assert [function.weight for function in functions] == [1.0, 0.5, 1.0, 1.0, 1.0]
    scores = {function.name: function.score(BATCH) for function in functions}
    assert scores == {"exact_match": [1.0, 0.0], "contains": [1.0, 0.0], "regex": [0.0, 1.0],
                      "length": [1.0, 0.0], "contains_2": [1.0, 1.0]}


def test_rows_must_carry_what_exact_match_reads():
    assert row_keys(config_with([{"name": "contains", "text": "x"}])) == {}
    assert row_keys(config_with([{"name": "contains", "text": "x"}, {"name": "exact_match", "field": "gold"}])) == {
        "gold": "reward.functions[1] (exact_match)"}


def test_user_functions_run_and_must_return_finite_numbers(tmp_path, monkeypatch):
    (tmp_path / "graders.py").write_text(textwrap.dedent("""\
        from rlhfctl.objectives.rewards import reward_function

        @reward_function
        def says_answer(prompt, response, row):
            return float(str(row["answer"]) in response)

        @reward_function
        def broken(prompt, response, row):
            return "yes"
    """), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    (function,) = build_reward_functions(config_with([{"name": "python", "function": "graders:says_answer"}]))
    assert function.name == "python" and function.score(BATCH) == [1.0, 0.0]
    (broken,) = build_reward_functions(config_with([{"name": "python", "function": "graders:broken"}]))
    with pytest.raises(TypeError, match="returned 'yes'; expected a finite number"):
        broken.score(BATCH)


def test_user_function_references_are_checked_by_the_schema():
    with pytest.raises(ValueError, match='expected "package.module:function"'):
        config_with([{"name": "python", "function": "os.system"}])
