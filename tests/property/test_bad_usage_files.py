"""Malformed usage files never crash the ingest: every bad row becomes a dead letter naming its
line (and field where one is at fault) with a reason, every unreadable file a ``BadFile`` naming
the file. Any other exception escaping is a bug.

The reader + builder path is fuzzed broadly in memory; a few examples go through the whole
``ingest_s3_object`` against moto (S3) with a recording stand-in for m3ter.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3sh.config import MeterDefinition, UsageFeed
from m3sh.exceptions import InvalidRecord
from m3sh.usage.ingest import _dead_letter
from m3sh.usage.measurements import MeasurementBuilder
from m3sh.usage.reader import BadFile, detect_format, iter_rows

pytestmark = [pytest.mark.property]

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
COLUMNS = ["event_id", "account", "meter", "ts", "quantity", "region"]
FEED = UsageFeed(name="fuzz", type="s3", conn_id="aws_default", bucket="m3sh-usage", prefix="fuzz/",
                 meters=[MeterDefinition(code="api_calls", measures={"quantity": "quantity"},
                                         dimensions={"region": "region"}),
                         MeterDefinition(code="storage_gb", measures={"quantity": "quantity"})])


def _account_exists(code: str) -> bool:
    return code.startswith("acc")


# ------------------------------------------------------------------------------------ strategies
_good_cells = {
    "event_id": st.uuids().map(str),
    "account": st.sampled_from(["acc-1", "acc-2", "acme"]),
    "meter": st.sampled_from(["api_calls", "storage_gb", ""]),
    "ts": st.just((NOW - dt.timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")),
    "quantity": st.integers(0, 10_000).map(str),
    "region": st.sampled_from(["us-east-1", "eu-west-1", ""]),
}
_hostile_cell = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "nan", "inf", "-inf", "1e400", "lots", "NULL", "2026-13-45T00:00:00Z",
                     "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2030-01-01T00:00:00Z",
                     "1999-01-01T00:00:00Z", '"', '""', "a,b", "\x00", "\r", "\u2028", "acc-" + "9" * 90]),
    st.integers().map(str),
    st.floats().map(str),
    st.just("x" * 140_000),  # over csv's default field size limit
)


@st.composite
def csv_text(draw: st.DrawFn) -> str:
    """A CSV whose header may miss, repeat or invent columns, with rows of any width and hostile cells."""
    header = draw(st.one_of(st.just(COLUMNS), st.lists(st.sampled_from([*COLUMNS, "extra", ""]), max_size=8)))
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        width = draw(st.one_of(st.just(len(header)), st.integers(0, len(header) + 2)))
        row = []
        for i in range(width):
            col = header[i] if i < len(header) else ""
            good = _good_cells.get(col, st.text(max_size=5))
            row.append(draw(st.one_of(good, good, _hostile_cell)))
        rows.append(",".join(row))  # deliberately unquoted: stray quotes and commas stay hostile
    return "\n".join([",".join(header), *rows]) + draw(st.sampled_from(["\n", "", "\r\n"]))


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
                          st.just(int("9" * 400)), st.just("x" * 5000))
_json_values = st.recursive(_json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                  st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3)), max_leaves=8)


@st.composite
def jsonl_text(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(st.sampled_from(["row", "row", "value", "garbage", "huge_int", "deep"]))
        if kind == "row":
            row = {c: draw(st.one_of(_good_cells[c], _json_values)) for c in COLUMNS
                   if draw(st.booleans()) or c in ("account", "quantity")}
            lines.append(json.dumps(row))
        elif kind == "value":
            lines.append(json.dumps(draw(_json_values)))
        elif kind == "garbage":
            lines.append(draw(st.text(max_size=60)).replace("\n", " "))
        elif kind == "huge_int":
            lines.append('{"account": "acc-1", "quantity": ' + "9" * 5000 + "}")
        else:
            lines.append("[" * 100_000 + "]" * 100_000)
    return "\n".join(lines)


@st.composite
def usage_file(draw: st.DrawFn) -> tuple[str, bytes]:
    """(object key, bytes): CSV or JSONL, in odd encodings, maybe gzipped, truncated, or random bytes."""
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    text = draw(csv_text() if fmt == "csv" else jsonl_text())
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16", "cp1252", "utf-8-sig"]))
    data = text.encode(encoding, errors="replace")
    packing = draw(st.sampled_from(["plain", "gzip", "gzip", "truncated_gzip", "random", "gzip_of_random"]))
    if packing == "random":
        data = draw(st.binary(max_size=2000))
    elif packing == "gzip_of_random":
        data = gzip.compress(draw(st.binary(max_size=2000)))
    elif packing != "plain":
        data = gzip.compress(data)
        if packing == "truncated_gzip":
            data = data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    gz = packing != "plain" and draw(st.booleans() if packing == "random" else st.just(True))
    ext = draw(st.sampled_from([fmt, fmt, "txt", "bin"]))
    return f"fuzz/{uuid.uuid4().hex[:8]}.{ext}" + (".gz" if gz else ""), data


# ------------------------------------------------------------------------------------- the check
def _check_dead_letter(bad: InvalidRecord, source: str, row: Any) -> None:
    assert bad.source == source and bad.reason and bad.line is not None and bad.line >= 1
    assert bad.field is None or isinstance(bad.field, str)
    buf = io.BytesIO()
    _dead_letter(buf, bad, row if isinstance(row, dict) else None)  # the entry the ingest writes
    entry = json.loads(buf.getvalue())
    assert entry["file"] == source and entry["line"] == bad.line and entry["reason"] == bad.reason


def _read_all(key: str, data: bytes) -> tuple[int, int]:
    """(accepted, dead-lettered) rows; raises only BadFile."""
    source = f"s3://m3sh-usage/{key}"
    fmt, gz = detect_format(key, FEED.format)
    builder = MeasurementBuilder(FEED, _account_exists, now=NOW)
    accepted = rejected = 0
    for line, row in iter_rows(io.BytesIO(data), source, fmt, gz):
        try:
            if isinstance(row, InvalidRecord):
                raise row
            m = builder.build(row, source, line)
        except InvalidRecord as bad:
            assert bad.line == line
            _check_dead_letter(bad, source, row)
            rejected += 1
            continue
        assert m["uid"].startswith("m3sh-") and len(m["uid"]) <= 50
        assert m["account"].startswith("acc") and all(isinstance(v, float) for v in m["measure"].values())
        accepted += 1
    return accepted, rejected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(usage_file())
def test_reader_and_builder_dead_letter_every_bad_row_or_name_the_bad_file(f: tuple[str, bytes]) -> None:
    key, data = f
    try:
        _read_all(key, data)
    except BadFile as exc:
        assert exc.reason and (exc.source == key or exc.source.endswith(key)), exc
        assert key in str(exc)


def test_examples_that_found_bugs() -> None:
    """Regressions found by the fuzzer (each used to escape as a bare exception)."""
    huge_csv_field = ("event_id,meter,account,ts,quantity\n1,api_calls,acc-1," + "x" * 140_000
                      + ",1\n2,api_calls,acc-1,2026-03-01T09:00:00Z,2\n")
    assert _read_all("f/a.csv", huge_csv_field.encode()) == (1, 1)  # the row after it still counts
    row = '{"meter": "api_calls", "account": "acc-1", "ts": "2026-03-01T09:00:00Z", "quantity": '
    huge_json_int = row + "9" * 5000 + "}\n"
    assert _read_all("f/b.jsonl", huge_json_int.encode()) == (0, 1)
    float_overflow = row + "1" + "0" * 400 + "}\n"
    assert _read_all("f/c.jsonl", float_overflow.encode()) == (0, 1)
    deep = "[" * 100_000 + "]" * 100_000 + "\n"
    assert _read_all("f/d.jsonl", deep.encode()) == (0, 1)
    year_one = "event_id,meter,account,ts,quantity\n1,api_calls,acc-1,0001-01-01T00:00:00+01:00,1\n"
    assert _read_all("f/e.csv", year_one.encode()) == (0, 1)


# ------------------------------------------------------------------------------- whole ingest, moto
class RecordingM3ter:
    """Stands in for M3terHook.submit_measurements; the property is about input handling only."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def submit_measurements(self, batch: list[dict[str, Any]]) -> None:
        self.sent += batch


@pytest.mark.sandbox
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(f=usage_file())
def test_ingest_s3_object_never_raises_on_bad_files(sandbox: Any, f: tuple[str, bytes]) -> None:
    from m3sh.storage import Storage
    from m3sh.usage.ingest import ingest_s3_object

    key, data = f
    src = Storage("aws_default", "m3sh-usage")
    state = Storage("aws_default", "m3sh-archive", f"fuzz-{uuid.uuid4().hex[:8]}/")
    src.put_bytes(key, data)
    m3ter = RecordingM3ter()
    result = ingest_s3_object(feed=FEED, key=key, m3ter=m3ter, source_storage=src, state=state,  # type: ignore[arg-type]
                              account_exists=_account_exists, now=NOW)
    assert result.status in ("complete", "failed")
    if result.status == "failed":
        assert result.error and key in result.error
    else:
        assert result.error is None and len(m3ter.sent) == result.accepted
    assert result.rows_read == result.accepted + result.rejected
    if result.rejected:
        assert result.dead_letter_key
        entries = list(state.iter_jsonl(result.dead_letter_key))
        assert len(entries) == result.rejected
        assert all(e["file"] == f"s3://m3sh-usage/{key}" and e["line"] >= 1 and e["reason"] for e in entries)
