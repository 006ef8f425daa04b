"""NetSuite delivery: customer upsert by external id = m3ter account id, invoice upsert by external
id = m3ter bill id (``PUT .../invoice/eid:<bill id>``), so a retry after a lost response, a re-run
or a backfill converges on exactly one invoice per bill and account.

Corrections. A bill whose content changed after export is re-upserted (``replace=item``, so lines
are swapped, not appended). When NetSuite refuses because the invoice's accounting period is
closed (the invoice is locked), ``locked_invoice_policy: credit_memo`` books the difference dated
today: a credit memo when the bill went down, an adjustment invoice when it went up. Both carry
deterministic external ids (``<bill id>:cm:<fingerprint>`` / ``<bill id>:adj:<fingerprint>``), so a
repeated correction is an upsert too. With ``update`` (or when there is no invoice to correct) the
refusal is reported as *action needed* with NetSuite's exact message.

Concurrency: every request goes through :class:`~m3sh.hooks.netsuite.NetSuiteHook`, whose
process-wide per-account semaphore keeps in-flight requests within the account's limit, whatever
the number of threads; across worker processes the Airflow pool of the destination does the same.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from m3sh.config import NetSuiteDestination
from m3sh.hooks.netsuite import NetSuiteError, NetSuiteHook
from m3sh.invoicing.base import KeyedLocks
from m3sh.invoicing.ledger import Ledger, now_iso
from m3sh.invoicing.models import BillLine, Delivery, EnrichedBill

log = logging.getLogger(__name__)

CORRECTION_TOLERANCE = 0.005
# What reconciliation reads back: invoices and credit memos (negative totals), the currency as its
# ISO code, and the external ids m3sh wrote (``<bill id>`` or ``<bill id>:cm|adj:<fingerprint>``).
TRANSACTIONS_SUITEQL = ("SELECT t.id, t.tranid, t.externalid, t.type, t.foreigntotal, "
                        "BUILTIN.DF(t.currency) AS currency FROM transaction t "
                        "WHERE t.type IN ('CustInvc', 'CustCred') ORDER BY t.id")


def item_for(dest: NetSuiteDestination, line: BillLine) -> str:
    """NetSuite item of a bill line: by product code, then by line type, then the default item."""
    for key in (line.product_code, line.line_type):
        if key and key in dest.item_map:
            return dest.item_map[key]
    return dest.default_item_id


def customer_body(dest: NetSuiteDestination, bill: EnrichedBill, currency_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "companyName": bill.account_name[:83],
        "subsidiary": {"id": dest.subsidiary_id},
        "currency": {"id": currency_id},
        "comments": f"m3ter account {bill.account_code}",
    }
    if bill.email:
        body["email"] = bill.email
    return body


def invoice_body(dest: NetSuiteDestination, bill: EnrichedBill, customer_id: str,
                 currency_id: str) -> dict[str, Any]:
    """The invoice exactly as m3ter billed it: one item line per bill line, 2-decimal amounts."""
    lines = []
    for line in bill.lines:
        item: dict[str, Any] = {
            "item": {"id": item_for(dest, line)},
            "quantity": round(line.quantity, 6),
            "rate": round(line.unit_price, 8),
            "amount": line.amount_2dp,
            "description": line.description[:999],
        }
        if bill.tax_code:
            item["taxCode"] = {"id": bill.tax_code}
        lines.append(item)
    body: dict[str, Any] = {
        "entity": {"id": customer_id},
        "subsidiary": {"id": dest.subsidiary_id},
        "currency": {"id": currency_id},
        "tranDate": bill.bill_date,
        "memo": f"m3ter bill {bill.invoice_number or bill.bill_id} ({bill.period_start} - {bill.period_end})",
        "item": {"items": lines},
    }
    if bill.due_date:
        body["dueDate"] = bill.due_date[:10]
    if bill.crm.po_number:
        body["otherRefNum"] = bill.crm.po_number[:45]
    if bill.department:
        body["department"] = {"id": bill.department}
    return body


class NetSuiteDelivery:
    """Delivers enriched bills to one NetSuite account; thread-safe, so a pool of threads may share it."""

    def __init__(self, dest: NetSuiteDestination, ledger: Ledger, hook: NetSuiteHook | None = None) -> None:
        self.dest = dest
        self.ledger = ledger
        self.hook = hook or NetSuiteHook(dest.conn_id)
        self._currencies: dict[str, str] | None = None
        self._customers: dict[str, str] = {}
        self._account_lock = KeyedLocks()  # one customer upsert at a time per m3ter account
        self._guard = threading.Lock()

    # -- reference data -----------------------------------------------------------------------
    def currency_id(self, code: str) -> str:
        if self.dest.currency_id:
            return self.dest.currency_id
        with self._guard:
            if self._currencies is None:
                rows = self.hook.suiteql("SELECT id, symbol FROM currency ORDER BY id")
                self._currencies = {str(r["symbol"]).upper(): str(r["id"]) for r in rows}
        found = self._currencies.get(code.upper())
        if found is None:
            raise NetSuiteError(400, "INVALID_KEY_OR_REF",
                                f"Currency {code} is not enabled in NetSuite account {self.hook.account_id}.",
                                record_type="currency", external_id=code)
        return found

    def ensure_customer(self, bill: EnrichedBill, currency_id: str) -> str:
        """The customer's internal id, upserting it at most once per run and content version."""
        cached = self._customers.get(bill.account_id)  # the common case, without the lock or the body
        if cached:
            return cached
        with self._account_lock(bill.account_id):
            cached = self._customers.get(bill.account_id)
            if cached:
                return cached
            body = customer_body(self.dest, bill, currency_id)
            fp = repr(sorted(body.items()))
            entry = self.ledger.get(self.dest.name, f"customer:{bill.account_id}")
            if entry and entry.get("fingerprint") == fp and entry.get("remote_id"):
                self._customers[bill.account_id] = str(entry["remote_id"])
                return str(entry["remote_id"])
            cid = self.hook.upsert_by_external_id("customer", bill.account_id, body)
            self.ledger.put(self.dest.name, f"customer:{bill.account_id}",
                            {"account_id": bill.account_id, "fingerprint": fp, "remote_id": cid})
            self._customers[bill.account_id] = cid
            return cid

    # -- delivery -----------------------------------------------------------------------------
    def deliver(self, bill: EnrichedBill, dry_run: bool = False) -> Delivery:
        fingerprint = bill.fingerprint  # a hash of the whole bill: computed once here
        result = Delivery(bill_id=bill.bill_id, destination=self.dest.name, status="delivered",
                          fingerprint=fingerprint, account_code=bill.account_code)
        entry = self.ledger.get(self.dest.name, bill.bill_id)
        if entry and entry.get("fingerprint") == fingerprint:
            return result.model_copy(update={"status": "unchanged", "remote_id": entry.get("remote_id")})
        if dry_run:
            what = "update (bill changed since export)" if entry else "create"
            return result.model_copy(update={"status": "dry_run", "detail": f"would {what} invoice"})
        try:
            currency_id = self.currency_id(bill.currency)
            customer_id = self.ensure_customer(bill, currency_id)
            body = invoice_body(self.dest, bill, customer_id, currency_id)
            try:
                remote_id = self.hook.upsert_by_external_id("invoice", bill.bill_id, body)
                detail = "invoice updated (bill changed since export)" if entry else "invoice upserted"
            except NetSuiteError as err:
                if not err.is_closed_period or self.dest.locked_invoice_policy != "credit_memo":
                    raise
                correction = self.correct_locked(bill, customer_id, currency_id)
                if correction is None:
                    raise
                remote_id, detail = correction
        except NetSuiteError as err:
            status = "action_needed" if err.is_action_needed else "failed"
            # err.detail is NetSuite's own text: finance acts on it, so it is quoted unchanged.
            return result.model_copy(update={"status": status, "detail": err.detail if status == "action_needed"
                                             else str(err), "retryable": err.retryable or err.status == 0})
        self.ledger.put(self.dest.name, bill.bill_id, {
            "bill_id": bill.bill_id, "destination": self.dest.name, "fingerprint": fingerprint,
            "remote_id": remote_id, "total": bill.erp_total, "currency": bill.currency,
            "account_id": bill.account_id, "delivered_at": now_iso()})
        return result.model_copy(update={"remote_id": remote_id, "detail": detail})

    def correct_locked(self, bill: EnrichedBill, customer_id: str, currency_id: str) -> tuple[str, str] | None:
        """Book the difference to a locked invoice; None when there is no invoice to correct."""
        invoice = self.hook.get_by_external_id("invoice", bill.bill_id, expand_sub_resources=False)
        if invoice is None:
            return None
        net = float(invoice.get("total") or 0.0)
        # Earlier corrections of this bill (credit memos carry negative totals in SuiteQL).
        safe_id = bill.bill_id.replace("'", "''")
        rows = self.hook.suiteql("SELECT id, externalid, foreigntotal FROM transaction "  # noqa: S608
                                 f"WHERE externalid LIKE '{safe_id}:%' ORDER BY id")
        net += sum(float(r.get("foreigntotal") or 0.0) for r in rows)
        delta = round(bill.erp_total - net, 2)
        if abs(delta) < CORRECTION_TOLERANCE:
            return str(invoice["id"]), "locked invoice already corrected"
        kind = "creditMemo" if delta < 0 else "invoice"
        eid = f"{bill.bill_id}:{'cm' if delta < 0 else 'adj'}:{bill.fingerprint}"
        body = {
            "entity": {"id": customer_id},
            "subsidiary": {"id": self.dest.subsidiary_id},
            "currency": {"id": currency_id},
            "tranDate": dt.datetime.now(dt.UTC).date().isoformat(),
            "memo": f"Correction of m3ter bill {bill.invoice_number or bill.bill_id}: its invoice "
                    f"{invoice.get('tranId', invoice['id'])} is in a closed period",
            "item": {"items": [{"item": {"id": self.dest.default_item_id}, "quantity": 1,
                                "amount": abs(delta), "description": f"Correction of m3ter bill {bill.bill_id}"}]},
        }
        rid = self.hook.upsert_by_external_id(kind, eid, body)
        label = "credit memo" if delta < 0 else "adjustment invoice"
        log.info("bill %s: invoice %s is locked; booked a %s of %.2f %s (%s)", bill.bill_id, invoice["id"],
                 label, abs(delta), bill.currency, eid)
        return rid, f"invoice locked (closed period): {label} {eid} for {abs(delta):.2f}"


def read_transactions(dest: NetSuiteDestination, hook: NetSuiteHook | None = None) -> list[dict[str, Any]]:
    """Every invoice and credit memo of the destination's NetSuite account, as
    :func:`m3sh.invoicing.reconcile.compare_netsuite` reads them (reconciliation's read-back)."""
    return list((hook or NetSuiteHook(dest.conn_id)).suiteql(TRANSACTIONS_SUITEQL))
