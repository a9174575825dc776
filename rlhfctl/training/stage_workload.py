"""A stage's memory workload: the models one worker holds and the phases of one step (pure data, no torch).

Each recipe's memory hook (``TrainingJob.memory``) describes its stage with these types;
:func:`rlhfctl.training.memory.estimate_memory` turns a :class:`StageWorkload` plus the run's settings into bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

Loss = Literal["token_nll", "logprobs", "score"]


@dataclass(frozen=True)
class ModelUse:
    """One model a worker holds."""

    role: str  # "policy", "reference", "reward", "value", ...
    source: str  # hub id or folder whose config.json gives its shape (a key of MemoryInputs.shapes)
    head: Literal["lm", "score"]  # AutoModelForCausalLM, or AutoModelForSequenceClassification(num_labels=1)
    trained: bool  # trained (gradients, optimizer state) or frozen
    lora_shares_base_with: str | None = None  # with LoRA on, runs on that role's frozen base (the reference is the
    #                                           policy with its adapter disabled): no base weights of its own
    resident: bool = True  # False: loaded for the phases that use it, then freed (DPO's separate reference model,
    #                        scored once before training): its weights count in those phases only


@dataclass(frozen=True)
class ForwardPass:
    """One forward of a model over ``rows`` sequences of ``length`` tokens."""

    role: str
    rows: int
    length: int
    grad: bool  # activations kept for a backward (a training micro-step), or a no-grad forward
    loss: Loss  # token_nll: log-softmax over every position (SFT); logprobs: over response positions (PPO, DPO);
    #             score: a scalar head (reward, value)
    response_length: int = 0  # logprobs: positions per row whose full-vocabulary logits the loss reads
    reads_per_row: int = 0  # score read at this many positions only (RM: 1, or 2 for packed pairs), else 0


@dataclass(frozen=True)
class Generation:
    """Sampling ``new_tokens`` tokens for ``rows`` prompts of ``prompt_length`` tokens with the KV cache."""

    role: str
    rows: int
    prompt_length: int
    new_tokens: int
    merges_adapters: bool = False  # with LoRA, samples from a merged copy of the adapted weights (unsharded runs)


Step = Union[ForwardPass, Generation]


@dataclass(frozen=True)
class Phase:
    """A part of a training step whose transient memory peaks together.

    ``together=True``: every forward's activations are alive at once, then one backward (a training micro-step
    over several models, e.g. PPO's policy and value model); ``False``: the steps run one after another (no-grad
    forwards, generation), so the phase's peak is its largest step's. ``gradients_of``: trained roles whose
    gradients, from an earlier backward of the same optimizer step, stay alive through the phase (PPO's value
    model trains after the policy's own backward, with the policy's gradients waiting for the step).
    """

    name: str
    steps: tuple[Step, ...]
    together: bool = True
    gradients_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageWorkload:
    """What one worker of a stage holds and runs: filled by each recipe's memory hook (``TrainingJob.memory``)."""

    models: tuple[ModelUse, ...]
    phases: tuple[Phase, ...]
    data_bytes: int = 0  # the worker's copy of the data (Python rows and their tokenisation; rows_bytes())
    keeps_dropout: bool = False  # trains with the model's own dropout (SFT); RM and PPO turn dropout off


CHARS_PER_TOKEN = 3.5  # a rough BPE average, for the size of token lists
ROW_OBJECT_BYTES = 600  # a JSON row as Python dicts, lists and string headers
TOKEN_ENTRY_BYTES = 36  # one token id in a Python list: the pointer and the int object


def rows_bytes(rows: list, *, token_lists_per_row: int, max_length: int) -> int:
    """Rough bytes of data rows in a worker: the Python rows and ``token_lists_per_row`` token-id lists each (SFT:
    ids and labels; RM: chosen and rejected ids), each at most ``max_length`` long."""
    total = 0
    for row in rows:
        chars = _characters(row)
        tokens = min(max_length, int(chars / CHARS_PER_TOKEN) + 1)
        total += ROW_OBJECT_BYTES + chars + token_lists_per_row * tokens * TOKEN_ENTRY_BYTES
    return total


def _characters(value: object) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_characters(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_characters(item) for item in value)
    return 0
