"""A model's :class:`~rlhfctl.training.model_shape.ModelShape` from its ``config.json`` alone (pure, no torch).

```python
shape = read_model_shape("checkpoints/sft")   # a local folder, or a hub id found in the Hugging Face cache
shape = shape_from_config(json.loads(text))    # a config.json dictionary
```

Covered exactly (tests compare with ``sum(p.numel())`` of tiny random models built with transformers): GPT-2,
Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text), Phi-3, GPT-NeoX, OPT. Any other config with the usual
Llama-style keys is counted as a Llama-shaped decoder and says so (``approximate``). Keys a config leaves out take
transformers' defaults for its ``model_type``. Nothing is downloaded: a hub id that is not in the local cache is a
:class:`~rlhfctl.training.model_shape.ModelShapeError` saying where it looked.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from rlhfctl.training.model_shape import BlockActivations, Linear, ModelShape, ModelShapeError

def find_config_json(source: str | os.PathLike[str]) -> Path:
    """The ``config.json`` of a local model folder, or of a hub id in the local Hugging Face cache (no download).

    Raises :class:`ModelShapeError` saying where it looked.
    """
    folder = Path(str(source)).expanduser()
    if folder.is_dir():
        path = folder / "config.json"
        if path.is_file():
            return path
        raise ModelShapeError(f"{folder} has no config.json")
    cached = _hub_cache_config(str(source))
    if cached is not None:
        return cached
    raise ModelShapeError(f"{source!r} is not a local folder and its config.json is not in the Hugging Face cache "
                          f"({hub_cache_dir()})")


def hub_cache_dir() -> Path:
    """Where ``huggingface_hub`` caches downloads: ``HF_HUB_CACHE``, ``HF_HOME/hub`` or ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hub_cache_config(repo_id: str) -> Path | None:
    if repo_id.count("/") > 1 or not repo_id.strip():
        return None
    repo = hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    snapshots = repo / "snapshots"
    candidates = []
    if ref.is_file():
        candidates.append(snapshots / ref.read_text(encoding="utf-8").strip() / "config.json")
    if snapshots.is_dir():
        candidates.extend(sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True))
    return next((path for path in candidates if path.is_file()), None)


def read_model_shape(source: str | os.PathLike[str]) -> ModelShape:
    """:func:`shape_from_config` of the source's ``config.json`` (see :func:`find_config_json`)."""
    path = find_config_json(source)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelShapeError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ModelShapeError(f"{path} does not hold a JSON object")
    try:
        return shape_from_config(config)
    except ModelShapeError as exc:
        raise ModelShapeError(f"{path}: {exc}") from None


def shape_from_config(config: dict[str, Any]) -> ModelShape:
    """The :class:`ModelShape` of a ``config.json`` dictionary (transformers' defaults fill missing keys)."""
    model_type = str(config.get("model_type", ""))
    if model_type == "gemma3" and isinstance(config.get("text_config"), dict):
        raise ModelShapeError("a multimodal gemma3 config (vision tower + text model) is not covered; use the "
                              "text-only model (model_type gemma3_text)")
    builder = _BUILDERS.get(model_type)
    try:
        if builder is not None:
            return builder(_Config(config, _DEFAULTS.get(model_type, {})))
        if all(key in config for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "intermediate_size", "vocab_size")):
            shape = _llama(_Config(config, _DEFAULTS["llama"]))
            return replace(shape, model_type=model_type or "unknown", approximate=True)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ModelShapeError(f"unexpected values in the {model_type or 'model'} config: {exc}") from None
    raise ModelShapeError(f"model_type {model_type!r} is not an architecture the memory plan can count "
                          f"(known: {', '.join(sorted(_BUILDERS))}, or any config with Llama-style keys)")


class _Config:
    """config.json values with transformers' defaults for keys a config may leave out."""

    def __init__(self, values: dict[str, Any], defaults: dict[str, Any]) -> None:
        self._values, self._defaults = values, defaults

    def get(self, key: str, default: Any = None) -> Any:
        value = self._values.get(key)
        if value is None:
            value = self._defaults.get(key, default)
        return value

    def int(self, key: str, default: Any = None) -> int:
        value = self.get(key, default)
        if value is None:
            raise ValueError(f"{key} is missing")
        return int(value)


# transformers' defaults for the keys below, per model_type (what a config.json that leaves them out gets)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
             "tie_word_embeddings": True, "resid_pdrop": 0.1, "attn_pdrop": 0.1},
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "max_position_embeddings": 2048, "tie_word_embeddings": False,
              "attention_bias": False, "mlp_bias": False},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 131072,
                "tie_word_embeddings": False},
    "qwen2": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
              "num_attention_heads": 32, "max_position_embeddings": 32768, "tie_word_embeddings": False},
    "qwen3": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
              "num_attention_heads": 32, "head_dim": 128, "max_position_embeddings": 32768,
              "tie_word_embeddings": False, "attention_bias": False},
    "gemma2": {"vocab_size": 256000, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
               "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 8192,
               "tie_word_embeddings": True, "attention_bias": False, "final_logit_softcapping": 30.0,
               "attn_logit_softcapping": 50.0},
    "gemma3_text": {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
                    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                    "max_position_embeddings": 131072, "tie_word_embeddings": True, "attention_bias": False},
    "phi3": {"vocab_size": 32064, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
             "num_attention_heads": 32, "max_position_embeddings": 4096, "tie_word_embeddings": False,
             "resid_pdrop": 0.0},
    "gpt_neox": {"vocab_size": 50432, "hidden_size": 6144, "intermediate_size": 24576, "num_hidden_layers": 44,
                 "num_attention_heads": 64, "max_position_embeddings": 2048, "tie_word_embeddings": False,
                 "attention_bias": True, "hidden_dropout": 0.0},
    "opt": {"vocab_size": 50272, "hidden_size": 768, "ffn_dim": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "max_position_embeddings": 2048, "do_layer_norm_before": True,
            "_remove_final_layer_norm": False, "enable_bias": True, "layer_norm_elementwise_affine": True,
            "tie_word_embeddings": True, "dropout": 0.1},
}


def _attention_dims(config: _Config) -> tuple[int, int, int, int]:
    hidden = config.int("hidden_size")
    heads = config.int("num_attention_heads")
    kv_heads = config.int("num_key_value_heads", heads)
    head_dim = config.int("head_dim", hidden // heads)
    return hidden, heads, kv_heads, head_dim


def _llama_like(config: _Config, *, model_type: str, qkv_bias: bool, o_bias: bool, norms: int,
                qk_norm: bool = False, hidden_activations: float = 6, **extra: Any) -> ModelShape:
    """Llama, Mistral, Qwen2/3, Gemma 2/3: separate q/k/v/o, gate/up/down, RMSNorm."""
    hidden, heads, kv_heads, head_dim = _attention_dims(config)
    inter = config.int("intermediate_size")
    mlp_bias = bool(config.get("mlp_bias", False))
    linears = (
        Linear("self_attn.q_proj", hidden, heads * head_dim, qkv_bias),
        Linear("self_attn.k_proj", hidden, kv_heads * head_dim, qkv_bias),
        Linear("self_attn.v_proj", hidden, kv_heads * head_dim, qkv_bias),
        Linear("self_attn.o_proj", heads * head_dim, hidden, o_bias),
        Linear("mlp.gate_proj", hidden, inter, mlp_bias),
        Linear("mlp.up_proj", hidden, inter, mlp_bias),
        Linear("mlp.down_proj", inter, hidden, mlp_bias),
    )
    vocab = config.int("vocab_size")
    return ModelShape(
        model_type=model_type, vocab_size=vocab, hidden_size=hidden, num_layers=config.int("num_hidden_layers"),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, intermediate_size=inter,
        max_positions=config.int("max_position_embeddings", 2048), block_linears=linears,
        block_norm_parameters=norms * hidden + (2 * head_dim if qk_norm else 0),
        embedding_parameters=vocab * hidden, final_norm_parameters=hidden,
        tied_embeddings=bool(config.get("tie_word_embeddings", False)), norm="rms", norms_per_block=norms,
        activations=BlockActivations(hidden=hidden_activations, attention=6 if qk_norm else 4, mlp=4,
                                     kv=2 if qk_norm else 0),
        dropout=0.0, attention_dropout=float(config.get("attention_dropout", 0.0)), **extra,
    )


def _llama(config: _Config) -> ModelShape:
    bias = bool(config.get("attention_bias", False))
    return _llama_like(config, model_type="llama", qkv_bias=bias, o_bias=bias, norms=2)


def _mistral(config: _Config) -> ModelShape:
    return _llama_like(config, model_type="mistral", qkv_bias=False, o_bias=False, norms=2)


def _qwen2(config: _Config) -> ModelShape:
    return _llama_like(config, model_type="qwen2", qkv_bias=True, o_bias=False, norms=2)


def _qwen3(config: _Config) -> ModelShape:
    bias = bool(config.get("attention_bias", False))
    return _llama_like(config, model_type="qwen3", qkv_bias=bias, o_bias=bias, norms=2, qk_norm=True)


def _gemma2(config: _Config) -> ModelShape:
    bias = bool(config.get("attention_bias", False))
    softcap = config.get("attn_logit_softcapping") is not None
    return _llama_like(config, model_type="gemma2", qkv_bias=bias, o_bias=bias, norms=4, hidden_activations=10,
                       attention="eager" if softcap else "sdpa",
                       logit_softcapping=config.get("final_logit_softcapping") is not None)


def _gemma3_text(config: _Config) -> ModelShape:
    bias = bool(config.get("attention_bias", False))
    return _llama_like(config, model_type="gemma3_text", qkv_bias=bias, o_bias=bias, norms=4, qk_norm=True,
                       hidden_activations=10,
                       logit_softcapping=config.get("final_logit_softcapping") is not None)


def _phi3(config: _Config) -> ModelShape:
    hidden, heads, kv_heads, head_dim = _attention_dims(config)
    inter = config.int("intermediate_size")
    vocab = config.int("vocab_size")
    linears = (
        Linear("self_attn.qkv_proj", hidden, (heads + 2 * kv_heads) * head_dim, False),
        Linear("self_attn.o_proj", heads * head_dim, hidden, False),
        Linear("mlp.gate_up_proj", hidden, 2 * inter, False),
        Linear("mlp.down_proj", inter, hidden, False),
    )
    return ModelShape(
        model_type="phi3", vocab_size=vocab, hidden_size=hidden, num_layers=config.int("num_hidden_layers"),
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, intermediate_size=inter,
        max_positions=config.int("max_position_embeddings"), block_linears=linears,
        block_norm_parameters=2 * hidden, embedding_parameters=vocab * hidden, final_norm_parameters=hidden,
        tied_embeddings=bool(config.get("tie_word_embeddings", False)), norm="rms",
        activations=BlockActivations(hidden=6, attention=5, mlp=4), dropout=float(config.get("resid_pdrop", 0.0)),
        attention_dropout=float(config.get("attention_dropout", 0.0)),
    )


def _gpt2(config: _Config) -> ModelShape:
    hidden = config.int("n_embd")
    heads = config.int("n_head")
    inter = config.int("n_inner", 4 * hidden)
    vocab, positions = config.int("vocab_size"), config.int("n_positions")
    linears = (
        Linear("attn.c_attn", hidden, 3 * hidden, True),
        Linear("attn.c_proj", hidden, hidden, True),
        Linear("mlp.c_fc", hidden, inter, True),
        Linear("mlp.c_proj", inter, hidden, True),
    )
    return ModelShape(
        model_type="gpt2", vocab_size=vocab, hidden_size=hidden, num_layers=config.int("n_layer"), num_heads=heads,
        num_kv_heads=heads, head_dim=hidden // heads, intermediate_size=inter, max_positions=positions,
        block_linears=linears, block_norm_parameters=4 * hidden, embedding_parameters=(vocab + positions) * hidden,
        final_norm_parameters=2 * hidden, tied_embeddings=bool(config.get("tie_word_embeddings", True)),
        norm="layer", activations=BlockActivations(hidden=4, attention=4, mlp=2),
        dropout=float(config.get("resid_pdrop", 0.1)),
        attention_dropout=float(config.get("attn_pdrop", 0.1)),
    )


def _gpt_neox(config: _Config) -> ModelShape:
    hidden, heads, _, head_dim = _attention_dims(config)
    inter = config.int("intermediate_size")
    vocab = config.int("vocab_size")
    bias = bool(config.get("attention_bias", True))
    linears = (
        Linear("attention.query_key_value", hidden, 3 * hidden, bias),
        Linear("attention.dense", hidden, hidden, bias),
        Linear("mlp.dense_h_to_4h", hidden, inter, True),
        Linear("mlp.dense_4h_to_h", inter, hidden, True),
    )
    return ModelShape(
        model_type="gpt_neox", vocab_size=vocab, hidden_size=hidden, num_layers=config.int("num_hidden_layers"),
        num_heads=heads, num_kv_heads=heads, head_dim=head_dim, intermediate_size=inter,
        max_positions=config.int("max_position_embeddings"), block_linears=linears, block_norm_parameters=4 * hidden,
        embedding_parameters=vocab * hidden, final_norm_parameters=2 * hidden,
        tied_embeddings=bool(config.get("tie_word_embeddings", False)), norm="layer",
        activations=BlockActivations(hidden=3, attention=7, mlp=2), dropout=float(config.get("hidden_dropout", 0.0)),
        attention_dropout=float(config.get("attention_dropout", 0.0)),
    )


def _opt(config: _Config) -> ModelShape:
    hidden = config.int("hidden_size")
    heads = config.int("num_attention_heads")
    inter = config.int("ffn_dim")
    vocab = config.int("vocab_size")
    projection = config.int("word_embed_proj_dim", hidden)
    bias = bool(config.get("enable_bias", True))
    affine = bool(config.get("layer_norm_elementwise_affine", True))
    norm_parameters = 2 * hidden if affine else 0  # LayerNorm keeps its bias whatever enable_bias says
    linears = (
        Linear("self_attn.k_proj", hidden, hidden, bias),
        Linear("self_attn.v_proj", hidden, hidden, bias),
        Linear("self_attn.q_proj", hidden, hidden, bias),
        Linear("self_attn.out_proj", hidden, hidden, bias),
        Linear("fc1", hidden, inter, bias),
        Linear("fc2", inter, hidden, bias),
    )
    others: tuple[Linear, ...] = ()
    if projection != hidden:
        others = (Linear("project_out", hidden, projection, False), Linear("project_in", projection, hidden, False))
    final_norm = config.get("do_layer_norm_before", True) and not config.get("_remove_final_layer_norm", False)
    positions = config.int("max_position_embeddings")
    relu = config.get("activation_function", "relu") == "relu"  # ReLU keeps only its output
    return ModelShape(
        model_type="opt", vocab_size=vocab, hidden_size=hidden, num_layers=config.int("num_hidden_layers"),
        num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads, intermediate_size=inter,
        max_positions=positions, block_linears=linears, block_norm_parameters=2 * norm_parameters,
        embedding_parameters=vocab * projection + (positions + 2) * hidden, other_linears=others,
        final_norm_parameters=norm_parameters if final_norm else 0,
        tied_embeddings=bool(config.get("tie_word_embeddings", True)), head_input_size=projection, norm="layer",
        activations=BlockActivations(hidden=4, attention=4, mlp=1 if relu else 2),
        dropout=float(config.get("dropout", 0.1)),
        attention_dropout=float(config.get("attention_dropout", 0.0)),
    )


_BUILDERS = {
    "gpt2": _gpt2, "llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "qwen3": _qwen3, "gemma2": _gemma2,
    "gemma3_text": _gemma3_text, "phi3": _phi3, "gpt_neox": _gpt_neox, "opt": _opt,
}
