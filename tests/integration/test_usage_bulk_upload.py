"""A bulk usage feed (``bulk_min_bytes``) in a user's DAG, run with ``dag.test()`` against the sandbox:
the objects go through m3ter's file uploads (several part files each), the ingest task defers to
``M3terUploadJobsTrigger``, every valid row is measured exactly once, invalid rows are dead-lettered
with file/line/field, and neither a re-run nor a retry that lost its manifests uploads anything again.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from m3sh.config import M3shConfig, StorageConfig, UsageConfig, UsageFeed
from m3sh.operators import (
    M3terUsageFeedsIngestOperator,
    M3terUsageFeedsPlanOperator,
    M3terUsageFeedsSummaryOperator,
)
from m3sh.sandbox.aws_seed import s3_client
from m3sh.storage import Storage
from tests.integration.test_sensors_sandbox import _register
from tests.integration.test_usage_feed_operators import METERS, SOURCE, STATE, _csv, _usage

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]
# the stats collapse id-like path segments: "generateUploadUrl" (17 letters) reads as a Salesforce id
GENERATE = "POST /organizations/{id}/fileuploads/measurements/{id}"
MEASUREMENTS = "POST /organizations/{id}/measurements"


def _dag(tag: str, usage_prefix: str, state_prefix: str) -> Any:
    from airflow.sdk import DAG

    feed = UsageFeed.model_validate({
        "name": "bulk", "type": "s3", "conn_id": "aws_default", "bucket": SOURCE, "prefix": usage_prefix,
        "meters": METERS, "bulk_min_bytes": 1, "bulk_part_bytes": 8192})  # every object, ~40 rows a file
    cfg = M3shConfig(usage=UsageConfig(feeds=[feed], files_per_task=1, bulk_poll_interval_s=0.2),
                     storage=StorageConfig(conn_id="aws_default", bucket=STATE, prefix=state_prefix))
    as_json = cfg.model_dump(mode="json", exclude_defaults=True)
    with DAG(f"user_bulk_{tag}", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) as dag:
        plan = M3terUsageFeedsPlanOperator(task_id="plan", config=as_json, scan_all=True)
        ingest = M3terUsageFeedsIngestOperator.partial(task_id="ingest", config=as_json, scan_all=True) \
            .expand(chunk=plan.output)
        M3terUsageFeedsSummaryOperator(task_id="summary", planned=plan.output, results=ingest.output,
                                       trigger_rule="all_done")
    return dag


def test_a_bulk_feed_lands_every_valid_row_once_and_never_uploads_twice(
        fresh_sandbox: Any, airflow_db: Path, no_m3sh_yaml: mock.Mock) -> None:
    from m3sh.hooks.m3ter import M3terHook

    fresh_sandbox.admin("m3ter", "limits", "POST", enabled=False)
    hook = M3terHook()
    a, b = sorted(acc["code"] for acc in hook.list_accounts())[:2]
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tag = uuid.uuid4().hex[:8]
    usage_prefix, state_prefix = f"usage/bulk-{tag}/", f"bulk-state-{tag}/"
    s3 = s3_client(fresh_sandbox.url("moto"))
    big = [(f"e{i}", a if i % 2 else b, 1) for i in range(300)]
    s3.put_object(Bucket=SOURCE, Key=usage_prefix + "big.csv",
                  Body=_csv(big, ts) + f"bad1,{a},api_calls,{ts},many,eu\n".encode())
    s3.put_object(Bucket=SOURCE, Key=usage_prefix + "small.csv", Body=_csv([("s1", a, 10)], ts))
    dag = _dag(tag, usage_prefix, state_prefix)
    _register(dag)

    def run() -> dict[str, Any]:
        dag_run = dag.test()
        states = {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}
        assert states == {("plan", -1): "success", ("ingest", 0): "success", ("ingest", 1): "success",
                          ("summary", -1): "success"}, states
        return dict(dag_run.get_task_instance("summary").xcom_pull(task_ids="summary"))

    summary = run()
    assert {k: summary[k] for k in ("files", "rows_read", "accepted", "rejected", "bulk_processed",
                                    "bulk_failed", "failed")} == {
        "files": 2, "rows_read": 302, "accepted": 301, "rejected": 1, "bulk_processed": 301, "bulk_failed": 0,
        "failed": 0}
    assert summary["bulk_files"] > 2  # the big object went as several part files
    counts = fresh_sandbox.stats("m3ter")["counts"]
    assert counts.get(GENERATE, 0) == summary["bulk_files"] and counts.get(MEASUREMENTS, 0) == 0
    assert _usage(hook) == {a: (151, 160.0), b: (150, 150.0)}
    dead = [json.loads(line) for k in summary["dead_letter_keys"]
            for line in s3.get_object(Bucket=STATE, Key=k)["Body"].read().splitlines()]
    assert [(d["field"], d["line"], d["file"].rsplit("/", 1)[-1]) for d in dead] == [("quantity", 302, "big.csv")]

    # a re-run: both objects skipped by their manifests, nothing uploaded
    generated = counts.get(GENERATE, 0)
    assert (run()["skipped"], fresh_sandbox.stats("m3ter")["counts"].get(GENERATE, 0)) == (2, generated)

    # a retry that lost every manifest (a worker killed before writing them): the part files are
    # rebuilt, found among m3ter's jobs by their deterministic names and re-used, not uploaded again
    state = Storage("aws_default", STATE, state_prefix)
    for obj in list(state.list_keys(state.key("manifests"))):
        state.delete(obj["Key"])
    again = run()
    assert (again["accepted"], again["bulk_processed"], again["skipped"]) == (301, 301, 0)
    assert fresh_sandbox.stats("m3ter")["counts"].get(GENERATE, 0) == generated
    assert _usage(hook) == {a: (151, 160.0), b: (150, 150.0)}
    assert no_m3sh_yaml.call_count == 0


def test_rows_m3ter_fails_are_dead_lettered_with_what_its_api_gives(fresh_sandbox: Any) -> None:
    """m3ter's file upload job reports failed rows only as a count: the dead letter names the job,
    its file and the count (a meter m3ter does not know: every row of that file fails there)."""
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.usage.ingest import AccountLookup
    from m3sh.usage.run import ingest_chunk, summarize

    fresh_sandbox.admin("m3ter", "limits", "POST", enabled=False)
    hook = M3terHook()
    account = sorted(acc["code"] for acc in hook.list_accounts())[0]
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tag = uuid.uuid4().hex[:8]
    prefix = f"usage/bulk-ghost-{tag}/"
    body = "event_id,account,meter,ts,quantity\n" + "".join(
        f"g{i},{account},{'ghost_meter' if i < 4 else 'api_calls'},{ts},1\n" for i in range(10))
    s3_client(fresh_sandbox.url("moto")).put_object(Bucket=SOURCE, Key=prefix + "ghost.csv", Body=body.encode())
    meters = [{"code": "api_calls", "measures": {"quantity": "quantity"}},
              {"code": "ghost_meter", "measures": {"quantity": "quantity"}}]
    feed = UsageFeed.model_validate({"name": "ghost", "type": "s3", "conn_id": "aws_default", "bucket": SOURCE,
                                     "prefix": prefix, "meters": meters, "bulk_min_bytes": 1})
    state = Storage("aws_default", STATE, f"bulk-ghost-state-{tag}/")
    assert AccountLookup(hook)(account)
    results = ingest_chunk(feed, [prefix + "ghost.csv"], m3ter=hook, state=state, start=None, end=None,
                           poll_interval=0.1, timeout_s=60)
    (result,) = results
    assert (result["status"], result["accepted"], result["bulk_processed"], result["bulk_failed"]) == (
        "complete", 10, 6, 4)
    dead = list(state.iter_jsonl(result["m3ter_dead_letter_key"]))
    assert len(dead) == 1 and dead[0]["failed_rows"] == 4 and dead[0]["job_id"] == result["jobs"][0]["job_id"]
    assert "no per-row reasons" in dead[0]["reason"] and dead[0]["file"].endswith("ghost.csv")
    totals = summarize([{"feed": "ghost", "keys": [prefix + "ghost.csv"]}], [results]).totals
    assert (totals["bulk_failed"], totals["dead_letter_keys"]) == (4, [result["m3ter_dead_letter_key"]])


def test_the_single_prefix_operator_awaits_a_bulk_feeds_jobs(fresh_sandbox: Any) -> None:
    """``S3UsageToM3terOperator`` given a bulk feed waits for m3ter's jobs itself (it does not defer)."""
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.operators import S3UsageToM3terOperator

    fresh_sandbox.admin("m3ter", "limits", "POST", enabled=False)
    account = sorted(acc["code"] for acc in M3terHook().list_accounts())[0]
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tag = uuid.uuid4().hex[:8]
    prefix = f"usage/bulk-op-{tag}/"
    s3_client(fresh_sandbox.url("moto")).put_object(
        Bucket=SOURCE, Key=prefix + "a.csv", Body=_csv([(f"o{i}", account, 2) for i in range(25)], ts))
    feed = UsageFeed.model_validate({"name": "op", "type": "s3", "conn_id": "aws_default", "bucket": SOURCE,
                                     "prefix": prefix, "meters": METERS, "bulk_min_bytes": 1})
    op = S3UsageToM3terOperator(task_id="bulk_op", feed=feed, prefix=prefix, state_bucket=STATE,
                                state_prefix=f"bulk-op-state-{tag}/")
    out = op.execute({})  # type: ignore[arg-type]
    assert (out["files"], out["accepted"], out["failed"]) == (1, 25, [])
    assert [d["status"] for d in out["files_detail"]] == ["complete"]
