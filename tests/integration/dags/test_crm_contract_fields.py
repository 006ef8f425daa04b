"""``crm.sources[].contract_fields`` drive the m3ter contract in ``m3sh_crm_sync`` (issue #18).

Before, the key was accepted and documented but never read: the contract always came from the
hard-coded ``StartDate``/``EndDate``/``PO_Number__c`` and HubSpot's ``contract_start``/
``contract_end``/``po_number``. One whole ``dag.test()`` run over a past hour that holds only the
records this test moves into it: a HubSpot deal whose term end and PO live in properties the
portal named itself, and a Salesforce contract whose billing start is its activation date.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from m3sh.sandbox.seed import DemoCustomer, demo_company
from tests.integration.dags.test_crm_hubspot_line_items import EARLY_START, _deal

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

WINDOW = dt.datetime(2025, 4, 1, 12, tzinfo=dt.UTC)  # logical date T covers [T - 1h, T)
IN_WINDOW = WINDOW - dt.timedelta(minutes=20)
HUBSPOT_FIELDS = ("        end_date: contract_end\n        po_number: po_number\n",
                  "        end_date: renewal_date\n        po_number: customer_po\n")
SALESFORCE_FIELDS = ("      write_back_field: M3ter_Account_Id__c\n",
                     "      contract_fields: {start_date: ActivatedDate}\n"
                     "      write_back_field: M3ter_Account_Id__c\n")


def _only_in(crm: str) -> DemoCustomer:
    return next(c for c in demo_company().customers if c.crm == crm and not c.in_m3ter)


def test_mapped_contract_fields_reach_the_m3ter_contract(fresh_sandbox: Any, airflow_db: Any,
                                                         m3sh_config: Any) -> None:
    from m3sh.dagkit.crm_sync import build_crm_sync_dag
    from m3sh.hooks.hubspot import HubSpotHook
    from m3sh.hooks.m3ter import M3terHook

    m3sh_config(replace=dict([HUBSPOT_FIELDS, SALESFORCE_FIELDS]), extra=EARLY_START)
    hs_customer, sf_customer = _only_in("hubspot"), _only_in("salesforce")
    renewal = hs_customer.contract_end + dt.timedelta(days=365)
    activated = sf_customer.contract_start + dt.timedelta(days=10)

    hs = HubSpotHook()
    hs.ensure_property("deals", "renewal_date", "Renewal date", type="date")
    hs.ensure_property("deals", "customer_po", "Customer PO")
    assert hs.batch_update("deals", [{"id": _deal(hs_customer), "properties": {
        "renewal_date": renewal.isoformat(), "customer_po": "CPO-4711"}}]).ok
    fresh_sandbox.admin("hubspot", "set_modified", "POST", object_type="deals", ids=[_deal(hs_customer)],
                        modified_at=IN_WINDOW.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
    [sf_contract] = _contract_ids(sf_customer)
    fresh_sandbox.admin("salesforce", "set_fields", "POST", sobject="Contract", id=sf_contract, fields={
        "ActivatedDate": f"{activated.isoformat()}T00:00:00.000+0000",
        "SystemModstamp": IN_WINDOW.strftime("%Y-%m-%dT%H:%M:%S.000+0000")})

    run = build_crm_sync_dag().test(logical_date=WINDOW)
    assert run.state == "success"

    contracts = {c["code"]: c for c in M3terHook().list_contracts()}
    hs_contract = contracts[f"{hs_customer.key}-c{hs_customer.contract_start:%Y%m%d}"]
    assert hs_contract["endDate"][:10] == renewal.isoformat()  # the deal's renewal_date, not contract_end
    assert hs_contract["purchaseOrderNumber"] == "CPO-4711"  # customer_po, not po_number
    # Salesforce: the contract starts at activation (its code carries the start date), ends at EndDate
    sf_m3ter = contracts[f"{sf_customer.key}-c{activated:%Y%m%d}"]
    assert sf_m3ter["startDate"][:10] == activated.isoformat()
    assert sf_m3ter["endDate"][:10] == sf_customer.contract_end.isoformat()
    assert f"{sf_customer.key}-c{sf_customer.contract_start:%Y%m%d}" not in contracts  # StartDate was not used


def _contract_ids(customer: DemoCustomer) -> list[str]:
    """The Salesforce Contract ids of a demo customer."""
    from m3sh.hooks.salesforce import SalesforceSync

    rows = SalesforceSync().query("SELECT Id, AccountId FROM Contract", "Contract")
    return [r["Id"] for r in rows if r["AccountId"] == customer.salesforce_id]
