"""``generation.backend = "vllm"`` checked in the driver, before any worker starts (cheap: vLLM is looked up, not
imported).

Each refusal is a :class:`~rlhfctl.errors.ConfigIssue` naming the key, what it found and why rlhfctl cannot run
that combination correctly:

- vLLM not importable here: the extra is missing (``pip install 'rlhfctl[vllm]'``);
- no whole GPU per worker: vLLM runs on GPUs only, and each worker's engine reserves
  ``vllm_gpu_memory_utilization`` of *its* device, so two workers on one GPU would reserve it twice;
- ``training.strategy = "fsdp"``: FSDP is chosen because a worker cannot hold the whole policy beside its training
  state, yet a colocated engine holds one more whole copy (plus its KV cache) on every GPU.

LoRA needs no check here: the engine gets the adapters merged into the weights, and a layer that cannot be merged
that way stops the worker with a clear message (:mod:`rlhfctl.models.vllm_engine`).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from rlhfctl.errors import ConfigError, ConfigIssue

VLLM = "vllm"
INSTALL_HINT = "pip install 'rlhfctl[vllm]'"


def vllm_importable() -> bool:
    """Whether ``import vllm`` would find a module (without importing it: that costs seconds and CUDA)."""
    if sys.modules.get(VLLM) is not None:
        return True
    try:
        return importlib.util.find_spec(VLLM) is not None
    except (ImportError, ValueError):
        return False


def vllm_issues(config: Any) -> list[ConfigIssue]:
    """What stops a stage config with ``generation.backend = "vllm"`` from running (empty for "builtin")."""
    generation, training = config.generation, config.training
    if generation.backend != VLLM:
        return []
    issues = []
    if not vllm_importable():
        issues.append(ConfigIssue(
            "generation.backend", f"is \"vllm\" but vLLM is not installed in this environment; install the extra: "
            f"{INSTALL_HINT} (on a machine with CUDA GPUs), or use backend = \"builtin\"", generation.backend))
    if training.gpus_per_worker < 1:
        issues.append(ConfigIssue(
            "generation.backend", "is \"vllm\", which samples on GPUs only and needs a whole GPU per worker (each "
            "worker's engine reserves generation.vllm_gpu_memory_utilization of its own device); found "
            f"training.resources_per_worker = {dict(training.resources_per_worker)}. Set "
            "training.resources_per_worker = { GPU = 1 } (or more), or use backend = \"builtin\"",
            generation.backend))
    if training.strategy == "fsdp":
        issues.append(ConfigIssue(
            "training.strategy", "is \"fsdp\" with generation.backend = \"vllm\": FSDP shards the policy because a "
            "worker cannot hold all of it beside its training state, but a colocated vLLM engine keeps one more "
            "whole copy (and its KV cache) on every GPU. Use strategy = \"ddp\" (with [lora] to save memory), or "
            "backend = \"builtin\"", training.strategy))
    return issues


def check_vllm_settings(config: Any) -> None:
    """Raise one :class:`ConfigError` (exit 2) with every issue of :func:`vllm_issues`."""
    issues = vllm_issues(config)
    if issues:
        raise ConfigError(issues)
