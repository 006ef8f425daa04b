"""Bill enrichment: m3ter account + custom fields, the CRM's owner / PO / billing address, ERP items.

:func:`enrich_bill` is pure (bill + account + CRM facts -> :class:`EnrichedBill`) and decides what
is missing; :class:`Enricher` fetches the facts in bulk (one m3ter read per account, one SOQL per
200 Salesforce accounts, HubSpot batch reads) and caches them for the run.

Where the CRM link comes from, in order: the account's m3ter external mappings (written by
``m3sh_crm_sync``; the best-priority enabled source's record, see :mod:`m3sh.crm.links`), then the
``crm_source`` + ``crm_id`` account custom fields. Each CRM source (each org or portal) has its own
reader on its own connection.
PO number precedence: the bill's own PO, the m3ter account's, then the CRM's latest won deal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from m3sh.config import CrmSource, InvoicingConfig, M3shConfig
from m3sh.crm.links import SourceLinks
from m3sh.invoicing.models import BillLine, CrmInfo, EnrichedBill, EnrichmentError

log = logging.getLogger(__name__)

SOQL_IN_CHUNK = 200
KNOWN_ENRICHMENT = {"subsidiary", "tax_code", "department", "owner", "po_number", "crm_id", "billing_address"}


def _text(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def bill_lines(bill: dict[str, Any]) -> list[BillLine]:
    lines = sorted(bill.get("lineItems") or [], key=lambda li: li.get("sequenceNumber") or 0)
    return [
        BillLine(
            line_type=str(li.get("lineItemType") or "UNKNOWN"),
            product_code=_text(li.get("productCode")),
            description=str(li.get("description") or li.get("lineItemType") or ""),
            quantity=float(li.get("quantity") or 0.0),
            unit_price=float(li.get("averageUnitPrice") or 0.0),
            amount=float(li.get("subtotal") or 0.0),
            service_start=_text(li.get("servicePeriodStartDate")),
            service_end=_text(li.get("servicePeriodEndDate")),
        )
        for li in lines
    ]


def enrich_bill(bill: dict[str, Any], account: dict[str, Any], crm: CrmInfo,
                cfg: InvoicingConfig) -> EnrichedBill:
    """The enriched bill, or :class:`EnrichmentError` naming every missing required field."""
    custom = dict(account.get("customFields") or {})
    bill_id = str(bill["id"])
    code = str(account.get("code") or bill.get("accountCode") or bill.get("accountId"))
    currency = str(bill.get("currency") or account.get("currency") or "")
    subsidiary = _text(custom.get("subsidiary")) or cfg.subsidiary_by_currency.get(currency)
    po = _text(bill.get("purchaseOrderNumber")) or _text(account.get("purchaseOrderNumber")) or crm.po_number
    crm = crm.model_copy(update={"po_number": po,
                                 "owner": crm.owner or _text(custom.get("crm_owner"))})
    lines = bill_lines(bill)
    if not currency:
        raise EnrichmentError(bill_id, code, "the bill has no currency")
    if not lines:
        raise EnrichmentError(bill_id, code, "the bill has no line items")
    enriched = EnrichedBill(
        bill_id=bill_id,
        m3ter_version=int(bill.get("version") or 1),
        status=str(bill.get("status") or ""),
        locked=bool(bill.get("locked")),
        invoice_number=_text(bill.get("sequentialInvoiceNumber")),
        account_id=str(account.get("id") or bill.get("accountId")),
        account_code=code,
        account_name=str(account.get("name") or code),
        email=_text(account.get("emailAddress")),
        currency=currency,
        bill_date=str(bill.get("billDate") or bill.get("endDate") or "")[:10],
        due_date=_text(bill.get("dueDate")),
        period_start=_text(bill.get("startDate")),
        period_end=_text(bill.get("endDate")),
        total=float(bill["billTotal"]) if bill.get("billTotal") is not None else sum(li.amount for li in lines),
        lines=lines,
        subsidiary=subsidiary,
        tax_code=_text(custom.get("tax_code")),
        department=_text(custom.get("department")),
        custom_fields=custom,
        crm=crm,
        item_keys=[li.product_code or li.line_type for li in lines],
    )
    missing = [name for name in cfg.required_enrichment if enriched.value(name) in (None, "")]
    if not enriched.bill_date:
        missing.insert(0, "bill_date")
    if missing:
        hints = {"subsidiary": "set the account's 'subsidiary' custom field in m3ter or add the currency to "
                               "invoicing.subsidiary_by_currency",
                 "tax_code": "set the account's 'tax_code' custom field in m3ter",
                 "crm_id": "link the account to a CRM record (run m3sh_crm_sync)"}
        reasons = [f"missing {m}" + (f" ({hints[m]})" if m in hints else "") for m in missing]
        raise EnrichmentError(bill_id, code, "; ".join(reasons))
    return enriched


# ------------------------------------------------------------------------------------ CRM facts
class CrmReader(Protocol):
    """Reads CRM facts for many CRM account ids at once: ``{crm_account_id: CrmInfo}``."""

    def read(self, ids: Sequence[str]) -> dict[str, CrmInfo]: ...


def crm_link(account: dict[str, Any], mappings: Iterable[dict[str, Any]],
             links: SourceLinks) -> tuple[str, str] | None:
    """``(crm source name, crm account id)`` of an m3ter account, or None when it has no CRM link.

    From the mappings: the record of the best-priority enabled source. Else from the account's
    ``crm_source`` (source names) + ``crm_id`` custom fields: the id's shape gives the CRM type
    (digits: HubSpot), and the first listed enabled source of that type is its source (the type
    itself when no source is configured, so a config without ``crm.sources`` still links).
    """
    found = links.account_links(mappings)
    if found:
        return found[0][0].name, found[0][1]
    custom = account.get("customFields") or {}
    crm_id = _text(custom.get("crm_id"))
    if not crm_id:
        return None
    listed = [s.strip() for s in str(custom.get("crm_source") or "").split(",") if s.strip()]
    types = {links.by_name[s].type if s in links.by_name else s for s in listed}
    if crm_id.isdigit():
        crm_type = "hubspot"
    elif "salesforce" in types or "both" in types or len(crm_id) in (15, 18):
        crm_type = "salesforce"
    else:
        return None
    candidates = [links.by_name[s] for s in listed if s in links.by_name] or list(links.by_name.values())
    source = next((s for s in sorted(candidates, key=lambda s: (s.priority, s.name))
                   if s.type == crm_type and s.enabled), None)
    if source is None and any(s.type == crm_type for s in links.by_name.values()):
        return None  # that CRM's sources are all disabled
    return (source.name if source else crm_type), crm_id


def _address(*parts: Any) -> str | None:
    text = ", ".join(str(p).strip() for p in parts if _text(p))
    return text or None


class SalesforceReader:
    """Account owner + billing address, and the PO of the latest won Opportunity."""

    def __init__(self, source: CrmSource) -> None:
        self.source = source

    def read(self, ids: Sequence[str]) -> dict[str, CrmInfo]:
        from m3sh.hooks.salesforce import SalesforceSync, soql_literal

        sf = SalesforceSync(conn_id=self.source.conn_id)
        owner_field = self.source.account_fields.get("owner", "Owner_Name__c")
        out: dict[str, CrmInfo] = {}
        unique = sorted(set(ids))
        for start in range(0, len(unique), SOQL_IN_CHUNK):
            chunk = unique[start:start + SOQL_IN_CHUNK]
            in_list = ", ".join(soql_literal(i) for i in chunk)
            accounts = sf.query(f"SELECT Id, {owner_field}, BillingStreet, BillingCity, BillingPostalCode, "  # noqa: S608
                                f"BillingCountry FROM Account WHERE Id IN ({in_list})", sobject="Account")
            opps: dict[str, dict[str, Any]] = {}
            for opp in sf.query("SELECT Id, AccountId, PO_Number__c, CloseDate FROM Opportunity "  # noqa: S608
                                f"WHERE AccountId IN ({in_list}) AND StageName = 'Closed Won' "
                                "ORDER BY CloseDate DESC", sobject="Opportunity"):
                opps.setdefault(str(opp["AccountId"])[:15], opp)
            for acc in accounts:
                opp = opps.get(str(acc["Id"])[:15]) or {}
                info = CrmInfo(source="salesforce", account_id=str(acc["Id"]), owner=_text(acc.get(owner_field)),
                               po_number=_text(opp.get("PO_Number__c")), opportunity_id=_text(opp.get("Id")),
                               billing_address=_address(acc.get("BillingStreet"), acc.get("BillingCity"),
                                                        acc.get("BillingPostalCode"), acc.get("BillingCountry")))
                out[str(acc["Id"])] = info
                out[str(acc["Id"])[:15]] = info
        return out


class HubSpotReader:
    """Company owner + address, and the PO of the latest closed-won deal."""

    def __init__(self, source: CrmSource) -> None:
        self.source = source

    def read(self, ids: Sequence[str]) -> dict[str, CrmInfo]:
        from m3sh.hooks.hubspot import HubSpotHook

        hook = HubSpotHook(self.source.conn_id)
        owner_field = self.source.account_fields.get("owner", "hubspot_owner_id")
        companies = hook.batch_read("companies", list(ids),
                                    [owner_field, "address", "city", "zip", "country"])
        deals_of = hook.get_associations("companies", list(companies), "deals") if companies else {}
        deal_ids = sorted({d for ds in deals_of.values() for d in ds})
        deals = hook.batch_read("deals", deal_ids, ["po_number", "dealstage", "closedate"]) if deal_ids else {}
        out: dict[str, CrmInfo] = {}
        for cid, company in companies.items():
            props = company.get("properties") or {}
            won = [deals[d] for d in deals_of.get(cid, []) if d in deals
                   and (deals[d].get("properties") or {}).get("dealstage") == "closedwon"]
            won.sort(key=lambda d: str((d.get("properties") or {}).get("closedate") or ""), reverse=True)
            best = won[0] if won else {}
            out[cid] = CrmInfo(source="hubspot", account_id=cid, owner=_text(props.get(owner_field)),
                               po_number=_text((best.get("properties") or {}).get("po_number")),
                               opportunity_id=_text(best.get("id")),
                               billing_address=_address(props.get("address"), props.get("city"),
                                                        props.get("zip"), props.get("country")))
        return out


class Enricher:
    """Fetches accounts, mappings and CRM facts for a batch of bills, then enriches each bill."""

    def __init__(self, cfg: M3shConfig, m3ter: Any,
                 readers: dict[str, CrmReader] | None = None) -> None:
        self.cfg = cfg
        self.m3ter = m3ter
        enabled = [s for s in cfg.crm.sources if s.enabled]
        self.links = SourceLinks(cfg.crm.sources)
        self.source_types = {s.name: s.type for s in enabled}
        if readers is None:  # one per source: each org or portal has its own connection and ids
            readers = {s.name: SalesforceReader(s) if s.type == "salesforce" else HubSpotReader(s) for s in enabled}
        self.readers = readers
        self.accounts: dict[str, dict[str, Any]] = {}

    def load_accounts(self, account_ids: Iterable[str]) -> None:
        for acc_id in sorted(set(account_ids) - set(self.accounts)):
            self.accounts[acc_id] = self.m3ter.get_account(acc_id)

    def enrich(self, bills: list[dict[str, Any]]) -> tuple[list[EnrichedBill], list[EnrichmentError]]:
        self.load_accounts(str(b["accountId"]) for b in bills)
        mappings: dict[str, list[dict[str, Any]]] = {}
        for m in self.m3ter.list_external_mappings():
            if str(m.get("m3terEntity", "")).lower() == "account":
                mappings.setdefault(str(m["m3terId"]), []).append(m)
        links: dict[str, tuple[str, str] | None] = {
            acc_id: crm_link(acc, mappings.get(acc_id, []), self.links)
            for acc_id, acc in self.accounts.items()
        }
        facts: dict[tuple[str, str], CrmInfo] = {}
        for source_name, reader in self.readers.items():
            ids = sorted({link[1] for link in links.values() if link and link[0] == source_name})
            if ids:
                for cid, info in reader.read(ids).items():
                    facts[(source_name, cid)] = info.model_copy(update={"source_name": source_name})
        done: list[EnrichedBill] = []
        errors: list[EnrichmentError] = []
        for bill in bills:
            acc_id = str(bill["accountId"])
            link = links.get(acc_id)
            crm = facts.get(link, CrmInfo(source=self.source_types.get(link[0], link[0]), source_name=link[0],
                                          account_id=None)) if link else CrmInfo()
            if link and crm.account_id is None:
                log.warning("bill %s: CRM %s record %s of account %s was not found", bill["id"], link[0], link[1],
                            acc_id)
            try:
                done.append(enrich_bill(bill, self.accounts[acc_id], crm, self.cfg.invoicing))
            except EnrichmentError as err:
                errors.append(err)
        return done, errors
