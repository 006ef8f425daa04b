"""Chaos for ``m3sh_invoice_sync`` and ``m3sh_reconcile``: a NetSuite storm with lost responses, a
Salesforce connection dropped after the upsert, a whole NetSuite account down, then a repair run
and backfill re-runs. ERP invoices are counted with SuiteQL ``GROUP BY externalid``: exactly one per
bill and destination, whatever happened.
"""

from __future__ import annotations

import collections
import datetime as dt
from typing import Any

import pytest

from tests.chaos.conftest import Chaos
from tests.integration.dags.test_invoice_sync_dag import seed_bills

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun, pytest.mark.chaos]


def _sync(**kw: Any) -> Any:
    from m3sh.dagkit.invoice_sync import build_invoice_sync_dag

    logical_date = kw.pop("logical_date", None)
    if logical_date is not None:
        return build_invoice_sync_dag().test(logical_date=logical_date, run_conf=kw or None)
    return build_invoice_sync_dag().test(run_conf={"full_scan": True, **kw})


def _sf_invoice_counts() -> collections.Counter[str]:
    from m3sh.hooks.salesforce import SalesforceSync

    rows = SalesforceSync().query("SELECT M3ter_Bill_Id__c FROM Invoice__c")
    return collections.Counter(r["M3ter_Bill_Id__c"] for r in rows)


def _assert_exactly_once(chaos: Chaos, seeded: dict[str, Any], eu_expected: bool = True) -> None:
    usd = {b["id"]: 1 for b in seeded["usd"]}
    eur = {b["id"]: 1 for b in seeded["eur"]}
    assert chaos.invoice_counts("netsuite_default") == usd
    if eu_expected:
        assert chaos.invoice_counts("netsuite_eu") == eur
    else:  # the account answers 503 to SuiteQL too: read its books through the emulator's admin API
        eu = next(a for a in chaos.sb.state("netsuite")["accounts"].values() if a["label"] == "eu")
        assert eu["counts"]["invoice"] == 0
    assert dict(_sf_invoice_counts()) == usd


def test_storms_outage_and_backfill_leave_one_invoice_per_bill_and_destination(chaos: Chaos) -> None:
    seeded = seed_bills(chaos.sb, n_usd=3, n_eur=2)
    sb = chaos.sb
    # NetSuite: 429 storm, a 502 and two responses lost after the record was written (both accounts).
    chaos.faults("netsuite", path_regex=r"/record/v1/(invoice|customer)/eid:", methods=["PUT"], burst_429=2,
                 fail_next=1, error_status=502, drop_next=2, drop_after_processing=True, retry_after_s=0)
    # Salesforce: the connection drops after the Invoice__c upsert was applied.
    chaos.faults("salesforce", path_regex="Invoice__c", methods=["PATCH"], drop_next=1, drop_after_processing=True)
    # ... and the whole EU NetSuite account answers 503.
    sb.admin("netsuite", "account_fault", "POST", account="eu", status=503)
    alerts = chaos.failure_alerts()

    run = _sync()
    assert run.state == "failed"
    assert chaos.faults_spent("netsuite") and chaos.faults_spent("salesforce")
    failed = chaos.assert_failed_tasks_alerted_once(run, alerts)
    assert "m3sh_invoice_sync.netsuite_eu.deliver[0]" in failed or "m3sh_invoice_sync.netsuite_eu.deliver" in failed
    assert all("netsuite_eu" in t or t.endswith(".finalize") for t in failed), failed
    _assert_exactly_once(chaos, seeded, eu_expected=False)

    # The EU account recovers; the next run delivers only what is missing.
    sb.admin("netsuite", "account_fault", "POST", account="eu")
    alerts = chaos.failure_alerts()
    assert _sync().state == "success"
    assert chaos.failure_alerts() == alerts
    _assert_exactly_once(chaos, seeded)

    # Backfill: past daily windows, a full scan and the explicit bill list, all under a 2 s spike on
    # some NetSuite reads: nothing is written anywhere, nothing duplicated.
    before = {n: chaos.writes(n) for n in ("netsuite", "salesforce", "m3ter")}
    chaos.faults("netsuite", path_regex="/suiteql", latency_ms=2000, methods=["POST"])
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert _sync(logical_date=today - dt.timedelta(days=2)).state == "success"
    chaos.clear_faults("netsuite")
    assert _sync(bill_ids=[b["id"] for b in seeded["bills"]]).state == "success"
    assert {n: chaos.writes(n) for n in ("netsuite", "salesforce", "m3ter")} == before
    _assert_exactly_once(chaos, seeded)

    # Reconcile under a 429 storm on m3ter reads agrees: no drift.
    from m3sh.dagkit.reconcile import build_reconcile_dag

    chaos.faults("m3ter", methods=["GET"], burst_429=3, retry_after_s=0)
    assert build_reconcile_dag().test(run_conf={}).state == "success"
    assert chaos.faults_spent("m3ter")
    storage = chaos.storage()
    summary = storage.get_json(storage.key("reports", "reconcile", "latest.json"))
    assert summary["clean"] is True and summary["findings"] == 0
    assert chaos.failure_alerts() == alerts
