"""Streaming readers for usage files: CSV or JSONL, optionally gzip, from any binary stream.

Rows are yielded one at a time with their 1-based line number, so memory stays flat in file size
and a rejected row can be dead-lettered with the exact line it came from.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from typing import IO, Any

from m3sh.exceptions import InvalidRecord


class BadFile(Exception):
    """The whole file cannot be read (truncated gzip, wrong encoding, no header): fail that file only."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"usage file {source}: {reason}")


def detect_format(key: str, configured: str = "auto") -> tuple[str, bool]:
    """(``csv``|``jsonl``, gzipped) from the configured format and the object key's suffixes."""
    gz = key.endswith(".gz")
    base = key[:-3] if gz else key
    if configured != "auto":
        return configured, gz
    if base.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl", gz
    if base.endswith((".csv", ".tsv", ".txt")):
        return "csv", gz
    raise BadFile(key, "cannot tell the format from the name; set the feed's 'format' to csv or jsonl")


Row = tuple[int, dict[str, Any] | InvalidRecord]


def iter_rows(stream: IO[bytes], source: str, fmt: str, gz: bool) -> Iterator[Row]:
    """Yield ``(line, row)``; a row that cannot be parsed is yielded as an :class:`InvalidRecord`."""
    raw: IO[bytes] = gzip.GzipFile(fileobj=stream) if gz else stream  # type: ignore[assignment]
    text = io.TextIOWrapper(raw, encoding="utf-8", newline="")  # type: ignore[type-var]
    try:
        if fmt == "jsonl":
            yield from _jsonl(text, source)
        else:
            yield from _csv(text, source)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BadFile(source, f"unreadable ({exc.__class__.__name__}: {exc}); truncated or not gzip?") from exc
    except UnicodeDecodeError as exc:
        raise BadFile(source, f"not UTF-8 at byte {exc.start}: re-export the file as UTF-8") from exc


def _jsonl(text: io.TextIOWrapper, source: str) -> Iterator[tuple[int, dict[str, Any] | InvalidRecord]]:
    for line_no, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield line_no, InvalidRecord(f"not valid JSON ({exc.msg})", source=source, line=line_no)
            continue
        except (ValueError, RecursionError) as exc:  # an integer over 4300 digits, absurdly deep nesting
            yield line_no, InvalidRecord(f"not usable JSON ({str(exc)[:120]})", source=source, line=line_no)
            continue
        if not isinstance(row, dict):
            yield line_no, InvalidRecord("a JSONL line must be an object", source=source, line=line_no)
            continue
        yield line_no, row


def _csv(text: io.TextIOWrapper, source: str) -> Iterator[tuple[int, dict[str, Any] | InvalidRecord]]:
    reader = csv.reader(text)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise BadFile(source, f"unreadable CSV header row ({exc})") from exc
    if not header:
        raise BadFile(source, "empty file or missing CSV header row")
    header = [h.strip() for h in header]
    width = len(header)
    wide = width > 1  # a 1-column file needs the blank-row check below before its fast path
    # A plain for loop over the reader (the per-row hot path); a csv.Error ends that loop, is
    # reported for its row, and the outer loop resumes with the next row.
    while True:
        try:
            for values in reader:
                if len(values) == width and wide:
                    yield reader.line_num, dict(zip(header, values))  # noqa: B905 - width checked above
                elif not values or (len(values) == 1 and not values[0].strip()):
                    continue
                elif len(values) == width:
                    yield reader.line_num, dict(zip(header, values))  # noqa: B905 - width checked above
                else:
                    yield reader.line_num, InvalidRecord(f"expected {width} columns, got {len(values)}",
                                                         source=source, line=reader.line_num)
            return
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit(): that row only, the file goes on
            yield reader.line_num, InvalidRecord(f"unreadable CSV row ({exc})", source=source, line=reader.line_num)
