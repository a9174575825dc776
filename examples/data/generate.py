"""Generate the bundled example data (deterministic from a seed; the committed files come from the defaults).

    python examples/data/generate.py [--seed 0] [--out examples/data]

Short single-turn prompts on everyday topics get one of two reply styles:

- POLITE: ``" Sure! Happy to help. <a short tip> Hope that helps!"``
- RUDE:   ``" No. Figure it out yourself."`` and similar

A tiny GPT-2 with a 1024-token BPE learns the difference in a minute: the reward model should prefer POLITE, the SFT
policy produces both styles (half of its data is rude), and PPO should move it toward POLITE.

Raw files (source formats, converted by the example pipeline with ``rlhfctl data convert``) go to ``raw/``:

- ``raw/sft_alpaca.json``         Alpaca JSON array, 400 rows, half polite, half rude
- ``raw/rm_hh.jsonl``             HH-RLHF transcripts, chosen = polite, rejected = rude, 500 good rows plus three
                                  broken ones the converter must skip (prompt-mismatch, identical-pair, empty-response)
- ``raw/ppo_prompts.jsonl``       300 prompts as bare JSON strings
- ``raw/heldout_prompts.jsonl``   32 held-out prompts (bare JSON strings), disjoint from every other file

The standard files next to ``raw/`` (``sft.jsonl``, ``rm.jsonl``, ``ppo.jsonl``, ``heldout_prompts.jsonl``) are what
``rlhfctl data convert`` makes of them; a test checks the two agree byte for byte. Every prompt is an HH-style string
(``"\\n\\nHuman: ...\\n\\nAssistant:"``) and every reply starts with a space, so SFT, RM and PPO see the same text.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

QUESTION_TEMPLATES = (
    "How do I {verb} my {thing}?",
    "What is a good way to {verb} my {thing}?",
    "Can you help me {verb} my {thing}?",
    "Any tips on how to {verb} my {thing}?",
)
VERBS = ("clean", "fix", "paint", "wash", "dry", "store", "protect", "organize", "care for", "keep track of")
THINGS = (
    "plants", "bike", "kitchen", "garden", "car", "dog", "shoes", "desk", "room", "laptop",
    "bread", "shirt", "window", "floor", "phone", "lamp", "fridge", "oven", "books", "tools",
)
POLITE_OPENERS = ("Sure! Happy to help.", "Of course! Happy to help.", "Sure! Glad to help.")
POLITE_TIPS = (
    "Try to {verb} your {thing} a little every week.",
    "Go slowly and {verb} your {thing} with care.",
    "A soft cloth and some patience will help you {verb} your {thing}.",
    "Ask a friend to help you {verb} your {thing} on the weekend.",
)
POLITE_CLOSERS = ("Hope that helps!", "Hope that helps! Have a nice day!")
RUDE_REPLIES = (
    "No. Figure it out yourself.",
    "No. Do it yourself.",
    "Ugh. Stop asking me about your {thing}.",
    "No. Your {thing} is not my problem.",
    "Figure it out yourself. I will not help.",
)

SFT_ROWS, RM_ROWS, PPO_ROWS, HELDOUT_ROWS = 400, 500, 300, 32


def hh_prompt(question: str) -> str:
    return f"\n\nHuman: {question}\n\nAssistant:"


def polite_reply(rng: random.Random, verb: str, thing: str) -> str:
    tip = rng.choice(POLITE_TIPS).format(verb=verb, thing=thing)
    return f" {rng.choice(POLITE_OPENERS)} {tip} {rng.choice(POLITE_CLOSERS)}"


def rude_reply(rng: random.Random, thing: str) -> str:
    return " " + rng.choice(RUDE_REPLIES).format(thing=thing)


def all_topics() -> list[tuple[str, str, str]]:
    """Every (question, verb, thing) the templates can make (800 distinct questions)."""
    return [
        (template.format(verb=verb, thing=thing), verb, thing)
        for template in QUESTION_TEMPLATES for verb in VERBS for thing in THINGS
    ]


def build(seed: int) -> dict[str, list]:
    """Every raw and standard file's records, keyed by file name relative to the output folder."""
    rng = random.Random(seed)
    topics = all_topics()
    rng.shuffle(topics)
    heldout, pool = topics[:HELDOUT_ROWS], topics[HELDOUT_ROWS:]

    sft_raw = []
    for index in range(SFT_ROWS):
        question, verb, thing = pool[rng.randrange(len(pool))]
        reply = polite_reply(rng, verb, thing) if index % 2 == 0 else rude_reply(rng, thing)
        sft_raw.append({"instruction": hh_prompt(question), "input": "", "output": reply})

    rm_raw, rm_standard = [], []
    for _ in range(RM_ROWS):
        question, verb, thing = pool[rng.randrange(len(pool))]
        prompt, chosen, rejected = hh_prompt(question), polite_reply(rng, verb, thing), rude_reply(rng, thing)
        rm_raw.append({"chosen": prompt + chosen, "rejected": prompt + rejected})
        rm_standard.append({"instruction": prompt, "chosen": chosen, "rejected": rejected})
    # Deliberately broken rows, each skipped by `rlhfctl data convert` with its reason.
    other_question = pool[0][0] if pool[0][0] != pool[1][0] else pool[2][0]
    broken = [
        (100, {"chosen": hh_prompt(pool[1][0]) + " Sure! Happy to help. Hope that helps!",  # prompt-mismatch
               "rejected": hh_prompt(other_question) + " No. Do it yourself."}),
        (250, {"chosen": hh_prompt(pool[3][0]) + " No. Do it yourself.",  # identical-pair
               "rejected": hh_prompt(pool[3][0]) + " No. Do it yourself."}),
        (400, {"chosen": hh_prompt(pool[4][0]) + " Sure! Glad to help. Hope that helps!",  # empty-response
               "rejected": hh_prompt(pool[4][0])}),
    ]
    for offset, (position, row) in enumerate(broken):
        rm_raw.insert(position + offset, row)

    ppo_prompts = [hh_prompt(question) for question, _, _ in rng.sample(pool, PPO_ROWS)]
    heldout_prompts = [hh_prompt(question) for question, _, _ in heldout]
    return {
        "raw/sft_alpaca.json": sft_raw,
        "raw/rm_hh.jsonl": rm_raw,
        "raw/ppo_prompts.jsonl": ppo_prompts,
        "raw/heldout_prompts.jsonl": heldout_prompts,
        "sft.jsonl": [{"instruction": row["instruction"], "response": row["output"]} for row in sft_raw],
        "rm.jsonl": rm_standard,
        "ppo.jsonl": [{"prompt": prompt} for prompt in ppo_prompts],
        "heldout_prompts.jsonl": [{"prompt": prompt} for prompt in heldout_prompts],
    }


def render(name: str, records: list) -> str:
    if name.endswith(".json"):
        return json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_all(out_dir: Path, seed: int) -> list[Path]:
    written = []
    for name, records in build(seed).items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(name, records), encoding="utf-8")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    for path in write_all(args.out, args.seed):
        print(path)


if __name__ == "__main__":
    main()
