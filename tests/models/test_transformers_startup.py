"""transformers' lazy-import table read once per process: the same table (every name transformers and
``transformers.models`` offer), its model folders read once instead of twice, and nothing changed where the guard
does not hold (another major version, a function without the memo, transformers already imported)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from rlhfctl.models import transformers_startup  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# A fresh process: with or without the wider memo, import transformers the way model loading does, then report
# every name the lazy modules offer and how often the folder reader ran and was answered from memory.
PROBE = """
import json, sys
from rlhfctl.models.transformers_startup import remember_model_folder_scans
installed = remember_model_folder_scans() if sys.argv[1] == "on" else False
import transformers
from transformers import AutoConfig, AutoTokenizer  # noqa: F401 (imports transformers.models: the second walk)
import transformers.models
from transformers.utils import import_utils
info = import_utils.create_import_structure_from_path.cache_info()
print(json.dumps({"installed": installed, "hits": info.hits, "misses": info.misses, "maxsize": info.maxsize,
                  "names": sorted(dir(transformers)), "model_names": sorted(dir(transformers.models))}))
"""


def _probe(mode: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not __import__("transformers").__version__.startswith("5."), reason="guarded to transformers 5.x")
def test_the_second_walk_is_answered_from_memory_and_the_table_is_the_same():
    before, after = _probe("off"), _probe("on")
    assert after["installed"] is True and after["maxsize"] is None
    assert before["maxsize"] is not None and before["hits"] == 0  # transformers' own memo: every folder read twice
    # every folder is read once: the second walk's folders all come from memory
    assert after["misses"] <= before["misses"] / 2 + 10
    assert after["hits"] >= after["misses"] - 10
    assert after["names"] == before["names"] and len(after["names"]) > 1000
    assert after["model_names"] == before["model_names"]


def _module_with(scan, version: str = "5.24.0"):
    return types.SimpleNamespace(create_import_structure_from_path=scan), types.SimpleNamespace(__version__=version)


def test_the_memo_is_widened_only_where_the_guard_holds(monkeypatch):
    def read_folder(path):
        return {"path": path}

    bounded = functools.lru_cache(maxsize=128)(read_folder)
    module, transformers = _module_with(bounded)
    monkeypatch.setitem(sys.modules, "transformers", transformers)
    assert transformers_startup.widen_memo(module) is True
    assert module.create_import_structure_from_path.cache_info().maxsize is None
    assert module.create_import_structure_from_path("a") == {"path": "a"}
    assert transformers_startup.widen_memo(module) is False  # already unbounded

    for scan, version in ((bounded, "6.0.0"), (bounded, "4.57.1"), (read_folder, "5.24.0")):
        module, transformers = _module_with(scan, version)
        monkeypatch.setitem(sys.modules, "transformers", transformers)
        assert transformers_startup.widen_memo(module) is False
        assert module.create_import_structure_from_path is scan


def test_nothing_is_arranged_once_transformers_is_imported():
    import transformers  # noqa: F401

    before = list(sys.meta_path)
    assert transformers_startup.remember_model_folder_scans() is False
    assert sys.meta_path == before


def test_the_finder_looks_only_at_transformers_import_table():
    finder = transformers_startup._WidenOnImport()
    assert finder.find_spec("json", None) is None
    assert finder.find_spec("transformers.utils.logging", None) is None
