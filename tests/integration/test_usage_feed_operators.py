"""The usage-feed operators in a user's own DAG, with no m3sh.yaml: plan -> ingest (mapped) -> summary
over an S3 feed and an HTTP feed given inline, run with ``dag.test()`` against the sandbox. What
landed is read back through m3ter's usage query and S3 (manifests, dead letters); a re-run adds
nothing, and a broken file fails only the summary, naming the file.

As in tests/integration/test_operators_in_user_dag.py, the config loader is replaced by a guard,
``M3SH_CONFIG`` points at a missing file and the DAG folder is an empty one of the user's.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from m3sh.dagkit.errors import RunFailed
from m3sh.operators import (
    M3terUsageFeedsIngestOperator,
    M3terUsageFeedsPlanOperator,
    M3terUsageFeedsSummaryOperator,
)
from m3sh.sandbox.aws_seed import s3_client
from m3sh.storage import Storage
from tests.integration.test_sensors_sandbox import _register

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

SOURCE = "m3sh-usage"
STATE = "m3sh-archive"
METERS = [{"code": "api_calls", "measures": {"quantity": "quantity"}, "dimensions": {"region": "region"}}]
MEASUREMENTS = "POST /organizations/{id}/measurements"


def _user_dag(tag: str, usage_prefix: str, state_prefix: str, http: bool = True) -> Any:
    from airflow.sdk import DAG

    feeds = [{"name": "files", "type": "s3", "conn_id": "aws_default", "bucket": SOURCE, "prefix": usage_prefix,
              "meters": METERS}]
    if http:
        feeds.append({"name": "platform", "type": "http", "conn_id": "m3sh_platform_default",
                      "endpoint": "/api/usage", "meters": METERS})
    with DAG(f"user_usage_{tag}", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) as dag:
        plan = M3terUsageFeedsPlanOperator(task_id="plan", feeds=feeds, scan_all=True, files_per_task=1)
        ingest = M3terUsageFeedsIngestOperator.partial(
            task_id="ingest", feeds=feeds, scan_all=True, bucket=STATE, prefix=state_prefix,
        ).expand(chunk=plan.output)
        M3terUsageFeedsSummaryOperator(task_id="summary", planned=plan.output, results=ingest.output,
                                       trigger_rule="all_done")
    return dag


def _csv(rows: list[tuple[str, str, int]], ts: str) -> bytes:
    lines = ["event_id,account,meter,ts,quantity,region"]
    lines += [f"{uid},{account},api_calls,{ts},{q},eu-west-1" for uid, account, q in rows]
    return ("\n".join(lines) + "\n").encode()


def _usage(hook: Any) -> dict[str, tuple[int, float]]:
    meter_id = next(m["id"] for m in hook.list_meters() if m["code"] == "api_calls")
    body = {"startDate": "2000-01-01T00:00:00Z", "endDate": "2100-01-01T00:00:00Z", "meterIds": [meter_id],
            "groups": [{"groupType": "ACCOUNT"}],
            "aggregations": [{"meterId": meter_id, "fieldCode": "quantity", "fieldType": "MEASURE", "function": f}
                             for f in ("SUM", "COUNT")]}
    return {r["accountCode"]: (int(r["quantity_count"]), float(r["quantity_sum"]))
            for r in hook.query_usage(body)["data"]}


def test_a_users_dag_ingests_s3_and_http_feeds_once_without_m3sh_yaml(
        fresh_sandbox: Any, airflow_db: Path, no_m3sh_yaml: mock.Mock) -> None:
    from m3sh.hooks.m3ter import M3terHook

    hook = M3terHook()
    a, b = sorted(acc["code"] for acc in hook.list_accounts())[:2]
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tag = uuid.uuid4().hex[:8]
    usage_prefix, state_prefix = f"usage/user-feeds-{tag}/", f"user-feeds-state-{tag}/"
    s3 = s3_client(fresh_sandbox.url("moto"))
    s3.put_object(Bucket=SOURCE, Key=usage_prefix + "one.csv", Body=_csv([("f1", a, 10), ("f2", b, 20)], ts))
    s3.put_object(Bucket=SOURCE, Key=usage_prefix + "two.csv.gz",
                  Body=gzip.compress(_csv([("f3", a, 5), ("f4", "ghost-account", 7)], ts)))
    fresh_sandbox.admin("platform", "usage", "POST", rows=[
        {"event_id": "h1", "account": b, "meter": "api_calls", "ts": ts, "quantity": 100, "region": "us-east-1"},
        {"event_id": "h2", "account": a, "meter": "api_calls", "ts": ts, "quantity": "lots"}])
    dag = _user_dag(tag, usage_prefix, state_prefix)
    _register(dag)

    def run() -> dict[str, Any]:
        dag_run = dag.test()
        states = {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}
        assert states == {("plan", -1): "success", ("ingest", 0): "success", ("ingest", 1): "success",
                          ("ingest", 2): "success", ("summary", -1): "success"}, states
        return {t: dag_run.get_task_instance(t).xcom_pull(task_ids=t) for t in ("plan", "summary")}

    first = run()
    assert first["plan"] == [{"feed": "files", "keys": [usage_prefix + "one.csv"]},
                             {"feed": "files", "keys": [usage_prefix + "two.csv.gz"]},
                             {"feed": "platform", "keys": ["/api/usage"]}]
    summary = first["summary"]
    assert {k: summary[k] for k in ("files", "rows_read", "accepted", "rejected", "skipped", "failed")} == {
        "files": 3, "rows_read": 6, "accepted": 4, "rejected": 2, "skipped": 0, "failed": 0}
    assert _usage(hook) == {a: (2, 15.0), b: (2, 120.0)}
    state = Storage("aws_default", STATE, state_prefix)
    manifests = [o["Key"] for o in state.list_keys(state.key("manifests", "usage", "files"))]
    assert len(manifests) == 2
    assert all(state.get_json(k)["status"] == "complete" for k in manifests)
    assert len(summary["dead_letter_keys"]) == 2
    dead = [json.loads(line) for k in summary["dead_letter_keys"]
            for line in s3.get_object(Bucket=STATE, Key=k)["Body"].read().splitlines()]
    assert sorted((d["field"], str(d["row"]["event_id"])) for d in dead) == [("account", "f4"), ("quantity", "h2")]

    # the re-run: the files are skipped by their manifests; the HTTP feed's full scan is re-sent and
    # m3ter's uid de-duplication keeps every total as it was
    posts = fresh_sandbox.stats("m3ter")["counts"].get(MEASUREMENTS, 0)
    second = run()["summary"]
    assert (second["skipped"], second["failed"]) == (2, 0)
    assert fresh_sandbox.stats("m3ter")["counts"].get(MEASUREMENTS, 0) == posts + 1
    assert _usage(hook) == {a: (2, 15.0), b: (2, 120.0)}
    assert no_m3sh_yaml.call_count == 0


def test_a_broken_file_fails_only_the_summary_naming_it(
        fresh_sandbox: Any, airflow_db: Path, no_m3sh_yaml: mock.Mock) -> None:
    from m3sh.hooks.m3ter import M3terHook

    hook = M3terHook()
    account = sorted(acc["code"] for acc in hook.list_accounts())[0]
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tag = uuid.uuid4().hex[:8]
    usage_prefix = f"usage/user-feeds-{tag}/"
    s3 = s3_client(fresh_sandbox.url("moto"))
    s3.put_object(Bucket=SOURCE, Key=usage_prefix + "good.csv", Body=_csv([("g1", account, 3)], ts))
    s3.put_object(Bucket=SOURCE, Key=usage_prefix + "broken.csv.gz", Body=gzip.compress(_csv([], ts) * 500)[:-40])
    dag = _user_dag(tag, usage_prefix, f"user-feeds-state-{tag}/", http=False)
    _register(dag)

    dag_run = dag.test()
    states = {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}
    assert dag_run.state == "failed"
    assert states == {("plan", -1): "success", ("ingest", 0): "success", ("ingest", 1): "success",
                      ("summary", -1): "failed"}, states
    assert _usage(hook) == {account: (1, 3.0)}  # the good file landed

    # what the summary failed with: the broken file by name, as the record the alert carries
    ti = dag_run.get_task_instance("summary")
    planned = ti.xcom_pull(task_ids="plan")
    results = [ti.xcom_pull(task_ids="ingest", map_indexes=i) for i in range(len(planned))]
    assert [r["status"] for chunk in results for r in chunk] == ["failed", "complete"]
    summary = M3terUsageFeedsSummaryOperator(task_id="again", planned=planned, results=results)
    with pytest.raises(RunFailed, match=r"1 usage file\(s\) failed: .*broken\.csv\.gz") as failed:
        summary.execute({})  # type: ignore[arg-type]
    assert failed.value.records == [usage_prefix + "broken.csv.gz"]
    assert no_m3sh_yaml.call_count == 0
