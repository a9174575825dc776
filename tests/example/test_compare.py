"""The example's final comparison table, rendered to a string."""

from __future__ import annotations

from io import StringIO

import pytest
from rich.console import Console

from rlhfctl.example.compare import Comparison, ScoredResponse, render_comparison


def make_comparison(**overrides) -> Comparison:
    prompt = "\n\nHuman: How do I paint my phone?\n\nAssistant:"
    values = dict(
        rm_accuracy=0.96,
        sft=[ScoredResponse(prompt, " No. Do it yourself.", -2.0), ScoredResponse(prompt, " Sure! Happy to help.", 1.5)],
        ppo=[ScoredResponse(prompt, " Sure! Glad to help.", 1.9), ScoredResponse(prompt, " Sure! Happy to help.", 1.5)],
        sft_loss_before=6.27,
        sft_loss_after=0.53,
        ppo_kl=2.1,
    )
    values.update(overrides)
    return Comparison(**values)


def render(comparison: Comparison, examples: int = 3) -> str:
    console = Console(file=StringIO(), width=120, color_system=None)
    render_comparison(comparison, console, examples=examples)
    return console.file.getvalue()


def test_figures_and_means():
    comparison = make_comparison()
    assert comparison.sft_mean_score == pytest.approx(-0.25)
    assert comparison.ppo_mean_score == pytest.approx(1.7)
    assert comparison.ppo_win_rate == 0.5  # a tie is not a win
    assert comparison.warnings == []
    data = comparison.to_dict()
    assert data["samples"][0]["ppo_response"] == " Sure! Glad to help."
    assert data["ppo_mean_score"] == pytest.approx(1.7)


def test_table_shows_every_figure_and_the_responses_side_by_side():
    text = render(make_comparison())
    assert "RM held-out accuracy" in text and "96.0%" in text
    assert "6.270 → 0.530" in text
    assert "-0.250" in text and "+1.700" in text and "+1.950 vs SFT" in text and "wins 50%" in text
    assert "2.100" in text
    assert "How do I paint my phone?" in text and "Human:" not in text  # the prompt shown without its labels
    assert "No. Do it yourself." in text and "Sure! Glad to help." in text
    assert "score -2.00" in text and "score +1.90" in text
    assert "warning" not in text


def test_examples_limits_the_side_by_side_rows_and_zero_hides_them():
    assert render(make_comparison(), examples=1).count("score ") == 2
    assert "side by side" not in render(make_comparison(), examples=0)


def test_failed_stages_are_called_out():
    prompt = "p"
    comparison = make_comparison(rm_accuracy=0.6, sft_loss_after=7.0,
                                 ppo=[ScoredResponse(prompt, "x", -3.0), ScoredResponse(prompt, "y", -3.0)])
    assert len(comparison.warnings) == 3
    text = render(comparison)
    assert "did not lower the held-out loss" in text
    assert "only 60% accurate" in text
    assert "PPO did not raise the mean reward" in text
