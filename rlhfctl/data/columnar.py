"""Readers for columnar and remote sources: Parquet files, ``datasets`` save_to_disk folders, hub dataset ids.

pyarrow and datasets are imported only when one of these is read. Rows are numbered from 1 (the ``line`` of
:class:`~rlhfctl.data.records.SourceRecord`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from rlhfctl.data.records import SourceRecord
from rlhfctl.errors import DataError


def iter_parquet(path: Path) -> Iterator[SourceRecord]:
    try:
        import pyarrow.parquet as parquet
    except ImportError as exc:  # pragma: no cover - pyarrow comes with datasets
        raise DataError("reading Parquet needs pyarrow: pip install pyarrow", path=path) from exc
    try:
        parquet_file = parquet.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise DataError(f"cannot read the Parquet file: {exc}", path=path) from exc
    row = 0
    for batch in parquet_file.iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield SourceRecord(row, record)


def iter_hf_disk(path: Path) -> Iterator[SourceRecord]:
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"cannot load the datasets folder: {exc}", path=path) from exc
    if isinstance(dataset, DatasetDict):
        splits = list(dataset.keys())
        if "train" not in dataset and len(splits) != 1:
            raise DataError(f"the DatasetDict has splits {splits} and none is called 'train'", path=path)
        dataset = dataset["train"] if "train" in dataset else dataset[splits[0]]
    for row, record in enumerate(dataset, start=1):
        yield SourceRecord(row, record)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Can we open a TCP connection to the hub (``HF_ENDPOINT``)? Answers in seconds, where ``datasets`` would
    retry for half a minute."""

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def iter_hub(dataset_id: str) -> Iterator[SourceRecord]:
    offline = any(os.environ.get(name, "0") not in ("0", "", "false")
                  for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if not offline and not _hub_reachable():
        raise DataError(
            f"{dataset_id!r} is not a local file or folder, so it would be downloaded from the Hugging Face hub, "
            "but the hub cannot be reached (this machine looks offline)",
            path=dataset_id,
            hint="Download it on a machine with internet access (datasets' save_to_disk or a JSONL export) and pass "
                 "the local path, or set HF_HUB_OFFLINE=1 to use a copy already in your Hugging Face cache.",
        )
    from datasets import load_dataset

    try:
        dataset = load_dataset(dataset_id, split="train", streaming=True)
        iterator = iter(dataset)
        first = next(iterator, None)
    except Exception as exc:
        raise DataError(
            f"could not load hub dataset {dataset_id!r} with datasets.load_dataset "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). It is not a local file, "
            "so it must be downloaded from the Hugging Face hub, which fails offline",
            path=dataset_id,
            hint="Download it on a machine with internet access (datasets' save_to_disk or a JSONL export) "
                 "and pass the local path.",
        ) from exc
    if first is None:
        return
    yield SourceRecord(1, first)
    for row, record in enumerate(iterator, start=2):
        yield SourceRecord(row, record)
