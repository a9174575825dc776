"""Shared fixtures: tiny local models built once per test session, one shared Ray instance."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED_DATA = REPO_ROOT.parent / "shared" / "seed-data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2-style model + BPE tokenizer, built offline and saved with save_pretrained."""
    from rlhfctl.example.kit import build_model_kit

    corpus = sorted((REPO_ROOT / "examples" / "data").glob("*.jsonl"))
    return build_model_kit(tmp_path_factory.mktemp("tiny-model"), corpus_files=corpus, preset="tiny", seed=0)
