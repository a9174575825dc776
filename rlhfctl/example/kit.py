"""The tiny model kit: a byte-level BPE tokenizer trained offline and a GPT-2-style model with random weights.

Everything is built locally and deterministically from a seed, then saved with ``save_pretrained`` so it is
loaded through the very same ``from_pretrained`` code path as a hub id or any local model folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = {"bos": "<|bos|>", "eos": "<|endoftext|>", "pad": "<|pad|>", "unk": "<|unk|>"}


@dataclass(frozen=True)
class ModelPreset:
    """Shape of a GPT-2-style model (parameters grow roughly with n_layer * n_embd**2)."""

    n_embd: int
    n_layer: int
    n_head: int
    n_positions: int
    vocab_size: int


PRESETS: dict[str, ModelPreset] = {
    # ~0.15 M parameters with the example data's vocabulary: the README example and the test suite.
    "tiny": ModelPreset(n_embd=64, n_layer=2, n_head=2, n_positions=256, vocab_size=1024),
    # ~20 M parameters: benchmarks.
    "small": ModelPreset(n_embd=384, n_layer=8, n_head=6, n_positions=512, vocab_size=8192),
}

_FALLBACK_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Thank you, that is a great question! "
    "Potatoes grow underground and send up green stems. I am happy to help you with that. "
    "Sorry, I cannot help. Keep your ears warm in winter with a hat. The answer is simple. "
)


def iter_corpus_texts(paths: Iterable[Path]) -> Iterator[str]:
    """Every string value of every JSON line (or plain text line) of the given files."""
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    yield line
                    continue
                yield from _strings(record)


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def build_tokenizer(texts: Iterable[str], vocab_size: int, *, special_tokens: Mapping[str, str] = SPECIAL_TOKENS,
                    extra_special_tokens: Sequence[str] = (), prepend_bos: bool = False):
    """Train a byte-level BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast``.

    ``special_tokens`` maps the roles ``bos``, ``eos``, ``pad``, ``unk`` (any may be left out: the default kit's
    tokenizer has all four, pad distinct from EOS) to token strings; ``extra_special_tokens`` are never split
    (chat-template markers); ``prepend_bos``: encoding with special tokens starts with BOS, as Llama's does.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = list(dict.fromkeys([*special_tokens.values(), *extra_special_tokens]))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if prepend_bos:
        bos = special_tokens["bos"]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        **{f"{role}_token": token for role, token in special_tokens.items()},
        extra_special_tokens=list(extra_special_tokens) or None,
        padding_side="right",
    )


def build_model_kit(
    out_dir: Path | str,
    *,
    corpus_files: Iterable[Path | str] = (),
    preset: str = "tiny",
    seed: int = 0,
) -> Path:
    """Build tokenizer + randomly initialised GPT-2 model into ``out_dir`` and return it.

    ``corpus_files`` are JSONL/text files whose strings train the tokenizer (the example data); without them a
    small built-in corpus is used. The same seed and corpus give byte-identical weights.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars; errors still surface as exceptions
    shape = PRESETS[preset]
    out_dir = Path(out_dir)
    files = [Path(path) for path in corpus_files]
    texts = list(iter_corpus_texts(files)) if files else [_FALLBACK_CORPUS] * 4
    tokenizer = build_tokenizer(texts, shape.vocab_size)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=shape.n_positions,
        n_embd=shape.n_embd,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@dataclass(frozen=True)
class KitSummary:
    """What :func:`build_model_kit_folder` wrote."""

    out_dir: Path
    parameters: int
    vocab_size: int


def example_data_dir() -> Path:
    """The bundled ``examples/data`` folder of a source checkout (the kit's tokenizer corpus)."""
    from rlhfctl.errors import UserError

    folder = Path(__file__).resolve().parents[2] / "examples" / "data"
    if not folder.is_dir():
        raise UserError(
            f"the example data folder is missing: {folder}",
            hint="The example needs a source checkout of rlhfctl (git clone ...; pip install -e .).",
        )
    return folder


def build_model_kit_folder(
    out_dir: Path | str,
    *,
    corpus_files: Iterable[Path | str] = (),
    preset: str = "tiny",
    seed: int = 0,
    force: bool = False,
    builder: Callable[..., Path] | None = None,
) -> KitSummary:
    """:func:`build_model_kit` (or ``builder``, called the same way: another family's kit from
    :mod:`rlhfctl.example.architectures`) written atomically, refusing to replace ``out_dir`` unless ``force``."""
    from rlhfctl.fileio import atomic_directory, refuse_to_clobber

    out_dir = Path(out_dir)
    refuse_to_clobber(out_dir, force=force, what="model folder")
    with atomic_directory(out_dir, force=force) as tmp:
        (builder or build_model_kit)(tmp, corpus_files=corpus_files, preset=preset, seed=seed)
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    return KitSummary(out_dir=out_dir, parameters=_count_parameters(out_dir), vocab_size=int(config["vocab_size"]))


def _count_parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for weights in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(weights), framework="pt") as handle:
            for name in handle.keys():
                shape = handle.get_slice(name).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total
