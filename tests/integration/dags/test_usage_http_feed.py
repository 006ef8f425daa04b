"""HTTP usage feeds (a customer platform's paged usage API) through ``m3sh_usage_ingest``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]


@pytest.fixture
def feed_env(fresh_sandbox: Any, airflow_db: Path, m3sh_config: Any) -> dict:
    from m3sh.hooks.m3ter import M3terHook

    m3sh_config({"prefix: usage/\n": "prefix: usage/none/\n"})
    hook = M3terHook()
    accounts = sorted(a["code"] for a in hook.list_accounts())[:10]
    base = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    rows: list[dict[str, Any]] = []
    for i in range(1200):
        rows.append({"event_id": f"p{i}", "account": accounts[i % 10], "meter": "api_calls",
                     "ts": (base + dt.timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ"), "quantity": 2,
                     "region": "us-east-1"})
    rows += [{"event_id": "bad1", "account": "nobody", "meter": "api_calls", "ts": rows[0]["ts"], "quantity": 1},
             {"event_id": "bad2", "account": accounts[0], "meter": "api_calls", "ts": rows[0]["ts"],
              "quantity": "x"},
             {"event_id": "bad3", "account": accounts[0], "meter": "api_calls", "ts": None, "quantity": 1}]
    fresh_sandbox.admin("platform", "usage", "POST", rows=rows)
    return {"hook": hook, "sandbox": fresh_sandbox, "valid": 1200, "window_end": base + dt.timedelta(hours=1)}


def _count(hook: Any) -> int:
    meter_id = next(m["id"] for m in hook.list_meters() if m["code"] == "api_calls")
    body = {"startDate": "2000-01-01T00:00:00Z", "endDate": "2100-01-01T00:00:00Z", "meterIds": [meter_id],
            "aggregations": [{"meterId": meter_id, "fieldCode": "quantity", "fieldType": "MEASURE",
                              "function": "COUNT"}]}
    return sum(int(r.get("quantity_count", 0)) for r in hook.query_usage(body)["data"])


def _posts(sandbox: Any) -> int:
    return int(sandbox.stats("m3ter")["counts"].get("POST /organizations/{id}/measurements", 0))


def test_paged_feed_lands_exactly_once(feed_env: dict) -> None:
    from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

    dag = build_usage_ingest_dag()
    assert dag.test(run_conf={"scan_all": True}).state == "success"
    assert _count(feed_env["hook"]) == feed_env["valid"]
    platform_pages = feed_env["sandbox"].stats("platform")["counts"].get("GET /api/usage", 0)
    assert platform_pages == 3  # 1203 rows in pages of 500
    # a second full scan re-sends, and m3ter's uid de-duplication keeps the count exact
    assert dag.test(run_conf={"scan_all": True}).state == "success"
    assert _count(feed_env["hook"]) == feed_env["valid"]

    from m3sh.config import get_config
    from m3sh.storage import Storage

    storage = Storage.from_config(get_config().storage)
    dead = [o["Key"] for o in storage.list_keys(storage.key("dead-letter", "usage", "platform_api"))]
    rows = [r for k in dead for r in storage.iter_jsonl(k)]
    assert {(r["row"]["event_id"], r["field"]) for r in rows} >= {("bad1", "account"), ("bad2", "quantity"),
                                                                   ("bad3", "ts")}


def test_scheduled_window_is_skipped_on_rerun(feed_env: dict) -> None:
    from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

    dag = build_usage_ingest_dag()
    # the manual run with logical date T covers [T - 1h, T): the hour holding all the rows
    assert dag.test(logical_date=feed_env["window_end"]).state == "success"
    assert _count(feed_env["hook"]) == feed_env["valid"]
    before = _posts(feed_env["sandbox"])
    assert dag.test(logical_date=feed_env["window_end"]).state == "success"
    assert _posts(feed_env["sandbox"]) == before  # the window's manifest says it is done
