"""Demo org content derived from :func:`m3sh.sandbox.seed.demo_company`.

Ids of seeded records are derived from the customer key (not from a counter), so the same
customer has the same Contract/Opportunity ids after every reset and in every process; the
Account id is the customer's ``salesforce_id`` that the other systems' seeds also use.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from m3sh.sandbox.salesforce.schema import OBJECTS
from m3sh.sandbox.salesforce.soql import format_datetime
from m3sh.sandbox.salesforce.store import Store, id18
from m3sh.sandbox.seed import PLANS, DemoCustomer, demo_company


def seed_id(prefix: str, key: str) -> str:
    digest = hashlib.sha1(f"{prefix}:{key}".encode()).hexdigest().upper()  # noqa: S324 - not security
    return id18(f"{prefix}5g0{digest[:9]}")


def _midnight(d: dt.date) -> dt.datetime:
    return dt.datetime.combine(d, dt.time(0), dt.UTC)


def _months(start: dt.date, end: dt.date) -> int:
    return max(1, (end.year - start.year) * 12 + end.month - start.month + (1 if end.day >= start.day else 0))


def seed_demo(store: Store) -> None:
    company = demo_company()
    users: dict[str, str] = {}
    for c in company.customers:
        if c.owner in users:
            continue
        uid = seed_id("005", c.owner)
        users[c.owner] = uid
        first, _, last = c.owner.partition(" ")
        email = f"{first.lower()}.{last.lower()}@northwind.example"
        store.create(OBJECTS["User"], {
            "FirstName": first, "LastName": last, "Email": email, "Username": email, "IsActive": True,
        }, now=_midnight(company.anchor) - dt.timedelta(days=800), record_id=uid, trusted=True)

    products: dict[str, str] = {}
    product_stamp = _midnight(company.anchor) - dt.timedelta(days=900)
    for code, plan in PLANS.items():
        pid = seed_id("01t", code)
        products[code] = pid
        store.create(OBJECTS["Product2"], {
            "Name": plan["name"], "ProductCode": code, "Family": "API Platform", "IsActive": True,
            "CurrencyIsoCode": plan["currency"],
            "Description": f"{plan['name']}: standing charge {plan['standing_charge']}/month, "
                           f"{plan['unit_price']} per API call",
        }, now=product_stamp, record_id=pid, trusted=True)

    for c in company.by_crm("salesforce"):
        _seed_customer(store, c, users[c.owner], products[c.plan_code])


def _seed_customer(store: Store, c: DemoCustomer, owner_id: str, product_id: str) -> None:
    assert c.salesforce_id is not None
    created = min(_midnight(c.contract_start) - dt.timedelta(days=14), c.modified_at)
    plan = PLANS[c.plan_code]
    # Prepaid customers buy credit up front; everyone else a year of the standing charge.
    annual = c.prepaid_balance or round(float(plan["standing_charge"]) * 12, 2)  # type: ignore[arg-type]

    def put(sobject: str, record_id: str, values: dict[str, object]) -> None:
        rec = store.create(OBJECTS[sobject], values, now=created, record_id=record_id, trusted=True)
        rec["LastModifiedDate"] = rec["SystemModstamp"] = format_datetime(c.modified_at)

    put("Account", c.salesforce_id, {
        "Name": c.name, "AccountNumber": c.key, "Type": "Customer", "Website": c.domain,
        "Billing_Email__c": c.email, "BillingCountry": c.country, "CurrencyIsoCode": c.currency,
        "OwnerId": owner_id, "Owner_Name__c": c.owner,
    })
    put("Contact", seed_id("003", c.key), {
        "AccountId": c.salesforce_id, "FirstName": "Billing", "LastName": c.name, "Email": c.email,
        "Title": "Accounts Payable", "OwnerId": owner_id, "CurrencyIsoCode": c.currency,
    })
    contract_id = seed_id("800", c.key)
    put("Contract", contract_id, {
        "AccountId": c.salesforce_id, "Name": f"{c.name} subscription",
        "StartDate": c.contract_start.isoformat(),
        "EndDate": c.contract_end.isoformat(), "ContractTerm": _months(c.contract_start, c.contract_end),
        "Status": "Activated", "ActivatedDate": format_datetime(_midnight(c.contract_start)),
        "OwnerId": owner_id, "CurrencyIsoCode": c.currency,
    })
    opp_id = seed_id("006", c.key)
    put("Opportunity", opp_id, {
        "Name": f"{c.name} - {plan['name']}", "AccountId": c.salesforce_id, "ContractId": contract_id,
        "StageName": "Closed Won", "CloseDate": c.contract_start.isoformat(), "Amount": annual,
        "Probability": 100.0, "Type": "New Business", "PO_Number__c": c.po_number, "OwnerId": owner_id,
        "CurrencyIsoCode": c.currency,
    })
    put("OpportunityLineItem", seed_id("00k", c.key), {
        "OpportunityId": opp_id, "Product2Id": product_id, "Quantity": 1.0, "UnitPrice": annual,
        "ListPrice": annual, "ServiceDate": c.contract_start.isoformat(), "CurrencyIsoCode": c.currency,
        "Description": f"{c.plan_code} annual subscription",
    })
