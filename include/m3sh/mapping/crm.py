"""CRM record -> canonical :class:`CrmAccount` -> de-duplicated :class:`Customer` -> m3ter bodies.

Pure functions only: no I/O, so every rule (ownership, matching, codes) is unit tested on its own.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from m3sh.config import CrmSource, FieldOwnership
from m3sh.models.records import (
    CANONICAL_ACCOUNT_FIELDS,
    CANONICAL_CONTRACT_FIELDS,
    CanonicalAccountField,
    CanonicalContractField,
    CrmAccount,
    Customer,
)

# Where each canonical field lands on the m3ter account, and so which ownership rule decides it
# (``crm.ownership.fields`` is keyed by canonical field, as ``account_fields`` is).
M3TER_ACCOUNT_FIELDS: dict[str, CanonicalAccountField] = {
    "name": "name", "emailAddress": "email", "currency": "currency", "purchaseOrderNumber": "po_number"}
M3TER_ACCOUNT_CUSTOM_FIELDS: dict[str, CanonicalAccountField] = {
    "crm_domain": "domain", "crm_owner": "owner", "country": "country"}
# The CrmAccount attribute each canonical contract field fills.
CONTRACT_ATTRIBUTES: dict[CanonicalContractField, str] = {
    "start_date": "contract_start", "end_date": "contract_end", "po_number": "po_number"}
_CONTRACT_DATES: frozenset[CanonicalContractField] = frozenset({"start_date", "end_date"})
_CODE_OK = re.compile(r"[^a-z0-9_.-]+")


def normalize_domain(value: object) -> str | None:
    """``https://www.Acme.com/about`` -> ``acme.com``; None for empty values."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().lower()
    text = re.sub(r"^[a-z]+://", "", text).split("/")[0].split(":")[0]
    return text.removeprefix("www.") or None


def normalize_email(value: object) -> str | None:
    if not isinstance(value, str) or "@" not in value:
        return None
    return value.strip().lower()


def contract_values(record: Mapping[str, Any], source: CrmSource, *, where: str,
                    fields: Iterable[CanonicalContractField] = CANONICAL_CONTRACT_FIELDS) -> dict[str, Any]:
    """CrmAccount values for ``fields`` read from one CRM contract record through the source's
    ``contract_fields`` (defaults per CRM: :meth:`CrmSource.contract_field_map`).

    The PO number is only read here when ``account_fields`` does not map one: a PO kept on the
    account record is the customer's standing PO and wins over the deal's. ``where`` names the
    record (``"salesforce Contract 800..."``) for the error a non-date value in a date field
    raises: mapping a text field as a date is a config mistake to fix, not to skip.
    """
    mapping = source.contract_field_map()
    out: dict[str, Any] = {}
    for canonical in fields:
        if canonical == "po_number" and "po_number" in source.account_fields:
            continue
        crm_field = mapping[canonical]
        value = record.get(crm_field)
        if value in (None, ""):
            continue
        if canonical in _CONTRACT_DATES:
            try:
                value = dt.date.fromisoformat(str(value)[:10])
            except ValueError:
                raise ValueError(f"{where}: field {crm_field!r} (crm.sources[{source.name}].contract_fields."
                                 f"{canonical}) holds {str(value)[:40]!r}, not a date") from None
        else:
            value = str(value)
        out[CONTRACT_ATTRIBUTES[canonical]] = value
    return out


def to_crm_account(record: dict[str, Any], source: CrmSource, *, crm_id: str, crm_object: str,
                   extra: dict[str, Any] | None = None) -> CrmAccount:
    """Map one CRM record with the source's declarative ``account_fields``."""
    values: dict[str, Any] = {}
    for canonical in CANONICAL_ACCOUNT_FIELDS:
        crm_field = source.account_fields.get(canonical)
        if crm_field:
            v = record.get(crm_field)
            values[canonical] = None if v in (None, "") else str(v)
    name = values.pop("name", None) or record.get("name") or record.get("Name")
    if not name:
        raise ValueError(f"{source.name} {crm_object} {crm_id}: no name in field "
                         f"{source.account_fields.get('name', 'name')!r}")
    m3ter_id = record.get(source.write_back_field) if source.write_back_field else None
    return CrmAccount(
        source=source.name, source_type=source.type, crm_id=crm_id, crm_object=crm_object, name=str(name),
        domain=normalize_domain(values.pop("domain", None)), email=normalize_email(values.pop("email", None)),
        m3ter_id=str(m3ter_id) if m3ter_id else None, priority=source.priority,
        **values, **(extra or {}),
    )


# HubSpot line item properties that can name the subscribed product, tried in this order against
# ``crm.plan_map`` (the map Salesforce's OpportunityLineItem.ProductCode goes through too).
LINE_ITEM_PRODUCT_KEYS = ("hs_sku", "hs_product_id", "name")


def mapped_line_item_products(items: Iterable[Mapping[str, Any]], plan_map: Mapping[str, str]) -> list[str]:
    """Per line item (its properties), the first of ``LINE_ITEM_PRODUCT_KEYS`` that is a ``plan_map`` key.

    Line items none of whose keys map (set-up fees, add-ons, services) are skipped rather than
    guessed at: only a mapped product may choose a plan.
    """
    out = []
    for props in items:
        for key in LINE_ITEM_PRODUCT_KEYS:
            value = props.get(key)
            if value not in (None, "") and str(value) in plan_map:
                out.append(str(value))
                break
    return out


def deal_product(deal: Mapping[str, Any], items: Sequence[Mapping[str, Any]],
                 plan_map: Mapping[str, str]) -> str | None:
    """The CRM product code of a HubSpot deal, which ``crm.plan_map`` turns into the m3ter plan.

    Precedence: (1) the first line item (in the given order) whose SKU, product id or name is a
    ``plan_map`` key, as Salesforce's opportunity line items decide; (2) the deal's legacy
    ``plan_code`` property; (3) the first line item's SKU even though it maps to nothing, so the
    sync report names the unmapped product (the sync then falls back to ``crm.default_plan``).
    """
    mapped = mapped_line_item_products(items, plan_map)
    if mapped:
        return mapped[0]
    if deal.get("plan_code") not in (None, ""):
        return str(deal["plan_code"])
    return next((str(i["hs_sku"]) for i in items if i.get("hs_sku") not in (None, "")), None)


def account_code(rec: CrmAccount, mode: str) -> str:
    """A stable m3ter account code for a new customer (existing accounts keep theirs)."""
    if mode in ("domain_name", "domain") and rec.domain:
        base = rec.domain.rsplit(".", 1)[0] if mode == "domain_name" and "." in rec.domain else rec.domain
    elif mode in ("domain_name", "domain") and rec.email:
        base = rec.email.split("@", 1)[1].rsplit(".", 1)[0]
    else:
        base = f"{rec.source}-{rec.crm_id}"
    return _CODE_OK.sub("-", base.lower()).strip("-")[:80]


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def match_keys_of(rec: CrmAccount, keys: Iterable[str]) -> list[str]:
    out = []
    for k in keys:
        if k == "external_id" and rec.m3ter_id:
            out.append(f"m3ter:{rec.m3ter_id}")
        elif k == "domain" and rec.domain:
            out.append(f"domain:{rec.domain}")
        elif k == "email" and rec.email:
            out.append(f"email:{rec.email}")
    out.append(f"crm:{rec.source}:{rec.crm_id}")  # the same CRM record is always one customer
    return out


def dedupe(records: list[CrmAccount], keys: list[str], code_mode: str,
           existing_codes: dict[str, str] | None = None) -> list[Customer]:
    """Group records that share any match key into one customer (transitively, union-find).

    ``existing_codes`` maps match keys of accounts already in m3ter to their codes, so a customer
    m3ter already knows keeps its code (m3ter as source of truth for identity).
    """
    existing_codes = existing_codes or {}
    uf = _UnionFind(len(records))
    first_by_key: dict[str, int] = {}
    for i, rec in enumerate(records):
        for key in match_keys_of(rec, keys):
            if key in first_by_key:
                uf.union(first_by_key[key], i)
            else:
                first_by_key[key] = i
    groups: dict[int, list[CrmAccount]] = {}
    for i, rec in enumerate(records):
        groups.setdefault(uf.find(i), []).append(rec)
    customers = []
    for members in groups.values():
        primary = min(members, key=lambda r: (r.priority, r.source, r.crm_id))
        code = next((existing_codes[k] for m in members for k in match_keys_of(m, keys) if k in existing_codes),
                    None) or account_code(primary, code_mode)
        customers.append(Customer(code=code, records=sorted(members, key=lambda r: (r.priority, r.source))))
    return sorted(customers, key=lambda c: c.code)


def desired_account(customer: Customer, current: dict[str, Any] | None, ownership: FieldOwnership,
                    default_currency: str = "USD") -> dict[str, Any]:
    """The m3ter account fields m3sh wants, after applying per-field ownership.

    ``crm_wins``: CRM value replaces m3ter's; ``m3ter_wins``: CRM value is used only on create;
    ``fill_missing``: CRM value is written only where m3ter has none.
    Every field but the ``crm_source`` bookkeeping field is one canonical field's value, decided by
    that canonical field's rule (:data:`M3TER_ACCOUNT_FIELDS`, :data:`M3TER_ACCOUNT_CUSTOM_FIELDS`).
    """
    fallback = {"email": f"billing+{customer.code}@invalid.example", "currency": default_currency}

    def wanted(fields: Mapping[str, CanonicalAccountField], cur: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m3_field, canonical in fields.items():
            value = customer.value(canonical) or fallback.get(canonical)
            if value is None:
                continue
            rule = ownership.owner_of(canonical)
            if current is None or rule == "crm_wins" or (rule == "fill_missing" and cur.get(m3_field) in (None, "")):
                out[m3_field] = value
        return out

    out = wanted(M3TER_ACCOUNT_FIELDS, current or {})
    # which CRMs feed the account: m3sh's own bookkeeping, no CRM value, so no ownership rule
    custom_out = {"crm_source": ",".join(sorted({r.source for r in customer.records}))}
    custom_out.update(wanted(M3TER_ACCOUNT_CUSTOM_FIELDS, (current or {}).get("customFields") or {}))
    out["customFields"] = custom_out
    return out


def contract_code(account_code: str, start: dt.date) -> str:
    """One m3ter contract per account and start date, whichever CRM carries it (survives CRM moves)."""
    return f"{account_code}-c{start:%Y%m%d}"[:80]
