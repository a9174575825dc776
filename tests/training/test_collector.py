"""The garbage-collector policy around a run: paused during start-up, frozen at the first step, restored after."""

from __future__ import annotations

import gc

import pytest

from rlhfctl.training import collector


@pytest.fixture(autouse=True)
def _collector_restored():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_start_up_pauses_then_the_loop_collects_again_with_start_up_objects_frozen():
    gc.enable()
    with collector.start_up_without_collection():
        assert not gc.isenabled()
        start_up_objects = [[index] for index in range(1000)]  # long-lived, like modules and models
        collector.start_the_loop()
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(start_up_objects)
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0  # a test process running many runs gets everything back


class _Node:
    pass


def _unreachable_cycle():
    """A weak reference to an object only the cyclic collector can free."""
    import weakref

    cycle = _Node()
    cycle.self = cycle
    return weakref.ref(cycle)


def test_start_the_loop_frees_start_up_garbage_before_freezing():
    gc.enable()
    with collector.start_up_without_collection():
        alive = _unreachable_cycle()
        assert alive() is not None  # paused: nothing collected
        collector.start_the_loop()
        assert alive() is None


def test_imports_done_freezes_without_a_pass_and_only_once(monkeypatch):
    # freezes are counted by a spy: the frozen-object count itself also falls whenever a frozen object is
    # deallocated, so comparing counts raced with whatever else the process freed in between
    freezes = []
    freeze = gc.freeze
    monkeypatch.setattr(gc, "freeze", lambda: (freezes.append(True), freeze())[1])
    gc.enable()
    with collector.start_up_without_collection():
        kept = _unreachable_cycle()  # garbage from before imports_done (the imports'): frozen, not collected
        collector.imports_done()
        assert len(freezes) == 1 and gc.get_freeze_count() > 0 and not gc.isenabled()
        freed = _unreachable_cycle()  # garbage from model loading: collected by start_the_loop
        collector.imports_done()  # a second model's load: freezes nothing more
        assert len(freezes) == 1
        collector.start_the_loop()
        assert freed() is None and kept() is not None
    assert gc.get_freeze_count() == 0


def test_imports_done_leaves_a_collector_it_did_not_pause_alone():  # a Ray Train worker, rm eval, ppo sample
    gc.enable()
    collector.imports_done()
    assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_a_run_that_fails_during_start_up_gives_the_collector_back():
    gc.enable()
    with pytest.raises(RuntimeError), collector.start_up_without_collection():
        raise RuntimeError("model failed to load")
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    with collector.start_up_without_collection():
        collector.start_the_loop()
        assert not gc.isenabled()  # not ours to turn on
    assert not gc.isenabled()


def test_start_the_loop_leaves_a_collector_it_did_not_pause_alone():  # a Ray Train worker
    gc.enable()
    collector.start_the_loop()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_freeze_before_exit_freezes_what_exists():
    collector.freeze_before_exit()
    assert gc.get_freeze_count() > 0


def test_end_without_teardown_runs_every_exit_handler_flushes_and_keeps_the_status(tmp_path):
    import subprocess
    import sys

    script = f"""
import atexit, sys
from rlhfctl.training import collector
collector.end_without_teardown()
class Teardown:
    def __del__(self):
        open({str(tmp_path / "teardown")!r}, "w").close()
kept = Teardown()  # a module global: freed only by the interpreter's teardown
atexit.register(lambda: open({str(tmp_path / "handler")!r}, "w").close())  # registered later: runs first
import logging
handler = logging.FileHandler({str(tmp_path / "log.txt")!r}, delay=False)
logging.getLogger("x").addHandler(handler)
logging.getLogger("x").warning("logged")
sys.stdout.write("x" * 100000)  # buffered: flushed at exit
collector.set_exit_status(3)
raise SystemExit(3)
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 3 and completed.stdout == "x" * 100000, completed.stderr
    assert (tmp_path / "handler").exists() and (tmp_path / "log.txt").read_text() == "logged\n"
    assert not (tmp_path / "teardown").exists()  # the teardown was skipped


def test_without_a_known_status_python_exits_as_usual():
    import subprocess
    import sys

    script = ("from rlhfctl.training import collector\ncollector.end_without_teardown()\n"
              "collector.set_exit_status('a message')\nraise SystemExit('a message')")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 1 and "a message" in completed.stderr
    crashed = subprocess.run([sys.executable, "-c", "from rlhfctl.training import collector\n"
                              "collector.end_without_teardown()\nraise RuntimeError('boom')"],
                             capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 1 and "RuntimeError: boom" in crashed.stderr


@pytest.fixture
def paused_until_the_loop():
    """A process of the embedded Ray as its setup hook left it; the deadline and the collector put back after."""
    gc.enable()
    collector.pause_until_the_loop(longest_s=60)
    yield
    collector.resume_without_collecting()


def test_an_embedded_ray_train_worker_starts_without_collection_until_its_loop(paused_until_the_loop):
    assert not gc.isenabled()
    kept = _unreachable_cycle()  # the imports' garbage: frozen by imports_done, as in one process
    collector.imports_done()  # model loading, once the model's code is imported
    freed = _unreachable_cycle()  # model loading's garbage: collected at the first step
    collector.start_the_loop()
    assert gc.isenabled()
    assert freed() is None and kept() is not None
    assert collector._deadline is None  # nothing turns the collector on again later


def test_a_process_that_runs_no_loop_gets_its_collector_back_with_start_up_frozen(paused_until_the_loop):
    collector.resume_without_collecting()  # Ray Train's controller, as it starts
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    assert collector._deadline is None


def test_any_other_process_gets_its_collector_back_at_the_deadline():
    import time

    gc.enable()
    collector.pause_until_the_loop(longest_s=0.05)
    assert not gc.isenabled()
    deadline = time.monotonic() + 10
    while not gc.isenabled() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0  # it only turns the collector on: what the process holds is left as it is
    collector.start_the_loop()  # nothing paused any more: no effect
    assert gc.get_freeze_count() == 0


def test_the_pause_leaves_a_collector_that_is_off_alone():
    gc.disable()
    collector.pause_until_the_loop(longest_s=0.05)
    assert collector._deadline is None
    collector.resume_without_collecting()
    assert not gc.isenabled()
    assert gc.get_freeze_count() == 0
