"""Usage rows -> measurements: readers, validation errors that name the field, deterministic uids."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
from typing import Any, cast

import pytest

from m3sh.config import MeterDefinition, UsageFeed
from m3sh.exceptions import InvalidRecord
from m3sh.hooks.m3ter import MAX_BATCH_BYTES, measurement_batches
from m3sh.usage.measurements import MeasurementBuilder, measurement_uid
from m3sh.usage.reader import BadFile, detect_format, iter_rows

NOW = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
FEED = UsageFeed(name="f", type="s3", conn_id="aws_default", bucket="b", meters=[
    MeterDefinition(code="api_calls", measures={"calls": "quantity"}, dimensions={"region": "region"}),
])


def builder(known: set[str] | None = None) -> MeasurementBuilder:
    known = {"acme"} if known is None else known
    return MeasurementBuilder(FEED, lambda code: code in known, now=NOW)


def row(**over: str) -> dict[str, str]:
    base = {"event_id": "e1", "account": "acme", "meter": "api_calls", "ts": "2026-11-20T10:00:00Z",
            "quantity": "12", "region": "us-east-1"}
    return {**base, **over}


def test_valid_row_becomes_a_measurement() -> None:
    m = builder().build(row(), "s3://b/k.csv", 2)
    assert m == {"uid": measurement_uid("f", "s3://b/k.csv", 2, "e1"), "meter": "api_calls", "account": "acme",
                 "ts": "2026-11-20T10:00:00.000Z", "measure": {"calls": 12.0}, "where": {"region": "us-east-1"}}
    assert len(m["uid"]) <= 50


@pytest.mark.parametrize(("over", "field", "reason"), [
    ({"quantity": "lots"}, "quantity", "not a number"),
    ({"quantity": "nan"}, "quantity", "not a finite number"),
    ({"ts": ""}, "ts", "invalid timestamp"),
    ({"ts": "2027-01-01T00:00:00Z"}, "ts", "in the future"),
    ({"ts": "2025-01-01T00:00:00Z"}, "ts", "older than 90 days"),
    ({"account": "ghost"}, "account", "does not exist in m3ter"),
    ({"account": ""}, "account", "missing account"),
    ({"meter": "bananas"}, "meter", "unknown meter"),
])
def test_invalid_rows_name_the_field(over: dict[str, str], field: str, reason: str) -> None:
    with pytest.raises(InvalidRecord) as exc:
        builder().build(row(**over), "s3://b/k.csv", 7)
    assert exc.value.field == field
    assert reason in exc.value.reason
    assert str(exc.value).startswith("s3://b/k.csv:7 field")


def test_uid_is_stable_and_id_based() -> None:
    assert measurement_uid("f", "a.csv", 1, "x") == measurement_uid("f", "b.csv", 9, "x")
    assert measurement_uid("f", "a.csv", 1, None) != measurement_uid("f", "a.csv", 2, None)
    assert measurement_uid("f", "a.csv", 1, "x") != measurement_uid("g", "a.csv", 1, "x")
    # Pinned: uids already in m3ter must come out the same after an upgrade, or a re-sent file doubles.
    assert measurement_uid("f", "a.csv", 1, "x") == "m3sh-ef3108634c2d70eb786965b8ffef3bc437cd38cd"
    assert measurement_uid("f", "a.csv", 7, None) == "m3sh-615ec8f0dc61792f67494ed4b4255f9983c7de52"


def test_readers_stream_csv_jsonl_and_gzip() -> None:
    csv_bytes = b"event_id,account,quantity\ne1,acme,1\ne2,acme\n\ne3,acme,3\n"
    rows = list(iter_rows(io.BytesIO(gzip.compress(csv_bytes)), "k.csv.gz", "csv", True))
    assert [line for line, _ in rows] == [2, 3, 5]
    assert isinstance(rows[1][1], InvalidRecord) and "expected 3 columns" in rows[1][1].reason
    jsonl = b'{"a": 1}\nnot json\n[1]\n'
    out = list(iter_rows(io.BytesIO(jsonl), "k.jsonl", "jsonl", False))
    assert out[0] == (1, {"a": 1})
    assert isinstance(out[1][1], InvalidRecord) and isinstance(out[2][1], InvalidRecord)


def test_bad_files_raise_badfile() -> None:
    truncated = gzip.compress(b"a,b\n1,2\n" * 1000)[:-30]
    with pytest.raises(BadFile, match="truncated or not gzip"):
        list(iter_rows(io.BytesIO(truncated), "k.csv.gz", "csv", True))
    with pytest.raises(BadFile, match="not UTF-8"):
        list(iter_rows(io.BytesIO(b"a,b\n\xff\xfe,1\n"), "k.csv", "csv", False))
    assert list(iter_rows(io.BytesIO(b""), "k.csv", "csv", False)) == []  # empty: no rows, not an error
    with pytest.raises(BadFile, match="cannot tell the format"):
        detect_format("usage.parquet")
    assert detect_format("x/usage.jsonl.gz") == ("jsonl", True)


def test_batches_respect_item_and_byte_limits() -> None:
    small = [{"uid": str(i), "meter": "m", "account": "a", "ts": "t"} for i in range(2500)]
    sizes = [len(b) for b in measurement_batches(small)]
    assert sizes == [1000, 1000, 500]
    big = [{"uid": str(i), "metadata": {"blob": "x" * 2000}} for i in range(600)]
    batches = list(measurement_batches(big))
    assert sum(len(b) for b in batches) == 600
    for b in batches:
        assert len(json.dumps({"measurements": b}).encode()) < MAX_BATCH_BYTES
    assert len(batches) > 2


def test_batches_mix_dicts_and_pre_encoded_measurements() -> None:
    """m3sh.usage.columnar hands over measurements as JSON bytes; a row it left to the row path is a
    dict. Both go into one request body, sized as sent."""
    import orjson

    from m3sh.exceptions import M3terApiError
    from m3sh.hooks.m3ter import measurement_uid_of
    from m3sh.usage.bulk import PartWriter

    mixed: list[Any] = [{"uid": f"d{i}", "meter": "m", "account": "a", "ts": "t"} if i % 3 else
                        orjson.dumps({"uid": f"b{i}", "meter": "m", "account": "a", "ts": "t"}) for i in range(2500)]
    batches = list(measurement_batches(mixed))
    assert [len(b) for b in batches] == [1000, 1000, 500]
    sent = [m["uid"] for b in batches for m in orjson.loads(b.body)["measurements"]]
    assert sent == [f"{'d' if i % 3 else 'b'}{i}" for i in range(2500)]
    big = [orjson.dumps({"uid": f"x{i}", "blob": "x" * 2000}) for i in range(600)]
    split = list(measurement_batches(big))
    assert sum(len(b) for b in split) == 600 and len(split) > 2
    assert all(len(b.body) < MAX_BATCH_BYTES for b in split)
    assert [measurement_uid_of(m) for m in (mixed[0], mixed[1])] == ["b0", "d1"]
    with pytest.raises(M3terApiError, match="uid='huge'"):
        list(measurement_batches([orjson.dumps({"uid": "huge", "blob": "x" * MAX_BATCH_BYTES})]))
    parts: list[bytes] = []
    writer = PartWriter(10_000, lambda part, f, size, rows: parts.append(f.read()))
    for m in mixed[:200]:
        writer.add(m)
    writer.finish()
    assert [m["uid"] for part in parts for m in orjson.loads(part)] == sent[:200]


def test_columnar_path_leaves_pandas_unimported() -> None:
    """pa.array and pa.scalar (and a Python literal given to an Arrow compute function) import pandas
    to sniff types: ~45 MB of RSS and ~0.25 s of CPU in every ingest task process. The columnar path
    builds its Arrow values from buffers; a fresh interpreter that ingests a plain CSV must not have
    pandas loaded afterwards (and must have built the rows itself, as JSON bytes)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import datetime as dt, io, sys
        from m3sh.config import MeterDefinition, UsageFeed
        from m3sh.usage.columnar import iter_built
        from m3sh.usage.measurements import MeasurementBuilder
        feed = UsageFeed(name="f", type="s3", conn_id="aws_default", bucket="b", id_field="event_id", meters=[
            MeterDefinition(code="api_calls", measures={"calls": "quantity"}, dimensions={"region": "region"}),
            MeterDefinition(code="storage", measures={"gb": "quantity"})])
        now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
        builder = MeasurementBuilder(feed, lambda code: code == "acme", now=now)
        lines = ["event_id,account,meter,ts,quantity,region"] + [
            f"e{i},acme,{'storage' if i % 2 else 'api_calls'},2026-11-20T10:00:00Z,{i},{'' if i % 3 else 'eu'}"
            for i in range(50)]
        built = [m for block in iter_built(io.BytesIO("\\n".join(lines).encode()), "s3://b/u.csv", "csv", False, ",",
                                           builder=builder) for m in block]
        print(len(built), sum(isinstance(m, bytes) for m in built), "pandas" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["50", "50", "False"]


class _UploadsDouble:
    """Just the file-upload calls :func:`m3sh.usage.bulk.send_bulk` makes, recorded; ``gate`` holds
    part 0's PUT until the writer has asked for the next block (so it must run in the background)."""

    def __init__(self, fail_part: int | None = None) -> None:
        import threading

        self.fail_part = fail_part
        self.gate = threading.Event()
        self.bodies: list[bytes] = []

    def list_upload_jobs(self, **_: Any) -> list[dict[str, Any]]:
        return []

    def generate_upload_url(self, name: str, size: int) -> dict[str, Any]:
        return {"jobId": f"job-{name[-9:-5]}", "url": f"https://uploads.example/{name}", "headers": {}}

    def put_upload(self, url: str, headers: dict[str, str], body: Any, size: int) -> None:
        from m3sh.exceptions import M3terApiError

        part = int(url[-9:-5])
        if part == 0:
            assert self.gate.wait(timeout=60), "the next part was never started while part 0 uploaded"
        if part == self.fail_part:
            raise M3terApiError("upload refused: HTTP 400", entity="fileuploads/measurements", status=400)
        data = body.read()
        assert len(data) == size
        self.bodies.append(data)


def _bulk_blocks(double: _UploadsDouble) -> Any:
    import orjson

    for b in range(6):
        if b == 3:
            double.gate.set()  # part 0 (blocks 0-1) was handed over; the writer is on part 1 now
        yield [orjson.dumps({"uid": f"u{b}-{i}", "pad": "x" * 80}) for i in range(10)]


def test_send_bulk_uploads_a_part_while_writing_the_next_and_records_parts_in_order() -> None:
    import orjson

    from m3sh.usage.bulk import send_bulk
    from m3sh.usage.ingest import FileResult

    double = _UploadsDouble()
    result = FileResult(key="k", etag="e", feed="f")
    checkpoints: list[int] = []
    send_bulk(_bulk_blocks(double), m3ter=cast("Any", double), feed="f", key="k", etag="e", part_bytes=2048,
              started_at="2026-12-04T00:00:00+00:00", result=result,
              checkpoint=lambda: checkpoints.append(len(result.jobs)))
    assert [j["part"] for j in result.jobs] == list(range(len(result.jobs))) and len(result.jobs) >= 3
    assert [j["job_id"] for j in result.jobs] == [f"job-{p:04d}" for p in range(len(result.jobs))]
    assert checkpoints == list(range(1, len(result.jobs) + 1))
    assert result.rows_sent == 60 == sum(j["rows"] for j in result.jobs)
    assert [m["uid"] for body in double.bodies for m in orjson.loads(body)] == \
        [f"u{b}-{i}" for b in range(6) for i in range(10)]


def test_send_bulk_raises_a_background_upload_failure_and_records_only_what_was_uploaded() -> None:
    from m3sh.exceptions import M3terApiError
    from m3sh.usage.bulk import send_bulk
    from m3sh.usage.ingest import FileResult

    double = _UploadsDouble(fail_part=1)
    result = FileResult(key="k", etag="e", feed="f")
    with pytest.raises(M3terApiError, match="HTTP 400"):
        send_bulk(_bulk_blocks(double), m3ter=cast("Any", double), feed="f", key="k", etag="e", part_bytes=2048,
                  started_at="2026-12-04T00:00:00+00:00", result=result, checkpoint=lambda: None)
    assert [j["part"] for j in result.jobs] == [0] and result.rows_sent == result.jobs[0]["rows"]
