"""One NetSuite account's records and the validation rules NetSuite applies when writing them.

Records are stored in their REST response form (references as ``{"id", "refName"}``, sublists as
plain line lists) so reads are a cheap render. The rules that matter to m3sh are enforced the way
NetSuite does: references must exist (``INVALID_KEY_OR_REF``), an invoice needs item lines, the
transaction currency must be the customer's, totals are computed by the server (never trusted
from the client), and transactions dated in a closed accounting period are refused.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from m3sh.sandbox.credentials import NetSuiteCredentials
from m3sh.sandbox.netsuite.errors import NetSuiteApiError, bad_ref, not_found, user_error

TRANSACTION_TYPES: dict[str, str] = {"invoice": "CustInvc", "creditMemo": "CustCred"}
# Customer payments enter only through the ``pay_invoice`` admin action (a payment applied to one
# invoice); the REST record API serves them read-only, so no client can depend on writing them here.
PAYMENT_TYPES: dict[str, str] = {"customerPayment": "CustPymt"}
ITEM_TYPES: dict[str, str] = {"inventoryItem": "InvtPart", "serviceSaleItem": "Service",
                              "nonInventorySaleItem": "NonInvtPart"}
WRITABLE_TYPES = {"customer", *TRANSACTION_TYPES, *ITEM_TYPES}
READONLY_TYPES = {"subsidiary", "currency", *PAYMENT_TYPES}
RECORD_TYPES = WRITABLE_TYPES | READONLY_TYPES

_COMMON_FIELDS = {"externalId"}
_FIELDS: dict[str, set[str]] = {
    "customer": {"entityId", "companyName", "isPerson", "firstName", "lastName", "email", "phone",
                 "subsidiary", "currency", "terms", "parent", "isInactive", "comments", "url",
                 "defaultAddress", "addressBook", "creditLimit", "entityStatus", "category", "salesRep"},
    "transaction": {"tranId", "entity", "subsidiary", "currency", "exchangeRate", "tranDate", "dueDate",
                    "startDate", "endDate", "postingPeriod", "terms", "memo", "otherRefNum", "createdFrom",
                    "item", "department", "class", "location", "email", "billingAddress", "salesRep",
                    "account", "apply"},
    "item": {"itemId", "displayName", "description", "salesDescription", "subsidiary", "includeChildren",
             "isInactive", "incomeAccount", "basePrice"},
}
_LINE_FIELDS = {"item", "quantity", "rate", "amount", "description", "price", "taxCode", "isTaxable", "line",
                "units", "revRecStartDate", "revRecEndDate", "revRecTermInMonths", "department", "class",
                "location", "subscription", "subscriptionLine"}
# Server-computed or system fields: accepted in bodies (clients often echo a read) and ignored.
_READ_ONLY = {"id", "links", "refName", "total", "subtotal", "taxTotal", "discountTotal", "amountPaid",
              "amountRemaining", "status", "createdDate", "lastModifiedDate", "dateCreated", "balance",
              "overdueBalance"}
_CUSTOM_PREFIX = re.compile(r"^(custbody|custentity|custitem|custcol|custrecord)")

# Invoice statuses: record API ``status`` {id, refName}; SuiteQL ``transaction.status`` is the letter
# and ``BUILTIN.CF(status)`` the criteria form ``CustInvc:A`` (tables.py).
STATUS_OPEN = {"id": "A", "refName": "Open"}
STATUS_PAID = {"id": "B", "refName": "Paid In Full"}
# A customer payment's own status [INF: not checked against a NetSuite account; m3sh never reads it].
PAYMENT_STATUS = {"id": "C", "refName": "Deposited"}
AMOUNT_TOLERANCE = 0.005
# Keys of a reference object (``nsResource``: id, externalId, refName, links) and of a sublist
# container as a read returns it: anything else in a body is refused, never dropped.
_REF_KEYS = frozenset({"id", "externalId", "refName", "links"})
_SUBLIST_KEYS = frozenset({"items", "links", "count", "hasMore", "offset", "totalResults"})
# Real fields whose effect the emulator does not model: stored, they would be a silently different
# answer (a credit memo "applied" to an invoice whose amountRemaining never changes).
_UNMODELLED = {"apply": "The apply sublist (applying a credit memo to invoices)"}


def _unknown_key(value: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    for key in value:
        if key not in allowed:
            raise NetSuiteApiError(400, "NONEXISTENT_FIELD", f"Invalid field name '{key}' in '{path}'. "
                                   f"Provide a valid field name ({', '.join(sorted(allowed))}).",
                                   error_path=f"{path}.{key}")


def _fields_for(record_type: str) -> set[str]:
    if record_type in TRANSACTION_TYPES:
        return _FIELDS["transaction"] | _COMMON_FIELDS
    if record_type in ITEM_TYPES:
        return _FIELDS["item"] | _COMMON_FIELDS
    return _FIELDS.get(record_type, set()) | _COMMON_FIELDS


def known_field(record_type: str, name: str, rec: dict[str, Any]) -> bool:
    """Whether ``name`` is a body field of ``record_type`` the emulator knows (set on ``rec`` or not)."""
    return (name in rec or name in _fields_for(record_type) or name in _READ_ONLY
            or _CUSTOM_PREFIX.match(name) is not None)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_date(value: Any, field_name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise NetSuiteApiError(
            400, "INVALID_FIELD_VALUE",
            f"Invalid value for the resource or sub-resource field '{field_name}'. Provide a valid value.",
            error_path=field_name,
        ) from None


def _number(value: Any, field_name: str) -> float:
    if isinstance(value, bool):
        raise bad_ref(field_name, value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise NetSuiteApiError(
            400, "INVALID_FIELD_VALUE",
            f"Invalid value for the resource or sub-resource field '{field_name}'. Provide a valid value.",
            error_path=field_name,
        ) from None


@dataclass
class Governance:
    """Concurrency governance of one account (REST, SOAP and RESTlets share it on a real account)."""

    limit: int = 5
    in_flight: int = 0
    max_in_flight: int = 0
    rejected_429: int = 0
    latency_ms: int = 0
    # account_fault admin action: answer this status to every request of the account (None: off)
    fault_status: int | None = None

    def snapshot(self) -> dict[str, int]:
        return {"concurrency_limit": self.limit, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "rejected_429": self.rejected_429,
                "latency_ms": self.latency_ms}


@dataclass
class AccountState:
    """All records of one NetSuite account plus its governance and closed-period settings."""

    account_id: str
    label: str
    credentials: NetSuiteCredentials
    records: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    next_id: int = 1001
    tran_seq: dict[str, int] = field(default_factory=dict)
    closed_before: dt.date | None = None
    governance: Governance = field(default_factory=Governance)
    # externalId -> internal id per record type, and the table size it was built at: an upsert looks
    # its record up by external id, and a scan of the table per request made the emulator's cost grow
    # with the records written (quadratic over a benchmark). :meth:`write` and :meth:`delete` keep it
    # current; records added or removed directly (the seed, a test) change the size and rebuild it. A
    # record's externalId changes only through ``write`` (which stores a new dict), never in place.
    _eid_index: dict[str, dict[str, str]] = field(default_factory=dict, repr=False, compare=False)
    _eid_size: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        for rt in RECORD_TYPES:
            self.records.setdefault(rt, {})

    # -- lookups ------------------------------------------------------------------------------
    def _index(self, record_type: str) -> dict[str, str]:
        table = self.records[record_type]
        index = self._eid_index.get(record_type)
        if index is None or self._eid_size.get(record_type) != len(table):
            index = {}
            for rid, rec in table.items():
                if rec.get("externalId") is not None:
                    index.setdefault(str(rec["externalId"]), rid)  # the first one, as a scan finds it
            self._eid_index[record_type], self._eid_size[record_type] = index, len(table)
        return index

    def find(self, record_type: str, key: str) -> dict[str, Any] | None:
        """A record by internal id or by ``eid:<externalId>``."""
        table = self.records[record_type]
        if key.startswith("eid:"):
            eid = key[4:]
            rid = self._index(record_type).get(eid)
            rec = table.get(rid) if rid is not None else None
            if rec is not None and rec.get("externalId") == eid:
                return rec
            if rid is None:
                return None
            self._eid_index.pop(record_type, None)  # a record changed in place: rebuild and look again
            rid = self._index(record_type).get(eid)
            return table.get(rid) if rid is not None else None
        return table.get(key)

    def get(self, record_type: str, key: str) -> dict[str, Any]:
        rec = self.find(record_type, key)
        if rec is None:
            raise not_found(record_type, key)
        return rec

    def find_item(self, key: str) -> tuple[str, dict[str, Any]] | None:
        for rt in ITEM_TYPES:
            rec = self.find(rt, key)
            if rec is not None:
                return rt, rec
        return None

    def _resolve_ref(self, types: tuple[str, ...], ref: Any, field_name: str) -> tuple[str, dict[str, Any]]:
        """A reference object ``{"id"}`` / ``{"externalId"}`` / ``{"refName"}`` to its record."""
        if isinstance(ref, str | int) and not isinstance(ref, bool):
            ref = {"id": str(ref)}
        if not isinstance(ref, dict):
            raise bad_ref(field_name, ref)
        _unknown_key(ref, _REF_KEYS, field_name)
        for rt in types:
            rec: dict[str, Any] | None = None
            if ref.get("id") not in (None, ""):
                rec = self.find(rt, str(ref["id"]))
            elif ref.get("externalId"):
                rec = self.find(rt, f"eid:{ref['externalId']}")
            elif ref.get("refName"):
                name = str(ref["refName"])
                rec = next((r for r in self.records[rt].values()
                            if name in (r.get("refName"), r.get("symbol"), r.get("name"))), None)
            if rec is not None:
                return rt, rec
        shown = ref.get("id") or ref.get("externalId") or ref.get("refName")
        raise bad_ref(field_name, shown)

    @staticmethod
    def ref(rec: dict[str, Any]) -> dict[str, Any]:
        return {"id": rec["id"], "refName": rec.get("refName", rec["id"])}

    # -- writes -------------------------------------------------------------------------------
    def _new_id(self) -> str:
        new = str(self.next_id)
        self.next_id += 1
        return new

    def _check_fields(self, record_type: str, body: dict[str, Any], validation: str) -> dict[str, Any]:
        allowed = _fields_for(record_type)
        clean: dict[str, Any] = {}
        for key, value in body.items():
            if key in _READ_ONLY:
                continue
            if key in _UNMODELLED and value:
                raise user_error(f"{_UNMODELLED[key]} is documented by NetSuite but not implemented by the m3sh "
                                 "sandbox.", error_path=key)
            if key in allowed or _CUSTOM_PREFIX.match(key):
                clean[key] = value
            elif validation == "Error":
                raise NetSuiteApiError(
                    400, "NONEXISTENT_FIELD",
                    f"Invalid field name '{key}' for record type '{record_type}'. "
                    "Provide a valid field name.", error_path=key,
                )
        return clean

    def check_open_period(self, tran_date: dt.date) -> None:
        if self.closed_before is not None and tran_date < self.closed_before:
            raise user_error(
                f"The accounting period is closed for the transaction date {tran_date.isoformat()}. "
                f"You cannot create, edit or delete transactions dated before "
                f"{self.closed_before.isoformat()}; ask your accounting administrator to reopen the "
                "period or use a later date.",
                error_path="tranDate",
            )

    def write(
        self,
        record_type: str,
        body: dict[str, Any],
        *,
        existing: dict[str, Any] | None = None,
        external_id: str | None = None,
        replace: set[str] | None = None,
        validation: str = "Error",
    ) -> tuple[str, bool]:
        """Create (``existing`` None) or update a record; returns ``(id, created)``."""
        if record_type in READONLY_TYPES:
            raise NetSuiteApiError(403, "INSUFFICIENT_PERMISSION",
                                   f"You do not have permission to modify {record_type} records.")
        clean = self._check_fields(record_type, body, validation)
        if external_id is not None:
            if clean.get("externalId") not in (None, external_id):
                raise user_error("The externalId in the body does not match the eid: in the URL.",
                                 error_path="externalId")
            clean["externalId"] = external_id
        eid = clean.get("externalId")
        if eid is not None:
            other = self.find(record_type, f"eid:{eid}")
            if other is not None and (existing is None or other["id"] != existing["id"]):
                raise user_error(
                    f"A {record_type} record with this external ID already exists: {eid}. "
                    "Use upsert (PUT eid:) to update it.", error_path="externalId",
                )
        merged: dict[str, Any] = dict(existing or {})
        if record_type == "customer":
            new = self._customer(merged, clean)
        elif record_type in TRANSACTION_TYPES:
            new = self._transaction(record_type, merged, clean, existing, replace or set())
        else:
            new = self._item(record_type, merged, clean)
        now = _now_iso()
        created = existing is None
        if created:
            new["id"] = self._new_id()
            new["createdDate"] = now
            if record_type == "customer":
                new["dateCreated"] = now
        new["lastModifiedDate"] = now
        if record_type == "customer":
            entity_id, company = new.get("entityId", new["id"]), new.get("companyName", "")
            new["refName"] = entity_id if entity_id == company else f"{entity_id} {company}".strip()
        elif record_type in TRANSACTION_TYPES:
            if not new.get("tranId"):
                prefix = "INV" if record_type == "invoice" else "CM"
                seq = self.tran_seq.get(record_type, 10000) + 1
                self.tran_seq[record_type] = seq
                new["tranId"] = f"{prefix}{seq}"
            label = "Invoice" if record_type == "invoice" else "Credit Memo"
            new["refName"] = f"{label} #{new['tranId']}"
        else:
            new["refName"] = new.get("itemId", new["id"])
        index = self._index(record_type)
        old_eid = (existing or {}).get("externalId")
        if old_eid is not None and index.get(str(old_eid)) == new["id"]:
            del index[str(old_eid)]
        self.records[record_type][new["id"]] = new
        if new.get("externalId") is not None:
            index.setdefault(str(new["externalId"]), new["id"])
        self._eid_size[record_type] = len(self.records[record_type])
        return new["id"], created

    def _customer(self, merged: dict[str, Any], clean: dict[str, Any]) -> dict[str, Any]:
        merged.update({k: v for k, v in clean.items() if k not in ("subsidiary", "currency")})
        if "subsidiary" in clean or "subsidiary" not in merged:
            sub_ref = clean.get("subsidiary") or {"id": self._root_subsidiary()["id"]}
            merged["subsidiary"] = self.ref(self._resolve_ref(("subsidiary",), sub_ref, "subsidiary")[1])
        if "currency" in clean or "currency" not in merged:
            sub = self.records["subsidiary"][merged["subsidiary"]["id"]]
            cur_ref = clean.get("currency") or sub["currency"]
            merged["currency"] = self.ref(self._resolve_ref(("currency",), cur_ref, "currency")[1])
        if not merged.get("companyName") and not (merged.get("firstName") or merged.get("lastName")):
            raise user_error("Please enter value(s) for: Company Name", error_path="companyName")
        merged.setdefault("entityId", merged.get("companyName") or
                          f"{merged.get('firstName', '')} {merged.get('lastName', '')}".strip())
        merged.setdefault("isPerson", False)
        merged.setdefault("isInactive", False)
        return merged

    def _root_subsidiary(self) -> dict[str, Any]:
        return next(iter(self.records["subsidiary"].values()))

    def _transaction(
        self,
        record_type: str,
        merged: dict[str, Any],
        clean: dict[str, Any],
        existing: dict[str, Any] | None,
        replace: set[str],
    ) -> dict[str, Any]:
        if existing is not None:
            self.check_open_period(dt.date.fromisoformat(existing["tranDate"]))
        simple = {k: v for k, v in clean.items()
                  if k not in ("entity", "subsidiary", "currency", "item", "tranDate", "dueDate")}
        merged.update(simple)
        if "entity" in clean or "entity" not in merged:
            if "entity" not in clean:
                raise user_error("Please enter value(s) for: Customer", error_path="entity")
            merged["entity"] = self.ref(self._resolve_ref(("customer",), clean["entity"], "entity")[1])
        customer = self.records["customer"][merged["entity"]["id"]]
        if "subsidiary" in clean:
            sub = self._resolve_ref(("subsidiary",), clean["subsidiary"], "subsidiary")[1]
            if sub["id"] != customer["subsidiary"]["id"]:
                raise NetSuiteApiError(
                    400, "INVALID_KEY_OR_REF",
                    f"Invalid subsidiary reference key {sub['id']} for entity {customer['id']}.",
                    error_path="subsidiary")
            merged["subsidiary"] = self.ref(sub)
        merged.setdefault("subsidiary", dict(customer["subsidiary"]))
        if "currency" in clean:
            cur = self._resolve_ref(("currency",), clean["currency"], "currency")[1]
            if cur["id"] != customer["currency"]["id"]:
                raise NetSuiteApiError(
                    400, "INVALID_KEY_OR_REF",
                    f"Invalid currency reference key {cur['id']} for entity {customer['id']}.",
                    error_path="currency")
            merged["currency"] = self.ref(cur)
        merged.setdefault("currency", dict(customer["currency"]))
        for key in ("tranDate", "dueDate"):
            if clean.get(key) is not None:
                merged[key] = parse_date(clean[key], key).isoformat()
        merged.setdefault("tranDate", dt.datetime.now(dt.UTC).date().isoformat())
        self.check_open_period(dt.date.fromisoformat(merged["tranDate"]))
        if "item" in clean:
            merged["item"] = self._lines(merged.get("item", []), clean["item"], "item" in replace)
        lines: list[dict[str, Any]] = merged.get("item", [])
        if not lines:
            raise user_error("You must enter at least one line item for this transaction.", error_path="item")
        total = round(sum(line["amount"] for line in lines), 2)
        merged.update({"subtotal": total, "total": total, "exchangeRate": 1.0})
        merged["status"] = dict(STATUS_OPEN)
        if record_type == "invoice":
            # Payments already applied stay applied when the invoice is edited (a re-upsert).
            paid = round(float(merged.get("amountPaid") or 0.0), 2)
            remaining = round(max(total - paid, 0.0), 2)
            merged.update({"amountPaid": paid, "amountRemaining": remaining})
            if paid > 0 and remaining < AMOUNT_TOLERANCE:
                merged["status"] = dict(STATUS_PAID)
        return merged

    def _lines(self, current: list[dict[str, Any]], sublist: Any, replace: bool) -> list[dict[str, Any]]:
        """Sublist semantics: ``replace=item`` swaps all lines; otherwise lines merge by ``line``."""
        if not isinstance(sublist, dict) or not isinstance(sublist.get("items", []), list):
            raise user_error("The item sublist must be an object with an 'items' array.", error_path="item")
        _unknown_key(sublist, _SUBLIST_KEYS, "item")
        lines = [] if replace else [dict(x) for x in current]
        by_line = {x["line"]: x for x in lines}
        for pos, raw in enumerate(sublist.get("items", [])):
            path = f"item.items[{pos}]"
            if not isinstance(raw, dict):
                raise user_error("Each item line must be an object.", error_path=path)
            unknown = [k for k in raw if k not in _LINE_FIELDS and k not in _READ_ONLY
                       and not _CUSTOM_PREFIX.match(k)]
            if unknown:
                raise NetSuiteApiError(400, "NONEXISTENT_FIELD",
                                       f"Invalid field name '{unknown[0]}' for sublist 'item'.",
                                       error_path=f"{path}.{unknown[0]}")
            target = by_line.get(raw.get("line")) if raw.get("line") is not None else None
            line: dict[str, Any] = dict(target) if target else {}
            line.update({k: v for k, v in raw.items() if k not in _READ_ONLY})
            if "item" not in line:
                raise user_error("Please enter value(s) for: Item", error_path=f"{path}.item")
            ref = line["item"]
            item_ref = {"id": str(ref)} if isinstance(ref, str | int) else ref
            found = None
            if isinstance(item_ref, dict):
                _unknown_key(item_ref, _REF_KEYS, f"{path}.item")
                key = (str(item_ref["id"]) if item_ref.get("id") else
                       f"eid:{item_ref['externalId']}" if item_ref.get("externalId") else None)
                found = self.find_item(key) if key else None
            if found is None:
                raise bad_ref(f"{path}.item", item_ref.get("id") if isinstance(item_ref, dict) else ref)
            line["item"] = self.ref(found[1])
            qty = _number(line.get("quantity", 1), f"{path}.quantity")
            line["quantity"] = qty
            if "rate" in line:
                line["rate"] = _number(line["rate"], f"{path}.rate")
            if "amount" in raw:
                line["amount"] = round(_number(raw["amount"], f"{path}.amount"), 2)
            elif "rate" in line:
                line["amount"] = round(qty * line["rate"], 2)
            else:
                raise user_error("Please enter value(s) for: Rate or Amount", error_path=f"{path}.rate")
            if target is None:
                line["line"] = max((x["line"] for x in lines), default=0) + 1
                lines.append(line)
                by_line[line["line"]] = line
            else:
                lines[lines.index(target)] = line
                by_line[line["line"]] = line
        return lines

    def _item(self, record_type: str, merged: dict[str, Any], clean: dict[str, Any]) -> dict[str, Any]:
        merged.update(clean)
        if not merged.get("itemId"):
            raise user_error("Please enter value(s) for: Item Name/Number", error_path="itemId")
        merged.setdefault("isInactive", False)
        return merged

    def delete(self, record_type: str, key: str) -> None:
        if record_type in READONLY_TYPES:
            raise NetSuiteApiError(403, "INSUFFICIENT_PERMISSION",
                                   f"You do not have permission to delete {record_type} records.")
        rec = self.get(record_type, key)
        if record_type in TRANSACTION_TYPES:
            self.check_open_period(dt.date.fromisoformat(rec["tranDate"]))
        if record_type == "customer":
            for tt in (*TRANSACTION_TYPES, *PAYMENT_TYPES):
                if any(t["entity"]["id"] == rec["id"] for t in self.records[tt].values()):
                    raise user_error("This record cannot be deleted because it has dependent records.")
        index = self._index(record_type)
        if rec.get("externalId") is not None and index.get(str(rec["externalId"])) == rec["id"]:
            del index[str(rec["externalId"])]
        del self.records[record_type][rec["id"]]
        self._eid_size[record_type] = len(self.records[record_type])

    # -- payments (admin action) ----------------------------------------------------------------
    def apply_payment(self, invoice_key: str, amount: Any = None, pay_date: Any = None) -> dict[str, Any]:
        """A ``customerPayment`` of ``amount`` (default: what remains) applied to one invoice.

        As in NetSuite, the invoice's ``amountPaid``/``amountRemaining`` follow the payment, its
        status becomes *Paid In Full* when nothing remains, and its ``lastModifiedDate`` moves (so
        an incremental SuiteQL read by ``lastmodifieddate`` sees the change). A payment larger than
        what remains, or dated in a closed period, is refused.
        """
        inv = self.get("invoice", invoice_key)
        remaining = round(float(inv.get("amountRemaining") or 0.0), 2)
        if remaining < AMOUNT_TOLERANCE:
            raise user_error(f"Invoice #{inv['tranId']} is already paid in full.", error_path="apply")
        amt = remaining if amount is None else round(_number(amount, "payment"), 2)
        if amt <= 0 or amt > remaining + AMOUNT_TOLERANCE:
            raise user_error(f"The payment amount {amt:.2f} must be more than 0 and at most the amount "
                             f"remaining on invoice #{inv['tranId']} ({remaining:.2f}).", error_path="payment")
        day = parse_date(pay_date, "tranDate") if pay_date else dt.datetime.now(dt.UTC).date()
        self.check_open_period(day)
        now = _now_iso()
        seq = self.tran_seq.get("customerPayment", 20000) + 1
        self.tran_seq["customerPayment"] = seq
        pay_id = self._new_id()
        payment = {
            "id": pay_id, "tranId": f"PYMT{seq}", "refName": f"Payment #PYMT{seq}",
            "customer": dict(inv["entity"]), "subsidiary": dict(inv["subsidiary"]),
            "currency": dict(inv["currency"]), "tranDate": day.isoformat(), "payment": amt, "total": amt,
            "applied": amt, "unapplied": 0.0, "status": dict(PAYMENT_STATUS),
            "apply": [{"doc": self.ref(inv), "apply": True, "amount": amt, "total": inv["total"],
                       "due": remaining, "applyDate": day.isoformat(), "refNum": inv["tranId"]}],
            "createdDate": now, "lastModifiedDate": now,
        }
        self.records["customerPayment"][pay_id] = payment
        left = round(remaining - amt, 2)
        inv["amountPaid"] = round(float(inv.get("amountPaid") or 0.0) + amt, 2)
        inv["amountRemaining"] = max(left, 0.0)
        inv["status"] = dict(STATUS_PAID if left < AMOUNT_TOLERANCE else STATUS_OPEN)
        inv["lastModifiedDate"] = now
        return {"payment": pay_id, "tranId": payment["tranId"], "invoice": inv["id"], "amount": amt,
                "amountPaid": inv["amountPaid"], "amountRemaining": inv["amountRemaining"],
                "status": inv["status"]["refName"]}
