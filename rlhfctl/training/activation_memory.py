"""Transient memory of one forward, backward or generation, from a model's shape (pure arithmetic, no torch).

:mod:`rlhfctl.training.memory` combines these into a worker's peak. Each function returns bytes as the process
holds them, which on CPU is more than the tensors alive at once: glibc's ``malloc`` serves blocks below its mmap
threshold (it grows to 32 MiB) from heaps that keep freed memory and fragment as a training step allocates and
frees activations of many sizes. :func:`resident` applies what that costs (measured: a 60 M-parameter Llama's RM
step peaks at 1.58 GiB with every block mmapped and returned to the system — ``MALLOC_MMAP_THRESHOLD_=1048576`` —
and at 2.03-2.12 GiB with glibc's default; across the SFT, RM and PPO runs of ``benchmarks/bench_memory.py`` the
heap-sized transient memory costs 1.5-1.9x its size). Blocks above the threshold are mmapped and given back.
With ``RLHFCTL_MALLOC=release`` rlhfctl's training processes fix the threshold at 1 MiB
(:mod:`rlhfctl.training.allocator`; the plan reads it into ``PassSettings.mmap_threshold_bytes``), so only blocks
below that pay the retention; by default the estimate assumes glibc's dynamic threshold.

Sources of the per-token figures: ``model_shape.BlockActivations`` (what a block keeps for its backward, measured
per architecture with saved-tensor hooks); the loss heads' full-vocabulary tensors were measured with the torch
profiler's allocation events (``tests/training/test_activation_memory.py`` re-measures the blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rlhfctl.training.model_shape import READ_SHORTCUT_MODEL_TYPES, ModelShape

FP32 = 4
HALF = 2
MiB = 1024**2
MMAP_THRESHOLD_BYTES = 32 * MiB  # glibc's largest dynamic mmap threshold on 64-bit systems (its default policy)
CPU_HEAP_RETENTION = 0.8  # extra resident memory per byte of heap-sized transient tensors (glibc, measured)
AUTOCAST_ACTIVATION_FACTOR = 0.8  # activation bytes under bf16/fp16 autocast relative to fp32 (measured 0.75-0.82)

Loss = Literal["token_nll", "logprobs", "score"]


@dataclass(frozen=True)
class PassSettings:
    """How a model runs its forwards in this stage."""

    device: Literal["cpu", "cuda"] = "cpu"
    autocast: bool = False  # bf16/fp16 autocast (training.mixed_precision)
    gradient_checkpointing: bool = False
    keeps_dropout: bool = False  # trains with the model's own dropout (SFT)
    frozen_base: bool = False  # LoRA adapters on a frozen base
    lora_r: int = 0
    lora_linears_per_block: int = 0
    mmap_threshold_bytes: int = MMAP_THRESHOLD_BYTES  # CPU: blocks this large are mmapped (training/allocator.py)

    @property
    def activation_bytes(self) -> float:
        return FP32 * (AUTOCAST_ACTIVATION_FACTOR if self.autocast else 1.0)

    @property
    def logit_bytes(self) -> int:
        return HALF if self.autocast else FP32


def resident(total_bytes: float, tensor_bytes: float, settings: PassSettings) -> int:
    """The memory ``total_bytes`` of transient tensors of ``tensor_bytes`` each occupy in the process: on CPU, heap
    blocks (below the mmap threshold in force) cost :data:`CPU_HEAP_RETENTION` more; mmapped ones and GPU memory
    cost their size (PyTorch's CUDA caching allocator reuses its blocks)."""
    if settings.device == "cpu" and tensor_bytes < settings.mmap_threshold_bytes:
        return int(total_bytes * (1 + CPU_HEAP_RETENTION))
    return int(total_bytes)


def block_elements_per_token(shape: ModelShape, length: int, settings: PassSettings = PassSettings()) -> float:
    """Elements one block keeps for the backward per token: the measured coefficients, the attention mask, one
    log-sum-exp per head, eager attention's probabilities, dropout's copies and LoRA's low-rank intermediates; a
    frozen RMSNorm weight needs no normalised input kept."""
    coefficients = shape.activations
    elements = (coefficients.hidden * shape.hidden_size + coefficients.attention * shape.num_heads * shape.head_dim
                + coefficients.kv * shape.num_kv_heads * shape.head_dim
                + coefficients.mlp * shape.intermediate_size + length + shape.num_heads)
    if shape.attention == "eager":
        elements += 2 * shape.num_heads * length  # scores and probabilities
    if settings.keeps_dropout and shape.dropout > 0:
        elements += 2 * shape.hidden_size  # dropped copies (and their masks) of the attention and MLP outputs
    if settings.keeps_dropout and shape.attention_dropout > 0:
        elements += 2.75 * shape.num_heads * length  # SDPA falls back to the math kernel: probabilities, mask
    if settings.frozen_base and shape.norm == "rms":
        elements -= shape.norms_per_block * shape.hidden_size
    return elements + settings.lora_r * settings.lora_linears_per_block


def _widest(shape: ModelShape) -> int:
    return max(shape.hidden_size, shape.intermediate_size, shape.num_heads * shape.head_dim)


def kept_activations(shape: ModelShape, rows: int, length: int, settings: PassSettings, *,
                     reads_per_row: int = 0, weight_parameters: int = 0) -> int:
    """What a forward with gradients keeps for its backward: the blocks (each block's input only under gradient
    checkpointing, plus one block recomputed at a time), the final norm, the head's input and the mask; under
    autocast also the half-precision copies of the ``weight_parameters`` it used."""
    tokens = rows * length
    per_block = block_elements_per_token(shape, length, settings)
    blocks, final_block_partial = float(shape.num_layers), 0.0
    if reads_per_row and shape.model_type in READ_SHORTCUT_MODEL_TYPES:
        # the final block runs only at the read positions: its input norm and keys/values at every position
        blocks -= 1
        final_block_partial = 3 * shape.hidden_size + 2 * shape.num_heads * shape.head_dim
    if settings.gradient_checkpointing:
        elements = shape.num_layers * shape.hidden_size + per_block
    else:
        elements = blocks * per_block + final_block_partial
    elements += _final_norm_and_head_input(shape, length, settings)
    if settings.keeps_dropout and shape.dropout > 0:
        elements += shape.hidden_size  # embedding dropout
    activations = resident(tokens * elements * settings.activation_bytes,
                           tokens * _widest(shape) * settings.activation_bytes, settings)
    weight_copies = weight_parameters * HALF if settings.autocast else 0
    return activations + resident(weight_copies, _largest_block_linear(shape) * HALF, settings)


def _final_norm_and_head_input(shape: ModelShape, length: int, settings: PassSettings) -> float:
    """Per token, after the blocks: the final norm's input (RMSNorm also its normalised input and the mask), and
    the head's input when the head is trained (a frozen LoRA base keeps neither of the last two)."""
    if shape.norm == "rms":
        return shape.hidden_size * (1 if settings.frozen_base else 3) + length
    return shape.hidden_size * (1 if settings.frozen_base else 2)


def one_block_bytes(shape: ModelShape, rows: int, length: int, settings: PassSettings) -> int:
    """About one block's activations: what is left when the backward reaches the first block, or a no-grad
    forward's working set."""
    tokens = rows * length
    return resident(tokens * block_elements_per_token(shape, length) * settings.activation_bytes,
                    tokens * _widest(shape) * settings.activation_bytes, settings)


def head_temporaries(shape: ModelShape, rows: int, length: int, loss: Loss, settings: PassSettings, *,
                     response_length: int = 0) -> int:
    """The loss head's full-vocabulary tensors at their peak (forward or backward), beyond the kept activations,
    plus the backward's working set (gradients of one block's inputs and intermediates).

    SFT's cross-entropy holds the logits, an fp32 copy of the shifted logits and the log-softmax in its forward,
    and in the backward the logits, the log-softmax and two gradients of its size; log-probs (PPO, GRPO, DPO) are
    counted with the logits and four response-sized fp32 copies (scaled logits and the detached entropy's softmax
    and product), as autograd's whole-tensor operations hold them. PPO and GRPO now compute theirs a block of
    positions at a time (``objectives/token_logprobs.py``: the logits and, in the backward, one gradient of their
    size); the term is kept as it is because the measured PPO peaks fell by less than the three copies
    (benchmarks/README.md, issue #15's logitmem subsection) and the logits are counted at every position, not only
    the response's."""
    tokens = rows * length
    working = resident(tokens * (2 * shape.hidden_size + 2 * shape.intermediate_size) * FP32,
                       tokens * shape.intermediate_size * FP32, settings)
    full_vocabulary = tokens * shape.vocab_size
    logits = resident(full_vocabulary * settings.logit_bytes, full_vocabulary * settings.logit_bytes,
                      settings)
    fp32 = full_vocabulary * FP32
    if loss == "token_nll":
        softcap = 2 * fp32 if shape.logit_softcapping else 0
        return logits + resident(3 * fp32 + softcap, fp32, settings) + working
    if loss == "logprobs":
        response = rows * response_length * shape.vocab_size * FP32
        softcap = 2 * fp32 if shape.logit_softcapping else 0
        return logits + resident(4 * response, response, settings) + resident(softcap, fp32, settings) + working
    return working  # a scalar head: nothing vocabulary-sized


def no_grad_forward(shape: ModelShape, rows: int, length: int, loss: Loss, settings: PassSettings, *,
                    response_length: int = 0) -> int:
    """A forward without gradients: one block's working set at a time and the hidden states, or the head's output
    (full-vocabulary logits and what the loss derives from them), whichever is larger."""
    tokens = rows * length
    hidden_states = resident(2 * tokens * shape.hidden_size * FP32, tokens * shape.hidden_size * FP32,
                             settings)
    body = one_block_bytes(shape, rows, length, settings) + hidden_states
    if loss == "score":
        return body
    full_vocabulary = tokens * shape.vocab_size
    head = resident(full_vocabulary * settings.logit_bytes, full_vocabulary * settings.logit_bytes, settings)
    if loss == "logprobs":
        response = rows * response_length * shape.vocab_size * FP32
        head += resident(2 * response, response, settings)
    else:
        head += resident(2 * full_vocabulary * FP32, full_vocabulary * FP32, settings)
    return max(body, head)


def generation(shape: ModelShape, rows: int, prompt_length: int, new_tokens: int,
               settings: PassSettings) -> tuple[int, int]:
    """(KV cache, other activations) of sampling with the cache: keys and values of every block for prompt + new
    tokens (fp32: rlhfctl generates outside autocast), the prefill's one-block working set and the per-token
    sampling tensors."""
    length = prompt_length + new_tokens
    per_block = 2 * rows * length * shape.num_kv_heads * shape.head_dim * FP32
    cache = resident(shape.num_layers * per_block, per_block / 2, settings)
    prefill_settings = PassSettings(device=settings.device, mmap_threshold_bytes=settings.mmap_threshold_bytes)
    prefill = one_block_bytes(shape, rows, prompt_length, prefill_settings)
    sampling = resident(4 * rows * shape.vocab_size * FP32, rows * shape.vocab_size * FP32, settings)
    return cache, prefill + sampling


def _largest_block_linear(shape: ModelShape) -> int:
    return max((linear.in_features * linear.out_features for linear in shape.block_linears), default=0)


def transient_gradients(shape: ModelShape, trainable_parameters: int, full_training: bool, settings: PassSettings,
                        *, lm_head: bool) -> int:
    """Gradients a single worker creates in its backward (freed again by ``zero_grad(set_to_none=True)``): the
    embedding and LM-head gradients are separate large blocks, the rest heap-sized."""
    if not full_training:
        return resident(trainable_parameters * FP32, 0, settings)  # adapters and a score head: small
    large = shape.embedding_parameters + (shape.lm_head_parameters if lm_head else 0)
    large_bytes = large * FP32 if shape.vocab_size * shape.hidden_size * FP32 >= settings.mmap_threshold_bytes else 0
    rest = trainable_parameters * FP32 - large_bytes
    return int(large_bytes) + resident(rest, _largest_block_linear(shape) * FP32, settings)
