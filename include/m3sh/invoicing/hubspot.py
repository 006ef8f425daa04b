"""HubSpot delivery: the latest invoice as a deal property on the company's most recent won deal.

HubSpot has no invoice object in the CRM API m3sh uses, so the deal carries a one-line summary
(``INV-000123 2026-12-01 1234.50 USD (m3ter bill <id>)``); writing the same value twice is a no-op.
"""

from __future__ import annotations

from typing import Any

from m3sh.config import HubSpotDestination
from m3sh.invoicing.base import DestinationDelivery
from m3sh.invoicing.ledger import Ledger
from m3sh.invoicing.models import EnrichedBill


def summary_value(bill: EnrichedBill) -> str:
    return (f"{bill.invoice_number or bill.bill_id} {bill.bill_date} {bill.erp_total:.2f} {bill.currency} "
            f"(m3ter bill {bill.bill_id})")


class HubSpotDelivery(DestinationDelivery):
    def __init__(self, dest: HubSpotDestination, ledger: Ledger, hook: Any | None = None) -> None:
        super().__init__(dest.name, ledger)
        self.dest = dest
        self._hook = hook
        self._property_ready = False

    @property
    def hook(self) -> Any:
        if self._hook is None:
            from m3sh.hooks.hubspot import HubSpotHook

            self._hook = HubSpotHook(self.dest.conn_id)
        return self._hook

    def send(self, bill: EnrichedBill) -> tuple[str, str | None, str]:
        if bill.crm.source != "hubspot" or not bill.crm.opportunity_id:
            return "not_applicable", None, "the account has no HubSpot deal to update"
        if not self._property_ready:
            self.hook.ensure_property("deals", self.dest.deal_property, "m3ter last invoice",
                                      description="Written by m3sh_invoice_sync")
            self._property_ready = True
        result = self.hook.batch_update("deals", [{"id": bill.crm.opportunity_id,
                                                   "properties": {self.dest.deal_property: summary_value(bill)}}])
        if not result.ok:
            reason = result.failed[0][1] if result.failed else "unknown"
            raise RuntimeError(f"HubSpot deal {bill.crm.opportunity_id}: {reason}")
        return "delivered", bill.crm.opportunity_id, f"deal {bill.crm.opportunity_id} updated"
