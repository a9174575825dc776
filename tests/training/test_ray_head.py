"""The embedded Ray's raylet command with one more prestarted worker process (the head node itself is exercised by
the slow tests in test_ray_cluster.py; the Ray names it relies on are pinned in test_ray_private_api.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from rlhfctl.training.ray_head import with_more_prestarted  # noqa: E402


def test_only_the_prestart_count_of_the_raylets_command_is_raised():
    command = ["/ray/raylet", "--num_prestart_python_workers=2", "--maximum_startup_concurrency=4", "--head"]
    assert with_more_prestarted(command, 1) == ["/ray/raylet", "--num_prestart_python_workers=3",
                                                "--maximum_startup_concurrency=4", "--head"]
    assert with_more_prestarted(command, 0) == command


def test_a_command_without_the_flag_is_left_as_it_is():
    command = ["/ray/raylet", "--python_worker_command=python default_worker.py --num_prestart_python_workers=2"]
    assert with_more_prestarted(command, 1) == command
