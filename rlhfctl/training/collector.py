"""Python's cyclic garbage collector around a run: start-up and exit cost only (nothing computed changes).

Importing torch and transformers and loading the models leaves hundreds of thousands of objects that live as long
as the process. While they pile up, the collector's full passes walk all of them again and again (a GRPO run made
7 full passes before its first step; benchmarks/README.md, issue 17), and the interpreter walks them once more when
it exits. Three calls avoid that:

- :func:`start_up_without_collection` (the driver, around a single-process run): no cyclic collection while the
  run starts; when the block ends the collector is as it was (on, nothing frozen).
- :func:`imports_done` (model loading, once the model's code is imported and before its weights are built): the
  objects that exist then — modules, classes, functions, the import machinery's leftovers, none holding a tensor
  — are frozen without a pass over them (the pass over ~700,000 of them took 0.36-0.43 s of a 5 s GRPO run,
  quiet; benchmarks/README.md, issue 17). The import leftovers that a pass would have freed (~13,000 small
  objects, no tensor) stay for the life of the process.
- :func:`start_the_loop` (every worker calls it right before its first step; it acts only where the collector
  was paused): one collection frees start-up garbage made since :func:`imports_done` (model loading: anything
  that could hold a tensor), then ``gc.freeze()`` moves what is left (models, tokenizer) out of the collector's
  sight, and collection is on again for the loop, whose own garbage the collector handles as usual.
- :func:`freeze_before_exit` (the CLI, when a command returns): the exit-time pass skips everything that exists.
- :func:`end_without_teardown` (the process's entry point, first thing) and :func:`set_exit_status` (when the
  command has ended): after every exit handler has run (Ray's shutdown, trackers, logging), the process ends
  with ``os._exit`` instead of the interpreter freeing every module and object one by one (~0.15 s after a
  training run's imports; nothing is written then: files are closed, streams flushed here). Without a known
  status (a traceback, Ctrl-C) Python exits as usual.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
from collections.abc import Iterator

_paused = False  # True while start_up_without_collection turned the collector off (this process)
_imports_frozen = False  # True once imports_done froze the start-up's imports (this pause)
_exit_status: int | None = None  # what the command ended with, once known (set_exit_status)


@contextlib.contextmanager
def start_up_without_collection() -> Iterator[None]:
    """No cyclic collection inside the block until :func:`start_the_loop`; afterwards the collector is on again if
    it was on before."""
    global _paused, _imports_frozen
    was_enabled = gc.isenabled()
    _paused, _imports_frozen = was_enabled, False
    gc.disable()
    try:
        yield
    finally:
        _paused, _imports_frozen = False, False
        gc.unfreeze()  # what start_the_loop froze is the collector's again (a test process runs many runs)
        if was_enabled:
            gc.enable()


def imports_done() -> None:
    """torch, transformers and the first model's code are imported and no model is built yet: if
    :func:`start_up_without_collection` paused the collector in this process, freeze what exists without a pass
    (the first call of a pause only: later ones come after a model was loaded, whose garbage must be collected).
    Otherwise nothing changes."""
    global _imports_frozen
    if not _paused or _imports_frozen:
        return
    _imports_frozen = True
    gc.freeze()


def start_the_loop() -> None:
    """The models are loaded and the loop begins: if :func:`start_up_without_collection` paused the collector in
    this process, free start-up garbage, keep the rest out of later full passes and collect as usual from here.
    Otherwise (a Ray Train worker, whose collector ran all along) nothing changes."""
    global _paused
    if not _paused:
        return
    _paused = False
    gc.collect()
    gc.freeze()
    gc.enable()


def freeze_before_exit() -> None:
    """The process is about to exit: no exit-time pass over what exists now (``gc.freeze()``; nothing is lost:
    the operating system takes the memory back)."""
    gc.freeze()


def end_without_teardown() -> None:
    """Register (call it before anything else registers an exit handler, so it runs last) the end of the process
    without the interpreter's teardown, with the status :func:`set_exit_status` records."""
    atexit.register(_exit_now)


def set_exit_status(code: object) -> None:
    """The command ended with ``SystemExit(code)``: an int, or ``None`` for 0; any other value (a message
    Python prints) leaves the exit to Python."""
    global _exit_status
    _exit_status = 0 if code is None else code if isinstance(code, int) else None


def _exit_now() -> None:
    if _exit_status is None:
        return
    if "logging" in sys.modules:  # its own exit handler has run when logging came after ours; again is harmless
        import logging

        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(_exit_status)
