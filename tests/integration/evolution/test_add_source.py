"""Add a source: a second S3 usage feed appears in m3sh.yaml -> the next usage run ingests it, and the
files of the existing feed are not sent again (their manifests say they are done)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from m3sh.sandbox.aws_seed import s3_client

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]


def _rows(prefix: str, accounts: list[str], n: int) -> list[dict[str, Any]]:
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [{"event_id": f"{prefix}-{i}", "account": accounts[i % len(accounts)], "meter": "api_calls", "ts": ts,
             "quantity": i + 1, "region": "us-east-1"} for i in range(n)]


def _csv(rows: list[dict[str, Any]]) -> bytes:
    cols = ["event_id", "account", "meter", "ts", "quantity", "region"]
    return ("\n".join([",".join(cols), *(",".join(str(r[c]) for c in cols) for r in rows)]) + "\n").encode()


def _count(hook: Any) -> int:
    meter_id = next(m["id"] for m in hook.list_meters() if m["code"] == "api_calls")
    data = hook.query_usage({"startDate": "2000-01-01T00:00:00Z", "endDate": "2100-01-01T00:00:00Z",
                             "meterIds": [meter_id], "aggregations": [
                                 {"meterId": meter_id, "fieldCode": "quantity", "fieldType": "MEASURE",
                                  "function": "COUNT"}]})["data"]
    return sum(int(r.get("quantity_count", 0)) for r in data)


def _ingest() -> Any:
    from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

    dag = build_usage_ingest_dag()
    return dag, dag.test(run_conf={"scan_all": True})


def test_new_usage_feed_is_picked_up_and_old_files_are_not_resent(stack: Any) -> None:
    from m3sh.hooks.m3ter import M3terHook

    hook = M3terHook()
    accounts = sorted(a["code"] for a in hook.list_accounts())[:5]
    s3 = s3_client(stack.sandbox.url("moto"))
    s3.put_object(Bucket="m3sh-usage", Key="usage/evo-a/day1.csv", Body=_csv(_rows("a1", accounts, 20)))
    s3.put_object(Bucket="m3sh-usage", Key="usage/evo-a/day2.csv", Body=_csv(_rows("a2", accounts, 20)))
    s3.put_object(Bucket="m3sh-usage", Key="partner/evo-b/batch.jsonl",
                  Body="\n".join(json.dumps(r) for r in _rows("b", accounts, 30)).encode())

    # before: one feed (the demo's S3 feed, pointed at this test's prefix)
    def one_feed(d: dict[str, Any]) -> None:
        feed = next(f for f in d["usage"]["feeds"] if f["name"] == "platform_files")
        d["usage"]["feeds"] = [{**feed, "prefix": "usage/evo-a/"}]

    stack.edit(one_feed)
    _, run = _ingest()
    assert run.state == "success"
    assert _count(hook) == 40

    # the change: a second feed in m3sh.yaml, nothing else
    def add_feed(d: dict[str, Any]) -> None:
        d["usage"]["feeds"].append({
            "name": "partner_feed", "type": "s3", "conn_id": "aws_default", "bucket": "m3sh-usage",
            "prefix": "partner/evo-b/", "format": "jsonl", "id_field": "event_id",
            "meters": [{"code": "api_calls", "measures": {"quantity": "quantity"},
                        "dimensions": {"region": "region"}}]})

    cfg = stack.edit(add_feed)
    assert [f.name for f in cfg.usage.feeds] == ["platform_files", "partner_feed"]
    posts_before = stack.sandbox.stats("m3ter")["counts"].get("POST /organizations/{id}/measurements", 0)
    _, run = _ingest()
    assert run.state == "success"
    assert _count(hook) == 70  # the new feed's 30 rows, and the old feed's 40 exactly once
    posts = stack.sandbox.stats("m3ter")["counts"].get("POST /organizations/{id}/measurements", 0) - posts_before
    assert posts == 1  # one batch: the new file only; the two old files were skipped by their manifests
    summary = run.get_task_instance("summarize").xcom_pull(task_ids="summarize")
    assert summary["files"] == 3 and summary["skipped"] == 2 and summary["failed"] == 0
