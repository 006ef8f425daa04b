"""Streaming readers for usage files: CSV or JSONL, optionally gzip, from any binary stream.

Rows are yielded one at a time with their 1-based line number, so memory stays flat in file size
and a rejected row can be dead-lettered with the exact line it came from.

Files are read the way spreadsheets and BI tools write them: UTF-8 with or without a byte-order
mark (Excel's "CSV UTF-8" has one), UTF-16 with a BOM (Excel's "Unicode text"), CRLF or LF line
ends, a configured CSV delimiter. An empty file (zero bytes, a BOM only, blank lines only) or a CSV
with only its header is no rows, not an error.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from m3sh.exceptions import InvalidRecord

# The separators exporters use, named for error messages; a header that is one column under the
# configured delimiter but contains another of these was written with that other one.
DELIMITER_NAMES = {",": "comma (',')", ";": "semicolon (';')", "\t": "tab ('\\t')"}


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


def csv_delimiter(key: str, configured: str | None = None) -> str:
    """The feed's configured delimiter; unset: a tab for ``.tsv`` files, else a comma."""
    if configured:
        return configured
    return "\t" if key.removesuffix(".gz").endswith(".tsv") else ","


Row = tuple[int, dict[str, Any] | InvalidRecord]


class _Sniffed:
    """The (decompressed) byte stream with its first bytes read ahead to choose the text encoding.

    Hand-written rather than ``peek()``: S3 bodies have no peek, and a buffered peek returns whatever
    one raw read gave, which may be shorter than a BOM. The bytes read ahead are handed back first.
    """

    __slots__ = ("encoding", "head", "raw")

    def __init__(self, raw: IO[bytes], source: str) -> None:
        head = b""
        while len(head) < 4:
            chunk = raw.read(4 - len(head))
            if not chunk:
                break
            head += chunk
        self.raw, self.head = raw, head
        self.encoding = _encoding(head, source)

    def read(self, n: int = -1) -> bytes:
        if self.head:
            head, self.head = self.head, b""
            return head
        return self.raw.read(n)

    def readable(self) -> bool:
        return True

    # io.TextIOWrapper probes these.
    def writable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return False

    def flush(self) -> None:
        return None


def _encoding(head: bytes, source: str) -> str:
    """The codec for a file starting with ``head``: UTF-16/32 only with a BOM, else UTF-8.

    The ``utf-8-sig``/``utf-16``/``utf-32`` decoders drop the BOM themselves (so the first header is
    ``event_id``, not ``\\ufeffevent_id``); ``utf-8-sig`` reads BOM-less UTF-8 unchanged.
    """
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if head.startswith(b"\x1f\x8b"):
        raise BadFile(source, "is gzip-compressed but its name does not end in .gz; rename it to <name>.gz")
    if head[:2].count(0):  # ASCII text in UTF-16 without a BOM: every other byte is NUL
        raise BadFile(source, "looks like UTF-16 without a byte-order mark; re-export it as UTF-8, or as "
                              "UTF-16 with a BOM (Excel: 'Unicode text')")
    return "utf-8-sig"


def iter_rows(stream: IO[bytes], source: str, fmt: str, gz: bool, delimiter: str = ",") -> Iterator[Row]:
    """Yield ``(line, row)``; a row that cannot be parsed is yielded as an :class:`InvalidRecord`."""
    with open_text(stream, source, gz) as text:
        if fmt == "jsonl":
            yield from _jsonl(text, source)
        else:
            yield from _csv(text, source, delimiter)


@contextlib.contextmanager
def open_text(stream: IO[bytes], source: str, gz: bool) -> Iterator[IO[str]]:
    """The (decompressed) stream as text in its encoding, line ends kept; read errors become BadFile."""
    raw: IO[bytes] = gzip.GzipFile(fileobj=stream) if gz else stream  # type: ignore[assignment]
    encoding = "utf-8"
    try:
        sniffed = _Sniffed(raw, source)
        encoding = sniffed.encoding
        yield io.TextIOWrapper(sniffed, encoding=encoding, newline="")  # type: ignore[type-var]
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BadFile(source, f"unreadable ({exc.__class__.__name__}: {exc}); truncated or not gzip?") from exc
    except UnicodeDecodeError as exc:
        if encoding.startswith("utf-8"):
            bad = exc.object[exc.start:exc.start + 1].hex()
            raise BadFile(source, f"not UTF-8 (byte 0x{bad}: {exc.reason}): re-export the file as UTF-8, or as "
                                  f"UTF-16 with a byte-order mark") from exc
        raise BadFile(source, f"not valid {encoding.upper()} ({exc.reason}); truncated?") from exc


def _jsonl(text: Iterable[str], source: str) -> Iterator[tuple[int, dict[str, Any] | InvalidRecord]]:
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


def _check_delimiter(header: list[str], delimiter: str, source: str) -> None:
    """A header that is one column under ``delimiter`` but contains another common delimiter was
    written with that one: fail the file before any row is misread."""
    if len(header) != 1:
        return
    counts = {d: header[0].count(d) for d in DELIMITER_NAMES if d != delimiter}
    seen = max(counts, key=counts.__getitem__)
    if counts[seen]:
        raise BadFile(source, f"the header row is one column when split on the configured delimiter "
                              f"{DELIMITER_NAMES.get(delimiter, repr(delimiter))} but seems to use "
                              f"{DELIMITER_NAMES[seen]}: set the feed's 'delimiter' to {seen!r} (or re-export "
                              f"the file with the configured one)")


def _csv(text: Iterable[str], source: str, delimiter: str) -> Iterator[tuple[int, dict[str, Any] | InvalidRecord]]:
    reader = csv.reader(text, delimiter=delimiter)
    header = csv_header(reader, source, delimiter)
    if header is not None:
        yield from csv_records(reader, header, source)


def csv_header(reader: Any, source: str, delimiter: str) -> list[str] | None:
    """The header row of a ``csv.reader`` (blank lines before it skipped), stripped; None for no header."""
    try:
        header = next(reader, None)
        while header is not None and not "".join(header).strip():  # blank lines before the header
            header = next(reader, None)
    except csv.Error as exc:
        raise BadFile(source, f"unreadable CSV header row ({exc})") from exc
    if header is None:
        return None  # an empty file (zero bytes, a BOM only, blank lines only): no rows
    header = [h.strip() for h in header]
    _check_delimiter(header, delimiter, source)
    return header


def csv_records(reader: Any, header: list[str], source: str,
                offset: int = 0) -> Iterator[tuple[int, dict[str, Any] | InvalidRecord]]:
    """The records of a ``csv.reader`` past its header; lines are ``offset`` + the reader's line."""
    width = len(header)
    wide = width > 1  # a 1-column file needs the blank-row check below before its fast path
    # A plain for loop over the reader (the per-row hot path); a csv.Error ends that loop, is
    # reported for its row, and the outer loop resumes with the next row.
    while True:
        try:
            for values in reader:
                if len(values) == width and wide:
                    yield offset + reader.line_num, dict(zip(header, values))  # noqa: B905 - width checked above
                elif not values or (len(values) == 1 and not values[0].strip()):
                    continue
                elif len(values) == width:
                    yield offset + reader.line_num, dict(zip(header, values))  # noqa: B905 - width checked above
                else:
                    line = offset + reader.line_num
                    yield line, InvalidRecord(f"expected {width} columns, got {len(values)}", source=source, line=line)
            return
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit(): that row only, the file goes on
            line = offset + reader.line_num
            yield line, InvalidRecord(f"unreadable CSV row ({exc})", source=source, line=line)
