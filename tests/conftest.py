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


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance (2 CPUs) shared by every Ray test of the session.

    ``run_training`` reuses an already initialised Ray instead of starting and stopping its own, so each test
    pays only for its worker group, not for Ray's start-up. Shut down at the end of the session.
    """
    import ray

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024**2, log_to_driver=False,
                 configure_logging=False)
        started = True
    yield ray
    if started:
        ray.shutdown()
