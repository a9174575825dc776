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


def test_start_the_loop_frees_start_up_garbage_before_freezing():
    import weakref

    class Node:
        pass

    gc.enable()
    with collector.start_up_without_collection():
        cycle = Node()
        cycle.self = cycle  # only the cyclic collector frees this
        alive = weakref.ref(cycle)
        del cycle
        assert alive() is not None  # paused: nothing collected
        collector.start_the_loop()
        assert alive() is None


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


@pytest.fixture
def paused_until_the_loop():
    """A process of the embedded Ray as its setup hook left it; the deadline and the collector put back after."""
    gc.enable()
    collector.pause_until_the_loop(longest_s=60)
    yield
    collector.resume_without_collecting()


def test_an_embedded_ray_process_starts_without_collection_until_its_loop_freezes_start_up(paused_until_the_loop):
    class Node:
        pass

    assert not gc.isenabled()
    cycle = Node()
    cycle.self = cycle
    start_up_garbage = __import__("weakref").ref(cycle)
    del cycle
    collector.start_the_loop()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    assert start_up_garbage() is not None  # frozen, not collected first: that pass is on the way to the first step
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


def test_a_run_in_one_process_still_frees_start_up_garbage_after_an_earlier_pause(paused_until_the_loop):
    import weakref

    class Node:
        pass

    collector.resume_without_collecting()
    gc.unfreeze()
    with collector.start_up_without_collection():
        cycle = Node()
        cycle.self = cycle
        alive = weakref.ref(cycle)
        del cycle
        collector.start_the_loop()
        assert alive() is None
