"""Using a trained reward model outside training: evaluate it on preference data, score texts (``rm eval`` /
``rm score``).

Runs in one process (no Ray): the export is a plain Hugging Face folder, scored exactly as during training
(prompt rendered by ``format_prompt``, response + EOS, prompt cut from the left to fit, reward at the last token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfctl.errors import DataError, UserError
from rlhfctl.runfiles import REWARD_STATS_FILE

DEFAULT_MAX_LENGTH = 512


@dataclass
class LoadedRewardModel:
    scorer: Any  # LastTokenScorer
    tokenizer: Any
    max_length: int
    reward_stats: dict[str, Any] | None


def load_checkpoint(checkpoint: Path, *, max_length: int | None = None, trust_remote_code: bool = False,
                    threads: int | None = None) -> LoadedRewardModel:
    """Load an ``rm train`` export (or any sequence-classification model folder) for scoring."""
    import torch

    from rlhfctl.models.loading import load_reward_model, load_tokenizer
    from rlhfctl.models.scoring import make_scorer

    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise UserError(f"reward model checkpoint not found: {checkpoint}",
                        hint="Pass the checkpoint_dir that `rlhfctl rm train` exported.")
    if threads:
        torch.set_num_threads(threads)
    stats_path = checkpoint / REWARD_STATS_FILE
    stats = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.exists() else None
    tokenizer = load_tokenizer(checkpoint, trust_remote_code=trust_remote_code)
    model = load_reward_model(checkpoint, tokenizer, trust_remote_code=trust_remote_code)
    scorer = make_scorer(model).eval()
    limit = max_length or (stats or {}).get("max_length") or DEFAULT_MAX_LENGTH
    return LoadedRewardModel(scorer=scorer, tokenizer=tokenizer, max_length=int(limit), reward_stats=stats)


def evaluate_file(loaded: LoadedRewardModel, data: Path, *, batch_size: int = 16) -> dict[str, float]:
    """Accuracy, margin, loss and reward statistics of the model on an RM data file, and how much its rewards
    follow reply length (``length_bias_spearman``, ``longer_wins_accuracy``: the RM length-bias health check)."""
    from rlhfctl.data.loading import load_rows
    from rlhfctl.models.preference import length_bias_metrics, response_lengths, score_all, tokenize_pairs
    from rlhfctl.objectives.rm import metrics_from_sums, pair_sums

    rows = load_rows(data, "rm")
    pairs = tokenize_pairs(rows, loaded.tokenizer, loaded.max_length)
    rewards = score_all(loaded.scorer, pairs, loaded.tokenizer.pad_token_id, batch_size, "cpu")
    metrics = metrics_from_sums(pair_sums(rewards))
    metrics.update(length_bias_metrics(rewards, response_lengths(rows, loaded.tokenizer, loaded.max_length)))
    return metrics


def score_texts(loaded: LoadedRewardModel, prompts: list[Any], responses: list[str], *,
                batch_size: int = 16) -> list[float]:
    """Reward of each (prompt, response); the prompt may be text or a message list ("" for a bare text)."""
    import torch

    from rlhfctl.data.prompting import format_prompt, has_chat_template
    from rlhfctl.objectives.rm import truncate_keep_response_end

    tokenizer = loaded.tokenizer
    rendered = [format_prompt(prompt, tokenizer) if prompt else "" for prompt in prompts]
    prompt_ids = tokenizer(rendered, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    sequences = [truncate_keep_response_end(p, r + [tokenizer.eos_token_id], loaded.max_length)
                 for p, r in zip(prompt_ids, response_ids)]
    rewards: list[float] = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start:start + batch_size]
            longest = max(len(ids) for ids in chunk)
            input_ids = torch.full((len(chunk), longest), tokenizer.pad_token_id, dtype=torch.long)
            attention_mask = torch.zeros((len(chunk), longest), dtype=torch.long)
            for row, ids in enumerate(chunk):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                attention_mask[row, :len(ids)] = 1
            rewards.extend(loaded.scorer(input_ids, attention_mask).tolist())
    return rewards


def read_score_rows(path: Path) -> list[dict[str, Any]]:
    """Rows to score from a file: ``{"text"}``, ``{"prompt"|"instruction", "response"}`` or RM pairs.

    Returns ``{"line", "prompt", "response"}`` items, or ``{"line", "prompt", "chosen", "rejected"}`` for pairs.
    """
    from rlhfctl.data.readers import iter_records

    items: list[dict[str, Any]] = []
    for line, record in iter_records(Path(path)):
        if isinstance(record, str):
            record = {"text": record}
        if not isinstance(record, dict):
            raise DataError("expected a JSON object or a string", path=path, line=line)
        prompt = record.get("prompt", record.get("instruction", ""))
        if "text" in record:
            items.append({"line": line, "prompt": "", "response": _string(record, "text", path, line)})
        elif "response" in record:
            items.append({"line": line, "prompt": prompt, "response": _string(record, "response", path, line)})
        elif "chosen" in record and "rejected" in record:
            items.append({"line": line, "prompt": prompt, "chosen": _string(record, "chosen", path, line),
                          "rejected": _string(record, "rejected", path, line)})
        else:
            raise DataError("expected 'text', 'response' (with 'prompt'), or 'chosen' and 'rejected'",
                            path=path, line=line, key="text")
    if not items:
        raise DataError("the file has no rows", path=path)
    return items


def _string(record: dict, key: str, path: Path, line: int) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"expected a string, found {type(value).__name__}", path=path, line=line, key=key)
    return value
