"""Demo seed: the HubSpot side of "Northwind Cloud" (customers whose CRM is ``hubspot`` or ``both``).

Per customer: a company (id = ``DemoCustomer.hubspot_id``), a billing contact, one closed-won deal
and one line item that references the product whose ``hs_sku`` is the plan code; associations
deal<->company, line_item<->deal, contact<->company and deal<->contact. Custom properties used by
m3sh exist from the start; ``m3ter_account_id`` is empty until the CRM sync writes it back.

The line item's ``hs_sku`` is what the CRM sync maps to the m3ter plan (a key of ``crm.plan_map``
in ``include/m3sh.yaml``); the deal's ``plan_code`` property carries the same code and is only the
fallback for deals without a mapped line item, so the demo's plans do not depend on it.

Custom properties (all ``hubspotDefined: false``, group ``m3sh``):

* companies: ``billing_email``, ``billing_currency`` (ISO code), ``m3ter_account_code`` (the
  customer's stable key), ``m3ter_account_id`` (unique, so usable as ``idProperty``)
* deals: ``contract_start``, ``contract_end`` (date), ``po_number``, ``plan_code``
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from m3sh.sandbox.hubspot.schema import iso_ms, property_definition
from m3sh.sandbox.hubspot.store import PortalState
from m3sh.sandbox.seed import PLANS, demo_company

OWNERS = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra"]
OWNER_IDS = {name: str(71_000_001 + i) for i, name in enumerate(OWNERS)}
PRODUCT_ID_BASE = 5_000_000_000
CONTACT_ID_BASE = 4_000_000_000
LINE_ITEM_ID_BASE = 6_000_000_000
DEAL_ID_BASE = 7_000_000_000
COMPANY_ID_BASE = 9_000_000_000
CUSTOM_GROUP = "m3sh"

# object type -> [(name, type, label, hasUniqueValue)]
CUSTOM_PROPERTIES: dict[str, list[tuple[str, str, str, bool]]] = {
    "companies": [
        ("billing_email", "string", "Billing email", False),
        ("billing_currency", "string", "Billing currency", False),
        ("m3ter_account_code", "string", "m3ter account code", False),
        ("m3ter_account_id", "string", "m3ter account id", True),
        ("m3ter_plan", "string", "m3ter plan", False),
    ],
    "deals": [
        ("contract_start", "date", "Contract start", False),
        ("contract_end", "date", "Contract end", False),
        ("po_number", "string", "PO number", False),
        ("plan_code", "string", "Plan code", False),
    ],
}


def product_id(plan_code: str) -> str:
    return str(PRODUCT_ID_BASE + list(PLANS).index(plan_code) + 1)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), dt.UTC)


def owners() -> list[dict[str, Any]]:
    """``/crm/v3/owners`` entries, so ``hubspot_owner_id`` resolves to a person."""
    created = iso_ms(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    out = []
    for name, oid in OWNER_IDS.items():
        first, last = name.split(" ", 1)
        out.append({"id": oid, "email": f"{first.lower()}@northwind.example", "firstName": first,
                    "lastName": last, "userId": int(oid) - 71_000_000, "createdAt": created,
                    "updatedAt": created, "archived": False, "type": "PERSON"})
    return out


def add_custom_properties(state: PortalState) -> None:
    for object_type, props in CUSTOM_PROPERTIES.items():
        for name, type_, label, unique in props:
            state.properties[object_type][name] = property_definition(
                name, type_, label, group_name=CUSTOM_GROUP, has_unique_value=unique, hubspot_defined=False
            )


def seed_demo(state: PortalState) -> None:
    add_custom_properties(state)
    state.owners = owners()
    epoch = _midnight(demo_company().anchor) - dt.timedelta(days=800)
    for code, plan in PLANS.items():
        state.create("products", {
            "name": str(plan["name"]), "hs_sku": code, "price": str(plan["standing_charge"]),
            "description": f"{plan['name']}: {plan['unit_price']} {plan['currency']} per API call",
            "recurringbillingfrequency": "monthly", "hs_recurring_billing_period": "P12M",
        }, when=epoch, record_id=product_id(code))
    for c in demo_company().by_crm("hubspot"):
        assert c.hubspot_id is not None
        i = int(c.hubspot_id) - COMPANY_ID_BASE
        plan = PLANS[c.plan_code]
        created = min(_midnight(c.contract_start) - dt.timedelta(days=14), c.modified_at)
        owner = OWNER_IDS[c.owner]
        lastmod = iso_ms(c.modified_at)
        company = state.create("companies", {
            "name": c.name, "domain": c.domain, "website": f"https://{c.domain}", "country": c.country,
            "billing_email": c.email, "billing_currency": c.currency, "m3ter_account_code": c.key,
            "hubspot_owner_id": owner, "hs_lastmodifieddate": lastmod,
        }, allow_read_only=True, when=created, record_id=c.hubspot_id)
        contact = state.create("contacts", {
            "firstname": "Billing", "lastname": c.name, "email": c.email, "company": c.name,
            "hubspot_owner_id": owner, "lastmodifieddate": lastmod,
        }, allow_read_only=True, when=created, record_id=str(CONTACT_ID_BASE + i))
        deal_props = {
            "dealname": f"{c.name} - {plan['name']}",
            "amount": f"{float(str(plan['standing_charge'])) * 12:.2f}",
            "closedate": iso_ms(_midnight(c.contract_start)), "pipeline": "default",
            "dealstage": "closedwon", "dealtype": "newbusiness", "deal_currency_code": c.currency,
            "contract_start": c.contract_start.isoformat(), "contract_end": c.contract_end.isoformat(),
            "plan_code": c.plan_code, "hubspot_owner_id": owner, "hs_lastmodifieddate": lastmod,
        }
        if c.po_number:
            deal_props["po_number"] = c.po_number
        deal = state.create("deals", deal_props, allow_read_only=True, when=created,
                            record_id=str(DEAL_ID_BASE + i))
        item = state.create("line_items", {
            "name": str(plan["name"]), "hs_product_id": product_id(c.plan_code), "hs_sku": c.plan_code,
            "quantity": "1", "price": str(plan["standing_charge"]), "recurringbillingfrequency": "monthly",
            "hs_recurring_billing_period": "P12M",
            "hs_recurring_billing_start_date": c.contract_start.isoformat(), "hs_lastmodifieddate": lastmod,
        }, allow_read_only=True, when=created, record_id=str(LINE_ITEM_ID_BASE + i))
        state.associate("deals", deal.id, "companies", company.id,
                        [("HUBSPOT_DEFINED", 341), ("HUBSPOT_DEFINED", 5)])
        state.associate("line_items", item.id, "deals", deal.id)
        state.associate("contacts", contact.id, "companies", company.id,
                        [("HUBSPOT_DEFINED", 279), ("HUBSPOT_DEFINED", 1)])
        state.associate("deals", deal.id, "contacts", contact.id)
