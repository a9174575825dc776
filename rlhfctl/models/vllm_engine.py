"""``generation.backend = "vllm"``: rollouts sampled by a vLLM engine colocated with the training policy.

Each Ray Train worker builds one engine on its own GPU, lazily, the first time it samples (every worker samples at
the same points, so they build it together: vLLM's ``external_launcher`` executor joins the workers' process group,
each engine a tensor-parallel group of one, as TRL's colocate mode does). The engine starts from the policy's
config with dummy weights (``load_format="dummy"``: nothing read from disk twice, and a resized vocabulary or an
SFT export needs no folder of its own) and gets the policy's weights before it first samples; after that, again
before it samples, whenever the policy's optimizer has stepped since (an optimizer post-step hook marks the weights
changed: value warm-up iterations and skipped steps cost nothing).

What the engine receives: every parameter of the bare policy under its transformers name. With ``[lora]`` the
adapters are merged into a copy of each adapted base weight (:func:`rlhfctl.models.adapters.adapters_merged`, the
base restored bitwise afterwards) and peft's names lose their wrapping (``base_model.model.``, ``.base_layer``;
the ``lora_A``/``lora_B`` matrices themselves are not sent), as TRL does.

Sampling keeps the builtin decoder's distribution: the same prompt token ids (left padding removed), temperature,
top-k, top-p (vLLM applies them in transformers' order: temperature, then top-k, then top-p), ``max_new_tokens``
and the stop ids alone (``ignore_eos``: with ``generation.stop_token`` set, EOS does not end a response, as in the
builtin decoder); greedy decoding is temperature 0. vLLM's own log-probs are not used: its kernels and dtype give
other numerics than the training forward, so PPO's and GRPO's old log-probs come from the policy's own forward
(:func:`rlhfctl.models.rollout.collect_rollout` runs it for a :class:`Generation` without log-probs), and the
first update's ratio is 1 where it must be. Responses are returned as every sampler returns them
(:func:`rlhfctl.models.generation.generation_from_tokens`).

The engine's random state comes from ``general.seed`` plus the worker's rank (vLLM seeds torch's global generator
when the engine starts, so a run is reproducible from its seed; a resumed run does not replay the same samples).

Only imported by worker code that already runs torch; vLLM itself is imported when the engine is built.
"""

from __future__ import annotations

import copy
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from rlhfctl.errors import RuntimeFailure
from rlhfctl.models.generation import (
    Generation,
    SamplingSettings,
    generation_from_tokens,
    tokenize_rendered_prompts,
)

PEFT_PREFIX = "base_model.model."  # peft's PeftModel -> LoraModel -> the transformers model
ADAPTER_MARK = "lora_"  # peft's LoRA tuner prefix: lora_A, lora_B, lora_embedding_A, ...


def sampling_params_for(sampling: SamplingSettings, *, repeats: int = 1) -> Any:
    """``vllm.SamplingParams`` with the builtin decoder's distribution: ``repeats`` completions per prompt (vLLM
    refuses more than one when greedy)."""
    from vllm import SamplingParams

    if sampling.do_sample:
        temperature, top_k, top_p = sampling.temperature, sampling.top_k, sampling.top_p
    else:  # vLLM decodes greedily at temperature 0
        temperature, top_k, top_p = 0.0, 0, 1.0
    return SamplingParams(
        n=repeats, temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=sampling.max_new_tokens,
        stop_token_ids=list(sampling.stop_ids), ignore_eos=True, detokenize=False, skip_special_tokens=False,
    )


def prompt_token_lists(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]]:
    """Left-padded prompts ``(batch, prompt_len)`` -> each prompt's own token ids (the padding removed)."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu())]


def sampled_tokens(outputs: list[Any], *, repeats: int, pad_token_id: int, device: Any) -> torch.Tensor:
    """vLLM's ``RequestOutput``s (one per prompt, each with ``repeats`` completions) -> ``(batch * repeats,
    generated_len)`` token ids, a prompt's completions in consecutive rows, padded with ``pad_token_id``."""
    rows = []
    for request in outputs:
        completions = sorted(request.outputs, key=lambda completion: completion.index)
        if len(completions) != repeats:
            raise RuntimeFailure(f"vLLM returned {len(completions)} completions for a prompt; asked for {repeats}")
        rows.extend(list(completion.token_ids) for completion in completions)
    width = max([len(row) for row in rows] + [1])
    tokens = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    for index, row in enumerate(rows):
        tokens[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    return tokens.to(device)


def engine_weight_name(name: str) -> str | None:
    """A parameter's name as the engine loads it (transformers' checkpoint name), or None when it is not sent: a
    LoRA matrix (merged already) or the original of a peft ``modules_to_save`` copy."""
    if ADAPTER_MARK in name or "original_module" in name:
        return None
    return name.removeprefix(PEFT_PREFIX).replace(".base_layer", "").replace("modules_to_save.default.", "")


def engine_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every parameter the engine needs, in :func:`engine_weight_name`'s names."""
    for name, param in model.named_parameters():
        engine_name = engine_weight_name(name)
        if engine_name is not None:
            yield engine_name, param.detach()


def unmerged_adapters(model: nn.Module) -> list[str]:
    """Names of LoRA layers whose adapters are still on (inside ``adapters_merged``: those it could not merge)."""
    return [name for name, module in model.named_modules()
            if hasattr(module, "lora_A") and hasattr(module, "disable_adapters") and not module.disable_adapters
            and len(module.lora_A)]


def set_launcher_environment(device: torch.device) -> None:
    """The torchrun variables vLLM's ``external_launcher`` reads: the process group's rank and size when the
    workers have one (Ray Train sets them; a single in-process worker gets rank 0 of 1 on a free local port), and
    ``LOCAL_RANK`` = the policy's GPU, where vLLM puts the engine. A policy off CUDA is a RuntimeFailure."""
    import torch.distributed as dist

    if device.type != "cuda":
        raise RuntimeFailure(f"generation.backend = \"vllm\" samples on a CUDA GPU; this worker's policy is on "
                             f"{device}.", hint="Give each worker a GPU: training.resources_per_worker = { GPU = 1 }.")
    joined = dist.is_available() and dist.is_initialized()
    os.environ.setdefault("RANK", str(dist.get_rank() if joined else 0))
    os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size() if joined else 1))
    os.environ["LOCAL_RANK"] = str(device.index or 0)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])


class VLLMRollouts:
    """One worker's colocated vLLM engine: built on first use, fed the policy's weights when they changed, sampling
    :class:`Generation`s in the builtin decoder's format.

    ``policy``: the bare trained model (not DDP-wrapped); ``merged``: a context in which ``policy`` holds its
    adapters merged (``adapters_merged``; a no-op context without LoRA); ``optimizer``: the policy's, whose steps
    mark the weights changed. ``generation``: the ``[generation]`` section; ``max_model_len``: prompt plus
    response tokens (``dataset.max_length``); ``seed``: the engine's seed (``general.seed`` + rank).
    """

    def __init__(self, *, policy: nn.Module, tokenizer: Any, sampling: SamplingSettings, generation: Any,
                 max_model_len: int, seed: int, merged: Callable[[nn.Module], AbstractContextManager],
                 optimizer: torch.optim.Optimizer | None = None, trust_remote_code: bool = False):
        self.policy, self.tokenizer, self.sampling = policy, tokenizer, sampling
        self.generation, self.max_model_len, self.seed = generation, max_model_len, seed
        self.merged, self.trust_remote_code = merged, trust_remote_code
        self.llm: Any = None
        self.asleep = False
        self.weights_version = 0  # optimizer steps seen
        self.synced_version: int | None = None  # the version the engine holds (None: dummy weights)
        self.syncs = 0
        self._config_folder: tempfile.TemporaryDirectory | None = None
        if optimizer is not None:
            optimizer.register_step_post_hook(lambda *_: self.mark_updated())

    def mark_updated(self) -> None:
        """The policy's weights changed (called after every optimizer step)."""
        self.weights_version += 1

    def generate(self, prompt_texts: list[str], max_prompt_tokens: int, *, repeats: int = 1) -> Generation:
        """``repeats`` responses to each rendered prompt (consecutive rows), on the policy's device."""
        prompt_ids, prompt_mask = tokenize_rendered_prompts(prompt_texts, self.tokenizer, max_prompt_tokens)
        device = next(self.policy.parameters()).device
        # vLLM draws n completions per request when sampling, and one when greedy: then each prompt goes n times
        per_request = repeats if self.sampling.do_sample else 1
        requests = [{"prompt_token_ids": ids} for ids in prompt_token_lists(prompt_ids, prompt_mask)
                    for _ in range(repeats // per_request)]
        self._ready()
        try:
            outputs = self.llm.generate(requests, sampling_params_for(self.sampling, repeats=per_request),
                                        use_tqdm=False)
        finally:
            self._sleep()
        generated = sampled_tokens(outputs, repeats=per_request, pad_token_id=self.sampling.pad_token_id,
                                   device=device)
        if repeats > 1:
            prompt_ids, prompt_mask = prompt_ids.repeat_interleave(repeats, 0), prompt_mask.repeat_interleave(repeats, 0)
        return generation_from_tokens(prompt_ids.to(device), prompt_mask.to(device), generated, self.sampling)

    # ------------------------------------------------------------------------------------------- engine state

    def _ready(self) -> None:
        """Build the engine (first call), wake it, give it the current weights when it lacks them."""
        if self.llm is None:
            self.llm = self._build_engine()
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        if self.synced_version != self.weights_version:
            self._sync_weights()
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False

    def _sleep(self) -> None:
        if self.generation.vllm_sleep_between_rollouts and self.llm is not None and not self.asleep:
            self.llm.sleep(level=1)  # weights to CPU memory, KV cache freed: the GPU is training's until next time
            self.asleep = True

    def _sync_weights(self) -> None:
        """Every parameter of the policy (adapters merged) into the engine, then its prefix cache cleared (cached
        prompt states were computed with the old weights)."""
        with torch.no_grad(), self.merged(self.policy):
            unmerged = unmerged_adapters(self.policy)
            if unmerged:
                raise RuntimeFailure(
                    f"generation.backend = \"vllm\" needs the LoRA adapters merged into the weights it samples "
                    f"with, and {len(unmerged)} layer(s) cannot be merged that way (e.g. {unmerged[0]}: an adapter "
                    "on an output head tied to the embeddings, or a LoRA variant).",
                    hint="Leave the output head out of lora.target_modules, or use generation.backend = \"builtin\".")
            weights = list(engine_weights(self.policy))
            self.llm.apply_model(lambda engine_model: engine_model.load_weights(iter(weights)))
        self.llm.reset_prefix_cache()
        self.synced_version = self.weights_version
        self.syncs += 1

    def _build_engine(self) -> Any:
        from vllm import LLM

        set_launcher_environment(next(self.policy.parameters()).device)
        generation = self.generation
        return LLM(
            model=self._write_model_config(), load_format="dummy", skip_tokenizer_init=True,
            dtype=generation.vllm_dtype, gpu_memory_utilization=generation.vllm_gpu_memory_utilization,
            max_model_len=self.max_model_len, max_num_batched_tokens=max(4096, self.max_model_len),
            seed=self.seed, enable_sleep_mode=generation.vllm_sleep_between_rollouts,
            distributed_executor_backend="external_launcher", tensor_parallel_size=1,
            trust_remote_code=self.trust_remote_code,
        )

    def _write_model_config(self) -> str:
        """The policy's transformers config (its current vocabulary size, its architecture) in a folder of its
        own: all the engine reads from disk."""
        base = self.policy.get_base_model() if hasattr(self.policy, "get_base_model") else self.policy
        config = copy.deepcopy(base.config)
        if not getattr(config, "architectures", None):
            config.architectures = [type(base).__name__]
        self._config_folder = tempfile.TemporaryDirectory(prefix="rlhfctl-vllm-")
        config.save_pretrained(self._config_folder.name)
        return self._config_folder.name


def colocated_rollouts(ctx: Any, policy: nn.Module, optimizer: torch.optim.Optimizer | None, tokenizer: Any,
                       sampling: SamplingSettings) -> VLLMRollouts:
    """A worker's :class:`VLLMRollouts` for its stage config (``generation.backend = "vllm"``); ``policy``: the
    bare trained model, ``optimizer``: its optimizer."""
    from rlhfctl.models.adapters import adapters_merged

    config = ctx.config
    return VLLMRollouts(
        policy=policy, tokenizer=tokenizer, sampling=sampling, generation=config.generation,
        max_model_len=config.dataset.max_length, seed=config.general.seed + ctx.rank, merged=adapters_merged,
        optimizer=optimizer, trust_remote_code=config.general.trust_remote_code,
    )
