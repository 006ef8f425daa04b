"""Salesforce delivery: an ``Invoice__c`` upserted by ``M3ter_Bill_Id__c`` (external id), linked to the
customer's Account (and its won Opportunity) through the CRM id found during enrichment; then the
latest invoice's number, status, date and amount on that Account and Opportunity, so sales sees
billing where it works.

The status write reads the record first and PATCHes only the fields that differ (a repeated
delivery writes nothing), and only when the bill is the customer's latest one (by bill date, then
invoice number): a late approval or a correction of an older bill never rolls the record back.
The invoice status is part of what the ledger compares, so a bill locked in m3ter after export
(``bill_states`` including ``LOCKED``) is delivered again as ``Posted``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from m3sh.config import SF_FIELD_NAME, InvoiceStatusValue, SalesforceDestination
from m3sh.invoicing.base import DestinationDelivery, KeyedLocks, invoice_ref, shows_newer
from m3sh.invoicing.ledger import Ledger
from m3sh.invoicing.models import EnrichedBill

AMOUNT_TOLERANCE = 0.005
FieldMap = Mapping[InvoiceStatusValue, str]  # config: latest-invoice value -> Salesforce field


def invoice_status(bill: EnrichedBill) -> str:
    """The ``Status__c`` picklist value: a bill locked in m3ter is final (``Posted``)."""
    return "Posted" if bill.locked else "Approved"


def invoice_fields(bill: EnrichedBill) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "Name": invoice_ref(bill)[:80],
        "Account__c": bill.crm.account_id,
        "Invoice_Number__c": invoice_ref(bill),
        "Amount__c": bill.erp_total,
        "Currency__c": bill.currency,
        "Status__c": invoice_status(bill),
        "Invoice_Date__c": bill.bill_date,
    }
    if bill.due_date:
        fields["Due_Date__c"] = bill.due_date[:10]
    if bill.crm.opportunity_id:
        fields["Opportunity__c"] = bill.crm.opportunity_id
    return fields


def status_values(bill: EnrichedBill) -> dict[str, Any]:
    """Every latest-invoice value an Account / Opportunity field can be mapped to (config keys)."""
    return {"invoice": invoice_ref(bill), "status": invoice_status(bill), "date": bill.bill_date[:10],
            "amount": bill.erp_total, "currency": bill.currency, "bill_id": bill.bill_id}


def _same(current: Any, wanted: Any) -> bool:
    """Salesforce returns currency fields as numbers and dates as ``YYYY-MM-DD``."""
    if current is None:
        return False
    if isinstance(wanted, float):
        try:
            return abs(float(current) - wanted) < AMOUNT_TOLERANCE
        except (TypeError, ValueError):
            return False
    return str(current) == str(wanted)


def shown_invoice(mapping: FieldMap, current: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(date, invoice)`` of the invoice a record shows now (``mapping`` always has ``date``)."""
    return current.get(mapping["date"]), current.get(mapping["invoice"]) if "invoice" in mapping else None


def status_changes(bill: EnrichedBill, mapping: FieldMap, current: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of one record to PATCH so it shows ``bill`` (empty: it already does)."""
    values = status_values(bill)
    wanted = {field: values[key] for key, field in mapping.items()}
    return {field: value for field, value in wanted.items() if not _same(current.get(field), value)}


class SalesforceDelivery(DestinationDelivery):
    def __init__(self, dest: SalesforceDestination, ledger: Ledger, sync: Any | None = None) -> None:
        super().__init__(dest.name, ledger)
        self.dest = dest
        self._sync = sync
        self._record_lock = KeyedLocks()

    @property
    def sync(self) -> Any:
        if self._sync is None:
            from m3sh.hooks.salesforce import SalesforceSync

            self._sync = SalesforceSync(conn_id=self.dest.conn_id)
        return self._sync

    def version(self, bill: EnrichedBill) -> str:
        # Unchanged for approved bills, so ledgers written before the status was shown stay valid.
        status = invoice_status(bill)
        return bill.fingerprint if status == "Approved" else f"{bill.fingerprint}:{status}"

    def error_status(self, exc: Exception) -> tuple[str, bool]:
        from m3sh.hooks.salesforce import SalesforceSyncError

        if isinstance(exc, SalesforceSyncError):
            return ("failed", True) if exc.retryable else ("action_needed", False)
        return super().error_status(exc)

    def send(self, bill: EnrichedBill) -> tuple[str, str | None, str]:
        if bill.crm.source != "salesforce" or not bill.crm.account_id:
            return "not_applicable", None, "the account has no Salesforce record to attach the invoice to"
        if self.dest.crm_source is not None and bill.crm.source_name != self.dest.crm_source:
            # another org's customer: its record ids mean nothing in this destination's org
            return "not_applicable", None, (f"the customer's {bill.crm.source} record is in source "
                                            f"{bill.crm.source_name!r}, not {self.dest.crm_source!r}")
        result = self.sync.upsert_by_external_id(self.dest.invoice_object, self.dest.external_id_field,
                                                 bill.bill_id, invoice_fields(bill))
        notes = [f"{self.dest.invoice_object} {'created' if result.created else 'updated'}"]
        targets = (("Opportunity", bill.crm.opportunity_id, self.dest.opportunity_fields),
                   ("Account", bill.crm.account_id, self.dest.account_fields))
        for sobject, record_id, mapping in targets:
            if record_id and mapping:
                notes.append(self.write_status(sobject, record_id, mapping, bill))
        return "delivered", result.id, "; ".join(notes)

    def write_status(self, sobject: str, record_id: str, mapping: FieldMap, bill: EnrichedBill) -> str:
        """Show ``bill`` as the latest invoice on one record; returns what happened, for the run log."""
        with self._record_lock(record_id[:15]):
            current = self.sync.get_record(sobject, record_id, ["Id", *mapping.values()])
            shown_date, shown_ref = shown_invoice(mapping, current)
            if shows_newer(bill, shown_date, shown_ref):
                return f"{sobject} {record_id} left alone: it shows a later invoice ({shown_ref or ''} {shown_date})"
            changes = status_changes(bill, mapping, current)
            if not changes:
                return f"{sobject} {record_id} already shows it"
            self.sync.update_record(sobject, record_id, changes)
        return f"{sobject} {record_id}: {', '.join(changes)} set"


def read_invoices(dest: SalesforceDestination, sync: Any | None = None) -> dict[str, dict[str, Any]]:
    """Reconciliation's read-back: every invoice record of the destination's org by bill id (its
    external id field), as ``{"total", "currency", "status"}`` (the fields :func:`invoice_fields` writes)."""
    # The object and field names go into SOQL as they are: refuse anything but API names (a
    # destination need not come from a validated file).
    bad = [n for n in (dest.invoice_object, dest.external_id_field) if not re.fullmatch(SF_FIELD_NAME, n)]
    if bad:
        raise ValueError(f"salesforce {dest.name}: {bad} are not Salesforce API names")
    if sync is None:
        from m3sh.hooks.salesforce import SalesforceSync

        sync = SalesforceSync(conn_id=dest.conn_id)
    eid = dest.external_id_field
    rows = sync.query(f"SELECT {eid}, Amount__c, Currency__c, Status__c FROM {dest.invoice_object}",  # noqa: S608
                      sobject=dest.invoice_object)
    return {str(r[eid]): {"total": r.get("Amount__c"), "currency": r.get("Currency__c"), "status": r.get("Status__c")}
            for r in rows if r.get(eid)}
