"""Consolidate CRMs: HubSpot customers move to Salesforce. m3ter accounts keep their codes, ids and
history; external mappings gain the Salesforce records (the HubSpot ones stay as history); the next
CRM sync creates no duplicates and writes the m3ter ids into the new Salesforce records."""

from __future__ import annotations

from typing import Any

import pytest

from m3sh.sandbox.seed import demo_company

from .conftest import crm_sync, request_count

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]


def test_hubspot_customers_move_to_salesforce(stack: Any) -> None:
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.hooks.salesforce import SalesforceSync

    movers = [c for c in demo_company().customers if c.crm == "hubspot" and not c.in_m3ter][:4]
    domains = [c.domain for c in movers]
    assert crm_sync(accounts=domains).state == "success"
    hook = M3terHook()
    before = {c.key: hook.find_account(c.key) for c in movers}
    assert all(before.values())
    n_accounts = len(list(hook.list_accounts()))
    n_contracts = len(list(hook.list_contracts()))

    # sales ops re-creates the customers in Salesforce (same domain and billing email) ...
    created = stack.sandbox.admin("salesforce", "insert", "POST", sobject="Account", records=[
        {"Name": c.name, "Website": f"https://www.{c.domain}", "Billing_Email__c": c.email.upper(),
         "CurrencyIsoCode": c.currency, "BillingCountry": c.country, "Owner_Name__c": c.owner} for c in movers])
    sf_ids = dict(zip([c.key for c in movers], created["ids"], strict=True))
    # ... and m3sh.yaml stops reading HubSpot
    stack.edit(lambda d: next(s for s in d["crm"]["sources"] if s["name"] == "hubspot").update(enabled=False))
    stack.sandbox.admin("hubspot", "stats", "DELETE")
    assert crm_sync(accounts=domains).state == "success"

    assert request_count(stack.sandbox, "hubspot") == 0
    assert len(list(hook.list_accounts())) == n_accounts  # no duplicates
    assert len(list(hook.list_contracts())) == n_contracts  # history kept
    mappings = list(hook.list_external_mappings())
    for c in movers:
        after = hook.find_account(c.key)
        assert after["id"] == before[c.key]["id"]  # same account, same id, same usage and bills
        links = {(m["externalSystem"], m["externalId"]) for m in mappings if m["m3terId"] == after["id"]}
        assert links == {("hubspot", c.hubspot_id), ("salesforce", sf_ids[c.key])}
        assert after["customFields"]["crm_source"] == "hubspot,salesforce"
    rows = [r for r in SalesforceSync().query("SELECT Id, M3ter_Account_Id__c FROM Account", "Account")
            if r["Id"] in set(sf_ids.values())]
    assert {r["Id"]: r["M3ter_Account_Id__c"] for r in rows} == {
        sf_ids[c.key]: before[c.key]["id"] for c in movers}
