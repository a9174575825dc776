"""Python's cyclic garbage collector around a run: start-up and exit cost only (nothing computed changes).

Importing torch and transformers and loading the models leaves hundreds of thousands of objects that live as long
as the process. While they pile up, the collector's full passes walk all of them again and again (a GRPO run made
7 full passes before its first step; benchmarks/README.md, issue 17), and the interpreter walks them once more when
it exits. Three calls avoid that:

- :func:`start_up_without_collection` (the driver, around a single-process run): no cyclic collection while the
  run starts; when the block ends the collector is as it was (on, nothing frozen).
- :func:`start_the_loop` (every worker calls it right before its first step; it acts only where the collector
  was paused): one collection frees start-up garbage, then ``gc.freeze()`` moves what is left (modules, models,
  tokenizer) out of the collector's sight, and collection is on again for the loop, whose own garbage the
  collector handles as usual.
- :func:`freeze_before_exit` (the CLI, when a command returns): the exit-time pass skips everything that exists.

A worker process of the embedded Ray does the same chain of imports before its first step (Ray Train, torch,
transformers, the models; ~1 CPU-second of the collector's passes in each), but nothing wraps it in a block: there
:func:`pause_until_the_loop` pauses the collector as the process starts (a Train worker's :func:`start_the_loop`
turns it on again), :func:`resume_without_collecting` gives a process that hosts no loop (Ray Train's controller)
its collector back, and a deadline does it for any other process.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_paused = False  # True while start_up_without_collection turned the collector off (this process)
# Whether start_the_loop collects before it freezes: False where pause_until_the_loop paused the collector
_collect_at_the_loop = True
_deadline: threading.Timer | None = None  # pause_until_the_loop's: turns the collector on if nothing else does


@contextlib.contextmanager
def start_up_without_collection() -> Iterator[None]:
    """No cyclic collection inside the block until :func:`start_the_loop`; afterwards the collector is on again if
    it was on before."""
    global _paused, _collect_at_the_loop
    was_enabled = gc.isenabled()
    _paused = was_enabled
    _collect_at_the_loop = True
    gc.disable()
    try:
        yield
    finally:
        _paused = False
        gc.unfreeze()  # what start_the_loop froze is the collector's again (a test process runs many runs)
        if was_enabled:
            gc.enable()


def start_the_loop() -> None:
    """The models are loaded and the loop begins: if :func:`start_up_without_collection` paused the collector in
    this process, free start-up garbage, keep the rest out of later full passes and collect as usual from here
    (after :func:`pause_until_the_loop`: without freeing first). Otherwise (a collector that ran all along)
    nothing changes."""
    if not _paused:
        return
    if _collect_at_the_loop:
        gc.collect()
    gc.freeze()
    _resume()


def freeze_before_exit() -> None:
    """The process is about to exit: no exit-time pass over what exists now (``gc.freeze()``; nothing is lost:
    the operating system takes the memory back)."""
    gc.freeze()


def pause_until_the_loop(longest_s: float) -> None:
    """A process starting up with no block around it (a worker process of the embedded Ray): no cyclic collection
    until :func:`start_the_loop` (a Train worker) or :func:`resume_without_collecting`, and at the latest
    ``longest_s`` from now (a process that calls neither: the collector is simply on again). A collector that is
    already off is left alone.

    Here :func:`start_the_loop` freezes without collecting first: that full pass would walk everything the imports
    and the models left (~0.3-0.5 CPU-second in a Train worker, right before its first step) to free what the
    imports left in cycles: ~15 MB, measured the same for a 0.2 M and a 60 M model (copies of ``sys.modules``'
    dict held by import-time frames, no tensors), which stays."""
    global _paused, _collect_at_the_loop, _deadline
    if not gc.isenabled():
        return
    gc.disable()
    _paused = True
    _collect_at_the_loop = False
    _deadline = threading.Timer(longest_s, _resume)
    _deadline.daemon = True
    _deadline.start()


def resume_without_collecting() -> None:
    """Start-up is over in a process that runs no loop: if :func:`pause_until_the_loop` paused the collector, keep
    what exists out of later full passes (``gc.freeze()``; a full collection now would walk all of it, ~0.1
    CPU-second after Ray Train's imports) and collect as usual from here."""
    if _paused:
        gc.freeze()
        _resume()


def _resume() -> None:
    """The collector on again (if paused here), and no deadline left to do it later."""
    global _paused, _deadline
    deadline, _deadline = _deadline, None
    if deadline is not None and deadline is not threading.current_thread():
        deadline.cancel()
    if _paused:
        _paused = False
        gc.enable()
