"""``rlhfctl data convert``: any supported source file -> a standard JSONL file, with every decision reported.

The input is streamed record by record and never modified; the output (and the optional validation file) is
written to a temporary file and renamed at the end, so a failed or interrupted conversion leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from pathlib import Path

from rlhfctl.data.formats import FORMATS_BY_NAME, TARGETS, ConvertOptions, Skip, detect_format
from rlhfctl.data.readers import detect_layout, iter_records
from rlhfctl.data.report import ConvertReport
from rlhfctl.errors import DataError, UserError
from rlhfctl.fileio import atomic_open, refuse_to_clobber

DETECTION_SAMPLE = 100  # records looked at to detect the format


@dataclass(frozen=True)
class ConvertRequest:
    """What to convert and how (the command's flags, typed)."""

    input: str  # a path, or a hub dataset id
    output: Path
    target: str  # "rm" | "ppo" | "sft"
    source_format: str = "auto"
    fields: dict[str, str] = field(default_factory=dict)  # target key -> source key
    dedupe: bool = False
    validation_percentage: float | None = None
    seed: int = 0
    max_rows: int | None = None
    strict: bool = False
    force: bool = False
    options: ConvertOptions = ConvertOptions()
    validation_output: Path | None = None  # default: OUTPUT with ".validation" before the suffix


def parse_field_mappings(specs: list[str]) -> dict[str, str]:
    """``["prompt=query", ...]`` -> ``{"prompt": "query"}``; a malformed spec is a UserError."""
    mapping: dict[str, str] = {}
    for spec in specs:
        target, sep, source = spec.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise UserError(f"--field expects TARGET=SOURCE (e.g. prompt=query), got {spec!r}")
        mapping[target.strip()] = source.strip()
    return mapping


def default_validation_output(output: Path) -> Path:
    """``rm.jsonl`` -> ``rm.validation.jsonl``."""
    return output.with_name(f"{output.stem}.validation{output.suffix or '.jsonl'}")


def convert_file(request: ConvertRequest) -> ConvertReport:
    """Convert ``request.input`` to ``request.output``; raise DataError/UserError on bad input or flags."""
    started = time.perf_counter()
    _check_flags(request)
    output = Path(request.output)
    validation_output = None
    if request.validation_percentage:
        validation_output = Path(request.validation_output or default_validation_output(output))
    _check_paths(request.input, [output, *([validation_output] if validation_output else [])], request.force)

    layout = detect_layout(request.input)
    source_format, detected = _choose_format(request, layout)
    report = ConvertReport(
        input=str(request.input), output=str(output), target=request.target, source_format=source_format.name,
        format_detected=detected, layout=layout,
        validation_output=str(validation_output) if validation_output else None, fields=dict(request.fields),
    )
    convert_record = source_format.converters[request.target]
    options, fields, dedupe = request.options, request.fields, request.dedupe
    encode = RowEncoder().encode
    seen: set[bytes] = set()
    split_random = random.Random(request.seed).random
    validation_share = (request.validation_percentage or 0.0) / 100.0
    max_rows = request.max_rows if request.max_rows is not None else -1
    rows_read = rows_written = validation_rows = 0

    with contextlib.ExitStack() as stack:
        train_handle = stack.enter_context(atomic_open(output))
        validation_handle = stack.enter_context(atomic_open(validation_output)) if validation_output else None
        write_train = train_handle.write
        for line, record in iter_records(request.input, layout):
            rows_read += 1
            if fields:
                record = _remap(record, fields)
            for item in convert_record(record, options):
                if type(item) is Skip:
                    _skip(report, request, line, item.reason, item.detail)
                    continue
                text = encode(item)
                if dedupe:
                    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
                    if digest in seen:
                        _skip(report, request, line, "duplicate", "same row as an earlier one")
                        continue
                    seen.add(digest)
                to_validation = validation_handle is not None and split_random() < validation_share
                write = validation_handle.write if to_validation else write_train
                try:
                    write(text)
                except UnicodeEncodeError:  # lone surrogates ("\\ud83d" escapes) are not UTF-8: keep them escaped
                    write(json.dumps(item) + "\n")
                validation_rows += to_validation
                rows_written += 1
                if rows_written == max_rows:
                    break
            if rows_written == max_rows:
                break
        report.rows_read, report.rows_written, report.validation_rows = rows_read, rows_written, validation_rows
        if rows_written == 0:
            raise DataError(
                f"no rows converted: all {report.rows_read} rows read were skipped "
                f"({report.skip_summary() or 'no records'}) reading it as format {source_format.name!r}",
                path=request.input,
                hint="Check the format (--from, see `rlhfctl data formats`) and column names (--field TARGET=SOURCE);"
                     f" `rlhfctl data inspect {request.input}` shows what the file holds.",
            )
    report.seconds = time.perf_counter() - started
    return report


# ----------------------------------------------------------------------------------------------- helpers


def _check_flags(request: ConvertRequest) -> None:
    if request.target not in TARGETS:
        raise UserError(f"--to must be one of {', '.join(TARGETS)}, got {request.target!r}")
    if request.source_format != "auto" and request.source_format not in FORMATS_BY_NAME:
        raise UserError(
            f"unknown format {request.source_format!r} for --from; expected auto or one of "
            f"{', '.join(FORMATS_BY_NAME)}", hint="`rlhfctl data formats` lists them with their keys."
        )
    if request.validation_percentage is not None and not 0 <= request.validation_percentage < 100:
        raise UserError(f"--val-split must be a percentage in [0, 100), got {request.validation_percentage:g}")
    if request.max_rows is not None and request.max_rows <= 0:
        raise UserError(f"--max-rows must be positive, got {request.max_rows}")
    if request.options.preference not in ("better", "safer"):
        raise UserError(f"--preference must be better or safer, got {request.options.preference!r}")


def _check_paths(source: str, outputs: list[Path], force: bool) -> None:
    source_path = Path(source)
    for output in outputs:
        if source_path.exists() and output.resolve() == source_path.resolve():
            raise UserError(f"the output {output} is the input file; choose another output path")
        if output.is_dir():
            raise UserError(f"the output {output} is a folder; give a file path such as {output / 'data.jsonl'}")
        refuse_to_clobber(output, force=force)
    if len(outputs) == 2 and outputs[0].resolve() == outputs[1].resolve():
        raise UserError(f"the validation output {outputs[1]} is the same file as the output")


def _choose_format(request: ConvertRequest, layout: str):
    """The requested format (``--from``) or the detected one; checks it can produce ``--to``."""
    if request.source_format != "auto":
        source_format, detected = FORMATS_BY_NAME[request.source_format], False
    else:
        sample = [record for _, record in itertools.islice(iter_records(request.input, layout), DETECTION_SAMPLE)]
        if request.fields:
            sample = [_remap(record, request.fields) for record in sample]
        if not sample:
            raise DataError("the input has no records", path=request.input)
        detection = detect_format(sample)
        if detection.source_format is None:
            raise DataError(_undetected_message(sample, detection.closest), path=request.input,
                            hint="Force a format with --from FORMAT (`rlhfctl data formats` lists them) or map your "
                                 "columns with --field TARGET=SOURCE, e.g. --field prompt=query.")
        source_format, detected = detection.source_format, True
    if request.target not in source_format.converters:
        raise DataError(
            f"format {source_format.name!r} cannot produce {request.target} rows; it converts to "
            f"{', '.join(source_format.targets)}",
            path=request.input,
            hint=f"Pick another --to, or --from another format if {source_format.name!r} is wrong.",
        )
    return source_format, detected


def _undetected_message(sample: list, closest: tuple[tuple[str, float], ...]) -> str:
    keys = sorted({key for record in sample if isinstance(record, dict) for key in record})
    seen = f"keys seen: {', '.join(keys[:12])}" if keys else f"records are {type(sample[0]).__name__}"
    near = ", ".join(f"{name} ({score:.0%} of its keys)" for name, score in closest) or "none"
    return f"cannot detect the data format ({seen}); closest formats: {near}"


def _remap(record: object, fields: dict[str, str]) -> object:
    if not isinstance(record, dict):
        return record
    record = dict(record)
    for target, source in fields.items():
        if source in record:
            record[target] = record.pop(source)
    return record


class RowEncoder:
    """One output line: exactly ``json.dumps(row, ensure_ascii=False) + "\\n"``, with a fast path for rows whose
    values are all text (the C string escaper joined by hand; the general encoder otherwise)."""

    def __init__(self) -> None:
        self._encoded_keys: dict[str, str] = {}
        self._general = json.JSONEncoder(ensure_ascii=False).encode

    def encode(self, row: dict) -> str:
        parts = []
        encoded_keys = self._encoded_keys
        for key, value in row.items():
            if type(value) is not str:
                return self._general(row) + "\n"
            encoded_key = encoded_keys.get(key)
            if encoded_key is None:
                encoded_key = encoded_keys[key] = encode_basestring(key) + ": "
            parts.append(encoded_key + encode_basestring(value))
        return "{" + ", ".join(parts) + "}\n"


def _skip(report: ConvertReport, request: ConvertRequest, line: int, reason: str, detail: str) -> None:
    if request.strict:
        what = f"{reason} ({detail})" if detail else reason
        raise DataError(f"row skipped: {what}; --strict makes any skipped row an error", path=request.input,
                        line=line)
    report.skip(reason, line, detail)
