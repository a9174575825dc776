"""Reading llm-on-ray's config files as data, never as code.

llm-on-ray's ``.conf`` files are Python dict literals (``None``, ``True``, trailing commas, ``#`` comments, either
quote style); its newer configs are YAML. ``.conf`` text is tokenised first and every token checked against an
allow-list of literal pieces (strings, numbers, ``None``/``True``/``False``, brackets, ``:``, ``,``, signs), so a
call, a name, attribute access, a lambda, an f-string or an import is refused with its line number before
:func:`ast.literal_eval` ever sees the text. Nothing from the file is executed.
"""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from pathlib import Path
from typing import Any

from rlhfctl.errors import ConfigError, ConfigIssue, UserError

MAX_CONFIG_BYTES = 1_000_000
_LITERAL_NAMES = {"None", "True", "False"}
_LITERAL_OPERATORS = {"{", "}", "[", "]", "(", ")", ":", ",", "-", "+"}
_LAYOUT_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                  tokenize.ENDMARKER}


def read_legacy_config(path: Path) -> dict[str, Any]:
    """Parse an llm-on-ray config (``.conf`` Python literal, JSON or YAML) into a dict, as data only."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"expected a config file, found a directory: {path}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: {len(raw)} bytes is too large for a config file (limit {MAX_CONFIG_BYTES})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte offset {exc.start})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        data = parse_yaml_text(text, path)
    elif _first_meaningful_char(text) in ("{", ""):
        data = parse_python_literal(text, path)
    else:
        data = parse_yaml_text(text, path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected the whole file to be one mapping of sections (General, Dataset, "
                        f"Training), found {type(data).__name__}")
    return data


def _first_meaningful_char(text: str) -> str:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped[0]
    return ""


def parse_python_literal(text: str, path: Path | str = "<config>") -> Any:
    """A Python literal (dicts, lists, tuples, strings, numbers, None/True/False) from text, or a ConfigError.

    Strict JSON is accepted as well (``null``/``true``/``false``).
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    _check_tokens(text, path)
    try:
        tree = ast.parse(text, filename=str(path), mode="eval")
    except SyntaxError as exc:
        raise _error(path, exc.lineno, f"not a valid Python literal: {exc.msg}") from None
    _check_duplicate_keys(tree, path)
    try:
        return ast.literal_eval(tree)
    except (ValueError, TypeError, SyntaxError, RecursionError) as exc:
        line = _line_from_message(str(exc))
        raise _error(path, line, f"not a plain literal value: {exc}") from None


def _check_tokens(text: str, path: Path | str) -> None:
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in _LAYOUT_TOKENS or token.type == tokenize.NUMBER:
                continue
            if token.type == tokenize.ERRORTOKEN:
                raise _error(path, token.start[0], "not a valid Python literal: an unterminated string or a stray "
                                                   f"character near {token.line.strip()!r}")
            if token.type == tokenize.STRING:
                prefix = re.match(r"[A-Za-z]*", token.string).group().lower()
                if "f" in prefix or "b" in prefix:
                    kind = "an f-string" if "f" in prefix else "a bytes literal"
                    raise _refused(path, token, kind)
                continue
            if token.type == tokenize.NAME and token.string in _LITERAL_NAMES:
                continue
            if token.type == tokenize.OP and token.string in _LITERAL_OPERATORS:
                continue
            raise _refused(path, token, _describe(token))
    except tokenize.TokenError as exc:
        line = exc.args[1][0] if len(exc.args) > 1 and exc.args[1] else None
        raise _error(path, line, f"not a valid Python literal: {exc.args[0]}") from None
    except SyntaxError as exc:  # IndentationError and friends raised by the tokenizer
        raise _error(path, exc.lineno, f"not a valid Python literal: {exc.msg}") from None


def _describe(token: tokenize.TokenInfo) -> str:
    if token.type == tokenize.NAME:
        if token.string in ("import", "lambda", "def", "class", "exec", "eval", "__import__"):
            return f"the keyword or name `{token.string}`"
        return f"the name `{token.string}`"
    if token.type == tokenize.OP and token.string == ".":
        return "attribute access `.`"
    if token.type == tokenize.OP and token.string in ("=", ":="):
        return "an assignment"
    if token.type == tokenize.OP:
        return f"the operator `{token.string}`"
    return f"`{token.string}`"


def _refused(path: Path | str, token: tokenize.TokenInfo, what: str) -> ConfigError:
    return _error(
        path,
        token.start[0],
        f"{what} is not allowed: a .conf file is read as data (dicts, lists, strings, numbers, True/False/None) "
        "and never executed",
    )


def _check_duplicate_keys(tree: ast.AST, path: Path | str) -> None:
    issues = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Dict):
            continue
        seen: dict[object, int] = {}
        for key in node.keys:
            if isinstance(key, ast.Constant):
                if key.value in seen:
                    issues.append(ConfigIssue(str(key.value), f"key appears twice (first on line {seen[key.value]})",
                                              line=key.lineno))
                seen.setdefault(key.value, key.lineno)
    if issues:
        raise ConfigError(issues, path)


def _line_from_message(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _error(path: Path | str, line: int | None, message: str) -> ConfigError:
    return ConfigError([ConfigIssue("", message, line=line)], path)


def parse_yaml_text(text: str, path: Path | str = "<config>") -> Any:
    """YAML through ``yaml.safe_load`` (plain data only); PyYAML is imported here, when needed."""
    try:
        import yaml
    except ImportError:
        raise UserError(
            f"{path}: reading YAML configs needs PyYAML, which is not installed",
            hint="pip install pyyaml (it normally comes with ray), or convert the file to a .conf/JSON dict.",
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise _error(path, line, f"YAML error: {problem}") from None
