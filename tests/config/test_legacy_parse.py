"""llm-on-ray .conf files are read as data: literals pass, anything executable is refused before evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfctl.config.legacy_parse import parse_python_literal, read_legacy_config
from rlhfctl.errors import ConfigError, UserError

SEED_STYLE = """\
# I am python, not json
{
    'General': {
        "base_model": "EleutherAI/gpt2",   # a comment after a value
        "flag": True, "other": False,
        "nothing": None,
    },
    "Training": {"learning_rate": 1e-5, "delta": -2, "resources_per_worker": {"CPU": 32,},},
}
"""


def test_seed_style_conf_with_none_comments_trailing_commas_and_both_quotes() -> None:
    data = parse_python_literal(SEED_STYLE)
    assert data == {
        "General": {"base_model": "EleutherAI/gpt2", "flag": True, "other": False, "nothing": None},
        "Training": {"learning_rate": 1e-5, "delta": -2, "resources_per_worker": {"CPU": 32}},
    }


def test_json_is_accepted() -> None:
    assert parse_python_literal('{"a": null, "b": true}') == {"a": None, "b": False} | {"b": True}


@pytest.mark.parametrize(
    ("snippet", "what"),
    [
        ("__import__('os').system('echo hi')", "`__import__`"),
        ("open('/etc/passwd').read()", "the name `open`"),
        ("os.path", "the name `os`"),
        ("(lambda: 1)()", "`lambda`"),
        ("f'{1+1}'", "an f-string"),
        ("b'raw'", "a bytes literal"),
        ("[x for x in ()]", "the name `x`"),
        ("1 if True else 2", "the name `if`"),
        ("'a' * 10", "the operator `*`"),
        ("().__class__", "attribute access `.`"),
    ],
)
def test_code_is_refused_with_its_line(snippet: str, what: str) -> None:
    text = '{\n    "General": {\n        "base_model": ' + snippet + ",\n    },\n}\n"
    with pytest.raises(ConfigError) as info:
        parse_python_literal(text, "x.conf")
    (issue,) = info.value.issues
    assert issue.line == 3
    assert what in issue.message
    assert "never executed" in issue.message


def test_import_statement_and_assignment_are_refused() -> None:
    with pytest.raises(ConfigError, match="`import`"):
        parse_python_literal("import os\n{}")
    with pytest.raises(ConfigError, match="the name `config`"):
        parse_python_literal("config = {}")
    with pytest.raises(ConfigError, match="an assignment"):
        parse_python_literal('{"a": (b := 1)}'.replace("b", "None"))


def test_malicious_conf_file_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.conf"
    path.write_text('{"General": {"base_model": __import__("os").system("touch ' + str(marker) + '")}}\n')
    with pytest.raises(ConfigError, match="evil.conf:1:"):
        read_legacy_config(path)
    assert not marker.exists()


def test_syntax_errors_and_duplicates_name_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_python_literal('{\n  "a": 1\n  "b": 2\n}')
    assert info.value.issues[0].line in (2, 3)
    with pytest.raises(ConfigError) as info:
        parse_python_literal('{\n  "a": 1,\n  "a": 2,\n}')
    assert info.value.issues[0].line == 3 and "appears twice (first on line 2)" in info.value.issues[0].message
    with pytest.raises(ConfigError, match="not a valid Python literal"):
        parse_python_literal('{"a": "unterminated}')
    with pytest.raises(ConfigError, match="not a plain literal"):
        parse_python_literal('{"a": 1 + 2}')


def test_yaml_files_use_safe_load(tmp_path: Path) -> None:
    path = tmp_path / "finetune.yaml"
    path.write_text("General:\n  base_model: gpt2\n  config:\n    use_auth_token: null\n")
    assert read_legacy_config(path) == {"General": {"base_model": "gpt2", "config": {"use_auth_token": None}}}
    path.write_text("General: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="YAML error"):
        read_legacy_config(path)
    path.write_text("General:\n  a: [1,\n")
    with pytest.raises(ConfigError) as info:
        read_legacy_config(path)
    assert info.value.issues[0].line is not None


def test_yaml_without_pyyaml_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "yaml", None)  # makes `import yaml` raise ImportError
    path = tmp_path / "c.yml"
    path.write_text("General: {}\n")
    with pytest.raises(UserError, match="needs PyYAML"):
        read_legacy_config(path)


def test_not_a_mapping_missing_file_and_binary(tmp_path: Path) -> None:
    path = tmp_path / "c.conf"
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="one mapping of sections"):
        read_legacy_config(path)
    with pytest.raises(UserError, match="not found"):
        read_legacy_config(tmp_path / "missing.conf")
    path.write_bytes(b"{\xff}")
    with pytest.raises(UserError, match="not UTF-8"):
        read_legacy_config(path)
