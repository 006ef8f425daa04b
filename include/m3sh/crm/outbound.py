"""m3ter -> CRM: m3ter-owned account fields and the current plan onto each linked CRM record, with
fields changed on both sides since the last sync recorded as conflicts.

One run per CRM source (the ``to_crm_<source>`` step of ``m3sh_crm_sync``, after the CRM -> m3ter
step and the source's write-back):

1. m3ter is read whole (accounts, plans, account plans, external mappings: the same paged
   listings the CRM -> m3ter step makes). The source's records are the account-level external
   mappings attributed to it (:class:`m3sh.crm.links.SourceLinks`).
2. **Incremental by fingerprint.** m3ter's account search has no modification filter (the published
   spec's ``searchQuery`` allows ``name, code, currency, purchaseOrderNumber, parentAccountId, codes,
   id, createdBy, dtCreated, lastModifiedBy, ids``: no ``dtLastModified``) and neither has the
   account plan listing, so a hash of each linked record's m3ter values (its tracked fields and
   plan) is kept in S3 (``layout.crm_outbound_state``). Only records whose fingerprint changed, or
   that the CRM extract of this run staged (changed in the CRM in the window), are read from the
   CRM; ``full_resync`` reads all.
3. Per field, the CRM's current value is compared with m3ter's: nothing is written where they
   already agree (so a re-run writes nothing). ``m3ter_wins`` fields and the plan are written when
   they differ; ``fill_missing`` fields only where the CRM has no value; ``crm_wins`` never (that
   is the CRM -> m3ter direction).
4. **Conflicts.** The state also keeps, per record and field, the value each side held after the
   last sync. A field whose m3ter value *and* CRM value both moved from those, to different values,
   is a conflict: the ownership rule decides what is written, and the conflict (source, record,
   field, both values, both change times, decision) goes to ``layout.crm_conflicts`` and the run's
   counts. m3ter's value is the one it held *before* this run's CRM -> m3ter step (from that step's
   report): with ``crm_wins`` that step has already replaced it, and the conflict would be lost.

A dry run reads the same, writes nothing (no CRM write, no state, no conflicts file) and stores the
diff in the report (``layout.crm_outbound_report``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from m3sh import layout
from m3sh.config import CONTRACT_DATES, ContractDate, CrmSource, M3shConfig, Ownership
from m3sh.crm.links import SourceLinks
from m3sh.mapping.crm import M3TER_ACCOUNT_CUSTOM_FIELDS, M3TER_ACCOUNT_FIELDS, normalize_domain, normalize_email
from m3sh.storage import Storage

if TYPE_CHECKING:
    from m3sh.hooks.m3ter import M3terHook

log = logging.getLogger(__name__)
PLAN = "plan"  # the pseudo-field of the account's current plan (source.plan_field); m3ter always owns it
STATE_VERSION = 1

# contract date -> the m3ter contract field holding it
CONTRACT_DATE_KEYS: dict[ContractDate, str] = {"start_date": "startDate", "end_date": "endDate"}
CONTRACT_PREFIX = "contract:"  # state keys of CRM contract records (HubSpot deal and company ids may collide)
# canonical field -> (m3ter account field, custom field or None)
M3TER_PATH: dict[str, tuple[str, str | None]] = {
    **{canonical: (m3_field, None) for m3_field, canonical in M3TER_ACCOUNT_FIELDS.items()},
    **{canonical: ("customFields", custom) for custom, canonical in M3TER_ACCOUNT_CUSTOM_FIELDS.items()},
}


# ------------------------------------------------------------------------------------------ values
def norm(fld: str, value: Any) -> str | None:
    """The comparable form of a value: m3ter keeps domains and emails normalized (``acme.com``), the
    CRM as typed (``https://www.Acme.com``); both mean the same and must not cause a write."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if fld == "domain":
        return normalize_domain(value)
    if fld == "email":
        return normalize_email(value)
    if fld == "currency":
        return str(value).strip().upper()
    if fld in CONTRACT_DATE_KEYS:
        # m3ter may answer a date with a time (``2026-01-01T00:00:00Z``), Salesforce and HubSpot as
        # ``YYYY-MM-DD``: the day is what is compared and written.
        return str(value).strip()[:10]
    return str(value).strip()


def m3ter_value(account: Mapping[str, Any], fld: str) -> Any:
    top, custom = M3TER_PATH[fld]
    if custom is None:
        return account.get(top)
    return (account.get(top) or {}).get(custom)


def current_plan(account_plans: Iterable[Mapping[str, Any]], plan_codes: Mapping[str, str],
                 now: dt.datetime) -> str | None:
    """Code of the plan attached to the account at ``now`` (the latest started, if several products)."""
    def instant(v: str) -> dt.datetime:
        return dt.datetime.fromisoformat(v.replace("Z", "+00:00"))

    active = [ap for ap in account_plans
              if (not ap.get("startDate") or instant(ap["startDate"]) <= now)
              and (not ap.get("endDate") or now < instant(ap["endDate"]))]
    active.sort(key=lambda ap: str(ap.get("startDate") or ""), reverse=True)
    return next((plan_codes[ap["planId"]] for ap in active if ap.get("planId") in plan_codes), None)


def fingerprint(account_id: str, values: Mapping[str, Any]) -> str:
    body = json.dumps({"account": account_id, "values": {k: norm(k, v) for k, v in sorted(values.items())}},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


DECISIONS: dict[str, str] = {
    "m3ter_wins": "m3ter_wins: m3ter's value written to the CRM",
    "crm_wins": "crm_wins: the CRM's value kept (the CRM -> m3ter step writes it to m3ter)",
    "fill_missing": "fill_missing: both values kept (neither side is empty)",
}


@dataclass
class FieldDecision:
    write: Any = None  # the value to write to the CRM (None: no write)
    conflict: bool = False
    m3ter_changed: bool = False
    crm_changed: bool = False


def decide(fld: str, rule: Ownership, *, m3ter_before: Any, m3ter_now: Any, crm: Any,
           previous: Mapping[str, Any] | None) -> FieldDecision:
    """What to write to the CRM for one field, and whether it is a conflict.

    ``previous`` is ``{"m3ter": ..., "crm": ...}`` after the last sync (None: never synced, so no
    side can be said to have changed and nothing is a conflict). ``m3ter_before`` is m3ter's value
    before this run's CRM -> m3ter step, ``m3ter_now`` after it.
    """
    out = FieldDecision()
    if previous is not None:
        out.m3ter_changed = norm(fld, m3ter_before) != norm(fld, previous.get("m3ter"))
        out.crm_changed = norm(fld, crm) != norm(fld, previous.get("crm"))
        out.conflict = out.m3ter_changed and out.crm_changed and norm(fld, m3ter_before) != norm(fld, crm)
    want, have = norm(fld, m3ter_now), norm(fld, crm)
    # An empty m3ter value never clears the CRM: absence in m3ter is not a decision to erase.
    if want is not None and want != have and (rule == "m3ter_wins" or (rule == "fill_missing" and have is None)):
        out.write = m3ter_now
    return out


# --------------------------------------------------------------------------------------- contracts
def _date(value: Any) -> dt.date:
    return dt.date.fromisoformat(str(value).strip()[:10])


def _add_months(day: dt.date, months: int) -> dt.date:
    y, m = divmod(day.month - 1 + months, 12)
    year, month = day.year + y, m + 1
    last = (dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)).day
    return dt.date(year, month, min(day.day, last))


def salesforce_contract_end(start: dt.date, term: int) -> dt.date:
    """The EndDate Salesforce computes for a Contract: StartDate plus ContractTerm months, less a day.

    The object reference says only "Read-only. Calculated end date of the contract. This value is
    calculated by adding the ContractTerm to the StartDate"; the day less comes from Salesforce
    Help article 000384288 (StartDate March 1, 2025, ContractTerm 5 -> EndDate July 31, 2025). The
    clamp to a shorter month's last day (Jan 31 + 1 month -> Feb 28) is Apex ``Date.addMonths``'s
    and is not documented for EndDate: prose-backed assumption, shared by the sandbox.
    """
    return _add_months(start, term) - dt.timedelta(days=1)


def salesforce_contract_term(start: dt.date, end: dt.date) -> int | None:
    """The ContractTerm (months, >= 1) that makes Salesforce compute ``end`` from ``start``; None if
    no whole number of months does (e.g. an end date mid-month for a contract starting on the 1st)."""
    months = (end.year - start.year) * 12 + end.month - start.month
    return next((n for n in (months, months + 1) if n >= 1 and salesforce_contract_end(start, n) == end), None)


def salesforce_contract_update(current: Mapping[str, Any], writes: Mapping[str, Any]) -> dict[str, Any]:
    """The Contract fields to PATCH for ``writes`` (``{CRM field: date}``).

    ``EndDate`` is not updateable (the object reference: read-only, calculated from StartDate and
    ContractTerm), so an end date becomes the ContractTerm that yields it from the (new or current)
    StartDate. Raises ValueError naming the dates when no whole number of months does.
    """
    out: dict[str, Any] = {k: (_date(v).isoformat() if v is not None else None) for k, v in writes.items()}
    if "EndDate" not in out:
        return out
    end = _date(out.pop("EndDate"))
    start_raw = out.get("StartDate") or current.get("StartDate")
    if not start_raw:
        raise ValueError(f"m3ter's end date {end} cannot be written: the Contract has no StartDate, and "
                         "Salesforce computes EndDate from StartDate + ContractTerm")
    start = _date(start_raw)
    term = salesforce_contract_term(start, end)
    if term is None:
        raise ValueError(
            f"m3ter's end date {end} cannot be written: Salesforce computes Contract.EndDate as StartDate "
            f"({start}) plus ContractTerm months less one day and refuses EndDate itself; no whole number of "
            "months gives that date. Align the end date in m3ter, or map contract_fields.end_date to an "
            "updateable date field")
    out["ContractTerm"] = term
    return out


def linked_contracts(contracts: Iterable[Mapping[str, Any]], source_name: str) -> dict[str, dict[str, Any]]:
    """CRM contract record id -> the m3ter contract linked to it (``customFields.crm_contract`` =
    ``<source>:<id>``, as the CRM -> m3ter step writes it). A CRM start date change makes that step
    create a contract under a new code with the same link: the latest created is the live one."""
    out: dict[str, dict[str, Any]] = {}
    for c in contracts:
        src, _, crm_id = str((c.get("customFields") or {}).get("crm_contract") or "").partition(":")
        if src != source_name or not crm_id:
            continue
        prev = out.get(crm_id)
        if prev is None or (str(c.get("dtCreated") or ""), str(c.get("code") or "")) > (
                str(prev.get("dtCreated") or ""), str(prev.get("code") or "")):
            out[crm_id] = dict(c)
    return out


def in_window(stamp: Any, window: tuple[dt.datetime, dt.datetime] | None) -> bool:
    """Is an m3ter ``dtLastModified`` inside ``[start, end)``?"""
    if window is None or not stamp:
        return False
    at = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return window[0] <= (at if at.tzinfo else at.replace(tzinfo=dt.UTC)) < window[1]


# ------------------------------------------------------------------------------------------ report
@dataclass
class Conflict:
    source: str
    record: str
    crm_object: str
    account: str
    field: str
    crm_field: str
    m3ter_value: Any
    crm_value: Any
    previous: dict[str, Any]
    m3ter_changed_at: str | None
    crm_changed_at: str | None
    rule: str
    decision: str
    written: Any
    run_id: str


@dataclass
class OutboundReport:
    source: str
    run_id: str
    dry_run: bool
    linked: int = 0
    candidates: int = 0
    crm_writes: int = 0
    writes: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"linked": self.linked, "candidates": self.candidates, "records_to_write": len(self.writes),
                "fields_to_write": sum(len(w["fields"]) for w in self.writes), "crm_writes": self.crm_writes,
                "conflicts": len(self.conflicts), "errors": len(self.errors), "skipped": len(self.skipped)}

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "run_id": self.run_id, "dry_run": self.dry_run, "counts": self.counts(),
                "writes": self.writes, "conflicts": [asdict(c) for c in self.conflicts], "errors": self.errors,
                "skipped": self.skipped}


# -------------------------------------------------------------------------------------------- run
def _tracked(source: CrmSource) -> dict[str, str]:
    """Canonical field (or ``plan``) -> CRM field, for every field this direction looks at."""
    out: dict[str, str] = {k: v for k, v in source.account_fields.items() if k in M3TER_PATH}
    if source.plan_field:
        out[PLAN] = source.plan_field
    return out


def _m3ter_before(report: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Account code -> m3ter fields as they were before the CRM -> m3ter step changed them."""
    out: dict[str, dict[str, Any]] = {}
    for c in (report or {}).get("changes") or []:
        if c.get("entity") == "account" and c.get("action") == "update" and c.get("before"):
            out[str(c["code"])] = dict(c["before"])
    return out


def _contract_tracked(cfg: M3shConfig, source: CrmSource) -> dict[str, str]:
    """Contract date -> CRM field, for the dates m3ter owns (``ownership.contract_fields``)."""
    cf = source.contract_field_map()
    return {f: cf[f] for f in CONTRACT_DATES if cfg.crm.ownership.owner_of_contract(f) != "crm_wins"}


def _staged_ids(storage: Storage, staged: Mapping[str, Any] | None) -> tuple[set[str], set[str]]:
    """(record ids, contract record ids) the CRM extract of this run staged."""
    if not staged or not staged.get("key"):
        return set(), set()
    rows = list(storage.iter_jsonl(str(staged["key"])))
    return {str(r["crm_id"]) for r in rows}, {str(r["contract_id"]) for r in rows if r.get("contract_id")}


def _read_crm(source: CrmSource, ids: list[str], fields: list[str]) -> dict[str, tuple[dict[str, Any], str | None]]:
    if source.type == "salesforce":
        from m3sh.crm.salesforce import read_accounts_salesforce

        return read_accounts_salesforce(source, ids, fields)
    from m3sh.crm.hubspot import read_companies_hubspot

    return read_companies_hubspot(source, ids, fields)


def _write_crm(source: CrmSource, updates: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Write ``{record id: {CRM field: value}}``; returns ``{record id: error}`` of those that failed."""
    if source.type == "salesforce":
        from m3sh.crm.salesforce import update_accounts_salesforce

        return update_accounts_salesforce(source, updates)
    from m3sh.crm.hubspot import update_companies_hubspot

    return update_companies_hubspot(source, updates)


def _read_crm_contracts(source: CrmSource, ids: list[str],
                        fields: list[str]) -> dict[str, tuple[dict[str, Any], str | None]]:
    if source.type == "salesforce":
        from m3sh.crm.salesforce import read_contracts_salesforce

        return read_contracts_salesforce(source, ids, fields)
    from m3sh.crm.hubspot import read_deals_hubspot

    return read_deals_hubspot(source, ids, fields)


def _write_crm_contracts(source: CrmSource, updates: dict[str, dict[str, Any]],
                         current: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Write ``{contract record id: {CRM field: date}}``; returns ``{record id: error}`` of the failed."""
    if source.type == "salesforce":
        from m3sh.crm.salesforce import update_contracts_salesforce

        failed: dict[str, str] = {}
        patches: dict[str, dict[str, Any]] = {}
        for cid, fields in updates.items():
            try:
                patches[cid] = salesforce_contract_update(current.get(cid) or {}, fields)
            except ValueError as exc:
                failed[cid] = f"Contract {cid}: {exc}"
        return {**failed, **update_contracts_salesforce(source, patches)}
    from m3sh.crm.hubspot import update_deals_hubspot

    return update_deals_hubspot(source, updates)


@dataclass
class _M3terSide:
    """What m3ter holds for one source's linked records."""

    accounts: dict[str, dict[str, Any]]  # account id -> account
    linked: dict[str, str]  # CRM record id -> m3ter account id
    values: dict[str, dict[str, Any]]  # CRM record id -> tracked field -> m3ter's value now
    in_window: set[str]  # CRM record ids whose account or account plan m3ter modified in the backfill window


def _read_m3ter(m3ter: M3terHook, cfg: M3shConfig, source: CrmSource, tracked: Mapping[str, str],
                now: dt.datetime, *, window: tuple[dt.datetime, dt.datetime] | None = None) -> _M3terSide:
    accounts = {a["id"]: a for a in m3ter.list_accounts() if a.get("id")}
    plan_codes = {p["id"]: p["code"] for p in m3ter.list_plans() if p.get("id") and p.get("code")}
    account_plans: dict[str, list[dict[str, Any]]] = {}
    if PLAN in tracked:
        for ap in m3ter.list_account_plans(include_all=True):
            account_plans.setdefault(str(ap.get("accountId")), []).append(ap)
    links = SourceLinks(cfg.crm.sources)
    linked: dict[str, str] = {}
    for m in m3ter.list_external_mappings():
        if str(m.get("m3terEntity") or "").lower() != "account" or m.get("m3terId") not in accounts:
            continue
        for src, crm_id in links.account_links([m], enabled_only=False):
            if src.name == source.name:
                linked.setdefault(crm_id, str(m["m3terId"]))
    values: dict[str, dict[str, Any]] = {}
    for crm_id, acc_id in linked.items():
        vals = {f: m3ter_value(accounts[acc_id], f) for f in tracked if f != PLAN}
        if PLAN in tracked:
            vals[PLAN] = current_plan(account_plans.get(acc_id, []), plan_codes, now)
        values[crm_id] = vals
    touched = {acc_id for acc_id, a in accounts.items() if in_window(a.get("dtLastModified"), window)}
    touched |= {acc_id for acc_id, aps in account_plans.items()
                if any(in_window(ap.get("dtLastModified"), window) for ap in aps)}
    return _M3terSide(accounts, linked, values, {crm_id for crm_id, acc in linked.items() if acc in touched})


def _compare(cfg: M3shConfig, source: CrmSource, tracked: Mapping[str, str], *, crm_id: str,
             account: Mapping[str, Any], m3ter_now: Mapping[str, Any], m3ter_before: Mapping[str, Any],
             crm_vals: Mapping[str, Any], crm_modified: str | None, previous: Mapping[str, Any],
             run_id: str) -> tuple[dict[str, Any], dict[str, Any], list[Conflict]]:
    """One record: ``(CRM field -> value to write, the record's new per-field state, conflicts)``."""
    code = str(account.get("code") or account["id"])
    writes: dict[str, Any] = {}
    entry: dict[str, Any] = {}
    conflicts: list[Conflict] = []
    for fld, crm_field in tracked.items():
        now_val = m3ter_now[fld]
        rule: Ownership = "m3ter_wins"
        before_val = now_val
        if fld != PLAN:
            rule = cfg.crm.ownership.owner_of(fld)  # type: ignore[arg-type]
            if M3TER_PATH[fld][0] in m3ter_before:
                before_val = m3ter_value(m3ter_before, fld)
        _decide_into((writes, entry, conflicts), fld, crm_field, rule, m3ter_before=before_val, m3ter_now=now_val,
                     crm_val=crm_vals.get(crm_field), prev=previous.get(fld), about={
                         "source": source.name, "record": crm_id, "account": code,
                         "crm_object": "Account" if source.type == "salesforce" else "companies",
                         "m3ter_changed_at": account.get("dtLastModified"), "crm_changed_at": crm_modified,
                         "run_id": run_id})
    return writes, entry, conflicts


def _decide_into(out: tuple[dict[str, Any], dict[str, Any], list[Conflict]], fld: str, crm_field: str, rule: Ownership,
                 *, m3ter_before: Any, m3ter_now: Any, crm_val: Any, prev: Mapping[str, Any] | None,
                 about: Mapping[str, Any]) -> None:
    """One field's decision added to a record's ``(writes, fingerprint entry, conflicts)`` (``about``:
    the record's part of a :class:`Conflict`)."""
    writes, entry, conflicts = out
    d = decide(fld, rule, m3ter_before=m3ter_before, m3ter_now=m3ter_now, crm=crm_val, previous=prev)
    if d.write is not None:
        writes[crm_field] = d.write
    if d.conflict and prev is not None:
        conflicts.append(Conflict(**about, field=fld, crm_field=crm_field, m3ter_value=m3ter_before,
                                  crm_value=crm_val, previous=dict(prev), rule=rule, decision=DECISIONS[rule],
                                  written=d.write))
    entry[fld] = {"m3ter": m3ter_now, "crm": d.write if d.write is not None else crm_val}


def _compare_contract(cfg: M3shConfig, source: CrmSource, tracked: Mapping[str, str], *, crm_id: str,
                      contract: Mapping[str, Any], account_code: str, crm_vals: Mapping[str, Any],
                      crm_modified: str | None, previous: Mapping[str, Any],
                      run_id: str) -> tuple[dict[str, Any], dict[str, Any], list[Conflict]]:
    """One CRM contract record (Salesforce Contract / HubSpot deal), as :func:`_compare` an account.
    The CRM -> m3ter step never changes an m3ter-owned date, so m3ter's value before it is its value now."""
    writes: dict[str, Any] = {}
    entry: dict[str, Any] = {}
    conflicts: list[Conflict] = []
    for fld, crm_field in tracked.items():
        rule = cfg.crm.ownership.owner_of_contract(fld)  # type: ignore[arg-type]
        now_val = norm(fld, contract.get(CONTRACT_DATE_KEYS[fld]))  # type: ignore[index]
        _decide_into((writes, entry, conflicts), fld, crm_field, rule, m3ter_before=now_val, m3ter_now=now_val,
                     crm_val=crm_vals.get(crm_field), prev=previous.get(fld), about={
                         "source": source.name, "record": crm_id, "account": account_code,
                         "crm_object": "Contract" if source.type == "salesforce" else "deals",
                         "m3ter_changed_at": contract.get("dtLastModified"), "crm_changed_at": crm_modified,
                         "run_id": run_id})
    return writes, entry, conflicts


@dataclass
class _Plan:
    """What one run writes: per-record CRM updates and the state entries that follow them."""

    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)  # record id -> {CRM field: value}
    contracts: dict[str, dict[str, Any]] = field(default_factory=dict)  # contract record id -> {CRM field: value}
    contract_current: dict[str, dict[str, Any]] = field(default_factory=dict)  # contract record id -> CRM values
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # state key -> entry


def to_crm(m3ter: M3terHook, cfg: M3shConfig, source: CrmSource, storage: Storage, *, dag_id: str, run_id: str,
           dry_run: bool, full_resync: bool = False, staged: Mapping[str, Any] | None = None,
           synced: Mapping[str, Any] | None = None, now: dt.datetime | None = None,
           window: tuple[dt.datetime, dt.datetime] | None = None) -> dict[str, Any]:
    """One m3ter -> CRM run for ``source`` (see the module docstring).

    ``staged`` is this source's extract ref (its records changed in the CRM), ``synced`` the CRM ->
    m3ter step's result (its report holds m3ter's values before that step). ``window`` makes it a
    backfill of that interval: exactly the records whose m3ter account, account plan or contract has
    its ``dtLastModified`` in ``[start, end)`` are compared, whatever their fingerprints, and no
    other. Returns ``{"source", "report_key", "conflicts_key", "counts", "errors"}``.
    """
    now = now or dt.datetime.now(dt.UTC)
    tracked = _tracked(source)
    report = OutboundReport(source=source.name, run_id=run_id, dry_run=dry_run)
    state_key = layout.crm_outbound_state(storage, source.name)
    records: dict[str, Any] = dict((storage.get_json(state_key) or {}).get("records") or {})

    side = _read_m3ter(m3ter, cfg, source, tracked, now, window=window)
    report.linked = len(side.linked)
    prints = {crm_id: fingerprint(side.linked[crm_id], vals) for crm_id, vals in side.values.items()}
    changed_in_crm, contracts_changed_in_crm = _staged_ids(storage, staged)

    def wanted(key: str, print_: str, crm_changed: bool, m3ter_in_window: bool) -> bool:
        if window is not None:
            return m3ter_in_window
        return full_resync or crm_changed or (records.get(key) or {}).get("fingerprint") != print_

    candidates = sorted(crm_id for crm_id in side.linked
                        if wanted(crm_id, prints[crm_id], crm_id in changed_in_crm, crm_id in side.in_window))
    report.candidates = len(candidates)
    before_sync = _m3ter_before(storage.get_json(str(synced["report_key"]))
                                if synced and synced.get("report_key") else None)
    crm_current = _read_crm(source, candidates, sorted(set(tracked.values()))) if candidates else {}

    plan = _Plan()
    for crm_id in candidates:
        if crm_id not in crm_current:
            # The mapping points at a record the CRM no longer has (deleted or merged): report, skip.
            report.skipped.append({"record": crm_id, "detail": "linked in m3ter but not found in the CRM"})
            continue
        account = side.accounts[side.linked[crm_id]]
        crm_vals, crm_modified = crm_current[crm_id]
        writes, entry, conflicts = _compare(
            cfg, source, tracked, crm_id=crm_id, account=account, m3ter_now=side.values[crm_id],
            m3ter_before=before_sync.get(str(account.get("code") or account["id"]), {}), crm_vals=crm_vals,
            crm_modified=crm_modified, previous=(records.get(crm_id) or {}).get("fields") or {}, run_id=run_id)
        report.conflicts += conflicts
        if writes:
            report.writes.append({"record": crm_id, "account": account.get("code"), "fields": {
                f: {"before": crm_vals.get(f), "after": v} for f, v in writes.items()}})
            plan.accounts[crm_id] = writes
        plan.entries[crm_id] = {"account_id": side.linked[crm_id], "account": account.get("code"),
                                "fingerprint": prints[crm_id], "fields": entry}
    _plan_contracts(m3ter, cfg, source, report, plan, accounts=side.accounts, records=records,
                    changed_in_crm=contracts_changed_in_crm,
                    wanted=wanted, window=window, run_id=run_id)
    ckey = None if dry_run else _apply(source, storage, report, plan, records=records, state_key=state_key, now=now)
    rkey = layout.crm_outbound_report(storage, dag_id, run_id, source.name)
    storage.put_json(rkey, report.to_dict())
    _log(report, storage.uri(rkey))
    return {"source": source.name, "report_key": rkey, "conflicts_key": ckey, "counts": report.counts(),
            "errors": report.errors}


def _plan_contracts(m3ter: M3terHook, cfg: M3shConfig, source: CrmSource, report: OutboundReport, plan: _Plan, *,
                    accounts: Mapping[str, Mapping[str, Any]], records: Mapping[str, Any],
                    changed_in_crm: set[str], wanted: Any,
                    window: tuple[dt.datetime, dt.datetime] | None, run_id: str) -> None:
    """The m3ter-owned contract dates onto each linked Salesforce Contract / HubSpot deal (nothing to
    do, and no m3ter read, unless ``ownership.contract_fields`` gives m3ter a date)."""
    tracked = _contract_tracked(cfg, source)
    if not tracked:
        return
    linked = linked_contracts(m3ter.list_contracts(), source.name)
    codes = {a_id: str(a.get("code") or a_id) for a_id, a in accounts.items()}
    prints = {cid: fingerprint(str(c.get("id")), {f: c.get(CONTRACT_DATE_KEYS[f]) for f in tracked})  # type: ignore[index]
              for cid, c in linked.items()}
    candidates = sorted(cid for cid, c in linked.items()
                        if wanted(CONTRACT_PREFIX + cid, prints[cid], cid in changed_in_crm,
                                  in_window(c.get("dtLastModified"), window)))
    report.candidates += len(candidates)
    crm_current = _read_crm_contracts(source, candidates, sorted(set(tracked.values()))) if candidates else {}
    crm_object = "Contract" if source.type == "salesforce" else "deals"
    for cid in candidates:
        if cid not in crm_current:
            report.skipped.append({"record": cid, "detail": f"m3ter contract {linked[cid].get('code')} is linked "
                                                            f"to {crm_object} {cid}, which the CRM does not have"})
            continue
        contract = linked[cid]
        code = codes.get(str(contract.get("accountId")), str(contract.get("accountId")))
        crm_vals, crm_modified = crm_current[cid]
        key = CONTRACT_PREFIX + cid
        writes, entry, conflicts = _compare_contract(
            cfg, source, tracked, crm_id=cid, contract=contract, account_code=code, crm_vals=crm_vals,
            crm_modified=crm_modified, previous=(records.get(key) or {}).get("fields") or {}, run_id=run_id)
        report.conflicts += conflicts
        if writes:
            report.writes.append({"record": cid, "object": crm_object, "account": code,
                                  "contract": contract.get("code"), "fields": {
                                      f: {"before": crm_vals.get(f), "after": v} for f, v in writes.items()}})
            plan.contracts[cid] = writes
            plan.contract_current[cid] = dict(crm_vals)
        plan.entries[key] = {"contract_id": contract.get("id"), "contract": contract.get("code"), "account": code,
                             "fingerprint": prints[cid], "fields": entry}


def _apply(source: CrmSource, storage: Storage, report: OutboundReport, plan: _Plan, *, records: dict[str, Any],
           state_key: str, now: dt.datetime) -> str | None:
    """Write the CRM, then the conflicts and the state (a failed record keeps its old state, so
    the next run compares it again). Returns the conflicts key, if any."""
    failed = _write_crm(source, plan.accounts) if plan.accounts else {}
    failed_contracts = (_write_crm_contracts(source, plan.contracts, plan.contract_current)
                        if plan.contracts else {})
    report.crm_writes = len(plan.accounts) - len(failed) + len(plan.contracts) - len(failed_contracts)
    for key, crm_id, why in [*((k, k, w) for k, w in failed.items()),
                             *((CONTRACT_PREFIX + k, k, w) for k, w in failed_contracts.items())]:
        report.errors.append({"record": crm_id, "detail": why})
        plan.entries.pop(key, None)
    ckey = None
    if report.conflicts:
        ckey = layout.crm_conflicts(storage, source.name, report.run_id)
        storage.put_json(ckey, {"source": source.name, "run_id": report.run_id, "at": now.isoformat(),
                                "conflicts": [asdict(c) for c in report.conflicts]})
    records.update(plan.entries)
    storage.put_json(state_key, {"version": STATE_VERSION, "source": source.name, "run_id": report.run_id,
                                 "at": now.isoformat(), "records": records})
    return ckey


def _log(report: OutboundReport, uri: str) -> None:
    log.info("%s: m3ter -> CRM%s: %s; report %s", report.source,
             " (DRY RUN, nothing written)" if report.dry_run else "", report.counts(), uri)
    for w in report.writes[:50]:
        log.info("  %s %s (%s): %s", report.source, w["record"], w["account"], w["fields"])
    for c in report.conflicts:
        log.warning("  conflict %s %s field %s: m3ter %r (%s) vs CRM %r (%s); %s", c.source, c.record, c.field,
                    c.m3ter_value, c.m3ter_changed_at, c.crm_value, c.crm_changed_at, c.decision)


def failure_message(source: str, errors: Sequence[Mapping[str, str]]) -> str:
    return (f"{source}: {len(errors)} CRM record(s) not synced from m3ter: "
            + "; ".join(f"{e['record']}: {e['detail']}" for e in errors[:10]) + (" ..." if len(errors) > 10 else ""))
