"""The analytics operators in a user's own DAG, with no m3sh.yaml: plan -> table (mapped) -> commit,
run with ``dag.test()`` against the sandbox. The Parquet partitions are read back from S3 with the
strict reader and compared with m3ter's own answer; a preview run and a re-run are checked too.

As in tests/integration/test_operators_in_user_dag.py, the config loader is replaced by a guard,
``M3SH_CONFIG`` points at a missing file and the DAG folder is an empty one of the user's.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from m3sh.operators import M3terAnalyticsCommitOperator, M3terAnalyticsPlanOperator, M3terAnalyticsTableOperator
from m3sh.storage import Storage
from tests.integration.test_sensors_sandbox import _register

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

BUCKET = "m3sh-archive"
TABLES = ["accounts", "balances"]


def _user_dag(tag: str, prefix: str) -> Any:
    from airflow.sdk import DAG

    from m3sh.compat import CronDataIntervalTimetable

    with DAG(f"user_analytics_{tag}", schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
             start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), params={"dry_run": False}) as dag:
        plan = M3terAnalyticsPlanOperator(task_id="plan", tables=TABLES)
        staged = M3terAnalyticsTableOperator.partial(
            task_id="table", bucket=BUCKET, prefix=prefix, preview="{{ params.dry_run | tojson }}",
        ).expand(item=plan.output)
        M3terAnalyticsCommitOperator(task_id="commit", planned=plan.output, staged=staged.output, bucket=BUCKET,
                                     prefix=prefix, preview="{{ params.dry_run | tojson }}",
                                     trigger_rule="all_done")
    return dag


def test_a_users_dag_exports_a_day_as_parquet_without_m3sh_yaml(
        fresh_sandbox: Any, airflow_db: Path, no_m3sh_yaml: mock.Mock) -> None:
    from m3sh.analytics.reader import AnalyticsReader
    from m3sh.hooks.m3ter import M3terHook

    tag = uuid.uuid4().hex[:8]
    prefix = f"user-analytics-{tag}/"
    dag = _user_dag(tag, prefix)
    _register(dag)
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    run_at = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), dt.UTC)
    reader = AnalyticsReader(Storage("aws_default", BUCKET, prefix))

    def run(dry_run: bool = False) -> dict[str, Any]:
        # explicit conf each time: dag.test() keeps the previous run's params on the DAG object
        dag_run = dag.test(logical_date=run_at, run_conf={"dry_run": dry_run})
        states = {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}
        assert states == {("plan", -1): "success", ("table", 0): "success", ("table", 1): "success",
                          ("commit", -1): "success"}, states
        return {"run_id": dag_run.run_id,
                **{t: dag_run.get_task_instance(t).xcom_pull(task_ids=t) for t in ("plan", "commit")}}

    preview = run(dry_run=True)
    assert preview["plan"] == [{"table": t, "date": day.isoformat()} for t in TABLES]
    hook = M3terHook()
    accounts = list(hook.list_accounts())
    assert preview["commit"]["dry_run"] is True and preview["commit"]["rows"]["accounts"] == len(accounts) > 0
    assert list(reader.storage.list_keys(reader.storage.key(""))) == []  # a preview writes nothing

    first = run()
    assert first["commit"]["date"] == day.isoformat() and first["commit"]["rows"] == preview["commit"]["rows"]
    exported = reader.partition("accounts", day)
    assert exported is not None
    assert sorted(exported.column("account_code").to_pylist()) == sorted(a["code"] for a in accounts)
    for table in TABLES:
        manifest = reader.manifest(table, day)
        assert manifest is not None and manifest["source_run_id"] == first["run_id"], table
        assert manifest["dag_id"] == dag.dag_id and manifest["rows"] == first["commit"]["rows"][table]
    keys = [o["Key"] for o in reader.storage.list_keys(reader.storage.key(""))]
    assert not [k for k in keys if "_staging" in k]

    # a re-run of the day replaces each partition with the same data, in the same single file
    second = run()
    assert second["commit"]["rows"] == first["commit"]["rows"]
    again = reader.partition("accounts", day)
    assert again is not None and again.equals(exported)
    assert reader.manifest("accounts", day)["source_run_id"] == second["run_id"]  # type: ignore[index]
    assert sorted(o["Key"] for o in reader.storage.list_keys(reader.storage.key(""))) == sorted(keys)
    assert no_m3sh_yaml.call_count == 0
