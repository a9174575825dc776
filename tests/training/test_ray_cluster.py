"""How long a run may wait for its workers' resources, in Ray Train's start attempts."""

from __future__ import annotations

import pytest

from rlhfctl.training.ray_cluster import WORKER_START_TIMEOUT_ENV, worker_start_retries


@pytest.mark.parametrize(("wait_minutes", "timeout", "retries"), [
    (10, None, 9),       # ten 60-s attempts: the first and nine retries
    (0, None, 0),        # one attempt, no retry
    (0.5, None, 0),      # rounded up to a whole attempt
    (1.01, None, 1),
    (2, "30", 3),        # four 30-s attempts
    (0.1, "2", 2),       # 6 s in 2-s attempts
    (1, "nonsense", 0),  # a malformed value is Ray's default
    (1, "-5", 0),
])
def test_retries_fit_the_wait_in_start_attempts(monkeypatch, wait_minutes, timeout, retries):
    if timeout is None:
        monkeypatch.delenv(WORKER_START_TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(WORKER_START_TIMEOUT_ENV, timeout)
    assert worker_start_retries(wait_minutes) == retries
