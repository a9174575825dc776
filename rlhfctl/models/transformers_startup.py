"""transformers' table of lazily imported names, read from disk once per process instead of twice.

transformers 5.x builds the table behind ``transformers.<Name>`` by reading every source file under
``transformers/models/`` (~3,300 files in ~560 folders): once when ``transformers`` is imported, and again when
``transformers.models`` is (``AutoTokenizer``, ``AutoConfig``, any model class). The function that reads one
folder, ``transformers.utils.import_utils.create_import_structure_from_path``, is memoised with
``functools.lru_cache``'s default size of 128 entries, fewer than the folders, so the second walk finds none of
the first's results and reads every file again: ~0.25 CPU-seconds per process on this machine (measured), paid by
every process that loads a model — each Ray Train worker on its way to the first step, and the single-process path.

:func:`remember_model_folder_scans` gives that function an unbounded memo (the same function, its ``__wrapped__``
original under ``functools.lru_cache(maxsize=None)``) as its module is executed, before the first walk, so the
second walk is answered from memory. The folders are read-only package files, which the original's bounded memo
already assumes. Guarded: only for transformers 5.x, only before transformers is imported, only when the function
is an ``lru_cache``-memoised one with a ``__wrapped__`` original; otherwise nothing changes (the second walk is
paid as before).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
from typing import Any

_MODULE = "transformers.utils.import_utils"
_FUNCTION = "create_import_structure_from_path"
_MAJOR_VERSIONS = ("5.",)  # checked against transformers 5.24; another major version keeps its own memo


def remember_model_folder_scans() -> bool:
    """Call before transformers is imported (idempotent). Returns True when the memo will be widened as transformers
    imports, False when it is too late (transformers already imported) or already arranged."""
    if "transformers" in sys.modules or any(isinstance(finder, _WidenOnImport) for finder in sys.meta_path):
        return False
    sys.meta_path.insert(0, _WidenOnImport())
    return True


def widen_memo(module: Any) -> bool:
    """Swap ``module.create_import_structure_from_path`` for its original under an unbounded memo; True if it did.
    The module's other functions and the function's own recursion look the name up at call time, so all of them
    use the new memo."""
    version = str(getattr(sys.modules.get("transformers"), "__version__", ""))
    scan = getattr(module, _FUNCTION, None)
    original = getattr(scan, "__wrapped__", None)
    if not version.startswith(_MAJOR_VERSIONS) or original is None or not hasattr(scan, "cache_info"):
        return False
    if scan.cache_info().maxsize is None:  # already unbounded
        return False
    setattr(module, _FUNCTION, functools.lru_cache(maxsize=None)(original))
    return True


class _WidenOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``transformers.utils.import_utils`` is about to be imported, it takes the spec the
    other finders give and has :func:`widen_memo` run right after the module's code; then it leaves
    ``sys.meta_path``."""

    def find_spec(self, fullname: str, path: Any, target: Any = None):
        if fullname != _MODULE:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if not isinstance(loader, (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader)):
            return spec  # not a per-module loader instance of a file on disk: left alone
        execute = loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            widen_memo(module)

        loader.exec_module = exec_module  # this spec's own loader instance only
        return spec
