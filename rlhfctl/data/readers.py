"""Readers for every file layout rlhfctl accepts, detected from the content (not only the suffix).

Each reader yields :class:`~rlhfctl.data.records.SourceRecord` ``(line, record)`` pairs: ``line`` is the 1-based
line where the record starts (the row number for Parquet files and ``datasets`` folders), ``record`` is a ``dict``
or, for prompt lists, a bare ``str``. Readers stream: memory stays flat however large the file is.

Layouts:

- ``jsonl``         one JSON value per line (objects, or bare JSON strings for prompt lists)
- ``json-objects``  concatenated or pretty-printed JSON objects, or one single object
- ``json-array``    one JSON array of objects or strings (streamed element by element)
- ``csv`` / ``tsv`` a header row, then one record per row (quoted fields may span lines); an unnamed first
                    column (the index pandas' ``to_csv`` writes) is ignored
- ``text``          a ``.txt`` file: one prompt per non-empty line
- ``parquet``       a Parquet file (pyarrow, read in batches)
- ``hf-disk``       a folder written by ``datasets``' ``save_to_disk``
- ``hub``           a Hugging Face hub dataset id, passed to ``datasets.load_dataset``

Any file may be gzip-compressed. Errors are :class:`~rlhfctl.errors.DataError` naming the file and the line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import json.scanner
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rlhfctl.data.records import SourceRecord
from rlhfctl.errors import DataError

LAYOUTS: tuple[str, ...] = (
    "jsonl", "json-objects", "json-array", "csv", "tsv", "text", "parquet", "hf-disk", "hub",
)

_CHUNK_CHARS = 1 << 20  # text read per refill in the streaming JSON reader
_MAX_RECORD_CHARS = 64 << 20  # one record larger than this is refused (keeps memory bounded)
_NEAR_END = 64  # a decode error this close to the end of the buffer may just mean "read more"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WHITESPACE = " \t\r\n"


def detect_layout(source: str | Path) -> str:
    """Name the layout of ``source`` (one of :data:`LAYOUTS`) by looking at its content.

    Raises DataError for a missing or empty input.
    """
    path = Path(source)
    if path.is_dir():
        if any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "hf-disk"
        raise DataError(
            "is a folder but not one written by datasets' save_to_disk (no dataset_info.json, state.json "
            "or dataset_dict.json inside)", path=path,
        )
    if not path.exists():
        if not str(source).startswith((".", "/", "~")) and _HUB_ID.match(str(source)):
            return "hub"
        raise DataError("file not found", path=path)
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}", path=path) from exc
    if magic == b"PAR1":
        return "parquet"
    suffixes = [suffix.lower() for suffix in path.suffixes if suffix.lower() != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    if suffix == ".parquet":
        raise DataError("has a .parquet suffix but is not a Parquet file", path=path)
    head = _first_non_blank_line(path)
    if head is None:
        raise DataError("the file is empty (no records)", path=path)
    first_char = head.lstrip()[:1]
    if suffix == ".tsv":
        return "tsv"
    if suffix == ".csv":
        return "csv"
    if first_char == "[":
        return "json-array"
    if first_char in '{"':
        try:
            json.loads(head)
        except json.JSONDecodeError:
            return "json-objects"
        return "jsonl"
    if suffix == ".txt":
        return "text"
    if "\t" in head:
        return "tsv"
    if "," in head:
        return "csv"
    raise DataError(
        "cannot tell the file layout: it is not JSON Lines, JSON, CSV/TSV, Parquet or a .txt prompt list",
        path=path, line=1,
    )


def iter_records(source: str | Path, layout: str | None = None) -> Iterator[SourceRecord]:
    """Yield every record of ``source`` as ``(line, record)``, streaming. ``layout`` defaults to detection."""
    layout = layout or detect_layout(source)
    path = Path(source)
    if layout in ("hub", "hf-disk", "parquet"):
        from rlhfctl.data import columnar

        reader = {"hub": columnar.iter_hub, "hf-disk": columnar.iter_hf_disk, "parquet": columnar.iter_parquet}[layout]
        yield from reader(str(source) if layout == "hub" else path)
        return
    readers = {
        "jsonl": _iter_jsonl, "json-objects": _iter_json_stream, "json-array": _iter_json_stream,
        "csv": _iter_delimited, "tsv": _iter_delimited, "text": _iter_text,
    }
    if layout not in readers:
        raise DataError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}", path=path)
    try:
        if layout in ("csv", "tsv"):
            yield from _iter_delimited(path, "\t" if layout == "tsv" else ",")
        else:
            yield from readers[layout](path)
    except UnicodeDecodeError as exc:
        raise _utf8_error(path) from exc


# ----------------------------------------------------------------------------------------------- text files


def _open_text(path: Path, newline: str | None = None) -> IO[str]:
    """Open a (possibly gzip-compressed) UTF-8 file; a byte-order mark is dropped."""
    with path.open("rb") as probe:
        compressed = probe.read(2) == b"\x1f\x8b"
    if compressed:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline=newline)
    return path.open("r", encoding="utf-8-sig", newline=newline)


def _first_non_blank_line(path: Path) -> str | None:
    try:
        with _open_text(path) as handle:
            for line in handle:
                if line.strip():
                    return line
    except UnicodeDecodeError as exc:
        raise _utf8_error(path) from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read the file: {exc}", path=path) from exc
    return None


def _utf8_error(path: Path) -> DataError:
    """Locate the first byte that is not UTF-8 (line and byte offset) for the error message."""
    with path.open("rb") as probe:
        compressed = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    offset = 0
    with opener(path, "rb") as handle:
        for line_number, raw_line in enumerate(handle, start=1):
            try:
                raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return DataError(
                    f"bytes that are not UTF-8 at byte offset {offset + exc.start} "
                    f"(byte {raw_line[exc.start:exc.start + 1]!r}); save the file as UTF-8",
                    path=path, line=line_number,
                )
            offset += len(raw_line)
    return DataError("the file is not valid UTF-8; save it as UTF-8", path=path)


def _iter_jsonl(path: Path) -> Iterator[SourceRecord]:
    # The C scanner directly (what json.loads runs underneath, minus two layers of Python per line); anything
    # unusual (leading whitespace, trailing data, errors) goes through json.loads for its exact behaviour.
    scan_once = json.scanner.make_scanner(json.JSONDecoder())
    loads = json.loads
    with _open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                value, end = scan_once(line, 0)
            except (StopIteration, ValueError):
                end = -1
            if end < 0 or (end != len(line) and not line[end:].isspace()):
                if not line or line.isspace():
                    continue
                try:
                    value = loads(line)
                except json.JSONDecodeError as exc:
                    raise _json_error(path, line_number, exc, truncated=_looks_cut_off(line, exc)) from exc
            yield SourceRecord(line_number, value)


def _looks_cut_off(last_line: str, exc: json.JSONDecodeError) -> bool:
    """A final line without a newline whose JSON stops mid-value was cut off (not merely malformed)."""
    if last_line.endswith("\n"):
        return False
    return exc.msg.startswith("Unterminated string") or exc.pos >= len(last_line.rstrip())


def _json_error(path: Path, line: int, exc: json.JSONDecodeError, *, truncated: bool) -> DataError:
    if truncated:
        return DataError(
            f"the last record is cut off ({exc.msg} at column {exc.colno}); the file looks truncated",
            path=path, line=line,
        )
    return DataError(f"malformed JSON: {exc.msg} at column {exc.colno}", path=path, line=line)


def _iter_json_stream(path: Path) -> Iterator[SourceRecord]:
    """Concatenated / pretty-printed objects, one object, or one array, decoded with ``raw_decode``.

    The buffer holds at most one chunk plus the record being decoded; line numbers are counted as the
    buffer is consumed.
    """
    decode = json.JSONDecoder().raw_decode
    with _open_text(path) as handle:
        buffer = ""
        position = 0
        line = 1  # line number at ``position``
        at_eof = False
        in_array = None  # None: not known yet, then True/False
        expect_separator = False

        def refill() -> bool:
            nonlocal buffer, position, at_eof
            if at_eof:
                return False
            chunk = handle.read(_CHUNK_CHARS)
            if not chunk:
                at_eof = True
                return False
            buffer = buffer[position:] + chunk
            position = 0
            return True

        while True:
            # skip whitespace (and, inside an array, the separators), refilling as needed
            while True:
                end = len(buffer)
                start = position
                while position < end and buffer[position] in _WHITESPACE:
                    position += 1
                line += buffer.count("\n", start, position)
                if position < end or not refill():
                    break
            if position >= len(buffer):
                if in_array:
                    raise DataError("the JSON array is never closed with ']'; the file looks truncated",
                                    path=path, line=line)
                return
            char = buffer[position]
            if in_array is None:
                in_array = char == "["
                if in_array:
                    position += 1
                    continue
            if in_array:
                if char == "]":
                    position += 1
                    _expect_only_whitespace(handle, buffer[position:], path, line)
                    return
                if expect_separator:
                    if char != ",":
                        raise DataError(f"malformed JSON array: expected ',' or ']' but found {char!r}",
                                        path=path, line=line)
                    position += 1
                    expect_separator = False
                    continue
            while True:
                try:
                    value, record_end = decode(buffer, position)
                    break
                except json.JSONDecodeError as exc:
                    maybe_incomplete = exc.msg.startswith("Unterminated string") or exc.pos >= len(buffer) - _NEAR_END
                    if maybe_incomplete and len(buffer) - position < _MAX_RECORD_CHARS and refill():
                        continue
                    error_line = line + buffer.count("\n", position, exc.pos)
                    unterminated = exc.msg.startswith("Unterminated string")
                    if at_eof and (unterminated or exc.pos >= len(buffer.rstrip())):
                        raise DataError(
                            f"the last record is cut off ({exc.msg}); the file looks truncated",
                            path=path, line=line,
                        ) from exc
                    raise DataError(f"malformed JSON: {exc.msg}", path=path, line=error_line) from exc
            if not in_array and not isinstance(value, dict):
                raise DataError(
                    f"expected a JSON object, found {type(value).__name__}", path=path, line=line
                )
            yield SourceRecord(line, value)
            line += buffer.count("\n", position, record_end)
            position = record_end
            expect_separator = bool(in_array)
            if position > _CHUNK_CHARS:
                buffer = buffer[position:]
                position = 0


def _expect_only_whitespace(handle: IO[str], rest: str, path: Path, line: int) -> None:
    while True:
        if rest.strip():
            raise DataError("unexpected data after the closing ']' of the JSON array", path=path, line=line)
        rest = handle.read(_CHUNK_CHARS)
        if not rest:
            return


def _iter_text(path: Path) -> Iterator[SourceRecord]:
    with _open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            text = line.rstrip("\r\n")
            if text.strip():
                yield SourceRecord(line_number, text)


def _iter_delimited(path: Path, delimiter: str) -> Iterator[SourceRecord]:
    csv.field_size_limit(max(csv.field_size_limit(), _MAX_RECORD_CHARS))
    with _open_text(path, newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError("the file is empty (no header row)", path=path) from None
        columns, index_cells = _header_columns(header, path)
        width = index_cells + len(columns)
        previous_end = reader.line_num
        try:
            for cells in reader:
                start = previous_end + 1
                previous_end = reader.line_num
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue
                if len(cells) > width:
                    raise DataError(
                        f"row has {len(cells)} fields but the header has {width} columns",
                        path=path, line=start,
                    )
                record = dict(zip(columns, cells[index_cells:]))  # short rows simply lack the trailing columns
                yield SourceRecord(start, record)
        except csv.Error as exc:
            kind = "TSV" if delimiter == "\t" else "CSV"
            if "unexpected end of data" in str(exc):
                raise DataError(f"malformed {kind}: a quoted field starting in this row is never closed "
                                "(the file may be truncated)", path=path, line=previous_end + 1) from exc
            raise DataError(f"malformed {kind}: {exc}", path=path, line=reader.line_num) from exc


def _header_columns(header: list[str], path: Path) -> tuple[list[str], int]:
    """The column names of a CSV/TSV header row and how many leading cells of each row to drop (0 or 1).

    A first column without a name is the index pandas writes by default (``DataFrame.to_csv()``): it is dropped
    from every row, as ``pandas.read_csv(index_col=0)`` would. Any other empty name, several empty names, or a
    repeated name is a DataError naming the column positions (counted from 1).
    """
    names = [name.strip() for name in header]
    if not names:
        raise DataError("the header row is empty; the first line must name the columns", path=path, line=1)
    index_cells = 1 if len(names) > 1 and not names[0] and all(names[1:]) else 0
    empty = [position for position, name in enumerate(names, start=1) if not name]
    if empty and not index_cells:
        where = (f"column {empty[0]}" if len(empty) == 1
                 else f"columns {', '.join(map(str, empty[:-1]))} and {empty[-1]}")
        raise DataError(
            f"the header row has no column name at {where} of {len(names)}: {header}",
            path=path, line=1,
            hint="Name every column in the header row; only an unnamed first column (the index pandas writes) "
                 "is ignored.",
        )
    columns = names[index_cells:]
    for position, name in enumerate(columns, start=index_cells + 1):
        first = names.index(name) + 1
        if first != position:
            raise DataError(f"the header row repeats the column name {name!r} (columns {first} and {position})",
                            path=path, line=1)
    return columns, index_cells


def describe_layout(layout: str) -> str:
    """A short human description of a layout name, for reports."""
    return {
        "jsonl": "JSON Lines",
        "json-objects": "concatenated JSON objects",
        "json-array": "JSON array",
        "csv": "CSV",
        "tsv": "TSV",
        "text": "text lines",
        "parquet": "Parquet",
        "hf-disk": "datasets save_to_disk folder",
        "hub": "Hugging Face hub dataset",
    }.get(layout, layout)


__all__ = ["LAYOUTS", "SourceRecord", "describe_layout", "detect_layout", "iter_records"]
