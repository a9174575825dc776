"""A stand-in for the ``vllm`` package (``LLM``, ``SamplingParams``) for tests on machines without a GPU.

It records every call, and it is strict where vLLM is: ``LLM`` builds a transformers model from the config folder it
is given (random weights, like ``load_format="dummy"``), ``load_weights`` puts the named tensors into that model and
fails on a name the model does not have (vLLM's loaders take transformers' checkpoint names), and ``generate`` decodes
the given prompt token ids with the weights it holds: greedily by default (so its tokens follow the synced weights),
or from ``script(prompt_ids, index)`` when a test sets one. Completions come back out of ``index`` order, as vLLM may
return them.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch


class SamplingParams:
    """Keeps its keyword arguments (``params.kwargs``) and exposes them as attributes."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.n = kwargs.get("n", 1)
        self.max_tokens = kwargs.get("max_tokens", 16)
        self.stop_token_ids = kwargs.get("stop_token_ids") or []


class EngineModel:
    """What ``LLM.apply_model`` hands a function: the engine's model with vLLM's ``load_weights``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.loaded: list[list[str]] = []  # the names of each load_weights call

    def load_weights(self, weights) -> set[str]:
        weights = list(weights)
        self.loaded.append([name for name, _ in weights])
        own = dict(self.model.named_parameters())
        unknown = [name for name, _ in weights if name not in own]
        if unknown:
            raise KeyError(f"the engine's model has no parameter {unknown[:3]}")
        with torch.no_grad():
            for name, tensor in weights:
                own[name].copy_(tensor)
        return {name for name, _ in weights}


class LLM:
    """``vllm.LLM``'s surface that rlhfctl uses; ``calls`` lists what happened, in order."""

    instances: list[LLM] = []
    script: Callable[[list[int], int], list[int]] | None = None

    def __init__(self, model: str, **kwargs: Any) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        self.kwargs = {"model": model, **kwargs}
        self.calls: list[Any] = []
        self.requests: list[tuple[list[dict], SamplingParams]] = []
        config = AutoConfig.from_pretrained(model)
        torch.manual_seed(12345)  # "dummy" weights: random, never the policy's
        self.engine_model = EngineModel(AutoModelForCausalLM.from_config(config).eval())
        type(self).instances.append(self)

    def apply_model(self, func):
        self.calls.append("apply_model")
        return [func(self.engine_model)]

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.calls.append("reset_prefix_cache")
        return True

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.calls.append(("wake_up", tuple(tags or ())))
        return True

    def generate(self, prompts, sampling_params=None, *, use_tqdm=True, **_: Any):
        self.calls.append("generate")
        self.requests.append((prompts, sampling_params))
        outputs = []
        for prompt in prompts:
            ids = list(prompt["prompt_token_ids"])
            completions = [SimpleNamespace(index=index, token_ids=self._complete(ids, index, sampling_params))
                           for index in range(sampling_params.n)]
            outputs.append(SimpleNamespace(prompt_token_ids=ids, outputs=completions[::-1]))
        return outputs

    def _complete(self, ids: list[int], index: int, params: SamplingParams) -> list[int]:
        if type(self).script is not None:
            return list(type(self).script(ids, index))
        tokens: list[int] = []
        with torch.no_grad():
            for _ in range(params.max_tokens):
                logits = self.engine_model.model(torch.tensor([ids + tokens])).logits[0, -1]
                tokens.append(int(logits.argmax()))
                if tokens[-1] in params.stop_token_ids:
                    break
        return tokens


def install(monkeypatch) -> type[LLM]:
    """Put a fresh stand-in ``vllm`` into ``sys.modules`` (undone by ``monkeypatch``); returns its ``LLM`` class."""
    llm_class = type("LLM", (LLM,), {"instances": [], "script": None})
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = llm_class, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return llm_class
