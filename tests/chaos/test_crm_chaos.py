"""Chaos for ``m3sh_crm_sync``: a HubSpot 429 storm, Salesforce 5xx and m3ter creates whose responses
are lost after m3ter applied them; then a backfill re-run over already-processed hourly windows.
Every demo customer must exist in m3ter exactly once, with one contract per CRM contract, one
external mapping per CRM record and no doubled account plan.
"""

from __future__ import annotations

import collections
import datetime as dt
from typing import Any

import pytest

from m3sh.sandbox.seed import demo_company
from tests.chaos.conftest import Chaos

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun, pytest.mark.chaos]


def _run(**kw: Any) -> Any:
    from m3sh.dagkit.crm_sync import build_crm_sync_dag

    logical_date = kw.pop("logical_date", None)
    if logical_date is not None:
        return build_crm_sync_dag().test(logical_date=logical_date)
    return build_crm_sync_dag().test(run_conf=kw)


def _assert_each_customer_once(chaos: Chaos) -> None:
    company = demo_company()
    hook = chaos.m3ter()
    codes = collections.Counter(a["code"] for a in hook.list_accounts())
    assert set(codes) == {c.key for c in company.customers}
    assert max(codes.values()) == 1, [c for c, n in codes.items() if n > 1]
    contracts = collections.Counter(c["code"] for c in hook.list_contracts())
    assert max(contracts.values()) == 1, [c for c, n in contracts.items() if n > 1]
    assert {f"{c.key}-c{c.contract_start:%Y%m%d}" for c in company.customers} <= set(contracts)
    mappings = collections.Counter((m["externalSystem"], m["externalTable"], m["externalId"])
                                   for m in hook.list_external_mappings())
    assert max(mappings.values()) == 1
    assert len(mappings) == sum(2 if c.crm == "both" else 1 for c in company.customers)
    plans = collections.Counter((ap["accountId"], ap["planId"], ap["startDate"]) for ap in hook.list_account_plans())
    assert max(plans.values()) == 1, "an account plan was attached twice"


def test_storms_and_lost_create_responses_then_backfill_rerun_create_nothing_twice(chaos: Chaos) -> None:
    chaos.faults("hubspot", burst_429=3, retry_after_s=0)
    chaos.faults("salesforce", path_regex="/query", methods=["GET"], fail_next=1, error_status=503)
    chaos.faults("m3ter", path_regex=r"/(accounts|contracts|accountplans|externalmappings)$", methods=["POST"],
                 drop_next=3, drop_after_processing=True)
    alerts = chaos.failure_alerts()
    first = _run(full_resync=True)
    assert all(chaos.faults_spent(n) for n in ("hubspot", "salesforce", "m3ter"))
    # The 429s and the 503 are ridden out by retries. A create whose response was lost is not
    # re-sent blindly: the hook finds the entity m3ter did create and carries on, so the run succeeds
    # first time, alerts nothing, and nothing exists twice.
    assert first.state == "success"
    assert chaos.failure_alerts() == alerts
    _assert_each_customer_once(chaos)
    # A second run finds nothing left to do.
    assert _run(full_resync=True).state == "success"
    _assert_each_customer_once(chaos)

    # Backfill: one customer changed three days ago; that hour is synced, then the whole window
    # and its neighbour are re-run (e.g. `airflow dags backfill`): the re-runs write nothing.
    hour = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    customer = next(c for c in demo_company().customers if c.crm == "salesforce" and not c.in_m3ter)
    chaos.sb.admin("salesforce", "set_fields", "POST", sobject="Account", id=customer.salesforce_id,
                   fields={"Name": "Renamed In Backfill",
                           "SystemModstamp": (hour - dt.timedelta(minutes=20)).strftime("%Y-%m-%dT%H:%M:%S.000+0000")})
    assert _run(logical_date=hour).state == "success"
    assert chaos.m3ter().find_account(customer.key)["name"] == "Renamed In Backfill"
    before = {n: chaos.writes(n) for n in ("m3ter", "salesforce", "hubspot")}
    chaos.faults("m3ter", methods=["GET"], burst_429=2, retry_after_s=0)  # the backfill meets a storm too
    for logical_date in (hour, hour - dt.timedelta(hours=1)):
        assert _run(logical_date=logical_date).state == "success"
    assert {n: chaos.writes(n) for n in ("m3ter", "salesforce", "hubspot")} == before
    _assert_each_customer_once(chaos)
