"""The final model in Hugging Face format: loadable by plain ``transformers`` with no rlhfctl code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhfctl.fileio import atomic_directory
from rlhfctl.training.checkpoint import unwrap_model


def export_hf(model, tokenizer, target: Path, *, extra_files: dict[str, Any] | None = None,
              merge_adapters: bool = True) -> Path:
    """Write ``save_pretrained`` (safetensors) + the tokenizer + ``extra_files`` (name -> JSON data) to ``target``.

    A LoRA-adapted model (:mod:`rlhfctl.models.adapters`) is merged into its base first (in place: call this last),
    or, with ``merge_adapters=False``, written as its peft adapter folder (``adapter_config.json`` naming the base).
    The folder is assembled beside ``target`` and renamed into place, so a reader never sees half an export.
    """
    model = unwrap_model(model)
    if tokenizer is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    with atomic_directory(Path(target), force=True) as tmp:
        if "_rlhfctl_peft_model" in vars(model):  # adapters.has_adapters, without importing peft for plain models
            from rlhfctl.models.adapters import export_adapted

            export_adapted(model, tmp, merge=merge_adapters)
        else:
            model.save_pretrained(tmp)  # safetensors is the only format transformers 5 writes
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return Path(target)
