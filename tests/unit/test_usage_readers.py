"""Usage files as spreadsheets and BI tools write them: BOMs, UTF-16, CRLF, delimiters, empty files,
epoch timestamps. Each case through the reader (and the builder where the row matters); the same
cases run through whole ``m3sh_usage_ingest`` DAG runs in tests/integration/dags/test_usage_exporter_files.py.
"""

from __future__ import annotations

import codecs
import datetime as dt
import gzip
import io
import json
from typing import Any

import pytest

from m3sh.config import MeterDefinition, UsageFeed, load_config
from m3sh.exceptions import ConfigError, InvalidRecord
from m3sh.usage.measurements import MeasurementBuilder, measurement_uid, parse_epoch
from m3sh.usage.reader import BadFile, csv_delimiter, iter_rows

NOW = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
HEADER = ["event_id", "account", "meter", "ts", "quantity"]
ROWS = [["e1", "acme", "api_calls", "2026-11-20T10:00:00Z", "12"],
        ["e2", "acme", "api_calls", "2026-11-20T11:00:00Z", "3"]]


def _csv(delimiter: str = ",", newline: str = "\n", rows: list[list[str]] = ROWS) -> str:
    return "".join(delimiter.join(r) + newline for r in [HEADER, *rows])


def _read(data: bytes, fmt: str = "csv", gz: bool = False, delimiter: str = ",") -> list[tuple[int, Any]]:
    return list(iter_rows(io.BytesIO(data), "s3://b/k", fmt, gz, delimiter))


EXPECTED = [(2, dict(zip(HEADER, ROWS[0], strict=True))), (3, dict(zip(HEADER, ROWS[1], strict=True)))]


@pytest.mark.parametrize("data", [
    _csv().encode(),
    codecs.BOM_UTF8 + _csv().encode(),  # Excel "CSV UTF-8"
    _csv(newline="\r\n").encode(),
    codecs.BOM_UTF8 + _csv(newline="\r\n").encode(),
], ids=["utf8", "utf8-bom", "crlf", "bom-crlf"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_utf8_with_or_without_bom_and_crlf(data: bytes, gz: bool) -> None:
    rows = _read(gzip.compress(data) if gz else data, gz=gz)
    assert rows == EXPECTED  # the first header is "event_id", not "\ufeffevent_id"; no "\r" in values


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_with_bom_tab_separated_excel_unicode_text(codec: str) -> None:
    bom = codecs.BOM_UTF16_LE if codec.endswith("le") else codecs.BOM_UTF16_BE
    data = bom + _csv("\t", "\r\n").encode(codec)
    assert _read(data, delimiter="\t") == EXPECTED
    assert _read(gzip.compress(data), gz=True, delimiter="\t") == EXPECTED


def test_utf16_without_bom_and_misnamed_gzip_are_named_bad_files() -> None:
    with pytest.raises(BadFile, match="UTF-16 without a byte-order mark") as exc:
        _read(_csv("\t").encode("utf-16-le"), delimiter="\t")
    assert "s3://b/k" in str(exc.value)
    with pytest.raises(BadFile, match=r"does not end in \.gz"):
        _read(gzip.compress(_csv().encode()))
    with pytest.raises(BadFile, match="not valid UTF-16"):  # odd byte count: cut mid-character
        _read(codecs.BOM_UTF16_LE + _csv("\t").encode("utf-16-le")[:-1], delimiter="\t")


def test_a_bom_split_across_reads_is_still_found() -> None:
    class Dribble(io.RawIOBase):
        """Hands out one byte per read, as a slow network body may."""

        def __init__(self, data: bytes) -> None:
            self.data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            chunk = self.data.read(1)
            b[:len(chunk)] = chunk
            return len(chunk)

    for data in (codecs.BOM_UTF8 + _csv().encode(), codecs.BOM_UTF16_LE + _csv().encode("utf-16-le")):
        assert list(iter_rows(Dribble(data), "k", "csv", False)) == EXPECTED  # type: ignore[arg-type]


def test_jsonl_with_bom_keeps_its_first_row() -> None:
    lines = [{"event_id": "e1", "quantity": 1}, {"event_id": "e2", "quantity": 2}]
    body = "".join(json.dumps(r) + "\r\n" for r in lines)
    for data in (codecs.BOM_UTF8 + body.encode(), codecs.BOM_UTF16_LE + body.encode("utf-16-le")):
        assert _read(data, "jsonl") == [(1, lines[0]), (2, lines[1])]
        assert _read(gzip.compress(data), "jsonl", gz=True) == [(1, lines[0]), (2, lines[1])]


@pytest.mark.parametrize("data", [b"", codecs.BOM_UTF8, b"\n\r\n", codecs.BOM_UTF16_LE])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_empty_files_are_no_rows(data: bytes, fmt: str) -> None:
    assert _read(data, fmt) == []
    assert _read(gzip.compress(data), fmt, gz=True) == []


def test_header_only_csv_is_no_rows() -> None:
    for data in (_csv(rows=[]).encode(), codecs.BOM_UTF8 + _csv(newline="\r\n", rows=[]).encode(),
                 ",".join(HEADER).encode()):  # no final newline either
        assert _read(data) == []


def test_semicolon_delimiter() -> None:
    rows = [["e1", "acme", "api_calls", "2026-11-20T10:00:00Z", "1,5"]]  # a decimal comma stays in its cell
    assert _read(_csv(";", rows=rows).encode(), delimiter=";") == [(2, dict(zip(HEADER, rows[0], strict=True)))]


@pytest.mark.parametrize(("written", "configured", "named"), [
    (";", ",", "semicolon (';')"), ("\t", ",", "tab"), (",", ";", "comma (',')"), (",", "\t", "comma (',')"),
])
def test_a_header_that_does_not_fit_the_delimiter_fails_the_file_naming_both(written: str, configured: str,
                                                                            named: str) -> None:
    with pytest.raises(BadFile) as exc:
        _read(codecs.BOM_UTF8 + _csv(written).encode(), delimiter=configured)
    message = str(exc.value)
    assert message.startswith("usage file s3://b/k:")
    assert f"seems to use {named}" in message and f"'delimiter' to {written!r}" in message


def test_default_delimiter_by_extension() -> None:
    assert csv_delimiter("u/a.csv") == "," and csv_delimiter("u/a.tsv.gz") == "\t"
    assert csv_delimiter("u/a.tsv", ";") == ";"


# ------------------------------------------------------------------------------------ timestamps
def _builder(fmt: str) -> MeasurementBuilder:
    feed = UsageFeed(name="f", type="s3", conn_id="aws_default", bucket="b", meters=[
        MeterDefinition(code="api_calls", measures={"calls": "quantity"}, timestamp_format=fmt)])  # type: ignore[arg-type]
    return MeasurementBuilder(feed, lambda code: code == "acme", now=NOW)


EPOCH_S = int(dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC).timestamp())


@pytest.mark.parametrize(("fmt", "raw", "wire"), [
    ("epoch_s", str(EPOCH_S), "2026-11-20T10:00:00.000Z"),
    ("epoch_s", EPOCH_S, "2026-11-20T10:00:00.000Z"),  # a JSON number
    ("epoch_s", f" {EPOCH_S}.123 ", "2026-11-20T10:00:00.123Z"),  # exact: not .122 through a float
    ("epoch_s", EPOCH_S + 0.123, "2026-11-20T10:00:00.123Z"),
    ("epoch_ms", str(EPOCH_S * 1000 + 7), "2026-11-20T10:00:00.007Z"),
    ("epoch_ms", EPOCH_S * 1000 + 7, "2026-11-20T10:00:00.007Z"),
    ("epoch_ms", f"{EPOCH_S * 1000}.9", "2026-11-20T10:00:00.000Z"),
])
def test_epoch_timestamps_become_iso8601_utc(fmt: str, raw: Any, wire: str) -> None:
    row = {"event_id": "e1", "account": "acme", "meter": "api_calls", "ts": raw, "quantity": "1"}
    m = _builder(fmt).build(row, "s3://b/k.csv", 2)
    assert m["ts"] == wire
    assert m["uid"] == measurement_uid("f", "s3://b/k.csv", 2, "e1")


@pytest.mark.parametrize(("fmt", "raw", "reason"), [
    ("epoch_s", "", "missing timestamp"),
    ("epoch_s", None, "missing timestamp"),
    ("epoch_s", "2026-11-20T10:00:00Z", "not a number of epoch seconds"),  # ISO in an epoch meter
    ("epoch_s", "nan", "not a finite number"),
    ("epoch_s", True, "not a number"),
    ("epoch_s", str(EPOCH_S * 1000), "epoch milliseconds? set the meter's timestamp_format: epoch_ms"),
    ("epoch_ms", str(EPOCH_S), "epoch seconds? set the meter's timestamp_format: epoch_s"),
    ("epoch_ms", "1e999999999", "out of range"),
    ("epoch_ms", "999999999999999", "out of range"),  # year 33658
    ("epoch_s", str(EPOCH_S + 86_400 * 30), "in the future"),
    ("epoch_s", str(EPOCH_S - 86_400 * 400), "older than 90 days"),
    ("iso8601", str(EPOCH_S), "invalid timestamp"),  # an ISO meter still rejects epoch values
])
def test_invalid_epoch_values_name_the_field(fmt: str, raw: Any, reason: str) -> None:
    row = {"event_id": "e1", "account": "acme", "meter": "api_calls", "ts": raw, "quantity": "1"}
    with pytest.raises(InvalidRecord) as exc:
        _builder(fmt).build(row, "s3://b/k.csv", 9)
    assert exc.value.field == "ts" and exc.value.line == 9 and exc.value.source == "s3://b/k.csv"
    assert reason in exc.value.reason


def test_parse_epoch_units() -> None:
    assert parse_epoch("0.5", "epoch_s") == dt.datetime(1970, 1, 1, 0, 0, 0, 500_000, tzinfo=dt.UTC)
    assert parse_epoch(EPOCH_S * 1000, "epoch_ms") == parse_epoch(EPOCH_S, "epoch_s")


# ---------------------------------------------------------------------------------------- config
def _config(tmp_path: Any, feed_extra: str, meter_extra: str = "") -> Any:
    path = tmp_path / "m3sh.yaml"
    path.write_text(
        "usage:\n"
        "  feeds:\n"
        "    - name: excel\n"
        "      type: s3\n"
        "      conn_id: aws_default\n"
        "      bucket: b\n"
        f"{feed_extra}"
        "      meters:\n"
        "        - code: api_calls\n"
        "          measures: {quantity: quantity}\n"
        f"{meter_extra}")
    return load_config(path)


def test_config_delimiter_and_timestamp_format(tmp_path: Any) -> None:
    cfg = _config(tmp_path, "      delimiter: ';'\n", "          timestamp_format: epoch_ms\n")
    assert cfg.usage.feeds[0].delimiter == ";" and cfg.usage.feeds[0].meters[0].timestamp_format == "epoch_ms"
    assert _config(tmp_path, "      delimiter: tab\n").usage.feeds[0].delimiter == "\t"
    assert _config(tmp_path, '      delimiter: "\\t"\n').usage.feeds[0].delimiter == "\t"
    assert _config(tmp_path, "      delimiter: \\t\n").usage.feeds[0].delimiter == "\t"
    feed = _config(tmp_path, "").usage.feeds[0]
    assert feed.delimiter is None and feed.meters[0].timestamp_format == "iso8601"


@pytest.mark.parametrize(("feed_extra", "meter_extra", "where"), [
    ("      delimiter: '|'\n", "", "m3sh.yaml:7 usage.feeds[0].delimiter"),
    ("", "          timestamp_format: unix\n", "m3sh.yaml:10 usage.feeds[0].meters[0].timestamp_format"),
])
def test_config_rejects_unknown_values_with_the_yaml_line(tmp_path: Any, feed_extra: str, meter_extra: str,
                                                          where: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _config(tmp_path, feed_extra, meter_extra)
    assert where in str(exc.value)
