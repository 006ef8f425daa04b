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
