"""Salesforce delivery: an ``Invoice__c`` upserted by ``M3ter_Bill_Id__c`` (external id), linked to the
customer's Account (and its won Opportunity) through the CRM id found during enrichment."""

from __future__ import annotations

from typing import Any

from m3sh.config import SalesforceDestination
from m3sh.invoicing.base import DestinationDelivery
from m3sh.invoicing.ledger import Ledger
from m3sh.invoicing.models import EnrichedBill


def invoice_fields(bill: EnrichedBill) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "Name": (bill.invoice_number or bill.bill_id)[:80],
        "Account__c": bill.crm.account_id,
        "Invoice_Number__c": bill.invoice_number or bill.bill_id,
        "Amount__c": bill.erp_total,
        "Currency__c": bill.currency,
        "Status__c": "Posted" if bill.locked else "Approved",
        "Invoice_Date__c": bill.bill_date,
    }
    if bill.due_date:
        fields["Due_Date__c"] = bill.due_date[:10]
    if bill.crm.opportunity_id:
        fields["Opportunity__c"] = bill.crm.opportunity_id
    return fields


class SalesforceDelivery(DestinationDelivery):
    def __init__(self, dest: SalesforceDestination, ledger: Ledger, sync: Any | None = None) -> None:
        super().__init__(dest.name, ledger)
        self.dest = dest
        self._sync = sync

    @property
    def sync(self) -> Any:
        if self._sync is None:
            from m3sh.hooks.salesforce import SalesforceSync

            self._sync = SalesforceSync(conn_id=self.dest.conn_id)
        return self._sync

    def error_status(self, exc: Exception) -> tuple[str, bool]:
        from m3sh.hooks.salesforce import SalesforceSyncError

        if isinstance(exc, SalesforceSyncError):
            return ("failed", True) if exc.retryable else ("action_needed", False)
        return super().error_status(exc)

    def send(self, bill: EnrichedBill) -> tuple[str, str | None, str]:
        if bill.crm.source != "salesforce" or not bill.crm.account_id:
            return "not_applicable", None, "the account has no Salesforce record to attach the invoice to"
        result = self.sync.upsert_by_external_id(self.dest.invoice_object, self.dest.external_id_field,
                                                 bill.bill_id, invoice_fields(bill))
        return "delivered", result.id, "created" if result.created else "updated"
