"""A decoder model's shape: parameter counts, LoRA adapter sizes, what a block keeps for its backward.

```python
shape = read_model_shape("checkpoints/sft")        # training/model_config.py: from config.json, no weights loaded
shape.causal_lm_parameters()                         # == sum(p.numel()) of AutoModelForCausalLM (tied counted once)
shape.classifier_parameters()                        # AutoModelForSequenceClassification(num_labels=1)
shape.lora_parameters(r=8, target_modules="all-linear")
```

Every architecture is described the same way — the linear layers of one decoder block (with the names peft matches
``target_modules`` against), the block's norm parameters, the embeddings, the final norm and the LM head — so the
parameter count is a sum and a LoRA adapter on a ``(in, out)`` linear is ``r * (in + out)`` parameters (peft's
``lora_A`` + ``lora_B``). :mod:`rlhfctl.training.model_config` builds it from a ``config.json`` for each
architecture it covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ALL_LINEAR = "all-linear"
# Architectures whose last block rlhfctl computes only where a score is read (models/last_position.py; a test keeps
# the two lists in step): a reward model's final block costs almost nothing there.
READ_SHORTCUT_MODEL_TYPES = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3"})

NormKind = Literal["layer", "rms"]
AttentionKind = Literal["sdpa", "eager"]


class ModelShapeError(ValueError):
    """The model's config.json cannot be found or read, or its architecture is not one this module can count."""


@dataclass(frozen=True)
class Linear:
    """One linear layer of a decoder block (``name``: its path inside the block, as peft matches it)."""

    name: str  # e.g. "self_attn.q_proj", "attn.c_attn", "mlp.down_proj"
    in_features: int
    out_features: int
    bias: bool

    @property
    def parameters(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)

    def matches(self, target: str) -> bool:
        """peft's rule for one ``target_modules`` entry: the module name equals it or ends with ``.<target>``."""
        return self.name == target or self.name.endswith("." + target)


@dataclass(frozen=True)
class BlockActivations:
    """Elements one decoder block keeps for its backward, per token, as multiples of the config's widths.

    Measured with saved-tensor hooks on tiny random models (transformers 5, SDPA attention, a padding mask, dropout
    off, weights trainable); ``tests/training/test_memory_activations.py`` re-measures every architecture. Besides
    these, every block keeps the attention mask (``seq_len`` elements per token) and one log-sum-exp per head.
    """

    hidden: float  # x hidden_size: residual stream and norm inputs/outputs
    attention: float  # x num_heads * head_dim: q, k and v (repeated to every head under a padding mask), output
    mlp: float  # x intermediate_size: gated 4 (gate, act, up, product), GELU 2 (input, output), ReLU 1
    kv: float = 0.0  # x num_kv_heads * head_dim: per-head k norms (Qwen3, Gemma 3)


@dataclass(frozen=True)
class ModelShape:
    """What the memory plan needs to know about one decoder model (see the module docstring)."""

    model_type: str  # config.json's model_type ("llama", "gpt2", ...)
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    block_linears: tuple[Linear, ...]  # one decoder block's linear layers
    block_norm_parameters: int  # one block's norm weights (and biases), q/k norms included
    embedding_parameters: int  # token (+ learned position) embeddings
    other_linears: tuple[Linear, ...] = ()  # linears outside the blocks that are not the LM head (OPT's projections)
    final_norm_parameters: int = 0
    tied_embeddings: bool = True  # the LM head is the token embedding (no parameters of its own)
    head_input_size: int = 0  # the LM / score head's input width (hidden_size unless OPT projects it)
    activations: BlockActivations = BlockActivations(hidden=6, attention=4, mlp=4)  # Llama's
    norm: NormKind = "rms"  # LayerNorm (one fused op) or RMSNorm (computed op by op in Python)
    norms_per_block: int = 2  # hidden-size norms run per block (Gemma 2/3 have four)
    attention: AttentionKind = "sdpa"  # eager keeps the (heads x seq x seq) probabilities for the backward
    logit_softcapping: bool = False  # Gemma 2: tanh soft-capping of the final logits (more full-vocab copies)
    dropout: float = 0.0  # the residual/hidden dropout of the config (SFT keeps it; RM and PPO turn it off)
    attention_dropout: float = 0.0
    approximate: bool = False  # counted as a Llama-shaped decoder, not from this architecture's own layout

    # ------------------------------------------------------------------------------------------- counts

    @property
    def head_width(self) -> int:
        return self.head_input_size or self.hidden_size

    @property
    def block_parameters(self) -> int:
        return sum(linear.parameters for linear in self.block_linears) + self.block_norm_parameters

    @property
    def lm_head_parameters(self) -> int:
        return 0 if self.tied_embeddings else self.vocab_size * self.head_width

    def backbone_parameters(self) -> int:
        """Everything but the head: embeddings, blocks, final norm, projections."""
        return (self.embedding_parameters + self.num_layers * self.block_parameters + self.final_norm_parameters
                + sum(linear.parameters for linear in self.other_linears))

    def causal_lm_parameters(self) -> int:
        """``AutoModelForCausalLM``'s parameters (a tied LM head counted once, as ``model.parameters()`` does)."""
        return self.backbone_parameters() + self.lm_head_parameters

    def classifier_parameters(self, num_labels: int = 1) -> int:
        """``AutoModelForSequenceClassification(num_labels=...)``: the backbone and a bias-free score head."""
        return self.backbone_parameters() + self.head_width * num_labels

    def largest_block_parameters(self) -> int:
        """The biggest unit FSDP gathers at once: a decoder block, or the embedding / LM head."""
        return max(self.block_parameters, self.embedding_parameters, self.lm_head_parameters)

    def lora_linears(self, target_modules: str | tuple[str, ...]) -> list[Linear]:
        """The linears LoRA wraps, once per model: ``"all-linear"`` = every linear of the blocks and the other
        non-head linears (peft's rule: all but the output layer); a tuple = those matching any entry."""
        if isinstance(target_modules, str):
            if target_modules != ALL_LINEAR:
                raise ModelShapeError(f"target_modules must be {ALL_LINEAR!r} or a list of names, "
                                      f"found {target_modules!r}")
            per_block = list(self.block_linears)
            others = list(self.other_linears)
        else:
            per_block = [lin for lin in self.block_linears if any(lin.matches(t) for t in target_modules)]
            others = [lin for lin in self.other_linears if any(lin.matches(t) for t in target_modules)]
        return per_block * self.num_layers + others

    def lora_parameters(self, r: int, target_modules: str | tuple[str, ...]) -> int:
        """Trainable adapter parameters: ``r * (in + out)`` per wrapped linear (``lora_A`` and ``lora_B``)."""
        return sum(r * (linear.in_features + linear.out_features) for linear in self.lora_linears(target_modules))

    def unmatched_targets(self, target_modules: tuple[str, ...]) -> list[str]:
        """Entries of a ``target_modules`` list that match no linear of this model."""
        linears = (*self.block_linears, *self.other_linears)
        return [target for target in target_modules if not any(lin.matches(target) for lin in linears)]
