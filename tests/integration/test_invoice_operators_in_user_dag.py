"""m3ter bills -> NetSuite invoices in a user's own DAG, built from the invoice operators, with no
m3sh.yaml: collect -> NetSuite -> run summary, run twice with ``dag.test()`` against the sandbox.

The first run upserts one customer per account and one invoice per bill (read back through
SuiteQL: external ids, totals and lines as m3ter billed them) and stamps the export on each m3ter
account; the second finds every bill in the ledger and writes nothing to NetSuite or m3ter (the
emulators' request counts prove it).

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

from m3sh.operators import (
    M3terBillsCollectOperator,
    M3terBillsToNetSuiteOperator,
    M3terInvoiceRunSummaryOperator,
)
from m3sh.storage import Storage
from tests.integration.dags.test_invoice_sync_dag import assert_one_invoice_per_bill, seed_bills, writes
from tests.integration.test_sensors_sandbox import _register

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

BUCKET = "m3sh-archive"
TASKS = ("collect", "to_netsuite", "summary")


def _user_dag(tag: str, prefix: str) -> Any:
    """What a user writes (docs/operators.md): every approved bill to the US NetSuite account."""
    from airflow.sdk import DAG

    with DAG(f"user_invoices_{tag}", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) as dag:
        collect = M3terBillsCollectOperator(task_id="collect", destinations=["netsuite"], bill_states=["APPROVED"],
                                            subsidiary_by_currency={"USD": "us"}, full_scan=True,
                                            bucket=BUCKET, prefix=prefix)
        to_netsuite = M3terBillsToNetSuiteOperator(
            task_id="to_netsuite", staged=collect.output, netsuite_conn_id="netsuite_default", subsidiary_id="1",
            default_item_id="503", item_map={"STANDING_CHARGE": "502", "USAGE": "503"}, bucket=BUCKET, prefix=prefix)
        summary = M3terInvoiceRunSummaryOperator(task_id="summary", staged=collect.output, bucket=BUCKET,
                                                 prefix=prefix, trigger_rule="all_done")
        to_netsuite >> summary
    return dag


def test_a_users_dag_delivers_bills_to_netsuite_once_across_two_runs_without_m3sh_yaml(
        fresh_sandbox: Any, airflow_db: Path, no_m3sh_yaml: mock.Mock) -> None:
    seeded = seed_bills(fresh_sandbox, n_usd=3, n_eur=0)
    bills = seeded["usd"]
    assert len(bills) == 3 and not seeded["eur"]
    tag = uuid.uuid4().hex[:8]
    prefix = f"user-invoices-{tag}/"
    dag = _user_dag(tag, prefix)
    _register(dag)

    def run() -> dict[str, Any]:
        dag_run = dag.test()
        states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
        assert states == dict.fromkeys(TASKS, "success"), states
        return {t: dag_run.get_task_instance(t).xcom_pull(task_ids=t) for t in TASKS}

    first = run()
    assert {k: first["collect"][k] for k in ("bills", "set_aside", "by_destination")} == {
        "bills": 3, "set_aside": 0, "by_destination": {"netsuite": 3}}
    assert first["to_netsuite"] == {"delivered": 3}
    assert first["summary"]["exported"] == 3
    assert first["summary"]["by_destination"] == {"netsuite": {"delivered": 3}}
    assert_one_invoice_per_bill("netsuite_default", bills)
    hook = seeded["hook"]
    for bill in bills:
        custom = hook.get_account(bill["accountId"])["customFields"]
        assert custom["exported_bill"] == bill["id"] and custom["exported_to"] == "netsuite"
    storage = Storage("aws_default", BUCKET, prefix)
    latest = storage.get_json(storage.key("reports", dag.dag_id, "latest.json"))
    assert isinstance(latest, dict) and latest["exported"] == 3 and latest["failed"] == latest["action_needed"] == []

    before = {n: writes(fresh_sandbox, n) for n in ("netsuite", "m3ter")}
    second = run()
    assert second["to_netsuite"] == {"unchanged": 3}
    assert second["summary"]["exported"] == 0
    assert {n: writes(fresh_sandbox, n) for n in ("netsuite", "m3ter")} == before
    assert_one_invoice_per_bill("netsuite_default", bills)
    assert no_m3sh_yaml.call_count == 0
