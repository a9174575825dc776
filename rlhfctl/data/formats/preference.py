"""Preference-pair source formats: standard/seed rows, HH-RLHF transcripts, Stanford SHP and PKU-SafeRLHF.

Every converter returns a list of standard rows and :class:`~rlhfctl.data.formats.base.Skip` objects. Text is
kept exactly: nothing is stripped, a reply's leading space survives.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rlhfctl.data.formats.base import (
    ConvertOptions,
    Skip,
    SourceFormat,
    has_keys,
    preference_row,
    prompt_row,
    sft_row,
    text_field,
)
from rlhfctl.data.messages import MessageError, join_instruction_input, normalize_messages, prompt_from_messages

HH_ASSISTANT = "\n\nAssistant:"


def prompt_value(value: object, key: str) -> str | list | Skip:
    """A prompt given as text or as messages (a single user message becomes its text)."""
    if value is None:
        return Skip("missing-field", key)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        try:
            return prompt_from_messages(normalize_messages(value))
        except MessageError as exc:
            return Skip("wrong-type", f"{key}: {exc}")
    return Skip("wrong-type", f"{key} is {type(value).__name__}")


# ----------------------------------------------------------------------------------------------- standard / seed


def _standard_prompt(record: dict, keys: tuple[str, ...]) -> str | list | Skip:
    key = next((name for name in keys if record.get(name) is not None), keys[0])
    return prompt_value(record.get(key), key)


def standard_to_rm(record: object, options: ConvertOptions) -> list:
    prompt = _standard_prompt(record, ("instruction", "prompt"))
    chosen, rejected = text_field(record, "chosen"), text_field(record, "rejected")
    for value in (prompt, chosen, rejected):
        if isinstance(value, Skip):
            return [value]
    rows = preference_row(prompt, chosen, rejected)
    margin = record.get("margin")
    if margin is not None and rows and isinstance(rows[0], dict):
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
            return [Skip("wrong-type", "margin is not a finite number")]
        rows[0]["margin"] = margin
    return rows


def standard_to_ppo(record: object, options: ConvertOptions) -> list:
    prompt = _standard_prompt(record, ("prompt", "instruction"))
    return [prompt] if isinstance(prompt, Skip) else prompt_row(prompt)


def standard_to_sft(record: object, options: ConvertOptions) -> list:
    prompt = _standard_prompt(record, ("instruction", "prompt"))
    response = text_field(record, "response")
    for value in (prompt, response):
        if isinstance(value, Skip):
            return [value]
    context = record.get("context")
    if isinstance(context, str) and isinstance(prompt, str):
        prompt = join_instruction_input(prompt, context)
    return sft_row(prompt, response)


def _is_standard(record: object) -> bool:
    if not isinstance(record, dict):
        return False
    prompt = record.get("instruction", record.get("prompt"))
    if not isinstance(prompt, (str, list)):
        return False
    return not isinstance(record.get("chosen"), list)


STANDARD = SourceFormat(
    name="standard",
    summary="rlhfctl's own and the seed's rows: instruction|prompt + chosen/rejected, + response, or alone",
    keys=("instruction", "chosen", "rejected"),
    matches=_is_standard,
    converters={"rm": standard_to_rm, "ppo": standard_to_ppo, "sft": standard_to_sft},
)


# ----------------------------------------------------------------------------------------------- HH-RLHF


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str] | Skip:
    """Split two HH transcripts at the chosen one's **last** ``"\\n\\nAssistant:"`` (kept in the prompt).

    The DPO reference convention (Rafailov et al. 2023, ``extract_anthropic_prompt`` in the paper's
    ``preference_datasets.py``): prompt = the chosen transcript up to and including its last assistant marker,
    each reply = the rest of its transcript. The rejected transcript must start with that same prompt, otherwise
    the dialogues diverge earlier and the row is a ``prompt-mismatch`` (the reference code slices without
    checking). What follows the prompt is the rejected reply, whole: a reply that goes on to hallucinate a
    ``"\\n\\nHuman:"`` turn (and more assistant turns) keeps them, as in the reference. No character-level
    common prefix is ever used (replies that share their first words keep them).
    """
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        return Skip("no-assistant-turn", "chosen has no '\\n\\nAssistant:'")
    end = cut + len(HH_ASSISTANT)
    prompt = chosen[:end]
    if not rejected.startswith(prompt):
        return Skip("prompt-mismatch", "the transcripts differ before the last assistant turn")
    return prompt, chosen[end:], rejected[end:]


def hh_to_rm(record: object, options: ConvertOptions) -> list:
    # The hot path of large conversions: split_hh and preference_row inlined (same rules, see split_hh).
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if type(chosen) is not str or type(rejected) is not str:
        return [text_field(record, "chosen") if type(chosen) is not str else text_field(record, "rejected")]
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        return [Skip("no-assistant-turn", "chosen has no '\\n\\nAssistant:'")]
    end = cut + len(HH_ASSISTANT)
    prompt = chosen[:end]
    if not rejected.startswith(prompt):
        return [Skip("prompt-mismatch", "the transcripts differ before the last assistant turn")]
    chosen_reply, rejected_reply = chosen[end:], rejected[end:]
    if chosen_reply == rejected_reply or chosen_reply.isspace() or rejected_reply.isspace() \
            or not chosen_reply or not rejected_reply:
        return preference_row(prompt, chosen_reply, rejected_reply)  # the skip with its exact reason
    return [{"instruction": prompt, "chosen": chosen_reply, "rejected": rejected_reply}]


def _hh_chosen_turn(record: object) -> tuple[str, str] | Skip:
    """The chosen transcript split after its last ``"\\n\\nAssistant:"``: (prompt, reply)."""
    chosen = text_field(record, "chosen")
    if isinstance(chosen, Skip):
        return chosen
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        return Skip("no-assistant-turn", "chosen has no '\\n\\nAssistant:'")
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:]


def hh_to_ppo(record: object, options: ConvertOptions) -> list:
    turn = _hh_chosen_turn(record)
    return [turn] if isinstance(turn, Skip) else prompt_row(turn[0])


def hh_to_sft(record: object, options: ConvertOptions) -> list:
    turn = _hh_chosen_turn(record)
    return [turn] if isinstance(turn, Skip) else sft_row(*turn)


def _is_hh(record: object) -> bool:
    return (
        has_keys(record, "chosen", "rejected")
        and isinstance(record["chosen"], str)
        and isinstance(record["rejected"], str)
        and not any(key in record for key in ("prompt", "instruction", "question", "conversations"))
    )


HH_RLHF = SourceFormat(
    name="hh-rlhf",
    summary='Anthropic HH-RLHF: chosen/rejected whole transcripts "\\n\\nHuman: ...\\n\\nAssistant: ..."',
    keys=("chosen", "rejected"),
    matches=_is_hh,
    converters={"rm": hh_to_rm, "ppo": hh_to_ppo, "sft": hh_to_sft},
)


def _pair_converters(pair_of: Callable[[dict, ConvertOptions], "tuple[str, str, str] | Skip"]):
    """The rm and sft converters of a format whose rows reduce to (prompt, chosen, rejected), or a Skip."""

    def to_rm(record: object, options: ConvertOptions) -> list:
        pair = pair_of(record, options)
        return [pair] if isinstance(pair, Skip) else preference_row(*pair)

    def to_sft(record: object, options: ConvertOptions) -> list:
        pair = pair_of(record, options)
        return [pair] if isinstance(pair, Skip) else sft_row(pair[0], pair[1])

    return to_rm, to_sft


# ----------------------------------------------------------------------------------------------- SHP


def _shp_pair(record: dict, options: ConvertOptions) -> tuple[str, str, str] | Skip:
    history, ref_a, ref_b = (text_field(record, key) for key in ("history", "human_ref_A", "human_ref_B"))
    for value in (history, ref_a, ref_b):
        if isinstance(value, Skip):
            return value
    label = record.get("labels")
    if isinstance(label, bool) or label not in (0, 1):
        return Skip("wrong-type", f"labels is {label!r}, expected 1 (A preferred) or 0 (B preferred)")
    if options.min_score_ratio is not None:
        score_a, score_b = record.get("score_A"), record.get("score_B")
        if isinstance(score_a, (int, float)) and isinstance(score_b, (int, float)):
            low, high = sorted((score_a, score_b))
            ratio = math.inf if low <= 0 else high / low
            if ratio < options.min_score_ratio:
                return Skip("low-score-ratio", f"score ratio {ratio:.2f} < {options.min_score_ratio:g}")
    return (history, ref_a, ref_b) if label == 1 else (history, ref_b, ref_a)


shp_to_rm, shp_to_sft = _pair_converters(_shp_pair)


def shp_to_ppo(record: object, options: ConvertOptions) -> list:
    history = text_field(record, "history")
    return [history] if isinstance(history, Skip) else prompt_row(history)


SHP = SourceFormat(
    name="shp",
    summary="Stanford SHP: history, human_ref_A, human_ref_B, labels (1 = A preferred); --min-score-ratio",
    keys=("history", "human_ref_A", "human_ref_B", "labels"),
    matches=lambda record: has_keys(record, "history", "human_ref_A", "human_ref_B"),
    converters={"rm": shp_to_rm, "ppo": shp_to_ppo, "sft": shp_to_sft},
)


# ----------------------------------------------------------------------------------------------- PKU-SafeRLHF


def _pku_pair(record: dict, options: ConvertOptions) -> tuple[str, str, str] | Skip:
    prompt, first, second = (text_field(record, key) for key in ("prompt", "response_0", "response_1"))
    for value in (prompt, first, second):
        if isinstance(value, Skip):
            return value
    key = f"{options.preference}_response_id"
    choice = record.get(key)
    if choice is None:
        return Skip("missing-field", key)
    if isinstance(choice, bool) or choice not in (0, 1):
        return Skip("wrong-type", f"{key} is {choice!r}, expected 0 or 1")
    return (prompt, first, second) if choice == 0 else (prompt, second, first)


pku_to_rm, pku_to_sft = _pair_converters(_pku_pair)


PKU_SAFE_RLHF = SourceFormat(
    name="pku-safe-rlhf",
    summary="PKU-SafeRLHF: prompt, response_0/1, better_response_id, safer_response_id; --preference",
    keys=("prompt", "response_0", "response_1", "better_response_id", "safer_response_id"),
    matches=lambda record: has_keys(record, "prompt", "response_0", "response_1"),
    converters={"rm": pku_to_rm, "ppo": standard_to_ppo, "sft": pku_to_sft},
)
