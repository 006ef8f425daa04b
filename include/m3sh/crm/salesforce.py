"""Extract Salesforce accounts changed in a window, with their contract and subscribed product.

The contract's start and end date come from the account's latest Contract, its PO number from the
latest closed-won Opportunity, through the source's ``contract_fields`` (default ``StartDate``,
``EndDate``, ``PO_Number__c``).

Incremental on ``SystemModstamp`` for Accounts *and* Contracts/Opportunities, so a contract edited
without touching its account still re-syncs that account.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

from m3sh.config import SF_FIELD_NAME, CrmSource
from m3sh.exceptions import ExternalApiError
from m3sh.hooks.salesforce import SalesforceSync, soql_datetime, soql_literal
from m3sh.mapping.crm import contract_values, to_crm_account
from m3sh.models.records import CrmAccount

log = logging.getLogger(__name__)
IN_CHUNK = 200  # keeps SOQL under the 100,000-character limit with 18-char ids


def _chunks(ids: list[str], n: int = IN_CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(ids), n):
        yield ids[i:i + n]


def _in(ids: list[str]) -> str:
    # Every value goes through soql_literal (quoted and escaped), so the SOQL below is injection-safe.
    return "(" + ", ".join(soql_literal(i) for i in ids) + ")"


def _stamp_in(rec: Mapping[str, Any], start: dt.datetime, end: dt.datetime) -> bool:
    stamp = rec.get("SystemModstamp")
    return bool(stamp) and start <= dt.datetime.fromisoformat(str(stamp)) < end


def _plans(sf: SalesforceSync, opps: Mapping[str, Mapping[str, Any]], via_child: list[str], since: str,
           plan_map: Mapping[str, str]) -> dict[str, str]:
    """The plan code of each chosen opportunity, from its line items (see :func:`extract_salesforce`)."""
    chosen = {o["Id"] for o in opps.values()}
    items = "SELECT Id, OpportunityId, ProductCode FROM OpportunityLineItem WHERE"
    if len(chosen) <= IN_CHUNK:
        queries = [f"{items} OpportunityId IN {_in(sorted(chosen))} ORDER BY Id"] if chosen else []
    else:  # the won opportunities' items of every changed account at once, then those touched via a child
        queries = [f"{items} Opportunity.StageName = 'Closed Won' AND Opportunity.{since} ORDER BY Id"]
        queries += [f"{items} OpportunityId IN {_in(chunk)} ORDER BY Id" for chunk in _chunks(sorted(via_child))]
    codes_by_opp: dict[str, list[str]] = {}
    seen: set[str] = set()
    for soql in queries:
        for li in sf.query(soql, "OpportunityLineItem"):
            if li["OpportunityId"] in chosen and li.get("ProductCode") and li["Id"] not in seen:
                seen.add(li["Id"])
                codes_by_opp.setdefault(li["OpportunityId"], []).append(str(li["ProductCode"]))
    return {opp_id: next((c for c in codes if c in plan_map), codes[0]) for opp_id, codes in codes_by_opp.items()}


def extract_salesforce(source: CrmSource, start: dt.datetime, end: dt.datetime,
                       sf: SalesforceSync | None = None, plan_map: Mapping[str, str] | None = None) -> list[CrmAccount]:
    """Accounts changed in ``[start, end)`` themselves or through a contract or opportunity.

    ``plan_map`` is ``crm.plan_map``: of an opportunity's line items, the first (by id) whose
    ProductCode it maps chooses the plan, so a set-up fee or add-on line never does; with none
    mapped, the first ProductCode is kept so the sync report names the unmapped product.

    One query per object, whatever the number of accounts: a Contract or Opportunity is read when
    it changed in the window *or* its account did (a child-to-parent filter on
    ``Account.SystemModstamp``), so the changed children and every changed account's latest
    contract and won opportunity come back together. That filter has no upper bound on purpose:
    ``SystemModstamp`` only grows, so an account edited after the Account query still has its
    children read. Only accounts touched through a child alone need ``Id IN`` lookups. (Child-to-parent
    paths in WHERE, several levels deep, are documented SOQL: "Using Relationship Queries" in the SOQL
    and SOSL Reference.)
    """
    sf = sf or SalesforceSync(conn_id=source.conn_id)
    cf = source.contract_field_map()
    # Field names go into the SOQL below as they are: `config validate` checks them, and so does this
    # (a CrmSource need not come from a validated file).
    bad = sorted(n for n in cf.values() if not re.fullmatch(SF_FIELD_NAME, n))
    if bad:
        raise ValueError(f"salesforce {source.name}: contract_fields {bad} are not Salesforce field API names")
    fields = sorted({"Id", *source.account_fields.values(),
                     *([source.write_back_field] if source.write_back_field else [])})
    # query_modified's window, to the second, so the Python check below agrees with it
    lo, hi = (t.astimezone(dt.UTC).replace(microsecond=0) for t in (start, end))
    changed = f"(SystemModstamp >= {soql_datetime(lo)} AND SystemModstamp < {soql_datetime(hi)})"
    since = f"Account.SystemModstamp >= {soql_datetime(lo)}"
    contract_cols = ", ".join(sorted({"Id", "AccountId", "SystemModstamp", cf["start_date"], cf["end_date"]}))
    opp_cols = ", ".join(sorted({"Id", "AccountId", "CloseDate", "StageName", "SystemModstamp", cf["po_number"]}))
    contract_order = f"ORDER BY {cf['start_date']} DESC"
    won = "StageName = 'Closed Won'"

    accounts: dict[str, dict[str, Any]] = {r["Id"]: r for r in sf.query_modified("Account", fields, start, end)}
    contracts: dict[str, dict[str, Any]] = {}
    opps: dict[str, dict[str, Any]] = {}
    touched: set[str] = set()
    for c in sf.query(f"SELECT {contract_cols} FROM Contract WHERE {changed} OR {since} {contract_order}", "Contract"):
        if c.get("AccountId") in accounts:
            contracts.setdefault(c["AccountId"], c)  # the latest contract per account
        if c.get("AccountId") and _stamp_in(c, lo, hi):
            touched.add(c["AccountId"])
    for o in sf.query(f"SELECT {opp_cols} FROM Opportunity WHERE {changed} OR ({since} AND {won}) "
                      "ORDER BY CloseDate DESC", "Opportunity"):
        if o.get("AccountId") in accounts and o.get("StageName") == "Closed Won":
            opps.setdefault(o["AccountId"], o)
        if o.get("AccountId") and _stamp_in(o, lo, hi):
            touched.add(o["AccountId"])

    # Accounts touched only through a child: their record, latest contract and won opportunity by id.
    missing = sorted(touched - set(accounts))
    for chunk in _chunks(missing):
        for r in sf.query(f"SELECT {', '.join(fields)} FROM Account WHERE Id IN {_in(chunk)}", "Account"):
            accounts[r["Id"]] = r
        for c in sf.query(f"SELECT {contract_cols} FROM Contract WHERE AccountId IN {_in(chunk)} {contract_order}",
                          "Contract"):
            contracts.setdefault(c["AccountId"], c)
        for o in sf.query(f"SELECT {opp_cols} FROM Opportunity WHERE AccountId IN {_in(chunk)} AND {won} "
                          "ORDER BY CloseDate DESC", "Opportunity"):
            opps.setdefault(o["AccountId"], o)

    plan_by_opp = _plans(sf, opps, [opps[a]["Id"] for a in missing if a in opps], since, plan_map or {})
    out = []
    for acc_id, rec in accounts.items():
        contract = contracts.get(acc_id) or {}
        opp = opps.get(acc_id) or {}
        extra: dict[str, Any] = {
            "contract_id": contract.get("Id"),
            **contract_values(contract, source, fields=("start_date", "end_date"),
                              where=f"salesforce {source.name} Contract {contract.get('Id')}"),
            **contract_values(opp, source, fields=("po_number",),
                              where=f"salesforce {source.name} Opportunity {opp.get('Id')}"),
            "plan_code": plan_by_opp.get(opp.get("Id", "")),
        }
        out.append(to_crm_account(rec, source, crm_id=acc_id, crm_object="Account", extra=extra))
    log.info("salesforce %s: %d account(s) changed in %s..%s (%d via contracts/opportunities)",
             source.name, len(out), start, end, len(missing))
    return out


def write_back_salesforce(source: CrmSource, items: list[dict[str, str]], sf: SalesforceSync | None = None) -> int:
    if not source.write_back_field or not items:
        return 0
    sf = sf or SalesforceSync(conn_id=source.conn_id)
    for item in items:
        sf.update_record(item["crm_object"], item["crm_id"], {source.write_back_field: item["m3ter_id"]})
    return len(items)


def read_account_links(source: CrmSource, sf: SalesforceSync | None = None) -> dict[str, dict[str, Any]]:
    """Reconciliation's read-back of the org: every Account id -> ``{"m3ter_id", "currency"}`` (the
    source's write-back field and ``currency`` account field; None where the source maps none)."""
    sf = sf or SalesforceSync(conn_id=source.conn_id)
    cur_field = source.account_fields.get("currency")
    fields = ["Id"] + [f for f in (source.write_back_field, cur_field) if f]
    return {str(rec["Id"]): {"m3ter_id": rec.get(source.write_back_field) if source.write_back_field else None,
                             "currency": rec.get(cur_field) if cur_field else None}
            for rec in sf.query(f"SELECT {', '.join(fields)} FROM Account", sobject="Account")}


def _read_records(source: CrmSource, sobject: str, ids: list[str], cols: set[str],
                  sf: SalesforceSync | None) -> dict[str, tuple[dict[str, Any], str | None]]:
    bad = sorted(n for n in cols if not re.fullmatch(SF_FIELD_NAME, n))
    if bad:
        raise ValueError(f"salesforce {source.name}: {bad} are not Salesforce field API names")
    sf = sf or SalesforceSync(conn_id=source.conn_id)
    select = ", ".join(sorted({"Id", "SystemModstamp", *cols}))
    out: dict[str, tuple[dict[str, Any], str | None]] = {}
    for chunk in _chunks(sorted(ids)):
        for r in sf.query(f"SELECT {select} FROM {sobject} WHERE Id IN {_in(chunk)}", sobject):
            out[str(r["Id"])] = (r, r.get("SystemModstamp"))
    return out


def _update_records(source: CrmSource, sobject: str, updates: Mapping[str, Mapping[str, Any]],
                    sf: SalesforceSync | None) -> dict[str, str]:
    sf = sf or SalesforceSync(conn_id=source.conn_id)
    failed: dict[str, str] = {}
    for record_id, fields in updates.items():
        try:
            sf.update_record(sobject, record_id, fields)
        except ExternalApiError as exc:  # reported per record; the task fails after the others
            failed[record_id] = str(exc)
    return failed


def read_accounts_salesforce(source: CrmSource, ids: list[str], fields: list[str],
                             sf: SalesforceSync | None = None) -> dict[str, tuple[dict[str, Any], str | None]]:
    """Accounts by Id -> ``(their fields, SystemModstamp)`` for the m3ter -> CRM comparison."""
    return _read_records(source, "Account", ids, set(fields), sf)


def update_accounts_salesforce(source: CrmSource, updates: Mapping[str, Mapping[str, Any]],
                               sf: SalesforceSync | None = None) -> dict[str, str]:
    """PATCH each Account's changed fields (one request per Account: the REST API's record update;
    the sObject Collections API would batch 200, but the sandbox emulates record updates only).
    A failed record does not stop the others; returns ``{Account Id: error}`` of the failed."""
    return _update_records(source, "Account", updates, sf)


def read_contracts_salesforce(source: CrmSource, ids: list[str], fields: list[str],
                              sf: SalesforceSync | None = None) -> dict[str, tuple[dict[str, Any], str | None]]:
    """Contracts by Id -> ``(their fields, SystemModstamp)``; StartDate and ContractTerm are always
    read, since an EndDate is written through them (see :func:`m3sh.crm.outbound.salesforce_contract_update`)."""
    return _read_records(source, "Contract", ids, {"StartDate", "ContractTerm", *fields}, sf)


def update_contracts_salesforce(source: CrmSource, updates: Mapping[str, Mapping[str, Any]],
                                sf: SalesforceSync | None = None) -> dict[str, str]:
    """PATCH each Contract (one request each, as Accounts); returns ``{Contract Id: error}`` of the failed."""
    return _update_records(source, "Contract", updates, sf)
