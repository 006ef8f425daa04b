"""Usage rows -> m3ter measurements a block of a CSV file at a time (Arrow), the row path as the judge.

The row path (:func:`m3sh.usage.reader.iter_rows` then :meth:`MeasurementBuilder.build`) spends most of
its time in the interpreter, one row dict at a time. Here a CSV file is read in blocks of whole
records; a block whose text is plain (no quotes, no blank lines, no lone CR: what platforms and BI
tools write for machine data) is parsed by Arrow's CSV reader and validated a column at a time with
Arrow compute. Only a row that every vectorised check accepts is built here; any other row, and
every row of a block that is not plain, goes through the row path unchanged, so errors, dead
letters, line numbers and uids are the row path's own. Each check is stricter than the row path
(printable ASCII codes, canonical UTC timestamps, plain decimals): where the two could differ, the
row decides. ``tests/unit/test_usage_columnar.py`` holds both paths to the same output.

Arrow rather than hand-written parsing: it is a dependency already (the analytics exports), and
its CSV reader and compute kernels are C++ (issue 17: the client's per-row CPU decides ingest on a
slow core).
"""

from __future__ import annotations

import array
import csv
import datetime as dt
import functools
import hashlib
import io
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any, NamedTuple

import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from m3sh.exceptions import InvalidRecord
from m3sh.usage.measurements import UID_DIGITS, UID_PREFIX, MeasurementBuilder, uid_basis
from m3sh.usage.reader import csv_header, csv_records, iter_rows, open_text


class Rejected(NamedTuple):
    """A row that is not a measurement: why (file, line, field) and the row for its dead letter."""

    error: InvalidRecord
    row: dict[str, Any] | None


# One row's outcome: its measurement (a dict, or its JSON when built here), or why not. Rows come a
# block (a list) at a time, in file order.
Built = dict[str, Any] | bytes | Rejected
ROW_PATH_CHUNK = 1024

# ~8k rows of a typical export per block. A block costs some 60 Arrow calls with fixed overheads: smaller
# blocks spend measurably more CPU per row, bigger ones more memory than they save CPU.
BLOCK_CHARS = 1 << 19
# A block is cut at a line end outside quotes; a file whose quotes never balance (an unterminated
# quote) is read by the row path from there on rather than buffered.
MAX_CARRY_CHARS = 16 << 20

# What the fast path accepts; anything else takes the row path. Python's str.strip() and float()
# accept more (Unicode spaces, "1e3", " 5 "): those rows are still valid, just not fast.
_CODE = r"^[!-\[\]-~](?:[ -\[\]-~]*[!-\[\]-~])?$"  # printable ASCII but backslash, nothing for strip() to remove
_TEXT = r"^[^\\\x00-\x1f]*$"  # a dimension value JSON writes as is (the block has no quotes)
_TS = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{3})?Z$"
_NUMBER = r"^-?[0-9]{1,15}(?:\.[0-9]{1,15})?$"
_MAX_ACCOUNT = 80
_MAX_DIMENSION = 256


def iter_built(stream: IO[bytes], source: str, fmt: str, gz: bool, delimiter: str, *,
               builder: MeasurementBuilder) -> Iterator[list[Built]]:
    """Every row of the file in order, built by ``builder`` (the same output as the row path), a
    block at a time: per-row generator hand-offs cost more than building a plain row here."""
    if fmt != "csv":
        yield from _row_path(iter_rows(stream, source, fmt, gz, delimiter), builder, source)
        return
    with open_text(stream, source, gz) as text:
        yield from _csv_built(text, source, delimiter, builder)


def _row_path(rows: Iterable[tuple[int, dict[str, Any] | InvalidRecord]], builder: MeasurementBuilder,
              source: str) -> Iterator[list[Built]]:
    build = builder.build
    chunk: list[Built] = []
    for line, row in rows:
        if isinstance(row, InvalidRecord):
            chunk.append(Rejected(row, None))
        else:
            try:
                chunk.append(build(row, source, line))
            except InvalidRecord as bad:
                chunk.append(Rejected(_detached(bad), row))
        if len(chunk) >= ROW_PATH_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _csv_built(text: IO[str], source: str, delimiter: str, builder: MeasurementBuilder) -> Iterator[list[Built]]:
    # The header is read line by line, as the row path reads it (it may be preceded by blank lines,
    # quoted across lines, or too long); readline and read share the stream's position.
    reader = csv.reader(iter(text.readline, ""), delimiter=delimiter)
    header = csv_header(reader, source, delimiter)
    if header is None:
        return
    plan = _Plan.make(builder, header, delimiter)
    offset = reader.line_num
    for block in _blocks(text):
        if isinstance(block, str):
            table = plan.parse(block) if plan is not None and _plain(block) else None
            if table is not None and plan is not None:
                yield plan.build(table, block, offset, source)
                offset += table.num_rows
                continue
            block_lines: Iterable[str] = io.StringIO(block, newline="")
        else:
            block_lines = block
        reader = csv.reader(block_lines, delimiter=delimiter)
        yield from _row_path(csv_records(reader, header, source, offset), builder, source)
        offset += reader.line_num


def _blocks(text: IO[str]) -> Iterator[str | Iterable[str]]:
    """The text in blocks of whole lines; from the first block with a quote (or a line longer than
    MAX_CARRY_CHARS) on, the rest of the text as one stream of lines for the row path.

    Quoted fields may span lines, and a stray quote inside an unquoted field is literal to csv, so
    no cheap scan can tell where a record ends once quotes appear: csv itself reads from there.
    """
    carry = ""
    while True:
        chunk = text.read(BLOCK_CHARS)
        if not chunk:
            if carry:
                yield carry
            return
        buf = carry + chunk
        cut = buf.rfind("\n") + 1
        if '"' in buf or (not cut and len(buf) > MAX_CARRY_CHARS):
            # Finish the partial line (a CR LF is not split) so the row path sees whole lines.
            tail = text.readline()
            if buf.endswith("\r") and tail == "\n":
                buf, tail = buf + tail, ""
            yield itertools.chain(io.StringIO(buf + tail, newline=""), text)
            return
        if cut:
            yield buf[:cut]
            carry = buf[cut:]
        else:
            carry = buf


def _plain(block: str) -> bool:
    """One record per line and a line per record: no quotes, no blank lines, CR only before LF; no
    leading U+FEFF (Arrow drops one, csv keeps it in the cell) and no line longer than csv's field
    limit (csv refuses such a field, Arrow has no limit)."""
    if ('"' in block or "\n\n" in block or "\n\r\n" in block or block[:1] in ("\n", "\r", "\ufeff")
            or block.count("\r") != block.count("\r\n")):
        return False
    limit = csv.field_size_limit()
    return len(block) <= limit or max(map(len, block.split("\n"))) <= limit


class _MeterColumns:
    """One meter's columns and bounds, as the vectorised checks use them."""

    __slots__ = ("account", "code", "dimensions", "latest", "measures", "oldest", "timestamp")

    def __init__(self, code: str, builder: MeasurementBuilder) -> None:
        meter = builder._meters[code]
        self.code = code
        self.account = meter.account_field
        self.timestamp = meter.timestamp_field
        self.measures = meter.measures
        self.dimensions = meter.dimensions
        self.oldest = _timestamp(meter.oldest)
        self.latest = _timestamp(builder._latest)


class _Plan:
    """How one file's plain blocks are parsed and built; None from :meth:`make` when the header or
    the feed needs the row path throughout (a configured column missing, duplicate headers)."""

    def __init__(self, builder: MeasurementBuilder, header: list[str], delimiter: str,
                 meters: list[_MeterColumns]) -> None:
        self.builder = builder
        self.header = header
        self.delimiter = delimiter
        self.meters = meters
        feed = builder.feed
        self.meter_field = feed.meter_field if feed.meter_field in header else None
        self.only_meter = builder._only_meter
        self.id_field = feed.id_field if feed.id_field and feed.id_field in header else None
        self.feed_name = feed.name
        self.read_options = pacsv.ReadOptions(column_names=header, use_threads=False, block_size=BLOCK_CHARS * 4 + 1)
        self.parse_options = pacsv.ParseOptions(delimiter=delimiter, quote_char=False, double_quote=False,
                                                escape_char=False, newlines_in_values=False, ignore_empty_lines=False)
        needed = {c for m in meters for c in (m.account, m.timestamp, *(c for _, c in m.measures),
                                              *(c for _, c in m.dimensions))}
        needed |= {c for c in (self.meter_field, self.id_field) if c}
        needed &= set(header)  # a dimension's column may be absent: the row path leaves it out
        self.convert_options = pacsv.ConvertOptions(
            column_types=dict.fromkeys(needed, pa.string()), include_columns=sorted(needed),
            strings_can_be_null=False, quoted_strings_can_be_null=False)

    @classmethod
    def make(cls, builder: MeasurementBuilder, header: list[str], delimiter: str) -> _Plan | None:
        # One column: csv skips a whitespace-only line as blank, Arrow would read it as a value.
        if len(header) < 2 or len(set(header)) != len(header) or len(delimiter) != 1 or delimiter in "\r\n\"":
            return None
        meters = [_MeterColumns(code, builder) for code in builder._meters]
        columns = {c for m in meters for c in (m.account, m.timestamp, *(c for _, c in m.measures))}
        if not columns <= set(header) or not all(m.timestamp and builder._meters[m.code].iso for m in meters):
            return None  # rows would fail (or need epoch parsing): the row path says why
        if builder.feed.meter_field not in header and builder._only_meter is None:
            return None
        return cls(builder, header, delimiter, meters)

    def parse(self, block: str) -> pa.Table | None:
        """The block as a table of strings, or None when Arrow reads it differently from csv (a
        row with the wrong number of columns): the row path then reports those rows."""
        if not block:
            return None
        try:
            return pacsv.read_csv(io.BytesIO(block.encode()), read_options=self.read_options,
                                  parse_options=self.parse_options, convert_options=self.convert_options)
        except (pa.ArrowInvalid, UnicodeEncodeError):  # lone surrogates cannot be UTF-8: the row path decides
            return None

    def build(self, table: pa.Table, block: str, offset: int, source: str) -> list[Built]:
        n = table.num_rows
        out: list[Built | None] = [None] * n
        if self.meter_field is not None:
            meter_col = table.column(self.meter_field)
        built = 0
        for meter in self.meters:
            if self.meter_field is None:
                idx = _int64s(range(n))
            elif meter.code != meter.code.strip():
                continue  # the row path strips the cell, so such a code never matches: its rows go there
            else:
                match = pc.equal(meter_col, _text(meter.code))
                if meter.code == self.only_meter:
                    match = pc.or_(match, pc.equal(meter_col, _text("")))
                idx = pc.indices_nonzero(match)
            if len(idx):
                built += self._build_meter(meter, table.take(idx), idx, offset, source, out)
        if built < n:
            # Not built above: the row path decides (a valid row the checks were too strict for, or
            # an error with its field); the block is plain, so a line splits exactly as csv splits it.
            lines = block.split("\n")
            build, header, delimiter = self.builder.build, self.header, self.delimiter
            for i, m in enumerate(out):
                if m is None:
                    row = dict(zip(header, lines[i].removesuffix("\r").split(delimiter), strict=True))
                    try:
                        out[i] = build(row, source, offset + i + 1)
                    except InvalidRecord as bad:
                        out[i] = Rejected(_detached(bad), row)
        return out  # type: ignore[return-value]  # every None was replaced above

    def _build_meter(self, meter: _MeterColumns, t: pa.Table, positions: pa.Array, offset: int,  # noqa: PLR0917
                     source: str, out: list[Built | None]) -> int:
        """Build the rows of ``t`` (one meter's rows of a block) that pass every check into ``out``,
        already JSON-encoded (no dict per row); returns how many."""
        accepted = self._accepted(meter, t)
        if accepted is None or not len(accepted):
            return 0
        take = t.take(accepted)
        at = pc.take(positions, accepted).to_pylist()
        feed = self.feed_name
        # measurement_uid's scheme, a block at a time: Arrow joins the id bases, and one hex() call
        # writes every uid's digits (per-row hexdigest, slice and concatenation cost more than the hash).
        basis: list[bytes]
        if self.id_field:
            ids = take.column(self.id_field)
            basis = pc.binary_join_element_wise(_text(f"{feed}|id|"), ids, _text("")).cast(pa.binary()).to_pylist()
            missing: Iterable[int] = pc.indices_nonzero(pc.equal(ids, _text(""))).to_pylist()
        else:
            basis, missing = [b""] * len(at), range(len(at))
        for j in missing:  # no id in the row: the uid is its place in the file
            basis[j] = uid_basis(feed, source, offset + at[j] + 1, None).encode()
        sha, size = hashlib.sha256, UID_DIGITS // 2
        digits = b"".join([sha(b).digest()[:size] for b in basis]).hex().encode()
        uids = _utf8(digits, array.array("i", range(0, UID_DIGITS * len(basis) + 1, UID_DIGITS)))
        raw_ts = take.column(meter.timestamp)
        # m3ter's wire form keeps milliseconds: whole seconds get ".000" before the Z, as in the row path
        wire_ts = pc.if_else(pc.equal(pc.utf8_length(raw_ts), _int(20)),
                             pc.binary_join_element_wise(pc.utf8_slice_codeunits(raw_ts, 0, 19), _text(".000Z"),
                                                         _text("")),
                             raw_ts)
        # Values checked above need no JSON escaping (no quote, backslash or control character); the
        # numbers are read as doubles, as float() reads them, and written back in Arrow's round-trip form.
        measures = [[_text(_json(target) + ":"), pc.cast(pc.cast(take.column(col), pa.float64()), pa.string())]
                    for target, col in meter.measures]
        pieces: list[Any] = [_text('{"uid":"' + UID_PREFIX), uids,
                             _text('","meter":' + _json(meter.code) + ',"account":"'), take.column(meter.account),
                             _text('","ts":"'), wire_ts, _text('","measure":{'), *_joined(measures, _text(",")),
                             _text("}"), self._where(meter, take), _text("}"), _text("")]
        encoded = pc.binary_join_element_wise(*pieces).cast(pa.binary()).to_pylist()
        for pos, m in zip(at, encoded, strict=True):
            out[pos] = m
        return len(encoded)

    def _where(self, meter: _MeterColumns, take: pa.Table) -> pa.ChunkedArray | pa.Scalar:
        """``,"where":{...}`` per row; the row path leaves an empty dimension out, and ``where`` out
        when none is left. (Not binary_join_element_wise's null_handling="skip": in pyarrow 26 it
        drops rows whose values are all null.)"""
        inner: Any = None
        empty = _text("")
        for key, col in meter.dimensions:
            if col not in self.header:
                continue
            values = take.column(col)
            part = pc.if_else(pc.equal(values, empty), empty,
                              pc.binary_join_element_wise(_text(_json(key) + ':"'), values, _text('"'), empty))
            inner = part if inner is None else pc.if_else(
                pc.equal(inner, empty), part, pc.if_else(pc.equal(part, empty), inner,
                                                         pc.binary_join_element_wise(inner, part, _text(","))))
        if inner is None:
            return empty
        return pc.if_else(pc.equal(inner, empty), empty,
                          pc.binary_join_element_wise(_text(',"where":{'), inner, _text("}"), empty))

    def _accepted(self, meter: _MeterColumns, t: pa.Table) -> pa.Array | None:
        """Indices of the rows of ``t`` the fast path builds exactly as the row path would."""
        account = t.column(meter.account)
        ok = pc.and_(pc.match_substring_regex(account, _CODE),
                     pc.less_equal(pc.utf8_length(account), _int(_MAX_ACCOUNT)))
        ok = pc.and_(ok, pc.match_substring_regex(t.column(meter.timestamp), _TS))
        for _, column in meter.measures:
            ok = pc.and_(ok, pc.match_substring_regex(t.column(column), _NUMBER))
        for _, column in meter.dimensions:
            if column in self.header:
                values = t.column(column)
                ok = pc.and_(ok, pc.and_(pc.less_equal(pc.utf8_length(values), _int(_MAX_DIMENSION)),
                                         pc.match_substring_regex(values, _TEXT)))
        if self.id_field:
            ids = t.column(self.id_field)
            ok = pc.and_(ok, pc.or_(pc.equal(ids, _text("")), pc.match_substring_regex(ids, _CODE)))
        try:
            ts = pc.cast(pc.if_else(ok, t.column(meter.timestamp), _NULL_TEXT), _TIMESTAMP)
        except pa.ArrowInvalid:  # an impossible date (30 February) in the block: its rows take the row path
            return None
        ok = pc.and_(ok, pc.and_(pc.greater_equal(ts, meter.oldest), pc.less_equal(ts, meter.latest)))
        account = pc.if_else(ok, account, _NULL_TEXT)
        known = self.builder.known_accounts(pc.drop_null(pc.unique(account)).to_pylist())
        return pc.indices_nonzero(pc.fill_null(pc.and_(ok, pc.is_in(account, _strings(known))), _FALSE))


def _detached(bad: InvalidRecord) -> InvalidRecord:
    """The error without its traceback and context: kept in a block, they would hold the frames that
    raised them, and through those the whole block, alive until a full garbage collection."""
    return InvalidRecord(bad.reason, source=bad.source, line=bad.line, field=bad.field)


def _json(text: str) -> str:
    """A configured name (meter code, measure or dimension key) as a JSON string."""
    return orjson.dumps(text).decode()


def _joined(items: list[list[Any]], separator: pa.Scalar) -> list[Any]:
    """``items`` flattened with ``separator`` between them, for binary_join_element_wise."""
    out: list[Any] = []
    for i, item in enumerate(items):
        if i:
            out.append(separator)
        out.extend(item)
    return out


# Arrow values are made from their buffers here, not with pa.array or pa.scalar (which a Python literal
# handed to a compute function goes through): their type sniffing imports pandas, which costs a task
# process ~45 MB of RSS and ~0.25 s of CPU for nothing this module uses.
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_INT64 = pa.int64()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _utf8(data: bytes, offsets: array.array[int]) -> pa.Array:
    """A string array of ``data``, value i being ``data[offsets[i]:offsets[i + 1]]``."""
    return pa.Array.from_buffers(pa.string(), len(offsets) - 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _strings(values: Sequence[str]) -> pa.Array:
    data = [v.encode() for v in values]
    return _utf8(b"".join(data), array.array("i", itertools.accumulate(map(len, data), initial=0)))


def _int64s(values: Iterable[int], type_: pa.DataType = _INT64) -> pa.Array:
    data = array.array("q", values)
    return pa.Array.from_buffers(type_, len(data), [None, pa.py_buffer(data)])


@functools.cache
def _text(value: str) -> pa.Scalar:
    return _strings([value])[0]


@functools.cache
def _int(value: int) -> pa.Scalar:
    return _int64s([value])[0]


def _timestamp(value: dt.datetime) -> pa.Scalar:
    if value.tzinfo is None:  # as pa.scalar reads a naive datetime for a UTC type
        value = value.replace(tzinfo=dt.UTC)
    return _int64s([(value - _EPOCH) // dt.timedelta(microseconds=1)], _TIMESTAMP)[0]


_NULL_TEXT = pa.nulls(1, pa.string())[0]
_FALSE = pa.Array.from_buffers(pa.bool_(), 1, [None, pa.py_buffer(b"\x00")])[0]
