"""Reconciliation in a user's own DAG, built from the reconcile operators with no m3sh.yaml, against
the sandbox (the example of docs/operators.md, plus HubSpot's CRM accounts and a dry-run param).

Bills are delivered to NetSuite by the invoice operators; the reconciliation is clean and writes
nothing to any system but its report. Then one invoice's amount is edited and another deleted in
the NetSuite emulator: a dry run logs the drift and leaves the report alone; the real run fails
naming both bills, with the HTML, CSV and latest.json in S3. Re-delivered, the next run is clean
and sends the "resolved" alert to the Slack channel given inline.

As in tests/integration/test_invoice_operators_in_user_dag.py, the config loader is replaced by a
guard, ``M3SH_CONFIG`` points at a missing file and the DAG folder is an empty one of the user's.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from m3sh.operators import (
    M3terBillsCollectOperator,
    M3terBillsDeliverOperator,
    M3terBillsToNetSuiteOperator,
    M3terInvoiceRunSummaryOperator,
    M3terReconcileAccountsOperator,
    M3terReconcileBillsOperator,
    ReconcileReportOperator,
)
from m3sh.storage import Storage
from tests.integration.dags.test_invoice_sync_dag import netsuite, seed_bills, writes
from tests.integration.test_sensors_sandbox import _register

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

BUCKET = "m3sh-archive"
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NETSUITE = {"type": "netsuite", "name": "netsuite", "conn_id": "netsuite_default", "subsidiary_id": "1",
            "default_item_id": "503", "item_map": {"STANDING_CHARGE": "502", "USAGE": "503"}}
CRM_SOURCES = [
    {"name": "salesforce", "type": "salesforce", "conn_id": "salesforce_default", "priority": 10,
     "account_fields": {"currency": "CurrencyIsoCode"}, "write_back_field": "M3ter_Account_Id__c"},
    {"name": "hubspot", "type": "hubspot", "conn_id": "hubspot_default", "priority": 20,
     "account_fields": {"currency": "billing_currency"}, "write_back_field": "m3ter_account_id"},
]
SLACK = {"name": "finance", "type": "slack_webhook", "conn_id": "m3sh_slack"}


def _invoice_dag(dag_id: str, prefix: str, redeliver: bool) -> Any:
    from airflow.sdk import DAG

    with DAG(dag_id, schedule=None, start_date=START) as dag:
        collect = M3terBillsCollectOperator(task_id="collect", destinations=["netsuite"], bill_states=["APPROVED"],
                                            subsidiary_by_currency={"USD": "us"}, full_scan=True,
                                            bucket=BUCKET, prefix=prefix)
        deliver = M3terBillsToNetSuiteOperator(
            task_id="to_netsuite", staged=collect.output, netsuite_conn_id="netsuite_default", subsidiary_id="1",
            default_item_id="503", item_map=NETSUITE["item_map"], redeliver=redeliver, bucket=BUCKET, prefix=prefix)
        summary = M3terInvoiceRunSummaryOperator(task_id="summary", staged=collect.output, bucket=BUCKET,
                                                 prefix=prefix, trigger_rule="all_done")
        deliver >> summary
    return dag


def _reconcile_dag(dag_id: str, prefix: str) -> Any:
    """What a user writes (docs/operators.md), with a dry-run param."""
    from airflow.sdk import DAG, Param

    with DAG(dag_id, schedule=None, start_date=START, params={"dry_run": Param(False, type="boolean")}) as dag:
        accounts = M3terReconcileAccountsOperator(task_id="accounts", crm_sources=CRM_SOURCES, bucket=BUCKET,
                                                  prefix=prefix)
        bills = M3terReconcileBillsOperator(task_id="bills", destinations=[NETSUITE], bill_states=["APPROVED"],
                                            crm_sources=CRM_SOURCES, lookback_days=365, bucket=BUCKET,
                                            prefix=prefix)
        ReconcileReportOperator(task_id="report", accounts=accounts.output, bills=bills.output, bucket=BUCKET,
                                prefix=prefix, preview="{{ params.dry_run | tojson }}", alert_channels=[SLACK])
    return dag


def _run(dag: Any, dry_run: bool = False) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``(dag run, task states, XCom return values)``."""
    # Always given: in one process, a run's conf can outlive it in the DAG object's params.
    run = dag.test(run_conf={"dry_run": dry_run})
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    return run, {t: ti.state for t, ti in tis.items()}, {t: ti.xcom_pull(task_ids=t) for t, ti in tis.items()}


def _slack(sandbox: Any) -> list[str]:
    return [m["text"] for m in sandbox.state("platform")["slack"]]


def _read(storage: Storage, key: str) -> str:
    return storage.client.get_object(Bucket=storage.bucket, Key=key)["Body"].read().decode()


def test_a_users_dag_reconciles_netsuite_reports_drift_and_resolution_without_m3sh_yaml(
        fresh_sandbox: Any, airflow_db: Path, no_m3sh_yaml: mock.Mock) -> None:
    seeded = seed_bills(fresh_sandbox, n_usd=3, n_eur=0)
    bills = seeded["usd"]
    assert len(bills) == 3
    tag = uuid.uuid4().hex[:8]
    prefix = f"user-reconcile-{tag}/"
    storage = Storage("aws_default", BUCKET, prefix)
    latest_key = storage.key("reports", "reconcile", "latest.json")
    invoice, redeliver, reconcile = (_invoice_dag(f"user_invoices_{tag}", prefix, False),
                                     _invoice_dag(f"user_redeliver_{tag}", prefix, True),
                                     _reconcile_dag(f"user_reconcile_{tag}", prefix))
    for dag in (invoice, redeliver, reconcile):
        _register(dag)
    assert invoice.test().state == "success"

    # 1. Clean, and reading only: no system but S3 is written.
    before = {n: writes(fresh_sandbox, n) for n in ("netsuite", "m3ter", "salesforce", "hubspot")}
    run, states, out = _run(reconcile)
    assert states == dict.fromkeys(("accounts", "bills", "report"), "success"), states
    assert {n: writes(fresh_sandbox, n) for n in before} == before
    assert out["bills"]["findings"] == 0 and out["accounts"]["findings"] == 0
    assert out["bills"]["checked"]["m3ter bills in scope"] == 3
    assert out["bills"]["checked"]["netsuite invoices and credit memos"] >= 3
    assert out["accounts"]["checked"]["CRM records"] > 0
    assert out["report"]["clean"] is True
    clean = storage.get_json(latest_key)
    assert clean["clean"] is True and clean["run_id"] == run.run_id and clean["checked"] == {
        **out["accounts"]["checked"], **out["bills"]["checked"]}
    assert "Everything matches" in _read(storage, clean["html_key"])

    # 2. Someone edits one invoice's line amount and deletes another in NetSuite.
    edited, deleted = bills[0], bills[1]
    ns = netsuite("netsuite_default")
    inv = ns.get_by_external_id("invoice", edited["id"])
    assert inv is not None
    first = inv["item"]["items"][0]
    line = {"line": first["line"], "amount": first["amount"] + 10}
    ns.patch_record("invoice", inv["id"], {"item": {"items": [line]}}, replace=())
    ns.delete_record("invoice", f"eid:{deleted['id']}")
    want = {("amount_mismatch", edited["id"]), ("missing", deleted["id"])}

    # A dry run sees the drift, but writes no report and fails nothing.
    run, states, out = _run(reconcile, dry_run=True)
    assert run.state == "success", states
    assert out["bills"]["findings"] == 2 and out["report"] == {"clean": False, "findings": 2, "dry_run": True}
    assert storage.get_json(latest_key) == clean

    run, states, out = _run(reconcile)
    assert run.state == "failed" and states["report"] == "failed", states
    summary = storage.get_json(latest_key)
    assert summary["clean"] is False and summary["run_id"] == run.run_id and summary["findings"] == 2
    assert {(d["check"], d["bill_id"]) for d in summary["drift"]} == want
    assert {d["destination"] for d in summary["drift"]} == {"netsuite"}
    missing = next(d for d in summary["drift"] if d["check"] == "missing")
    assert "deleted in NetSuite" in missing["detail"]  # the user's ledger says m3sh delivered it
    rows = list(csv.DictReader(io.StringIO(_read(storage, summary["csv_key"]))))
    assert {(r["check"], r["bill_id"]) for r in rows} == want
    page = _read(storage, summary["html_key"])
    assert "2 difference(s) need attention" in page and "Amount differs" in page and deleted["id"] in page
    assert summary["html_key"].startswith(f"{prefix}reports/reconcile/")
    assert not [t for t in _slack(fresh_sandbox) if "resolved" in t]

    # 3. Repaired by a forced re-delivery: clean again, and the resolved alert goes to the inline channel.
    assert redeliver.test().state == "success"
    run, states, out = _run(reconcile)
    assert run.state == "success", states
    assert storage.get_json(latest_key)["clean"] is True
    resolved = [t for t in _slack(fresh_sandbox) if "resolved" in t]
    assert len(resolved) == 1 and f"user_reconcile_{tag}.report" in resolved[0]
    assert "2 difference(s)" in resolved[0]
    # A further clean run has nothing to resolve.
    assert _run(reconcile)[0].state == "success"
    assert len([t for t in _slack(fresh_sandbox) if "resolved" in t]) == 1
    assert no_m3sh_yaml.call_count == 0


HUBSPOT = {"type": "hubspot", "name": "hubspot_deals", "conn_id": "hubspot_default"}


def test_hubspot_deals_are_read_back_and_a_changed_summary_is_reported(
        fresh_sandbox: Any, airflow_db: Path, no_m3sh_yaml: mock.Mock) -> None:
    """The invoice summary on each HubSpot customer's won deal is read back: clean after delivery;
    a summary overwritten by hand is reported missing on that deal's bill, and nothing else."""
    from airflow.sdk import DAG

    from m3sh.hooks.hubspot import HubSpotHook
    from m3sh.invoicing.ledger import S3Ledger

    seeded = seed_bills(fresh_sandbox, n_usd=1, n_eur=4)
    crm_of = {c.key: c.crm for c in seeded["customers"]}
    on_hubspot = [b for b in seeded["bills"] if crm_of[b["accountCode"]] == "hubspot"]
    assert len(on_hubspot) == 2
    tag = uuid.uuid4().hex[:8]
    prefix = f"user-reconcile-hs-{tag}/"
    with DAG(f"user_hubspot_{tag}", schedule=None, start_date=START) as deliver:
        collect = M3terBillsCollectOperator(task_id="collect", destinations=["hubspot_deals"],
                                            subsidiary_by_currency={"USD": "us", "EUR": "eu"},
                                            crm_sources=CRM_SOURCES, full_scan=True, bucket=BUCKET, prefix=prefix)
        M3terBillsDeliverOperator(task_id="deliver", staged=collect.output, destination=HUBSPOT, bucket=BUCKET,
                                  prefix=prefix)
    with DAG(f"user_reconcile_hs_{tag}", schedule=None, start_date=START) as reconcile:
        bills = M3terReconcileBillsOperator(task_id="bills", destinations=[HUBSPOT], crm_sources=CRM_SOURCES,
                                            bucket=BUCKET, prefix=prefix)
        ReconcileReportOperator(task_id="report", bills=bills.output, bucket=BUCKET, prefix=prefix,
                                report_name="hubspot")
    for dag in (deliver, reconcile):
        _register(dag)
    assert deliver.test().state == "success"

    run, states, out = _run(reconcile)
    assert run.state == "success", states
    assert out["bills"]["checked"]["hubspot_deals deals"] == 2 and out["bills"]["findings"] == 0
    assert out["bills"]["checked"]["m3ter bills in scope"] == 2  # the Salesforce customers have no deal
    assert not [n for n in out["bills"]["notes"] if "cannot be read back" in n]

    # Someone overwrites one deal's invoice summary.
    storage = Storage("aws_default", BUCKET, prefix)
    changed = on_hubspot[0]
    deal_id = S3Ledger(storage).entries("hubspot_deals")[changed["id"]]["remote_id"]
    result = HubSpotHook().batch_update("deals", [{"id": deal_id, "properties": {"m3ter_last_invoice": "see email"}}])
    assert result.ok
    run, states, out = _run(reconcile)
    assert run.state == "failed" and states["report"] == "failed", states
    summary = storage.get_json(storage.key("reports", "hubspot", "latest.json"))
    assert [(d["check"], d["destination"], d["bill_id"]) for d in summary["drift"]] == [
        ("missing", "hubspot_deals", changed["id"])]
    assert f"HubSpot deal {deal_id} shows no m3sh invoice" in summary["drift"][0]["detail"]
    assert no_m3sh_yaml.call_count == 0
