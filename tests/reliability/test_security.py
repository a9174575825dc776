"""Configs and data are data: nothing from them is evaluated, run through a shell or unpickled.

- a static scan of the package (AST, not grep) for the calls that would execute or unpickle input, with a
  self-test proving the scanner flags each of them;
- ``trust_remote_code`` is off by default, custom model code is not imported, and enabling it shows in the
  resolved config;
- legacy ``.conf`` files holding code are refused, not run;
- an end-to-end run whose paths are full of shell metacharacters: the paths are used literally, no command runs,
  and every checkpoint/export file is safetensors or JSON (no pickle).
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfctl.cli.app import app

from .conftest import REPO_ROOT

runner = CliRunner()
PACKAGE = REPO_ROOT / "rlhfctl"

_CODE_BUILTINS = {"eval", "exec", "compile", "__import__", "execfile"}
_UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
_SHELL_CALLS = {("os", "system"), ("os", "popen"), ("commands", "getoutput")}
_UNSAFE_YAML = {"load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"}
# peft's adapter loader reads adapter_config.json and safetensors weights onto a model already loaded: it has no
# trust_remote_code and runs no model code of its own.
_NO_REMOTE_CODE_LOADERS = {"PeftModel.from_pretrained"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(kw.arg == name and isinstance(kw.value, ast.Constant) and kw.value.value == value
               for kw in call.keywords)


def unsafe_calls(source: str, filename: str = "<string>") -> list[str]:
    """Calls in ``source`` that could execute or unpickle data: ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        parts = name.split(".")
        problem = None
        if isinstance(node.func, ast.Name) and name in _CODE_BUILTINS:
            problem = f"{name}() runs code"
        elif len(parts) >= 2 and parts[-2] in _UNPICKLERS and parts[-1] in {"load", "loads", "Unpickler", "open"}:
            problem = f"{name}() unpickles"
        elif name == "torch.load" or name.endswith(".torch.load"):
            if not _keyword_is(node, "weights_only", True):
                problem = "torch.load without weights_only=True"
        elif tuple(parts[-2:]) in _SHELL_CALLS or (len(parts) >= 2 and parts[-2] == "os"
                                                   and parts[-1].startswith(("exec", "spawn"))):
            problem = f"{name}() runs a command"
        elif parts[0] == "subprocess" and _keyword_is(node, "shell", True):
            problem = f"{name}(shell=True)"
        elif len(parts) == 2 and parts[0] == "yaml" and parts[1] in _UNSAFE_YAML:
            problem = f"{name}() can build arbitrary objects"
        elif parts[-1] == "from_pretrained" and _keyword_is(node, "trust_remote_code", True):
            problem = "from_pretrained(trust_remote_code=True) hard-coded"
        elif parts[-1] == "from_pretrained" and ".".join(parts[-2:]) not in _NO_REMOTE_CODE_LOADERS \
                and not any(kw.arg in ("trust_remote_code", None) for kw in node.keywords):
            problem = "from_pretrained without an explicit trust_remote_code"
        elif name == "getattr" and node.args and _dotted(node.args[0]).split(".")[0] in ("torch", "transformers") \
                and len(node.args) > 1 and not isinstance(node.args[1], ast.Constant):
            problem = "getattr(<library>, <name from data>) looks up code by a string"
        elif name == "importlib.import_module" and node.args and not _fixed_prefix(node.args[0]):
            problem = "import_module of a name that is not a fixed rlhfctl module"
        if problem:
            found.append(f"{filename}:{node.lineno}: {problem}")
    return found


def _fixed_prefix(node: ast.AST) -> bool:
    """A constant module name, or an f-string starting with a constant ``rlhfctl.`` prefix."""
    if isinstance(node, ast.Constant):
        return True
    return (isinstance(node, ast.JoinedStr) and bool(node.values) and isinstance(node.values[0], ast.Constant)
            and str(node.values[0].value).startswith("rlhfctl."))


@pytest.mark.parametrize("snippet", [
    "eval(text)", "exec(code)", "compile(src, 'f', 'exec')", "__import__(name)",
    "pickle.load(handle)", "pickle.loads(blob)", "torch.load(path)", "torch.load(path, weights_only=False)",
    "os.system(cmd)", "os.popen(cmd)", "subprocess.run(cmd, shell=True)", "yaml.load(text)",
    "AutoModel.from_pretrained(p, trust_remote_code=True)", "AutoModel.from_pretrained(p)",
    "getattr(torch.optim, config.optimizer)", "importlib.import_module(config.module)",
])
def test_scanner_flags_each_unsafe_call(snippet):
    assert unsafe_calls(snippet), snippet


@pytest.mark.parametrize("snippet", [
    "torch.load(path, weights_only=True)", "ast.literal_eval(text)", "yaml.safe_load(text)",
    "subprocess.run(['ray', 'stop'])", "re.compile(pattern)", "importlib.import_module(f'rlhfctl.recipes.{stage}')",
    "AutoTokenizer.from_pretrained(p, trust_remote_code=trust)", "getattr(torch.optim, 'AdamW')",
    "PeftModel.from_pretrained(base, folder)",
])
def test_scanner_allows_safe_calls(snippet):
    assert unsafe_calls(snippet) == [], snippet


# The one place a config names code to run, by design (issue 17, documented in the README as running your code):
# GRPO's `name = "python"` reward function, an explicit "module:function" the user installed; the function must be
# marked @reward_function (tests/recipes/test_grpo.py::test_user_reward_functions_must_be_installed_and_marked).
USER_CODE_SITES = {("rlhfctl/recipes/grpo_rewards.py", "import_module of a name that is not a fixed rlhfctl module")}


def test_package_never_evaluates_unpickles_or_shells_out():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    problems = [problem for path in files
                for problem in unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(REPO_ROOT)))]
    sites = [(problem.split(":")[0], problem.split(": ", 1)[1]) for problem in problems]
    assert sorted(site for site in sites if site in USER_CODE_SITES) == sorted(USER_CODE_SITES)  # once each
    assert [problem for problem, site in zip(problems, sites) if site not in USER_CODE_SITES] == []


# ----------------------------------------------------------------------------------------------- remote code


def test_trust_remote_code_defaults_to_false_and_shows_when_enabled(workspace):
    config = workspace.write_config(workspace.config_dict())
    result = runner.invoke(app, ["validate-config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["general"]["trust_remote_code"] is False

    shown = runner.invoke(app, ["config", "show", str(config), "general.trust_remote_code=true"])
    assert shown.exit_code == 0, shown.output
    assert "trust_remote_code = true" in shown.output


@pytest.mark.needs_model
def test_custom_model_code_is_not_imported_without_trust(workspace, tiny_model_copy, tmp_path):
    """A model folder that ships its own Python (``auto_map``) is loaded with the built-in class; its code never
    runs unless general.trust_remote_code is true."""
    from rlhfctl.errors import UserError
    from rlhfctl.models.loading import load_reward_model, load_tokenizer

    marker = tmp_path / "REMOTE_CODE_RAN"
    (tiny_model_copy / "evil_model.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import GPT2Config as EvilConfig, GPT2ForSequenceClassification as EvilModel\n",
        encoding="utf-8")
    settings = json.loads((tiny_model_copy / "config.json").read_text(encoding="utf-8"))
    settings["auto_map"] = {"AutoConfig": "evil_model.EvilConfig",
                            "AutoModelForSequenceClassification": "evil_model.EvilModel"}
    (tiny_model_copy / "config.json").write_text(json.dumps(settings), encoding="utf-8")

    try:
        tokenizer = load_tokenizer(tiny_model_copy)
        load_reward_model(tiny_model_copy, tokenizer)
    except UserError:
        pass  # refusing the folder is as good as ignoring its code
    assert not marker.exists()


def test_legacy_conf_holding_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    conf = tmp_path / "reward.conf"
    conf.write_text("{'General': {'base_model': __import__('pathlib').Path(%r).write_text('x')}}\n" % str(marker),
                    encoding="utf-8")
    result = runner.invoke(app, ["config", "migrate", str(conf), "-o", str(tmp_path / "rm.toml"), "--stage", "rm"])
    assert result.exit_code == 2, result.output
    assert "reward.conf" in result.output and "Traceback" not in result.output
    assert not marker.exists()
    assert not (tmp_path / "rm.toml").exists()


# ----------------------------------------------------------------------------------------------- end to end

SHELL_NAME = "out $(touch PWNED1) `touch PWNED2`; touch PWNED3 && echo 'x' | cat > PWNED4 #"
ALLOWED_SUFFIXES = {".safetensors", ".json", ".jsonl", ".toml"}
PICKLE_OR_TORCH_SAVE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


@pytest.mark.slow
@pytest.mark.needs_model
def test_paths_with_shell_metacharacters_are_literal_and_outputs_are_safetensors(workspace, monkeypatch):
    """One tiny single-process run: output_dir, checkpoint_dir, data and config paths full of shell syntax."""
    monkeypatch.chdir(workspace.root)
    strange = workspace.root / SHELL_NAME
    strange.mkdir()
    data = strange / "pairs $(id).jsonl"
    shutil.copy(workspace.data, data)
    config = workspace.config_dict(
        general={"output_dir": str(strange / "run;rm -rf ~"), "checkpoint_dir": str(strange / "model|cat"),
                 "trust_remote_code": True},
        dataset={"train_file": str(data)},
        training={"save_every_steps": 2, "num_training_workers": 1},
    )
    config_path = workspace.write_config(config, name="rm `whoami`.toml")
    result = runner.invoke(app, ["rm", "train", str(config_path), "--quiet"])
    assert result.exit_code == 0, result.output

    assert not [path for path in workspace.root.rglob("PWNED*")], "a shell ran part of a path"
    run_dir, export_dir = strange / "run;rm -rf ~", strange / "model|cat"
    assert (run_dir / "metrics.jsonl").is_file() and (export_dir / "config.json").is_file()
    assert "trust_remote_code = true" in (run_dir / "resolved_config.toml").read_text(encoding="utf-8")

    checkpoints = sorted((run_dir / "rm_run").glob("checkpoint_*"))
    assert checkpoints, "no checkpoint was written"
    _assert_no_pickles([*checkpoints, export_dir])
    assert list(export_dir.glob("*.safetensors")) and all(list(c.glob("*.safetensors")) for c in checkpoints)


def _assert_no_pickles(folders: list[Path]) -> None:
    from safetensors import safe_open

    for folder in folders:
        for path in folder.rglob("*"):
            if not path.is_file():
                continue
            assert path.suffix in ALLOWED_SUFFIXES, f"unexpected file format: {path}"
            head = path.read_bytes()[:4]
            assert not head.startswith(PICKLE_OR_TORCH_SAVE_MAGIC), f"pickle/torch.save data in {path}"
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    assert list(handle.keys())
            else:
                text = path.read_text(encoding="utf-8")
                if path.suffix == ".json":
                    json.loads(text)

