"""CRM -> m3ter sync against the documented rate limits: ``python -m benchmarks.crm_sync [--accounts N]``.

Starts m3ter, HubSpot, Salesforce and moto with limits on (demo seed), then seeds N Salesforce
accounts (each with a contract, a closed-won opportunity and a product line) and N HubSpot
companies (each with a closed-won deal); every 10th company shares its domain with a Salesforce
account, so de-duplication has work to do. It then runs the real code path of ``m3sh_crm_sync``
directly (no Airflow): ``extract_salesforce``, ``extract_hubspot``, ``dedupe``, ``CrmToM3ter`` and
both write-backs, over the window that contains the seeded changes.

Requests are counted per API from the emulators' stats, per phase. Each rate-limited API pool
(m3ter Config API 50/s; HubSpot 100 per 10 s and search 5/s) gives a floor of requests / limit
seconds; the *binding* pool is the one with the largest floor. ``achieved_rps`` is that pool's
requests (accepted ones: m3ter requests the SDK retried after a 429 are taken off) over the
seconds of the phases that use it, and ``fraction_of_limit`` its share of the limit. A second run
over the same window must write nothing: ``writes_on_rerun`` counts write requests to all three
systems. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from benchmarks._common import admin, clear_stats, emit, sandbox, sized, stats

SYSTEMS = ("m3ter", "hubspot", "salesforce")
CHUNK = 1000
OVERLAP_EVERY = 10
# Documented limits of the pools m3sh's sync uses (shared/api-notes): requests per second.
LIMITS = {
    "m3ter_config": 50.0,  # Config API, per organization
    "hubspot": 10.0,  # private app: 100 requests per rolling 10 s (search excluded)
    "hubspot_search": 5.0,  # CRM search: its own 5 requests/s
}
def is_write(key: str) -> bool:
    """Whether a stats key (``"METHOD /path"``) is a write: POSTs that only read don't count."""
    from m3sh.sandbox.common import is_data_write

    method, _, path = key.partition(" ")
    return " " in key and is_data_write(method, path)


def pools(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    """Requests per rate-limited pool (plus unlimited Salesforce) from per-emulator stats."""
    def total(c: dict[str, int]) -> int:
        return sum(v for k, v in c.items() if " " in k)

    hs = counts.get("hubspot", {})
    search = sum(v for k, v in hs.items() if k.startswith("POST ") and k.rstrip("/").endswith("/search"))
    m3 = counts.get("m3ter", {})
    return {
        "m3ter_config": sum(v for k, v in m3.items() if " /organizations/" in k
                            and not k.startswith("POST /organizations/{id}/measurements")),
        "hubspot": total(hs) - search,
        "hubspot_search": search,
        "salesforce": total(counts.get("salesforce", {})),
    }


class RetryCounter(logging.Handler):
    """Counts the m3ter SDK's "Retrying request" log lines: one per rejected (429) response here,
    since no faults are injected. The emulator's stats count every request, accepted or not."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Retrying request"):
            self.count += 1

    def install(self) -> RetryCounter:
        sdk = logging.getLogger("m3ter._base_client")
        sdk.setLevel(logging.INFO)
        sdk.propagate = False
        sdk.addHandler(self)
        return self


def writes(counts: dict[str, dict[str, int]]) -> dict[str, int]:
    return {name: sum(v for k, v in c.items() if " " in k and is_write(k)) for name, c in counts.items()}


# ------------------------------------------------------------------------------------- seeding
def seed_salesforce(box: Any, n: int, today: dt.date) -> None:
    from m3sh.sandbox.salesforce.seed import seed_id

    products = {code: seed_id("01t", code) for code in ("starter_usd", "growth_usd", "enterprise_usd")}
    plans = list(products)
    start = today - dt.timedelta(days=30)

    def insert(sobject: str, records: list[dict[str, Any]]) -> list[str]:
        ids: list[str] = []
        for i in range(0, len(records), CHUNK):
            ids += admin(box, "salesforce", "insert", body={"sobject": sobject, "records": records[i:i + CHUNK]})["ids"]
        return ids

    accounts = insert("Account", [{
        "Name": f"SF Bench {i}", "Website": f"sf{i}.bench.example", "Billing_Email__c": f"ap@sf{i}.bench.example",
        "CurrencyIsoCode": "USD", "BillingCountry": "US", "Owner_Name__c": "Bench Owner", "Type": "Customer",
    } for i in range(n)])
    contracts = insert("Contract", [{
        "AccountId": acc, "Name": f"SF Bench {i} subscription", "StartDate": start.isoformat(),
        "ContractTerm": 12, "Status": "Draft", "CurrencyIsoCode": "USD",  # EndDate: computed from the term
    } for i, acc in enumerate(accounts)])
    opps = insert("Opportunity", [{
        "Name": f"SF Bench {i} - new", "AccountId": acc, "ContractId": contracts[i], "StageName": "Closed Won",
        "CloseDate": start.isoformat(), "Amount": 1200.0, "PO_Number__c": f"PO-{i}", "CurrencyIsoCode": "USD",
    } for i, acc in enumerate(accounts)])
    insert("OpportunityLineItem", [{
        "OpportunityId": opp, "Product2Id": products[plans[i % len(plans)]], "Quantity": 1.0, "UnitPrice": 1200.0,
        "ListPrice": 1200.0, "ServiceDate": start.isoformat(), "CurrencyIsoCode": "USD",
    } for i, opp in enumerate(opps)])


def seed_hubspot(box: Any, n: int, today: dt.date, since: dt.datetime) -> None:
    start, end = today - dt.timedelta(days=30), today + dt.timedelta(days=335)
    now = dt.datetime.now(dt.UTC)
    window = {"modified_from": since.isoformat().replace("+00:00", "Z"),
              "modified_to": now.isoformat().replace("+00:00", "Z")}
    # Every OVERLAP_EVERY-th company is a Salesforce customer too (same domain): one m3ter account.
    companies = admin(box, "hubspot", "bulk_create", body={
        "object_type": "companies", "count": n, **window,
        "properties": {"name": "HS Bench {i}", "domain": "hs{i}.bench.example",
                       "billing_email": "ap@hs{i}.bench.example", "billing_currency": "USD", "country": "US"}})
    deals = admin(box, "hubspot", "bulk_create", body={
        "object_type": "deals", "count": n, **window,
        "properties": {"dealname": "HS Bench deal {i}", "dealstage": "closedwon", "pipeline": "default",
                       "contract_start": start.isoformat(), "contract_end": end.isoformat(),
                       "plan_code": "growth_usd", "po_number": "HS-PO-{i}"}})
    company_ids = _id_range(companies, n)
    deal_ids = _id_range(deals, n)
    # Overlapping companies get a Salesforce account's domain (set after creation: {i} differs).
    url = box.endpoints.url("hubspot")
    import requests

    from m3sh.sandbox import credentials as cred

    headers = {"Authorization": f"Bearer {cred.HUBSPOT_TOKEN}"}
    overlap = [{"id": cid, "properties": {"domain": f"sf{i}.bench.example"}}
               for i, cid in enumerate(company_ids) if i % OVERLAP_EVERY == 0]
    for i in range(0, len(overlap), 100):
        r = requests.post(f"{url}/crm/v3/objects/companies/batch/update", json={"inputs": overlap[i:i + 100]},
                          headers=headers, timeout=120)
        r.raise_for_status()
    pairs = [{"from": {"id": cid}, "to": {"id": did}} for cid, did in zip(company_ids, deal_ids, strict=True)]
    for i in range(0, len(pairs), 1000):
        r = requests.post(f"{url}/crm/v4/associations/companies/deals/batch/associate/default",
                          json={"inputs": pairs[i:i + 1000]}, headers=headers, timeout=120)
        r.raise_for_status()


def _id_range(created: dict[str, Any], n: int) -> list[str]:
    first, last = int(created["first_id"]), int(created["last_id"])
    if last - first + 1 != n:
        raise RuntimeError(f"HubSpot bulk_create ids are not contiguous: {created}")
    return [str(i) for i in range(first, last + 1)]


# ---------------------------------------------------------------------------------------- sync
class Phases:
    """Times named phases and collects each emulator's request counts per phase."""

    def __init__(self, box: Any) -> None:
        self.box = box
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, dict[str, dict[str, int]]] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        for s in SYSTEMS:
            clear_stats(self.box, s)
        t0 = time.perf_counter()
        out = fn()
        self.seconds[name] = time.perf_counter() - t0
        self.counts[name] = {s: stats(self.box, s) for s in SYSTEMS}
        print(f"  {name}: {self.seconds[name]:.1f}s, requests {pools(self.counts[name])}", flush=True)
        return out


def sync_once(box: Any, start: dt.datetime, end: dt.datetime) -> tuple[Phases, dict[str, Any]]:
    """One pass of the m3sh_crm_sync code path over [start, end), phase by phase."""
    from m3sh.config import get_config
    from m3sh.crm.hubspot import extract_hubspot, write_back_hubspot
    from m3sh.crm.salesforce import extract_salesforce, write_back_salesforce
    from m3sh.crm.sync import CrmToM3ter, M3terIndex
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.mapping.crm import dedupe

    cfg = get_config()
    sf = next(s for s in cfg.crm.sources if s.type == "salesforce")
    hs = next(s for s in cfg.crm.sources if s.type == "hubspot")
    ph = Phases(box)
    records = ph.run("extract_salesforce", lambda: extract_salesforce(sf, start, end, plan_map=cfg.crm.plan_map))
    records += ph.run("extract_hubspot", lambda: extract_hubspot(hs, start, end, plan_map=cfg.crm.plan_map))

    def to_m3ter() -> Any:
        hook = M3terHook(cfg.m3ter.conn_id)
        index = M3terIndex(hook, sources=cfg.crm.sources)
        customers = dedupe(records, list(cfg.crm.match_keys), cfg.m3ter.account_code_from,
                           existing_codes=index.match_codes())
        return customers, CrmToM3ter(hook, cfg, index).apply(customers)

    customers, report = ph.run("m3ter", to_m3ter)
    wb = report.write_backs
    ph.run("write_back_salesforce", lambda: write_back_salesforce(sf, [w for w in wb if w["source"] == sf.name]))
    ph.run("write_back_hubspot", lambda: write_back_hubspot(hs, [w for w in wb if w["source"] == hs.name]))
    errors = [c for c in report.changes if c.action == "error"]
    for c in errors[:5]:
        print(f"  error: {c.entity} {c.code}: {c.detail}", flush=True)
    return ph, {"records": len(records), "customers": len(customers), "counts": report.counts(),
                "errors": len(errors), "write_backs": len(wb)}


def run(n: int) -> dict[str, Any]:
    today = dt.datetime.now(dt.UTC).date()
    with sandbox(["m3ter", "hubspot", "salesforce", "moto"], limits=True) as box:
        # Salesforce's daily allowance is per org size; a 10,000-account org is an Enterprise org.
        admin(box, "salesforce", "daily_limit", body={"max": 5_000_000, "used": 0})
        since = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
        for s in ("hubspot", "salesforce"):  # seeding is set-up, not the measured sync
            admin(box, s, "limits", body={"enabled": False})
        t = time.perf_counter()
        seed_salesforce(box, n, today)
        seed_hubspot(box, n, today, since)
        print(f"seeded {n} Salesforce accounts and {n} HubSpot companies in {time.perf_counter() - t:.1f}s",
              flush=True)
        for s in ("hubspot", "salesforce"):
            admin(box, s, "limits", body={"enabled": True})
        end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)

        print("sync:", flush=True)
        retries = RetryCounter().install()
        t0 = time.perf_counter()
        first, summary = sync_once(box, since, end)
        seconds = time.perf_counter() - t0
        rejected = retries.count
        print("re-run:", flush=True)
        second, rerun_summary = sync_once(box, since, end + dt.timedelta(minutes=1))

    by_pool: dict[str, int] = {}
    pool_seconds: dict[str, float] = {}
    for phase, counts in first.counts.items():
        for pool, n_req in pools(counts).items():
            by_pool[pool] = by_pool.get(pool, 0) + n_req
            if n_req:
                pool_seconds[pool] = pool_seconds.get(pool, 0.0) + first.seconds[phase]
    floors = {p: by_pool.get(p, 0) / rate for p, rate in LIMITS.items()}
    binding = max(floors, key=lambda p: floors[p])
    # Only accepted requests count against a limit: take the m3ter requests the SDK had to retry off.
    accepted = by_pool[binding] - (rejected if binding == "m3ter_config" else 0)
    achieved = accepted / pool_seconds[binding] if pool_seconds.get(binding) else 0.0
    rerun_writes = {s: 0 for s in SYSTEMS}
    for counts in second.counts.values():
        for s, w in writes(counts).items():
            rerun_writes[s] += w
    first_writes = {s: 0 for s in SYSTEMS}
    for counts in first.counts.values():
        for s, w in writes(counts).items():
            first_writes[s] += w
    return {
        "benchmark": "crm_sync",
        "accounts": n,
        "records": summary["records"],
        "customers": summary["customers"],
        "seconds": round(seconds, 2),
        "phase_seconds": {k: round(v, 2) for k, v in first.seconds.items()},
        "requests_by_pool": by_pool,
        "floor_seconds_by_pool": {k: round(v, 2) for k, v in floors.items()},
        "bound_seconds": round(sum(floors.values()), 2),
        "binding_api": binding,
        "binding_limit_rps": LIMITS[binding],
        "achieved_rps": round(achieved, 2),
        "m3ter_retried_requests": rejected,
        "fraction_of_limit": round(achieved / LIMITS[binding], 3),
        "m3ter_writes": first_writes["m3ter"],
        "crm_writes": first_writes["salesforce"] + first_writes["hubspot"],
        "sync_errors": summary["errors"],
        "write_backs": summary["write_backs"],
        "rerun_seconds": round(sum(second.seconds.values()), 2),
        "writes_on_rerun": sum(rerun_writes.values()),
        "writes_on_rerun_by_system": rerun_writes,
        "rerun_changes": {k: v for k, v in rerun_summary["counts"].items() if k != "customers"},
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--accounts", type=int, default=sized(10_000, 500), help="accounts per CRM")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("m3sh").setLevel(logging.WARNING)
    emit(run(args.accounts))


if __name__ == "__main__":
    main()
