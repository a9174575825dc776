"""Every common decoder architecture through SFT -> RM -> PPO, with and without LoRA, as a new user would run them.

Each tiny model (:mod:`rlhfctl.example.architectures`) has no pad token and a chat template in its family's style;
the data mixes plain prompts with system + user conversations (which some templates reject or fold). The stages run
in this process (one worker: the core's local mode), two optimizer steps each, and everything they export is read
back by the next stage. The last-position scorer's agreement with the full forward per architecture is in
``tests/models/test_last_position.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfctl.config import load_config
from rlhfctl.example.architectures import ARCHITECTURES, build_architecture_kit
from rlhfctl.recipes.registry import load_recipe

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA = REPO_ROOT / "examples" / "data"
SYSTEM = "You answer briefly."


def _rows(name: str, count: int) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()[:count]]


def _conversation(prompt: str) -> list[dict]:
    """An HH-style prompt string as a system + user conversation."""
    question = prompt.replace("\n\nHuman: ", "").replace("\n\nAssistant:", "").strip()
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """16 SFT examples, 16 preference pairs, 8 prompts (+4 held out): every other row a system + user chat."""
    folder = tmp_path_factory.mktemp("arch-data")
    sft = [{"messages": [*_conversation(row["instruction"]), {"role": "assistant", "content": row["response"]}]}
           if index % 2 else row for index, row in enumerate(_rows("sft.jsonl", 16))]
    rm = [{**row, "instruction": _conversation(row["instruction"])} if index % 2 else row
          for index, row in enumerate(_rows("rm.jsonl", 16))]
    ppo = [{"prompt": _conversation(row["prompt"])} if index % 2 else row for index, row in enumerate(
        _rows("ppo.jsonl", 12))]
    for name, rows in (("sft", sft), ("rm", rm), ("ppo", ppo[:8]), ("heldout", ppo[8:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("arch-models")
    corpus = sorted(DATA.glob("*.jsonl"))
    for architecture in ARCHITECTURES:
        build_architecture_kit(folder / architecture, architecture, corpus_files=corpus)
    return folder


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _run(stage: str, config_path: Path):
    return load_recipe(stage).run(load_config(config_path))


COMMON_TRAINING = """\
num_training_workers = 1
epochs = 1
learning_rate = 1e-3
"""


def run_pipeline(workdir: Path, model: Path, data: Path, lora: bool) -> dict[str, dict[str, float]]:
    """SFT -> RM -> PPO on ``model``; returns each stage's final metrics."""
    lora_section = "\n[lora]\nr = 4\n" if lora else ""
    sft = _write(workdir / "sft.toml", f"""
stage = "sft"
[general]
base_model = "{model}"
output_dir = "{workdir / 'runs/sft'}"
checkpoint_dir = "{workdir / 'models/sft'}"
[dataset]
train_file = "{data / 'sft.jsonl'}"
validation_split_percentage = 0
max_length = 96
[training]
{COMMON_TRAINING}batch_size = 8
{lora_section}""")
    rm = _write(workdir / "rm.toml", f"""
stage = "rm"
[general]
base_model = "{workdir / 'models/sft'}"
output_dir = "{workdir / 'runs/rm'}"
checkpoint_dir = "{workdir / 'models/rm'}"
[dataset]
train_file = "{data / 'rm.jsonl'}"
validation_split_percentage = 0
max_length = 96
[training]
{COMMON_TRAINING}batch_size = 8
{lora_section}""")
    ppo = _write(workdir / "ppo.toml", f"""
stage = "ppo"
[general]
model_name = "{model}"
model_pretrain = "{workdir / 'models/sft'}"
rm_name = "{model}"
rm_pretrain = "{workdir / 'models/rm'}"
output_dir = "{workdir / 'runs/ppo'}"
checkpoint_dir = "{workdir / 'models/ppo'}"
[dataset]
train_file = "{data / 'ppo.jsonl'}"
validation_file = "{data / 'heldout.jsonl'}"
max_length = 96
[training]
{COMMON_TRAINING}experience_batch_size = 4
batch_size = 4
ppo_epochs = 1
sample_every_steps = 0
[generation]
max_new_tokens = 8
{lora_section}""")
    return {stage: _run(stage, path).final_metrics for stage, path in (("sft", sft), ("rm", rm), ("ppo", ppo))}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_sft_rm_ppo_run_on_every_architecture(tmp_path, models_dir, data_dir, architecture, lora):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    metrics = run_pipeline(tmp_path, models_dir / architecture, data_dir, lora)
    for stage, final in metrics.items():
        assert final and all(value == value for value in final.values()), (stage, final)  # ran, no NaN
    # every export loads in plain transformers and keeps the base's EOS
    base_tokenizer = AutoTokenizer.from_pretrained(models_dir / architecture)
    for stage, auto in (("sft", AutoModelForCausalLM), ("rm", AutoModelForSequenceClassification),
                        ("ppo", AutoModelForCausalLM)):
        auto.from_pretrained(tmp_path / "models" / stage)
        assert AutoTokenizer.from_pretrained(tmp_path / "models" / stage).eos_token == base_tokenizer.eos_token


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_with_pad_falling_back_to_eos_the_response_still_ends_in_a_learned_eos(models_dir, architecture):
    """The classic bug: padding with EOS and masking every pad id also masks the real EOS, so the model never learns
    to stop. Labels here come from the layout, not from comparing ids with the pad id."""
    from transformers import AutoTokenizer

    from rlhfctl.models.conversation import collate, tokenize_conversation
    from rlhfctl.models.loading import load_tokenizer
    from rlhfctl.objectives.sft import IGNORE_INDEX

    raw = AutoTokenizer.from_pretrained(models_dir / architecture)
    assert raw.chat_template and (raw.pad_token is None) == (architecture != "qwen2")
    tokenizer = load_tokenizer(models_dir / architecture)
    if architecture != "qwen2":
        assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the fallback
    conversations = [
        [*_conversation("\n\nHuman: How do I paint my room?\n\nAssistant:"), {"role": "assistant", "content": "Sure!"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, how can I help?"}],
    ]
    examples = [tokenize_conversation(messages, tokenizer, max_length=96) for messages in conversations]
    for example in examples:
        scored = [label for label in example.labels if label != IGNORE_INDEX]
        assert scored[-1] == tokenizer.eos_token_id and scored.count(tokenizer.eos_token_id) == 1
    batch = collate(examples, tokenizer.pad_token_id)
    short = 0 if len(examples[0].input_ids) < len(examples[1].input_ids) else 1
    length = len(examples[short].input_ids)
    assert batch["labels"][short, length - 1] == tokenizer.eos_token_id  # the real EOS keeps its label
    assert (batch["labels"][short, length:] == IGNORE_INDEX).all()  # the padding (EOS ids too) has none
