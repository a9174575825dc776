"""The benchmark's inputs: generated learnable data, the tiny/small model kits, rlhfctl configs, parameter counts.

Everything is generated locally and deterministically (seeded), so rlhfctl and TRL read byte-identical files.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass
from pathlib import Path

_TOPICS = [
    "potatoes", "winter hats", "bicycle chains", "sourdough bread", "tide pools", "paper kites", "river otters",
    "chess openings", "tomato plants", "wool socks", "solar panels", "street maps", "jazz drums", "maple syrup",
    "hiking boots", "desk lamps", "honey bees", "rain gauges", "violin strings", "garden snails",
]
_QUESTION_FORMS = [
    "How do I take care of {topic}?", "What should I know about {topic}?", "Can you explain {topic} to me?",
    "Why do people like {topic}?", "What is the best way to start with {topic}?", "Tell me something about {topic}.",
]
_PROMPT_CONTEXT = [
    "I am new to this.", "My friend asked me yesterday.", "I read a short article about it.",
    "It is for a school project.", "I have a few minutes.", "I want a simple answer.",
]
_HELPFUL = [
    "Thank you for asking!", "Great question, I am happy to help.", "Here is a clear answer.",
    "Start small and check {topic} every day.", "Keep {topic} clean and dry.", "Ask an expert about {topic}.",
    "Most people enjoy {topic} because it is simple.", "Read the guide that comes with {topic}.",
]
_UNHELPFUL = [
    "No.", "Whatever.", "I do not care about {topic}.", "Figure it out yourself.", "That is a boring question.",
    "Stop asking me things.", "Sorry, I cannot help.", "Go away.",
]


def _sentence(rng: random.Random, pool: list[str], topic: str, count: int) -> str:
    return " ".join(rng.choice(pool).format(topic=topic) for _ in range(count))


def rm_rows(count: int, seed: int) -> list[dict[str, str]]:
    """Learnable preference pairs in rlhfctl's standard RM format: polite, on-topic replies are preferred.

    Lengths vary (1-3 context sentences, 1-4 reply sentences) so padding and bucketing matter as in real data;
    every row stays well under 128 tokens with the kit's tokenizer.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        topic = rng.choice(_TOPICS)
        prompt = rng.choice(_QUESTION_FORMS).format(topic=topic)
        prompt += " " + _sentence(rng, _PROMPT_CONTEXT, topic, rng.randint(0, 2))
        rows.append({
            "instruction": prompt.strip() + "\n",
            "chosen": " " + _sentence(rng, _HELPFUL, topic, rng.randint(1, 4)),
            "rejected": " " + _sentence(rng, _UNHELPFUL, topic, rng.randint(1, 4)),
        })
    return rows


def sft_rows(count: int, seed: int) -> list[dict[str, str]]:
    """SFT rows (``instruction``/``response``) drawn from the same distribution as the preferred replies."""
    return [{"instruction": row["instruction"], "response": row["chosen"]} for row in rm_rows(count, seed)]


def ppo_rows(count: int, seed: int) -> list[dict[str, str]]:
    """PPO prompts (``{"prompt"}``)."""
    return [{"prompt": row["instruction"]} for row in rm_rows(count, seed)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def hh_rows(count: int, seed: int) -> list[dict[str, str]]:
    """Anthropic HH-style transcript pairs (for the ``data convert`` speed figure)."""
    rows = []
    for row in rm_rows(count, seed):
        prompt = "\n\nHuman: " + row["instruction"].strip() + "\n\nAssistant:"
        rows.append({"chosen": prompt + row["chosen"], "rejected": prompt + row["rejected"]})
    return rows


@dataclass(frozen=True)
class BenchData:
    """Paths of the generated data files."""

    rm_train: Path
    rm_validation: Path
    sft_train: Path
    ppo_prompts: Path


def write_data(root: Path, rm_pairs: int, seed: int = 0) -> BenchData:
    """Write the RM, SFT and PPO files once (re-used when the same sizes were written before)."""
    root.mkdir(parents=True, exist_ok=True)
    data = BenchData(root / f"rm_train_{rm_pairs}.jsonl", root / "rm_validation.jsonl",
                     root / "sft_train_4096.jsonl", root / "ppo_prompts.jsonl")
    if not data.rm_train.exists():
        write_jsonl(data.rm_train, rm_rows(rm_pairs, seed))
    if not data.rm_validation.exists():
        write_jsonl(data.rm_validation, rm_rows(128, seed + 1))
    if not data.sft_train.exists():
        write_jsonl(data.sft_train, sft_rows(4096, seed + 2))
    if not data.ppo_prompts.exists():
        write_jsonl(data.ppo_prompts, ppo_rows(512, seed + 3))
    return data


def build_model(root: Path, preset: str, corpus_files: list[Path], seed: int = 0) -> Path:
    """The model kit for ``preset`` (built once with rlhfctl's own kit builder, then re-used)."""
    out_dir = root / preset
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    from rlhfctl.example.kit import build_model_kit

    return build_model_kit(out_dir, corpus_files=corpus_files, preset=preset, seed=seed)


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of a saved GPT-2-style model, split by how they enter the FLOP count."""

    total: int
    token_embedding: int      # wte: a lookup at the input; also the (tied) LM head matmul of a causal LM
    position_embedding: int   # wpe: a lookup only

    @property
    def causal_lm_flop_params(self) -> int:
        """Parameters doing matmul work in a causal LM forward: all but the position lookup (wte counts as head)."""
        return self.total - self.position_embedding

    @property
    def scalar_head_flop_params(self) -> int:
        """Parameters doing matmul work in a reward/value model (no LM head): all but the two lookups."""
        return self.total - self.position_embedding - self.token_embedding


def count_parameters(model_dir: Path) -> ParameterCount:
    """Count parameters from the safetensors header alone (no torch import)."""
    total = token = position = 0
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(header_size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for dim in info["shape"]:
                numel *= dim
            total += numel
            if name.endswith("wte.weight"):
                token += numel
            elif name.endswith("wpe.weight"):
                position += numel
    return ParameterCount(total, token, position)


def tokens_per_row(model_dir: Path, texts: list[str], max_length: int) -> float:
    """Mean token count of ``texts`` (each + EOS, capped at ``max_length``) with the model's tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return sum(min(len(encoding.ids) + 1, max_length) for encoding in encodings) / max(1, len(texts))


def rm_tokens_per_pair(model_dir: Path, rm_file: Path, max_length: int) -> tuple[float, int]:
    """Mean real (non-pad) tokens per pair (chosen + rejected sequences) and how many sequences exceed max_length."""
    from tokenizers import Tokenizer

    rows = [json.loads(line) for line in rm_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [row["instruction"] + row[key] for row in rows for key in ("chosen", "rejected")]
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    lengths = [len(encoding.ids) + 1 for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]
    too_long = sum(length > max_length for length in lengths)
    return sum(min(length, max_length) for length in lengths) / max(1, len(rows)), too_long


def write_toml(path: Path, data: dict) -> Path:
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path
