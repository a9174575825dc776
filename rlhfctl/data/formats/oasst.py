"""OpenAssistant export trees: ``{"message_tree_id", "prompt": {message with nested "replies"}}``.

- ``rm``:  for every prompter message with two or more ranked assistant replies, one pair per worse-ranked reply:
           (best-ranked, worse). The prompt is the thread up to that prompter message.
- ``sft``: for every prompter message, the thread plus its best-ranked reply.
- ``ppo``: every prompter message, with the thread before it.

Deleted messages (and everything below them) are ignored. A one-message thread becomes its text verbatim.
"""

from __future__ import annotations

from collections.abc import Iterator

from rlhfctl.data.formats.base import ConvertOptions, Skip, SourceFormat, preference_row, prompt_row, sft_row
from rlhfctl.data.messages import prompt_from_messages


def _live(node: object) -> bool:
    return isinstance(node, dict) and not node.get("deleted") and isinstance(node.get("text"), str)


def _prompter_turns(root: dict) -> Iterator[tuple[list, list]]:
    """Yield (thread up to and including a prompter message, its live assistant replies best-ranked first)."""
    stack = [(root, [])]
    while stack:
        node, thread = stack.pop()
        if not _live(node) or node.get("role") != "prompter":
            continue
        thread = [*thread, {"role": "user", "content": node["text"]}]
        replies = [reply for reply in node.get("replies") or [] if _live(reply) and reply.get("role") == "assistant"]
        ranked = sorted(replies, key=lambda reply: (reply.get("rank") is None, reply.get("rank") or 0))
        yield thread, ranked
        for reply in reversed(replies):
            reply_thread = [*thread, {"role": "assistant", "content": reply["text"]}]
            for child in reversed(reply.get("replies") or []):
                stack.append((child, reply_thread))


def _root(record: object) -> dict | Skip:
    root = record.get("prompt") if isinstance(record, dict) else None
    if not isinstance(root, dict):
        return Skip("missing-field", "prompt (the tree's root message)")
    return root


def oasst_to_rm(record: object, options: ConvertOptions) -> list:
    root = _root(record)
    if isinstance(root, Skip):
        return [root]
    results: list = []
    for thread, replies in _prompter_turns(root):
        ranked = [reply for reply in replies if reply.get("rank") is not None]
        if len(ranked) < 2:
            continue
        prompt = prompt_from_messages(thread)
        best = ranked[0]["text"]
        for worse in ranked[1:]:
            results.extend(preference_row(prompt, best, worse["text"]))
    return results or [Skip("not-a-pair", "no prompter message with two or more ranked replies")]


def oasst_to_sft(record: object, options: ConvertOptions) -> list:
    root = _root(record)
    if isinstance(root, Skip):
        return [root]
    results: list = []
    for thread, replies in _prompter_turns(root):
        if replies:
            results.extend(sft_row(prompt_from_messages(thread), replies[0]["text"]))
    return results or [Skip("not-a-pair", "no prompter message with an assistant reply")]


def oasst_to_ppo(record: object, options: ConvertOptions) -> list:
    root = _root(record)
    if isinstance(root, Skip):
        return [root]
    results = [row for thread, _ in _prompter_turns(root) for row in prompt_row(prompt_from_messages(thread))]
    return results or [Skip("missing-field", "no live prompter message")]


OASST = SourceFormat(
    name="oasst",
    summary="OpenAssistant export trees: message_tree_id + prompt with nested ranked replies",
    keys=("message_tree_id", "prompt"),
    matches=lambda record: isinstance(record, dict) and "message_tree_id" in record
    and isinstance(record.get("prompt"), dict),
    converters={"rm": oasst_to_rm, "ppo": oasst_to_ppo, "sft": oasst_to_sft},
)
