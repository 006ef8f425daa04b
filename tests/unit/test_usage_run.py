"""m3sh.usage.run without I/O: planning HTTP feeds, the map limit, and the run summary's failures."""

from __future__ import annotations

from typing import Any

import pytest

from m3sh.config import UsageFeed
from m3sh.usage.run import MAX_MAP, TooManyChunks, plan_chunks, summarize

METERS = [{"code": "api_calls", "measures": {"quantity": "quantity"}}]


def _http(name: str, enabled: bool = True) -> UsageFeed:
    return UsageFeed.model_validate({"name": name, "type": "http", "conn_id": "platform", "endpoint": f"/{name}",
                                     "enabled": enabled, "meters": METERS})


def _result(feed: str, key: str, status: str = "complete", **counts: Any) -> dict[str, Any]:
    return {"feed": feed, "key": key, "status": status, "rows_read": 0, "accepted": 0, "rejected": 0,
            "batches_sent": 0, "dead_letter_key": None, "error": None, **counts}


def test_plan_selects_enabled_and_named_feeds() -> None:
    feeds = [_http("a"), _http("b", enabled=False), _http("c")]
    assert plan_chunks(feeds) == [{"feed": "a", "keys": ["/a"]}, {"feed": "c", "keys": ["/c"]}]
    assert plan_chunks(feeds, only=["c", "b"]) == [{"feed": "c", "keys": ["/c"]}]


def test_plan_refuses_more_chunks_than_airflow_maps() -> None:
    assert len(plan_chunks([_http(f"f{i}") for i in range(MAX_MAP)])) == MAX_MAP
    with pytest.raises(TooManyChunks, match=f"{MAX_MAP + 1} chunks exceed the {MAX_MAP} map limit"):
        plan_chunks([_http(f"f{i}") for i in range(MAX_MAP + 1)])


def test_summary_totals_and_names_failed_files() -> None:
    planned = [{"feed": "s3", "keys": ["a.csv", "b.csv"]}]
    results = [[_result("s3", "a.csv", rows_read=3, accepted=2, rejected=1, dead_letter_key="dl/a.csv.jsonl"),
                _result("s3", "b.csv", "failed", error="not gzip")]]
    out = summarize(planned, results)
    assert out.totals == {"rows_read": 3, "accepted": 2, "rejected": 1, "batches_sent": 0, "files": 2,
                          "skipped": 0, "failed": 1, "dead_letter_keys": ["dl/a.csv.jsonl"],
                          "bulk_processed": 0, "bulk_failed": 0, "bulk_files": 0}
    assert out.failure == "1 usage file(s) failed: b.csv: not gzip" and out.records == ["b.csv"]


def test_summary_names_the_files_of_a_lost_chunk_but_not_a_reported_http_window() -> None:
    planned = [{"feed": "s3", "keys": ["a.csv"]}, {"feed": "s3", "keys": ["b.csv", "c.csv"]},
               {"feed": "api", "keys": ["/usage"]}]
    results = [[_result("s3", "a.csv")], None, [_result("api", "/usage?2026-01-01..2026-01-02")]]
    out = summarize(planned, results)
    assert out.records == ["s3:b.csv", "s3:c.csv"]
    assert out.failure is not None and out.failure.startswith("1 ingest task(s) failed after their retries")
    assert summarize(planned[:1], [[_result("s3", "a.csv", "skipped")]]).failure is None
