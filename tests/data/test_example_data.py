"""The bundled example data: regenerated from its seed it matches the committed files, and `data convert` of each
raw file reproduces the committed standard file byte for byte."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rlhfctl.data.convert import ConvertRequest, convert_file
from rlhfctl.data.loading import load_rows

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def load_generator():
    spec = importlib.util.spec_from_file_location("example_data_generate", EXAMPLES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_reproduces_the_committed_files(tmp_path):
    generator = load_generator()
    written = generator.write_all(tmp_path, seed=0)
    assert len(written) == 8
    for path in written:
        relative = path.relative_to(tmp_path)
        assert path.read_bytes() == (EXAMPLES / relative).read_bytes(), f"{relative} is out of date"


@pytest.mark.parametrize(("raw", "target", "standard", "skipped"), [
    ("raw/rm_hh.jsonl", "rm", "rm.jsonl", {"prompt-mismatch": 1, "identical-pair": 1, "empty-response": 1}),
    ("raw/sft_alpaca.json", "sft", "sft.jsonl", {}),
    ("raw/ppo_prompts.jsonl", "ppo", "ppo.jsonl", {}),
    ("raw/heldout_prompts.jsonl", "ppo", "heldout_prompts.jsonl", {}),
])
def test_convert_reproduces_the_standard_files(tmp_path, raw, target, standard, skipped):
    out = tmp_path / standard
    report = convert_file(ConvertRequest(str(EXAMPLES / raw), out, target))
    assert {reason: tally.count for reason, tally in report.skipped.items()} == skipped
    assert out.read_bytes() == (EXAMPLES / standard).read_bytes()


def test_example_data_is_learnable_and_consistent():
    rm_rows = load_rows(EXAMPLES / "rm.jsonl", "rm")
    assert len(rm_rows) == 500
    assert all(row["chosen"].startswith(" ") and row["rejected"].startswith(" ") for row in rm_rows)
    assert all("Hope that helps!" in row["chosen"] and "Hope that helps!" not in row["rejected"] for row in rm_rows)
    assert all(row["prompt"].startswith("\n\nHuman: ") and row["prompt"].endswith("\n\nAssistant:")
               for row in rm_rows)
    sft_rows = load_rows(EXAMPLES / "sft.jsonl", "sft")
    polite = sum("Hope that helps!" in row["messages"][-1]["content"] for row in sft_rows)
    assert len(sft_rows) == 400 and polite == 200
    assert all(row["messages"][0]["content"].endswith("\n\nAssistant:") for row in sft_rows)
    ppo = {row["prompt"] for row in load_rows(EXAMPLES / "ppo.jsonl", "ppo")}
    heldout = {row["prompt"] for row in load_rows(EXAMPLES / "heldout_prompts.jsonl", "ppo")}
    trained_on = ppo | {row["prompt"] for row in rm_rows} | {row["messages"][0]["content"] for row in sft_rows}
    assert len(ppo) == 300 and len(heldout) == 32 and not heldout & trained_on
    words = {word for path in EXAMPLES.glob("*.jsonl") for word in path.read_text().replace("\\n", " ").split()}
    assert len(words) < 400  # a small vocabulary a 1024-token BPE covers
