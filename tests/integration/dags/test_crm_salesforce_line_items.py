"""Salesforce: of an opportunity's line items, only a product ``crm.plan_map`` maps chooses the plan.

A won opportunity often carries a set-up fee or an add-on next to the subscription; taking the
first line item whatever its product gave the account a plan named after the fee.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from m3sh.config import load_config

REPO = Path(__file__).resolve().parents[3]


def test_a_fee_line_item_never_chooses_the_plan(fresh_sandbox: Any) -> None:
    from m3sh.crm.salesforce import extract_salesforce
    from m3sh.hooks.salesforce import SalesforceSync, soql_literal
    from m3sh.sandbox import seed

    cfg = load_config(REPO / "include" / "m3sh.yaml")
    source = next(s for s in cfg.crm.sources if s.type == "salesforce")
    sf = SalesforceSync(conn_id=source.conn_id)
    customer = next(c for c in seed.demo_company().customers if c.salesforce_id and c.plan_code in cfg.crm.plan_map)
    other_plan = next(p for p in cfg.crm.plan_map if p != customer.plan_code and p.endswith(customer.currency.lower()))

    fee = sf.create_record("Product2", {"Name": "Onboarding fee", "ProductCode": "onboarding_fee", "IsActive": True})
    soql = "SELECT Id FROM Product2 WHERE ProductCode = " + soql_literal(other_plan)  # noqa: S608 - escaped literal
    sub = next(r["Id"] for r in sf.query(soql, "Product2"))
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    opp = sf.create_record("Opportunity", {
        "Name": "Upsell", "AccountId": customer.salesforce_id, "StageName": "Closed Won",
        "CloseDate": (dt.date.today() + dt.timedelta(days=1)).isoformat(), "CurrencyIsoCode": customer.currency})
    # the fee first: it has the lower id, so "the first line item" would be the fee
    for product in (fee, sub):
        sf.create_record("OpportunityLineItem", {"OpportunityId": opp, "Product2Id": product, "Quantity": 1.0,
                                                 "UnitPrice": 100.0, "CurrencyIsoCode": customer.currency})
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)

    records = {r.crm_id: r for r in extract_salesforce(source, start, end, sf=sf, plan_map=cfg.crm.plan_map)}
    assert records[customer.salesforce_id].plan_code == other_plan

    # with nothing mapped the first product code is kept, so the sync report can name it
    unmapped = extract_salesforce(source, start, end, sf=sf, plan_map={})
    assert next(r for r in unmapped if r.crm_id == customer.salesforce_id).plan_code == "onboarding_fee"


def test_one_query_per_object_however_many_accounts_changed(fresh_sandbox: Any) -> None:
    """250 changed accounts (more than one ``Id IN`` chunk) cost one query per object, and an
    account edited after the Account query (its ``SystemModstamp`` past the window) still gets its
    contract, PO and plan: the children's filter on the account's stamp has no upper bound."""
    from m3sh.crm.salesforce import IN_CHUNK, extract_salesforce
    from m3sh.hooks.salesforce import SalesforceSync, soql_literal
    from m3sh.sandbox import seed

    cfg = load_config(REPO / "include" / "m3sh.yaml")
    source = next(s for s in cfg.crm.sources if s.type == "salesforce")
    plans = sorted(p for p in cfg.crm.plan_map if p.endswith("_usd"))
    sf = SalesforceSync(conn_id=source.conn_id)
    soql = f"SELECT Id, ProductCode FROM Product2 WHERE ProductCode IN ({', '.join(map(soql_literal, plans))})"  # noqa: S608
    product = {r["ProductCode"]: r["Id"] for r in sf.query(soql, "Product2")}
    n = IN_CHUNK + 50

    def insert(sobject: str, records: list[dict[str, Any]]) -> list[str]:
        ids: list[str] = fresh_sandbox.admin("salesforce", "insert", "POST", sobject=sobject, records=records)["ids"]
        return ids

    start = dt.datetime.now(dt.UTC)
    accounts = insert("Account", [{"Name": f"Bulk {i}", "CurrencyIsoCode": "USD"} for i in range(n)])
    contracts = insert("Contract", [{"AccountId": a, "StartDate": "2026-01-01", "ContractTerm": 12, "Status": "Draft",
                         "CurrencyIsoCode": "USD"} for a in accounts])
    opps = insert("Opportunity", [{"Name": f"Bulk {i}", "AccountId": a, "StageName": "Closed Won",
                                   "CloseDate": "2026-01-01", "PO_Number__c": f"PO-{i}", "CurrencyIsoCode": "USD"}
                                  for i, a in enumerate(accounts)])
    insert("OpportunityLineItem", [{"OpportunityId": o, "Product2Id": product[plans[i % len(plans)]], "Quantity": 1.0,
                                    "UnitPrice": 10.0, "CurrencyIsoCode": "USD"} for i, o in enumerate(opps)])
    # an existing customer whose contract alone changes comes in through the contract
    customer = next(c for c in seed.demo_company().customers if c.salesforce_id)
    contract = next(sf.query(f"SELECT Id FROM Contract WHERE AccountId = {soql_literal(customer.salesforce_id)}",  # noqa: S608
                             "Contract"))["Id"]
    sf.update_record("Contract", contract, {"Description": "renewal terms agreed"})
    end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    late = accounts[7]
    # its contract and opportunity last changed before the window: only the account brings them in
    for sobject, rid in (("Contract", contracts[7]), ("Opportunity", opps[7])):
        fresh_sandbox.admin("salesforce", "set_fields", "POST", sobject=sobject, id=rid,
                            fields={"SystemModstamp": (start - dt.timedelta(days=1)).isoformat()})

    class EditedMidRun(SalesforceSync):
        def query_modified(self, sobject: str, *args: Any, **kwargs: Any) -> Any:
            rows = list(super().query_modified(sobject, *args, **kwargs))
            if sobject == "Account":  # someone edits an account between the Account and the Contract query
                fresh_sandbox.admin("salesforce", "set_fields", "POST", sobject="Account", id=late,
                                    fields={"SystemModstamp": (end + dt.timedelta(hours=1)).isoformat()})
            return iter(rows)

    fresh_sandbox.admin("salesforce", "stats", "DELETE")
    got = {r.crm_id: r for r in extract_salesforce(source, start, end, sf=EditedMidRun(conn_id=source.conn_id),
                                                    plan_map=cfg.crm.plan_map)}
    assert set(accounts) | {customer.salesforce_id} <= set(got)
    for i, acc in enumerate(accounts):
        assert (got[acc].po_number, got[acc].plan_code, got[acc].contract_start) == (
            f"PO-{i}", plans[i % len(plans)], dt.date(2026, 1, 1)), acc
    assert got[customer.salesforce_id].contract_id == contract
    queries = fresh_sandbox.requests_to("salesforce", "GET", "/query/")
    # Account, Contract, Opportunity, line items; then the contract-touched customer's Account,
    # Contract, Opportunity and its won opportunity's line items by id
    assert queries == 8, fresh_sandbox.stats("salesforce")["counts"]
