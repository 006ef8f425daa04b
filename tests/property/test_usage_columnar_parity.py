"""The columnar usage path (m3sh.usage.columnar) must give exactly the row path's answer: the same
measurements (as JSON, when it built them itself), the same errors with file, line and field, the
same rows for the dead letters, in the same order; a file the row path cannot read fails the same way.

The row path (reader.iter_rows, then MeasurementBuilder.build) is the judge: it is the code every
other usage test covers. Blocks are made tiny here so every file crosses many block boundaries.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3sh.config import MeterDefinition, UsageFeed
from m3sh.exceptions import InvalidRecord
from m3sh.usage import columnar
from m3sh.usage.columnar import Rejected, iter_built
from m3sh.usage.measurements import MeasurementBuilder
from m3sh.usage.reader import BadFile, detect_format, iter_rows
from tests.property.test_bad_usage_files import FEED, NOW, _hostile_cell, csv_text, usage_file

pytestmark = [pytest.mark.property]

SOURCE = "s3://m3sh-usage/fuzz/f.csv"
RECENT = (NOW - dt.timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _account_exists(code: str) -> bool:
    return code.startswith("acc")


def _builder(feed: UsageFeed = FEED) -> MeasurementBuilder:
    return MeasurementBuilder(feed, _account_exists, now=NOW)


def _reference(data: bytes, key: str, feed: UsageFeed = FEED, delimiter: str = ",") -> tuple[list[Any], str | None]:
    fmt, gz = detect_format(key)
    builder, out = _builder(feed), []
    try:
        for line, row in iter_rows(io.BytesIO(data), SOURCE, fmt, gz, delimiter):
            if isinstance(row, InvalidRecord):
                out.append(("bad", row.reason, row.line, row.field, None))
                continue
            try:
                out.append(("ok", builder.build(row, SOURCE, line)))
            except InvalidRecord as bad:
                out.append(("bad", bad.reason, bad.line, bad.field, row))
    except BadFile as exc:
        return out, exc.reason
    return out, None


def _columnar(data: bytes, key: str, feed: UsageFeed = FEED, delimiter: str = ",") -> tuple[list[Any], str | None, int]:
    """(outcomes, BadFile reason or None, rows built by the fast path itself)."""
    fmt, gz = detect_format(key)
    out: list[Any] = []
    fast = 0
    try:
        for block in iter_built(io.BytesIO(data), SOURCE, fmt, gz, delimiter, builder=_builder(feed)):
            for m in block:
                if isinstance(m, Rejected):
                    out.append(("bad", m.error.reason, m.error.line, m.error.field, m.row))
                elif isinstance(m, bytes):
                    fast += 1
                    out.append(("ok", orjson.loads(m)))
                else:
                    out.append(("ok", m))
    except BadFile as exc:
        return out, exc.reason, fast
    return out, None, fast


def _same(data: bytes, key: str, feed: UsageFeed = FEED, delimiter: str = ",") -> int:
    expected, expected_error = _reference(data, key, feed, delimiter)
    got, error, fast = _columnar(data, key, feed, delimiter)
    assert error == expected_error
    if error is None:
        assert got == expected
    else:  # a file that fails part-way: blocks before the failure, never a row the row path had not read
        assert got == expected[: len(got)]
    return fast


def _valid(data: bytes, key: str, feed: UsageFeed = FEED) -> int:
    return sum(1 for outcome in _reference(data, key, feed)[0] if outcome[0] == "ok")


@pytest.fixture(autouse=True)
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(columnar, "BLOCK_CHARS", 97)
    monkeypatch.setattr(columnar, "MAX_CARRY_CHARS", 400)


def _rows(n: int, seed: int, line_end: str = "\n") -> str:
    rng = random.Random(seed)
    lines = ["event_id,account,meter,ts,quantity,region"]
    for i in range(n):
        lines.append(",".join([f"e{seed}-{i}", rng.choice(["acc-1", "acc-2", "acme"]),
                               rng.choice(["api_calls", "storage_gb", ""]), RECENT,
                               rng.choice(["1", "2.5", "007", "-0", "12345678901234.5"]),
                               rng.choice(["us-east-1", "", "eu-west-1"])]))
    return line_end.join(lines) + line_end


def test_plain_files_are_built_by_the_fast_path_with_the_row_paths_answer() -> None:
    text = _rows(300, 1)
    fast = _same(text.encode(), "fuzz/a.csv")
    # every valid row is built fast (acme does not exist and an empty meter is unknown: row path errors)
    assert fast == _valid(text.encode(), "fuzz/a.csv") > 100
    assert _same(gzip.compress(text.encode()), "fuzz/a.csv.gz") == fast
    assert _same(_rows(300, 1, "\r\n").encode(), "fuzz/a.csv") == fast  # Excel's CR LF
    assert _same(b"\xef\xbb\xbf" + text.encode(), "fuzz/a.csv") == fast  # Excel's "CSV UTF-8" BOM
    assert _same(text.encode("utf-16"), "fuzz/a.csv") == fast  # Excel's "Unicode text"


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_other_delimiters(delimiter: str) -> None:
    text = _rows(100, 7).replace(",", delimiter)
    fast = _same(text.encode(), "fuzz/semi.csv", delimiter=delimiter)
    assert fast == _valid(_rows(100, 7).encode(), "fuzz/a.csv") > 30
    _same(text.encode(), "fuzz/semi.csv", delimiter=",")  # the wrong delimiter: both refuse the file alike


def test_no_id_column_gives_line_based_uids_across_blocks() -> None:
    text = "\n".join(line.split(",", 1)[1] for line in _rows(200, 2).splitlines()) + "\n"
    assert _same(text.encode(), "fuzz/no-id.csv") == _valid(text.encode(), "fuzz/no-id.csv") > 50


@pytest.mark.parametrize("cell", [
    " acc-1", "acc-1 ", "acc-\\1", "acc-ü", "acc-" + "1" * 90,  # accounts the row path strips, escapes, rejects
    "2026-02-29T09:00:00Z", "2026-02-30T09:00:00Z", "2026-03-01T09:00:00.5Z", "2026-03-01T09:00:00+00:00",
    "2030-01-01T00:00:00Z", "1999-01-01T00:00:00Z", "2026-03-01 09:00:00Z",  # timestamps
    " 5", "5 ", "+5", "1e3", ".5", "5.", "nan", "inf", "1" * 20, "1_000", "",  # numbers
    "us\\east", "us\teast", "ü" * 300, "ü" * 256, "\x1f",  # dimension values
])
def test_a_row_the_fast_checks_do_not_accept_gets_the_row_paths_answer(cell: str) -> None:
    base = _rows(40, 3).splitlines()
    for column in range(1, 6):  # the odd cell in each column in turn, amid plain rows
        rows = list(base)
        fields = rows[20].split(",")
        fields[column] = cell
        rows[20] = ",".join(fields)
        data = ("\n".join(rows) + "\n").encode()
        assert _same(data, "fuzz/odd.csv") >= _valid(data, "fuzz/odd.csv") - 1  # only the odd row may go slow


@pytest.mark.parametrize("layout", [
    "blank lines\n\n\nin the middle", "\rlone CR", 'quoted "a,b" field', '"multi\nline" quoted',
    "stray 5\" quote", "wrong,width", "trailing,comma,", "\x00nul",
])
def test_irregular_blocks_take_the_row_path_and_agree(layout: str) -> None:
    base = _rows(60, 4).splitlines()
    rows = [*base[:30], layout, *base[30:]]
    _same(("\n".join(rows) + "\n").encode(), "fuzz/irregular.csv")


def test_a_header_only_an_empty_file_and_an_unterminated_quote() -> None:
    for text in ("", "\ufeff", "\n\n", "event_id,account,meter,ts,quantity,region\n",
                 "event_id,account,meter,ts,quantity,region", _rows(50, 5) + '"never closed,' + "x" * 900):
        _same(text.encode(), "fuzz/edge.csv")


def test_duplicate_and_missing_columns_and_one_column_files() -> None:
    _same(b"account,account,meter,ts,quantity\nacc-1,acc-2,api_calls," + RECENT.encode() + b",1\n", "fuzz/d.csv")
    _same(b"account,meter,quantity\nacc-1,api_calls,1\n", "fuzz/m.csv")
    no_region = "\n".join(line.rsplit(",", 1)[0] for line in _rows(30, 6).splitlines()) + "\n"
    assert _same(no_region.encode(), "fuzz/r.csv") == _valid(no_region.encode(), "fuzz/r.csv") > 10
    one = UsageFeed(name="one", type="s3", conn_id="aws_default", bucket="b", prefix="p/",
                    meters=[MeterDefinition(code="api_calls", measures={"quantity": "account"})])
    _same(b"account\nacc-1\n   \n\nacc-2\n", "fuzz/one.csv", one)


def test_several_measures_and_dimensions_and_an_epoch_meter() -> None:
    feed = UsageFeed(name="multi", type="s3", conn_id="aws_default", bucket="b", prefix="p/", id_field="event_id",
                     meters=[MeterDefinition(code="api_calls", measures={"quantity": "quantity", "bytes": "size"},
                                             dimensions={"region": "region", "plan": "plan"})])
    text = "event_id,account,ts,quantity,size,region,plan\n" + "".join(
        f"m{i},acc-{i % 3},{RECENT},{i},{i * 1.5},{['', 'eu'][i % 2]},{['', 'pro', 'free'][i % 3]}\n"
        for i in range(120))
    assert _same(text.encode(), "fuzz/multi.csv", feed) == _valid(text.encode(), "fuzz/multi.csv", feed) == 120
    epoch = UsageFeed(name="epoch", type="s3", conn_id="aws_default", bucket="b", prefix="p/",
                      meters=[MeterDefinition(code="api_calls", measures={"quantity": "quantity"},
                                              timestamp_format="epoch_s")])
    stamp = int((NOW - dt.timedelta(hours=1)).timestamp())
    assert _same(f"account,ts,quantity\nacc-1,{stamp},1\n".encode(), "fuzz/epoch.csv", epoch) == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=csv_text(), line_end=st.sampled_from(["\n", "\r\n"]))
def test_hostile_csv_text_gets_the_row_paths_answer(text: str, line_end: str) -> None:
    _same(text.replace("\n", line_end).encode("utf-8", errors="replace"), "fuzz/h.csv")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(f=usage_file())
def test_any_file_gets_the_row_paths_answer(f: tuple[str, bytes]) -> None:
    key, data = f
    if key.removesuffix(".gz").endswith(".bin"):
        return  # no format from the name: both paths refuse it before reading (detect_format)
    _same(data, key)


@st.composite
def mostly_plain_csv(draw: st.DrawFn) -> str:
    """Plain rows (the fast path's diet) with a few hostile cells dropped in anywhere."""
    lines = _rows(draw(st.integers(1, 40)), draw(st.integers(0, 10**6))).splitlines()
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(1, len(lines) - 1))
        fields = lines[i].split(",")
        fields[draw(st.integers(0, len(fields) - 1))] = draw(st.one_of(_hostile_cell, st.text(max_size=8)))
        lines[i] = ",".join(fields)
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=mostly_plain_csv(), gz=st.booleans())
def test_plain_files_with_hostile_cells_get_the_row_paths_answer(text: str, gz: bool) -> None:
    data = text.encode("utf-8", errors="replace")
    _same(gzip.compress(data) if gz else data, "fuzz/p.csv.gz" if gz else "fuzz/p.csv")


def test_a_block_starting_with_a_byte_order_mark_takes_the_row_path() -> None:
    # Arrow drops a leading U+FEFF, csv keeps it in the first cell: a block that starts with one
    # (a concatenated export, say) must be read by csv. Every line starts with one, so every block does.
    assert not columnar._plain("\ufeffe1,acc-1\n")
    lines = _rows(60, 8).splitlines()
    text = "\n".join([lines[0], *("\ufeff" + line for line in lines[1:])]) + "\n"
    assert _same(text.encode(), "fuzz/bom.csv") == 0


def test_a_line_longer_than_csvs_field_limit_takes_the_row_path() -> None:
    import csv

    before = csv.field_size_limit()
    try:
        csv.field_size_limit(40)  # the rows are ~50 characters: csv refuses their longest fields' lines
        assert not columnar._plain("x" * 41 + "\n")
        text = _rows(30, 9).replace("us-east-1", "us-east-1-" + "x" * 35)
        _same(text.encode(), "fuzz/long.csv")
    finally:
        csv.field_size_limit(before)
    assert columnar._plain("x" * 41 + "\n")


def test_a_meter_code_with_surrounding_spaces_never_matches_a_cell_directly() -> None:
    # The row path strips the meter cell before looking the code up, so " api_calls" is never matched.
    feed = UsageFeed(name="spaced", type="s3", conn_id="aws_default", bucket="b", prefix="p/", id_field="event_id",
                     meters=[MeterDefinition(code=" api_calls", measures={"quantity": "quantity"}),
                             MeterDefinition(code="storage_gb", measures={"quantity": "quantity"})])
    text = _rows(80, 10).replace(",api_calls,", ", api_calls,")
    assert " api_calls" in text
    assert _same(text.encode(), "fuzz/spaced.csv", feed) == sum(
        1 for line in text.splitlines()[1:] if ",storage_gb," in line and ",acme," not in line)
