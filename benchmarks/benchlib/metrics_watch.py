"""Follow a run's ``metrics.jsonl`` while it grows and stamp every record with the time it first appeared.

rlhfctl's ``metrics.jsonl`` lines carry ``step``, ``epoch``, ``split`` and metric values; when a record also carries
a wall-clock ``time`` field that is used instead (exact). Otherwise the arrival time seen here is the step's end
time plus the driver's polling delay (about 0.25 s, the same for every step), which cancels out of a rate measured
between two steps far apart.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class StampedRecord:
    record: dict
    seen_at: float  # time.time() when the harness first read the line

    @property
    def step(self) -> int:
        return int(self.record.get("step", -1))

    @property
    def split(self) -> str:
        return str(self.record.get("split", "train"))

    @property
    def time(self) -> float:
        value = self.record.get("time")
        return float(value) if isinstance(value, (int, float)) else self.seen_at


class MetricsWatcher:
    """Polls ``path`` every ``interval_s``; a rewritten (shorter) file is re-read, first-seen times are kept."""

    def __init__(self, path: Path, interval_s: float = 0.05) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self._records: dict[tuple[str, int, int], StampedRecord] = {}
        self._offset = 0
        self._inode: int | None = None
        self._partial = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-watch", daemon=True)

    def __enter__(self) -> "MetricsWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval_s)

    def poll(self) -> None:
        """Read whatever was appended since the last poll."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self._inode, self._offset, self._partial = stat.st_ino, 0, ""
        if stat.st_size == self._offset:
            return
        now = time.time()
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
            self._offset = handle.tell()
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next poll
        for index, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = (str(record.get("split", "train")), int(record.get("step", -1)), index if "step" not in record
                   else 0)
            self._records.setdefault(key, StampedRecord(record, now))

    def records(self, split: str | None = None) -> list[StampedRecord]:
        """Records seen so far (optionally of one split), in step order."""
        chosen = [rec for rec in self._records.values() if split is None or rec.split == split]
        return sorted(chosen, key=lambda rec: (rec.step, rec.seen_at))


def read_records(path: Path) -> list[dict]:
    """All complete JSON lines of a metrics file (after the run)."""
    if not Path(path).exists():
        return []
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
