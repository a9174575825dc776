"""The tiny offline model kit: deterministic, loadable with plain transformers, never clobbered silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfctl.errors import UserError
from rlhfctl.example.kit import build_model_kit_folder, example_data_dir

CORPUS = sorted(example_data_dir().glob("*.jsonl"))


def test_same_seed_same_bytes_and_plain_transformers_loads_it(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = build_model_kit_folder(tmp_path / "a", corpus_files=CORPUS, seed=3)
    second = build_model_kit_folder(tmp_path / "b", corpus_files=CORPUS, seed=3)
    assert (first.out_dir / "model.safetensors").read_bytes() == (second.out_dir / "model.safetensors").read_bytes()
    assert (first.out_dir / "tokenizer.json").read_bytes() == (second.out_dir / "tokenizer.json").read_bytes()
    assert 100_000 < first.parameters < 1_000_000

    tokenizer = AutoTokenizer.from_pretrained(first.out_dir)
    model = AutoModelForCausalLM.from_pretrained(first.out_dir)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.vocab_size == first.vocab_size == len(tokenizer)
    # the tokenizer was trained on the example text: its phrases are a few tokens, not one per byte
    assert len(tokenizer(" Sure! Happy to help.")["input_ids"]) <= 8


def test_refuses_to_replace_an_existing_folder_without_force(tmp_path):
    target = tmp_path / "kit"
    target.mkdir()
    (target / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UserError, match="already exists"):
        build_model_kit_folder(target, corpus_files=CORPUS)
    assert (target / "keep.txt").read_text(encoding="utf-8") == "mine"
    build_model_kit_folder(target, corpus_files=CORPUS, force=True)
    assert not (target / "keep.txt").exists() and (target / "config.json").is_file()


def test_example_data_dir_is_the_repository_folder():
    assert example_data_dir() == Path(__file__).resolve().parents[2] / "examples" / "data"
