"""Payments back from NetSuite: each exported invoice's payment state, written where m3sh put the invoice.

NetSuite is where finance records payments. The payments step reads, per NetSuite account, the
invoices m3sh wrote (external id = m3ter bill id) whose ``lastmodifieddate`` lies in the read window
(a payment moves it), plus open invoices falling due in it (becoming overdue changes no record), and
derives one state per invoice (:func:`payment_status`):

* ``paid``: nothing remains (``foreignamountunpaid`` 0, status ``CustInvc:B``);
* ``overdue``: something remains and the due date is before the as-of day;
* ``partly_paid``: something was paid, something remains, not yet due;
* ``open``: nothing paid, not yet due.

It then writes the state's text to the CRM destinations that took the invoice: the Salesforce
invoice object (``invoice_payment_fields``, found by its external id = bill id) and, while they show
that invoice as their latest, its Account and Opportunity (``account_payment_fields`` /
``opportunity_payment_fields``); the HubSpot deal the invoice summary went to (the delivery ledger's
deal id), while its summary property still names the bill. Each record is read first and written
only where a value differs, so a re-run with no payment in between writes nothing.

The read window: ``[min(data interval start, watermark), data interval end)``, the watermark being the
end of the last completed read of that account (S3, :func:`m3sh.layout.payments_watermark`), so a
failed or skipped run's changes are picked up by the next one, and a backfill of an old interval
re-reads exactly that interval (the watermark never moves back). ``full_scan`` reads every invoice.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from m3sh import layout
from m3sh.config import HubSpotDestination, SalesforceDestination
from m3sh.invoicing.hubspot import parse_summary
from m3sh.invoicing.ledger import Ledger
from m3sh.invoicing.salesforce import AMOUNT_TOLERANCE, _same

log = logging.getLogger(__name__)

PaymentState = Literal["paid", "partly_paid", "overdue", "open"]
STATUS_PAID = "CustInvc:B"
SOQL_CHUNK = 200  # ids per "IN (...)": well under SOQL's 100,000-character statement limit


class PaymentRowError(ValueError):
    """A SuiteQL row m3sh cannot read: names the account, the invoice and the field."""

    def __init__(self, source: str, invoice: str, field: str, value: Any, why: str) -> None:
        self.source, self.invoice, self.field = source, invoice, field
        super().__init__(f"NetSuite {source}: invoice {invoice}: field {field} = {value!r}: {why}")


@dataclass(frozen=True)
class InvoicePayment:
    """One invoice's payment figures as NetSuite reports them (transaction currency)."""

    source: str  # the NetSuite destination's name
    invoice_id: str
    tran_id: str
    bill_id: str  # the invoice's external id
    total: float
    paid: float
    remaining: float
    currency: str
    due_date: dt.date | None
    status: str  # BUILTIN.CF(status): CustInvc:A open, CustInvc:B paid in full
    last_modified: str | None


@dataclass(frozen=True)
class PaymentStatus:
    state: PaymentState
    remaining: float
    text: str


def _amount(row: Mapping[str, Any], source: str, invoice: str, field: str, default: float | None = None) -> float:
    value = row.get(field)
    if value in (None, ""):
        if default is not None:
            return default
        raise PaymentRowError(source, invoice, field, value, "missing")
    try:
        return round(float(value), 2)
    except (TypeError, ValueError):
        raise PaymentRowError(source, invoice, field, value, "not a number") from None


def parse_payment_row(row: Mapping[str, Any], source: str) -> InvoicePayment:
    """A row of :func:`m3sh.hooks.netsuite.invoice_payments_query` (SuiteQL sends strings and omits
    nulls: an unpaid amount that is absent means nothing was applied, so all of it remains)."""
    invoice = str(row.get("tranid") or row.get("id") or "?")
    if not row.get("id"):
        raise PaymentRowError(source, invoice, "id", row.get("id"), "missing")
    if not row.get("externalid"):
        raise PaymentRowError(source, invoice, "externalid", row.get("externalid"), "missing (not an m3sh invoice)")
    total = _amount(row, source, invoice, "foreigntotal")
    paid = _amount(row, source, invoice, "foreignamountpaid", default=0.0)
    remaining = _amount(row, source, invoice, "foreignamountunpaid", default=round(total - paid, 2))
    due: dt.date | None = None
    if row.get("duedate"):
        try:
            due = dt.date.fromisoformat(str(row["duedate"]))
        except ValueError:
            raise PaymentRowError(source, invoice, "duedate", row["duedate"], "not a YYYY-MM-DD date") from None
    status = str(row.get("status") or "")
    if not re.fullmatch(r"CustInvc:[A-Z]", status):
        raise PaymentRowError(source, invoice, "status", row.get("status"), "not an invoice status (CustInvc:<letter>)")
    return InvoicePayment(source=source, invoice_id=str(row["id"]), tran_id=str(row.get("tranid") or row["id"]),
                          bill_id=str(row["externalid"]), total=total, paid=paid, remaining=remaining,
                          currency=str(row.get("currency") or ""), due_date=due, status=status,
                          last_modified=str(row["lastmodified"]) if row.get("lastmodified") else None)


def payment_status(payment: InvoicePayment, as_of: dt.date) -> PaymentStatus:
    """The invoice's state as of ``as_of`` (the end of the run's data interval), and the text the CRMs show."""
    remaining = max(payment.remaining, 0.0)
    if payment.status == STATUS_PAID or remaining < AMOUNT_TOLERANCE:
        return PaymentStatus("paid", 0.0, "paid")
    if payment.due_date is not None and payment.due_date < as_of:
        return PaymentStatus("overdue", remaining,
                             f"overdue {remaining:.2f} remaining (due {payment.due_date.isoformat()})")
    if payment.paid >= AMOUNT_TOLERANCE or remaining < payment.total - AMOUNT_TOLERANCE:
        return PaymentStatus("partly_paid", remaining, f"partly paid {remaining:.2f} remaining")
    due = f" (due {payment.due_date.isoformat()})" if payment.due_date else ""
    return PaymentStatus("open", remaining, f"open{due}")


def read_window(start: dt.datetime | None, end: dt.datetime | None, watermark: dt.datetime | None,
                full_scan: bool = False) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``(modified_from, modified_until)`` of one read (None: open). See the module docstring."""
    if full_scan:
        return None, None
    if start is None or end is None or start >= end:
        # No interval (a manual run on a trigger timetable): everything since the watermark.
        return watermark, None
    return (min(start, watermark) if watermark is not None else start), end


@dataclass
class Outcome:
    """What happened to one record: ``written``, ``unchanged``, ``dry_run``, ``not_in_crm``,
    ``not_latest`` (the record shows a newer invoice) or ``failed``."""

    bill_id: str
    destination: str
    record: str
    status: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _changes(mapping: Mapping[Any, str], status: PaymentStatus, current: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {"payment": status.text, "amount_remaining": status.remaining}
    wanted = {field: values[key] for key, field in mapping.items()}
    return {f: v for f, v in wanted.items() if not _same(current.get(f), v)}


class SalesforcePayments:
    """Payment state onto one Salesforce destination's invoice records (and latest-invoice Accounts /
    Opportunities). Invoice records are found by their external id (the bill id), in chunks."""

    def __init__(self, dest: SalesforceDestination, sync: Any | None = None) -> None:
        self.dest = dest
        self._sync = sync

    @property
    def sync(self) -> Any:
        if self._sync is None:
            from m3sh.hooks.salesforce import SalesforceSync

            self._sync = SalesforceSync(conn_id=self.dest.conn_id)
        return self._sync

    def _invoices(self, bill_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        from m3sh.hooks.salesforce import soql_literal

        d = self.dest
        fields = list(dict.fromkeys(["Id", d.external_id_field, "Account__c", "Opportunity__c", "Invoice_Number__c",
                                     "Invoice_Date__c", *d.invoice_payment_fields.values()]))
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(bill_ids), SOQL_CHUNK):
            ids = ", ".join(soql_literal(b) for b in bill_ids[i:i + SOQL_CHUNK])
            # Object and field names are validated API names (config); values are SOQL literals.
            soql = (f"SELECT {', '.join(fields)} FROM {d.invoice_object} "  # noqa: S608
                    f"WHERE {d.external_id_field} IN ({ids})")
            for rec in self.sync.query(soql, sobject=d.invoice_object):
                out[str(rec[d.external_id_field])] = rec
        return out

    def _targets(self) -> tuple[tuple[str, str, Mapping[Any, str], Mapping[Any, str]], ...]:
        """``(sObject, its lookup on the invoice record, latest-invoice fields, payment fields)``."""
        d = self.dest
        return (("Account", "Account__c", d.account_fields, d.account_payment_fields),
                ("Opportunity", "Opportunity__c", d.opportunity_fields, d.opportunity_payment_fields))

    def _records(self, sobject: str, ids: Iterable[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Records by 15-character Id, read with SOQL in chunks (one query per 200, not a GET each)."""
        from m3sh.hooks.salesforce import soql_literal

        wanted, out = sorted(set(ids)), {}
        for i in range(0, len(wanted), SOQL_CHUNK):
            id_list = ", ".join(soql_literal(x) for x in wanted[i:i + SOQL_CHUNK])
            # Field names are validated API names (config); ids are SOQL literals.
            soql = f"SELECT {', '.join(dict.fromkeys(fields))} FROM {sobject} WHERE Id IN ({id_list})"  # noqa: S608
            for rec in self.sync.query(soql, sobject=sobject):
                out[str(rec["Id"])[:15]] = rec
        return out

    def apply(self, items: Sequence[tuple[InvoicePayment, PaymentStatus]], dry_run: bool = False) -> list[Outcome]:
        name = self.dest.name
        found = self._invoices(sorted({p.bill_id for p, _ in items}))
        related = {sobject: self._records(sobject, [str(inv[key]) for inv in found.values() if inv.get(key)],
                                          ["Id", *latest.values(), *mapping.values()])
                   for sobject, key, latest, mapping in self._targets() if mapping}
        out: list[Outcome] = []
        for payment, status in items:
            inv = found.get(payment.bill_id)
            if inv is None:
                out.append(Outcome(payment.bill_id, name, self.dest.invoice_object, "not_in_crm"))
                continue
            try:
                out.append(self._write(self.dest.invoice_object, str(inv["Id"]), payment=payment, status=status,
                                       mapping=self.dest.invoice_payment_fields, current=inv, dry_run=dry_run))
                for sobject, key, latest, mapping in self._targets():
                    if inv.get(key) and mapping:
                        record_id = str(inv[key])
                        current = related[sobject].get(record_id[:15])
                        if current is None:
                            raise LookupError(f"{sobject} {record_id} of {self.dest.invoice_object} {inv['Id']} "
                                              "was not found (deleted or merged?)")
                        out.append(self._record(sobject, record_id, current, latest=latest, mapping=mapping,
                                                inv=inv, payment=payment, status=status, dry_run=dry_run))
            except Exception as exc:  # one invoice's failure never stops the others; reported by bill
                out.append(Outcome(payment.bill_id, name, self.dest.invoice_object, "failed",
                                   f"{type(exc).__name__}: {exc}"[:1000]))
        return out

    def _record(self, sobject: str, record_id: str, current: dict[str, Any], *, latest: Mapping[Any, str],
                mapping: Mapping[Any, str], inv: Mapping[str, Any], payment: InvoicePayment, status: PaymentStatus,
                dry_run: bool) -> Outcome:
        # Does the record show this invoice as its latest? By number, else bill id, else date.
        if "invoice" in latest:
            shows = str(current.get(latest["invoice"]) or "") == str(inv.get("Invoice_Number__c") or "")
        elif "bill_id" in latest:
            shows = str(current.get(latest["bill_id"]) or "") == payment.bill_id
        else:
            shows = str(current.get(latest.get("date", ""), "") or "")[:10] == str(inv.get("Invoice_Date__c") or "")
        if not shows:
            return Outcome(payment.bill_id, self.dest.name, f"{sobject} {record_id}", "not_latest",
                           "it shows another invoice")
        return self._write(sobject, record_id, payment=payment, status=status, mapping=mapping, current=current,
                           dry_run=dry_run)

    def _write(self, sobject: str, record_id: str, *, payment: InvoicePayment, status: PaymentStatus,
               mapping: Mapping[Any, str], current: Mapping[str, Any], dry_run: bool) -> Outcome:
        changes = _changes(mapping, status, current)
        record = f"{sobject} {record_id}"
        if not changes:
            return Outcome(payment.bill_id, self.dest.name, record, "unchanged", status.text)
        if dry_run:
            shows = {f: current.get(f) for f in changes}
            return Outcome(payment.bill_id, self.dest.name, record, "dry_run", f"shows {shows}; would set {changes}")
        self.sync.update_record(sobject, record_id, changes)
        if isinstance(current, dict):
            current.update(changes)  # records are read once per batch: keep the copy true
        return Outcome(payment.bill_id, self.dest.name, record, "written", status.text)


class HubSpotPayments:
    """Payment state into the deal property ``payment_property`` of the deals the invoice summaries went
    to (the delivery ledger's deal id per bill), while a deal's summary still names that bill."""

    def __init__(self, dest: HubSpotDestination, ledger: Ledger, hook: Any | None = None) -> None:
        self.dest = dest
        self.ledger = ledger
        self._hook = hook

    @property
    def hook(self) -> Any:
        if self._hook is None:
            from m3sh.hooks.hubspot import HubSpotHook

            self._hook = HubSpotHook(self.dest.conn_id)
        return self._hook

    def apply(self, items: Sequence[tuple[InvoicePayment, PaymentStatus]], dry_run: bool = False) -> list[Outcome]:
        name, prop = self.dest.name, self.dest.payment_property
        if not prop:
            return []
        deal_of: dict[str, str] = {}
        out: list[Outcome] = []
        for payment, _ in items:
            entry = self.ledger.get(name, payment.bill_id)
            if entry and entry.get("remote_id"):
                deal_of[payment.bill_id] = str(entry["remote_id"])
            else:
                out.append(Outcome(payment.bill_id, name, "deal", "not_in_crm"))
        if not deal_of:
            return out
        deals = self.hook.batch_read("deals", sorted(set(deal_of.values())), [self.dest.deal_property, prop])
        updates: dict[str, tuple[str, str]] = {}  # deal id -> (bill id, text)
        for payment, status in items:
            deal_id = deal_of.get(payment.bill_id)
            if deal_id is not None:
                verdict = self._verdict(deals.get(deal_id), payment, status, prop)
                if verdict is None:
                    updates[deal_id] = (payment.bill_id, status.text)
                else:
                    out.append(Outcome(payment.bill_id, name, f"deal {deal_id}", *verdict))
        if not updates:
            return out
        if dry_run:
            shown = {d: ((deals.get(d) or {}).get("properties") or {}).get(prop) for d in updates}
            return out + [Outcome(b, name, f"deal {d}", "dry_run", f"shows {prop} = {shown[d]!r}; would set {t!r}")
                          for d, (b, t) in updates.items()]
        self.hook.ensure_property("deals", prop, "m3ter last invoice payment",
                                  description="Written by m3sh_invoice_sync's payments step from NetSuite")
        result = self.hook.batch_update("deals", [{"id": d, "properties": {prop: t}} for d, (_, t) in updates.items()])
        failed = {str(inp.get("id")): reason for inp, reason in result.failed}
        for deal_id, (bill_id, text) in updates.items():
            reason = failed.get(deal_id)
            out.append(Outcome(bill_id, name, f"deal {deal_id}", "failed" if reason else "written", reason or text))
        return out


    def _verdict(self, deal: Mapping[str, Any] | None, payment: InvoicePayment, status: PaymentStatus,
                 prop: str) -> tuple[str, str] | None:
        """``(status, detail)`` of a deal left alone, or None when it needs the new value."""
        if deal is None:
            return "failed", "the deal was not found: deleted or merged since the invoice was delivered"
        props = deal.get("properties") or {}
        summary = parse_summary(props.get(self.dest.deal_property))
        if summary is None or summary["bill_id"] != payment.bill_id:
            return "not_latest", "it shows another invoice"
        if props.get(prop) == status.text:
            return "unchanged", status.text
        return None


def count(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return dict(sorted(counts.items()))


# -- the watermark ------------------------------------------------------------------------------------
def read_watermark(storage: Any, source: str) -> dt.datetime | None:
    value = storage.get_json(layout.payments_watermark(storage, source))
    if not isinstance(value, dict) or not value.get("until"):
        return None
    return dt.datetime.fromisoformat(str(value["until"]))


def record_states(storage: Any, items: Sequence[tuple[InvoicePayment, PaymentStatus]], as_of: dt.date,
                  read_at: dt.datetime) -> int:
    """Keep each invoice's payment state in S3 (the analytics ``invoice_payments`` table reads them),
    written only when it differs from the one kept; returns how many were written."""
    written = 0
    for p, s in items:
        key = layout.payments_state(storage, p.source, p.bill_id)
        state = {"bill_id": p.bill_id, "source": p.source, "invoice_id": p.invoice_id, "tran_id": p.tran_id,
                 "state": s.state, "text": s.text, "total": p.total, "paid": p.paid, "remaining": s.remaining,
                 "currency": p.currency, "due_date": p.due_date.isoformat() if p.due_date else None,
                 "last_modified": p.last_modified}
        kept = storage.get_json(key)
        if isinstance(kept, dict) and {k: kept.get(k) for k in state} == state:
            continue
        storage.put_json(key, {**state, "as_of": as_of.isoformat(), "read_at": read_at.isoformat()})
        written += 1
    return written


def write_watermark(storage: Any, source: str, until: dt.datetime, previous: dt.datetime | None) -> dt.datetime:
    """Move the watermark forward to ``until`` (never back: a backfill leaves it where it was)."""
    new = max(until, previous) if previous is not None else until
    if new != previous:
        storage.put_json(layout.payments_watermark(storage, source), {"until": new.isoformat()})
    return new


# -- reconciliation ----------------------------------------------------------------------------------
def payment_disagreements(sources: Sequence[Any], destinations: Sequence[Any], ledger: Ledger,
                          bills: Mapping[str, set[str]], as_of: dt.date, *,
                          hook_for: Any = None) -> tuple[list[Outcome], list[tuple[InvoicePayment, PaymentStatus]]]:
    """Every CRM record whose payment state differs from NetSuite's now: the payments writers run as a
    dry run over all exported invoices of each NetSuite source (``bills``: the bill ids in scope per
    source name). Returns ``(the dry-run outcomes that would write, or failed, the states read)``."""
    from m3sh.config import HubSpotDestination

    if hook_for is None:
        from m3sh.hooks.netsuite import NetSuiteHook

        hook_for = NetSuiteHook
    items: list[tuple[InvoicePayment, PaymentStatus]] = []
    out: list[Outcome] = []
    for source in sources:
        wanted = bills.get(source.name, set())
        for row in hook_for(source.conn_id).invoice_payment_rows():
            if str(row.get("externalid") or "") not in wanted:
                continue
            try:
                payment = parse_payment_row(row, source.name)
            except PaymentRowError as exc:
                out.append(Outcome(str(row.get("externalid")), source.name, f"invoice {exc.invoice}", "failed",
                                   str(exc)))
                continue
            items.append((payment, payment_status(payment, as_of)))
    for dest in destinations:
        writer: Any = (HubSpotPayments(dest, ledger) if isinstance(dest, HubSpotDestination)
                       else SalesforcePayments(dest))
        if items:
            out += [o for o in writer.apply(items, dry_run=True) if o.status in ("dry_run", "failed")]
    return out, items
