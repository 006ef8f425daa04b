"""Upsert de-duplicated CRM customers into m3ter: accounts, contracts, account plans, mappings.

The m3ter side is read once into an :class:`M3terIndex` (a few paged listings), then every write is
decided by comparing desired and current state, so a re-run with no upstream change writes
nothing and a dry run can report the exact diff without writing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from m3sh.config import CrmSource, CrmSyncConfig, M3shConfig
from m3sh.crm.links import SourceLinks
from m3sh.exceptions import ExternalApiError
from m3sh.hooks.m3ter import M3terHook, changed_fields
from m3sh.mapping.crm import contract_code, desired_account, normalize_domain, normalize_email
from m3sh.models.records import CrmAccount, Customer

log = logging.getLogger(__name__)
# Customers synced concurrently. Enough to keep m3ter's 50 requests/s busy at ~150 ms round trips;
# the hook's client-side pacing keeps the total under the limit whatever the thread count.
WRITE_THREADS = 8


@dataclass
class Change:
    entity: str
    code: str
    action: str  # create | update | conflict | error
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    detail: str | None = None


@dataclass
class SyncReport:
    dry_run: bool
    customers: int = 0
    changes: list[Change] = field(default_factory=list)
    write_backs: list[dict[str, str]] = field(default_factory=list)
    m3ter_writes: int = 0

    def add(self, change: Change) -> None:
        self.changes.append(change)
        if change.action in ("create", "update") and not self.dry_run:
            self.m3ter_writes += 1

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {"customers": self.customers, "m3ter_writes": self.m3ter_writes,
                               "write_backs": len(self.write_backs)}
        for c in self.changes:
            key = f"{c.entity}_{c.action}"
            out[key] = out.get(key, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "counts": self.counts(), "changes": [asdict(c) for c in self.changes],
                "write_backs": self.write_backs}


def _parse_dt(v: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None


def overlaps(ap: dict[str, Any], start: dt.datetime, end: dt.datetime | None) -> bool:
    """Does an account plan's [startDate, endDate) overlap [start, end)? (open ends are infinite)"""
    ap_start, ap_end = _parse_dt(ap.get("startDate")), _parse_dt(ap.get("endDate"))
    return (ap_end is None or ap_end > start) and (end is None or ap_start is None or ap_start < end)


class M3terIndex:
    """What m3ter already holds, loaded once per sync with paged list calls."""

    def __init__(self, hook: M3terHook, now: dt.datetime | None = None,
                 sources: Sequence[CrmSource] = ()) -> None:
        self.now = now or dt.datetime.now(dt.UTC)
        self.links = SourceLinks(sources)
        self.accounts = {a["code"]: a for a in hook.list_accounts() if a.get("code")}
        self.plans = {p["code"]: p for p in hook.list_plans() if p.get("code")}
        self.contracts = {c["code"]: c for c in hook.list_contracts() if c.get("code")}
        self.mappings = {(m["externalSystem"], m["externalTable"], m["externalId"]): m
                         for m in hook.list_external_mappings()}
        self.account_plans: dict[str, list[dict[str, Any]]] = {}
        for ap in hook.list_account_plans(include_all=True):
            self.account_plans.setdefault(ap["accountId"], []).append(ap)

    def match_codes(self) -> dict[str, str]:
        """Match key -> account code for accounts m3ter already has (identity owned by m3ter),
        including each CRM record already linked to an account (``crm:<source name>:<id>``, from
        mappings by source name or type-keyed ones attributed to a source)."""
        out: dict[str, str] = {}
        code_of = {a["id"]: code for code, a in self.accounts.items() if a.get("id")}
        for m in self.mappings.values():
            if str(m.get("m3terEntity") or "").lower() != "account" or m.get("m3terId") not in code_of:
                continue
            source = self.links.source_of(m)
            if source is not None:
                out.setdefault(f"crm:{source.name}:{m['externalId']}", code_of[m["m3terId"]])
        for code, a in self.accounts.items():
            out[f"m3ter:{a['id']}"] = code
            email = normalize_email(a.get("emailAddress"))
            if email:
                out.setdefault(f"email:{email}", code)
            domain = normalize_domain((a.get("customFields") or {}).get("crm_domain"))
            if domain:
                out.setdefault(f"domain:{domain}", code)
        return out


class CrmToM3ter:
    """Applies one batch of customers to m3ter; collects the report and the CRM write-backs."""

    def __init__(self, hook: M3terHook, cfg: M3shConfig, index: M3terIndex, dry_run: bool = False,
                 threads: int = WRITE_THREADS) -> None:
        self.hook = hook
        self.threads = threads
        self.cfg = cfg
        self.crm: CrmSyncConfig = cfg.crm
        self.index = index
        self.report = SyncReport(dry_run=dry_run)
        self.priority = {s.name: s.priority for s in cfg.crm.sources}

    # -- accounts -------------------------------------------------------------------------------
    def _authoritative(self, customer: Customer, current: dict[str, Any] | None) -> bool:
        """A change from a lower-priority CRM must not override a higher-priority CRM's values."""
        if current is None:
            return True
        listed = str((current.get("customFields") or {}).get("crm_source") or "").split(",")
        best_known = min((self.priority.get(s, 100) for s in listed if s), default=100)
        return min(r.priority for r in customer.records) <= best_known

    def sync_account(self, customer: Customer, out: SyncReport | None = None) -> dict[str, Any] | None:
        out = out if out is not None else self.report
        current = self.index.accounts.get(customer.code)
        ownership = self.crm.ownership
        if current is not None and not self._authoritative(customer, current):
            ownership = ownership.model_copy(update={"default": "fill_missing",
                                                     "fields": dict.fromkeys(ownership.fields, "fill_missing")})
        desired = desired_account(customer, current, ownership)
        if current is not None:
            srcs = set(str((current.get("customFields") or {}).get("crm_source") or "").split(",")) - {""}
            srcs |= {r.source for r in customer.records}
            desired.setdefault("customFields", {})["crm_source"] = ",".join(sorted(srcs))
        try:
            result = self.hook.upsert_account(customer.code, desired, existing=current, known_missing=True,
                                              dry_run=out.dry_run)
        except ExternalApiError as exc:
            out.add(Change("account", customer.code, "error", detail=str(exc)))
            log.error("account %s: %s", customer.code, exc)
            return None
        if result.action != "unchanged":
            before = {k: (current or {}).get(k) for k in result.changes} if current else None
            out.add(Change("account", customer.code, "create" if result.action == "created" else "update",
                                   before=before, after=result.changes))
        self.index.accounts[customer.code] = result.entity
        return result.entity

    # -- contracts and plans ----------------------------------------------------------------------
    def sync_contract(self, customer: Customer, account: dict[str, Any],
                      out: SyncReport | None = None) -> dict[str, Any] | None:
        out = out if out is not None else self.report
        rec = next((r for r in customer.records if r.contract_start and r.contract_end), None)
        if rec is None or not account.get("id"):
            return None
        assert rec.contract_start and rec.contract_end
        code = contract_code(customer.code, rec.contract_start)
        desired: dict[str, Any] = {
            "accountId": account["id"], "name": f"{customer.value('name')} {rec.contract_start:%Y-%m-%d}",
            "startDate": rec.contract_start.isoformat(), "endDate": rec.contract_end.isoformat(),
            "customFields": {"crm_contract": f"{rec.source}:{rec.contract_id or rec.crm_id}"},
        }
        po = customer.value("po_number")
        if po:
            desired["purchaseOrderNumber"] = po
        current = self.index.contracts.get(code)
        owners = self.crm.ownership
        if current is None and owners.owner_of_contract("start_date") != "crm_wins":
            # m3ter owns the start date, so a CRM start date that differs from it (the code carries
            # it) is the same contract, found by its link to the CRM record, not a new one.
            link = desired["customFields"]["crm_contract"]
            current = next((c for c in self.index.contracts.values() if c.get("accountId") == account["id"]
                            and (c.get("customFields") or {}).get("crm_contract") == link), None)
            code = str(current["code"]) if current is not None else code
        if current is not None:
            for fld, key in (("start_date", "startDate"), ("end_date", "endDate")):
                rule = owners.owner_of_contract(fld)  # type: ignore[arg-type]
                if rule == "m3ter_wins" or (rule == "fill_missing" and current.get(key)):
                    desired[key] = current.get(key)  # m3ter's date stays; to_crm writes it to the CRM
        try:
            result = self.hook.upsert_contract(code, desired, existing=current, known_missing=True,
                                              dry_run=out.dry_run)
        except ExternalApiError as exc:
            out.add(Change("contract", code, "error", detail=str(exc)))
            return None
        if result.action != "unchanged":
            out.add(Change("contract", code, "create" if result.action == "created" else "update",
                                   before={k: (current or {}).get(k) for k in result.changes} if current else None,
                                   after=result.changes))
        self.index.contracts[code] = result.entity
        return result.entity

    def sync_plan(self, customer: Customer, account: dict[str, Any], contract: dict[str, Any] | None,
                  out: SyncReport | None = None) -> None:
        out = out if out is not None else self.report
        crm_plan = next((r.plan_code for r in customer.records if r.plan_code), None)
        plan_code = self.crm.plan_map.get(crm_plan or "", None) or self.crm.default_plan
        if not plan_code or not account.get("id"):
            return
        plan = self.index.plans.get(plan_code)
        if plan is None:
            out.add(Change("account_plan", customer.code, "error",
                                   detail=f"plan {plan_code!r} (CRM product {crm_plan!r}) does not exist in m3ter"))
            return
        rec = next((r for r in customer.records if r.contract_start), None)
        start_d = rec.contract_start if rec and rec.contract_start else self.index.now.date()
        end_d = rec.contract_end if rec else None
        start = dt.datetime.combine(start_d, dt.time(0), dt.UTC)
        end = dt.datetime.combine(end_d, dt.time(0), dt.UTC) if end_d else None
        existing = [ap for ap in self.index.account_plans.get(account["id"], [])
                    if ap.get("productId") in (None, plan.get("productId")) and overlaps(ap, start, end)]
        if any(ap.get("planId") == plan["id"] for ap in existing):
            return
        if existing:
            # m3ter owns the plan history (a trigger may have switched it); report, never fight it.
            out.add(Change("account_plan", customer.code, "conflict",
                                   before={"planId": existing[0].get("planId")}, after={"plan": plan_code},
                                   detail="CRM product differs from the m3ter plan for this period; m3ter wins"))
            return
        body: dict[str, Any] = {"accountId": account["id"], "planId": plan["id"],
                                "startDate": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                "code": f"{customer.code}-{plan_code}-{start_d:%Y%m%d}"[:80]}
        if end is not None:
            body["endDate"] = end.strftime("%Y-%m-%dT%H:%M:%SZ")
        if contract and contract.get("id"):
            body["contractId"] = contract["id"]
        out.add(Change("account_plan", customer.code, "create", after=body))
        if not out.dry_run:
            try:
                created = self.hook.create_account_plan(body)
            except ExternalApiError as exc:
                out.changes[-1].action = "error"
                out.changes[-1].detail = str(exc)
                out.m3ter_writes -= 1
                return
            self.index.account_plans.setdefault(account["id"], []).append(created)

    # -- links ------------------------------------------------------------------------------------
    def sync_links(self, customer: Customer, account: dict[str, Any], out: SyncReport | None = None) -> None:
        out = out if out is not None else self.report
        account_id = account.get("id")
        if not account_id:
            return
        for rec in customer.records:
            # Mappings name the source (two orgs of one CRM are two systems); see m3sh.crm.links.
            key = (rec.source, rec.crm_object, rec.crm_id)
            mapping = self.index.mappings.get(key)
            legacy_key = (rec.source_type, rec.crm_object, rec.crm_id)
            detail = None
            if mapping is None and legacy_key != key and legacy_key in self.index.mappings:
                legacy = self.index.mappings[legacy_key]
                owner = self.index.links.source_of(legacy)
                if owner is not None and owner.name == rec.source:
                    # written by type before mappings named the source: rewrite it under the name
                    mapping, detail = legacy, f"migrated from the mapping keyed by CRM type {rec.source_type!r}"
            if mapping is None or mapping.get("m3terId") != account_id or detail:
                body = {"externalSystem": rec.source, "externalTable": rec.crm_object,
                        "externalId": rec.crm_id, "m3terEntity": "Account", "m3terId": account_id}
                out.add(Change("external_mapping", f"{rec.source}:{rec.crm_id}",
                               "create" if mapping is None else "update", after=body, detail=detail))
                if not out.dry_run:
                    if mapping is None:
                        self.index.mappings[key] = self.hook.create_external_mapping(body)
                    else:
                        self.index.mappings[key] = self.hook.update_external_mapping(mapping["id"],
                                                                    changed_fields(mapping, body), current=mapping)
                        if detail:
                            self.index.mappings.pop(legacy_key, None)
            if rec.m3ter_id != account_id:
                out.write_backs.append({"source": rec.source, "crm_object": rec.crm_object,
                                                "crm_id": rec.crm_id, "m3ter_id": account_id})

    def apply(self, customers: list[Customer]) -> SyncReport:
        """Sync every customer; up to ``threads`` customers at once, the report in input order.

        Customers are independent (own account, contract, plan and mappings), so their m3ter
        requests can overlap: with one request at a time a sync is bound by round-trip latency,
        not by m3ter's 50 requests/s Config API limit, which the hook's pacing then holds.
        """
        def one(customer: Customer) -> SyncReport:
            out = SyncReport(dry_run=self.report.dry_run)
            account = self.sync_account(customer, out)
            if account is not None:
                contract = self.sync_contract(customer, account, out)
                self.sync_plan(customer, account, contract, out)
                self.sync_links(customer, account, out)
            return out

        if self.threads <= 1 or len(customers) <= 1:
            results: Iterable[SyncReport] = map(one, customers)
            self._merge(results)
        else:
            with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="m3sh-crm") as pool:
                self._merge(pool.map(one, customers))
        return self.report

    def _merge(self, results: Iterable[SyncReport]) -> None:
        for out in results:
            self.report.customers += 1
            self.report.changes.extend(out.changes)
            self.report.write_backs.extend(out.write_backs)
            self.report.m3ter_writes += out.m3ter_writes

def filter_accounts(records: list[CrmAccount], accounts: list[str]) -> list[CrmAccount]:
    """Manual-run filter: keep records whose CRM id, domain or email is listed."""
    wanted = {a.lower() for a in accounts}
    return [r for r in records if {r.crm_id.lower(), (r.domain or ""), (r.email or "")} & wanted]
