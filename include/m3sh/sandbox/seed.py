"""The demo company every emulator seeds from, so Salesforce, HubSpot, m3ter, NetSuite and S3 agree.

"Northwind Cloud" sells an API platform through two CRMs: Salesforce for the enterprise/EU side and
HubSpot for self-serve. About 300 customers, 30 of them present in both CRMs (same domain and
billing email) to exercise de-duplication. Everything is derived from a fixed random seed and the
*anchor date* (the first day of the previous month, so "a month of usage" and "contracts ending
within 30 days" stay true whenever the sandbox starts).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass, field
from functools import lru_cache

# The org id must look like a UUID for the SDK; fixed so connections are stable.
DEMO_ORG_ID = "9f1c2b3a-5d4e-4f60-8a71-0000000000de"

PLANS: dict[str, dict[str, object]] = {
    # plan code: product, currency, standing charge per month, unit price per api call
    "starter_usd": {"name": "Starter (USD)", "currency": "USD", "standing_charge": 49.0, "unit_price": 0.002},
    "growth_usd": {"name": "Growth (USD)", "currency": "USD", "standing_charge": 499.0, "unit_price": 0.0015},
    "enterprise_usd": {"name": "Enterprise (USD)", "currency": "USD", "standing_charge": 2500.0, "unit_price": 0.001},
    "prepaid_usd": {"name": "Prepaid credits (USD)", "currency": "USD", "standing_charge": 0.0, "unit_price": 0.002},
    "starter_eur": {"name": "Starter (EUR)", "currency": "EUR", "standing_charge": 45.0, "unit_price": 0.0018},
    "growth_eur": {"name": "Growth (EUR)", "currency": "EUR", "standing_charge": 459.0, "unit_price": 0.0014},
    "enterprise_eur": {"name": "Enterprise (EUR)", "currency": "EUR", "standing_charge": 2300.0, "unit_price": 0.0009},
}
PRODUCT_CODE = "api_platform"
METERS = {"api_calls": "API calls", "storage_gb": "Storage GB"}
USAGE_BUCKET = "m3sh-usage"
ARCHIVE_BUCKET = "m3sh-archive"
NETSUITE_ACCOUNTS = {"default": "1234567", "eu": "1234567_EU"}
# NetSuite item internal ids per plan family, used by the ERP mapping
NETSUITE_ITEMS = {"api_platform": "501", "standing_charge": "502", "usage": "503"}

_WORDS_A = ["Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Tyrell", "Cyberdyne", "Soylent",
            "Hooli", "Vandelay", "Wonka", "Gringotts", "Oscorp", "Monarch", "Aperture", "Black Mesa",
            "Nakatomi", "Pied Piper", "Dunder", "Sterling", "Bluth", "Prestige", "Massive", "Virtucon"]
_WORDS_B = ["Labs", "Systems", "Analytics", "Logistics", "Health", "Media", "Robotics", "Energy",
            "Foods", "Finance", "Software", "Networks", "Retail"]
_EU_COUNTRIES = ["DE", "FR", "NL", "IE", "ES", "IT"]


@dataclass(frozen=True)
class DemoCustomer:
    key: str                      # stable slug; also the m3ter account code
    name: str
    domain: str
    email: str
    currency: str                 # USD or EUR
    country: str
    crm: str                      # "salesforce" | "hubspot" | "both"
    plan_code: str
    contract_start: dt.date
    contract_end: dt.date
    salesforce_id: str | None
    hubspot_id: str | None
    owner: str
    po_number: str | None
    prepaid_balance: float | None  # initial credit for prepaid customers
    in_m3ter: bool                 # already exists in m3ter before the first CRM sync
    modified_at: dt.datetime       # CRM last-modified time (drives incremental syncs)


@dataclass
class DemoCompany:
    anchor: dt.date
    customers: list[DemoCustomer] = field(default_factory=list)

    def by_crm(self, crm: str) -> list[DemoCustomer]:
        return [c for c in self.customers if c.crm in (crm, "both")]


def anchor_date(today: dt.date | None = None) -> dt.date:
    """First day of the previous month: a full month of usage lies between it and today."""
    today = today or dt.datetime.now(dt.UTC).date()
    first = today.replace(day=1)
    return (first - dt.timedelta(days=1)).replace(day=1)


def _sf_id(prefix: str, n: int) -> str:
    """18-char Salesforce-style id (prefix 001 = Account); deterministic."""
    h = hashlib.sha1(f"{prefix}{n}".encode()).hexdigest().upper()[:12]  # noqa: S324 - not security
    return f"{prefix}5g00000{h}"[:18]


@lru_cache(maxsize=4)
def demo_company(n_customers: int = 300, today: dt.date | None = None) -> DemoCompany:
    rng = random.Random(20261125)
    anchor = anchor_date(today)
    now = dt.datetime.combine(today or dt.datetime.now(dt.UTC).date(), dt.time(0), dt.UTC)
    company = DemoCompany(anchor=anchor)
    used: set[str] = set()
    for i in range(n_customers):
        a, b = rng.choice(_WORDS_A), rng.choice(_WORDS_B)
        base = f"{a}-{b}".lower().replace(" ", "-")
        key = base if base not in used else f"{base}-{i}"
        used.add(key)
        eu = rng.random() < 0.3
        currency = "EUR" if eu else "USD"
        country = rng.choice(_EU_COUNTRIES) if eu else "US"
        r = rng.random()
        crm = "both" if r < 0.1 else ("salesforce" if r < 0.55 else "hubspot")
        prepaid = (not eu) and rng.random() < 0.1
        tier = rng.choices(["starter", "growth", "enterprise"], weights=[5, 3, 1])[0]
        plan_code = "prepaid_usd" if prepaid else f"{tier}_{currency.lower()}"
        start = anchor - dt.timedelta(days=rng.randint(30, 700))
        # ~8% end within 30 days of today, a few already ended, the rest run for a year or more
        roll = rng.random()
        today_d = now.date()
        if roll < 0.08:
            end = today_d + dt.timedelta(days=rng.randint(3, 29))
        elif roll < 0.1:
            end = today_d - dt.timedelta(days=rng.randint(1, 10))
        else:
            end = today_d + dt.timedelta(days=rng.randint(60, 500))
        domain = f"{key}.example"  # reserved TLD; the m3ter code is the domain name without it
        company.customers.append(
            DemoCustomer(
                key=key,
                name=f"{a} {b}" if key == base else f"{a} {b} {i}",
                domain=domain,
                email=f"billing@{domain}",
                currency=currency,
                country=country,
                crm=crm,
                plan_code=plan_code,
                contract_start=start,
                contract_end=end,
                salesforce_id=_sf_id("001", i) if crm in ("salesforce", "both") else None,
                hubspot_id=str(9_000_000_000 + i) if crm in ("hubspot", "both") else None,
                owner=rng.choice(["Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra"]),
                po_number=f"PO-{rng.randint(10000, 99999)}" if rng.random() < 0.6 else None,
                prepaid_balance=float(rng.choice([500, 1000, 2500])) if prepaid else None,
                in_m3ter=prepaid,
                modified_at=now - dt.timedelta(hours=rng.randint(1, 24 * 20)),
            )
        )
    return company
