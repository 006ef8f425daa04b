"""HubSpot delivery: the latest invoice as a deal property on the company's most recent won deal.

HubSpot has no invoice object in the CRM API m3sh uses, so the deal carries a one-line summary
(``INV-000123 2026-12-01 1234.50 USD (m3ter bill <id>)``). The deal is read first: a deal that
already shows this summary, or a later invoice (by bill date, then invoice number), is left alone,
so a repeated or forced delivery writes nothing and an older bill never replaces a newer one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from m3sh.config import HubSpotDestination
from m3sh.invoicing.base import DestinationDelivery, KeyedLocks, invoice_ref, shows_newer
from m3sh.invoicing.ledger import Ledger
from m3sh.invoicing.models import EnrichedBill

_SUMMARY = re.compile(r"^(?P<ref>\S+) (?P<date>\d{4}-\d{2}-\d{2}) ")
_FULL_SUMMARY = re.compile(r"^(?P<ref>\S+) (?P<date>\d{4}-\d{2}-\d{2}) (?P<total>-?\d+(?:\.\d+)?) (?P<currency>\S+) "
                           r"\(m3ter bill (?P<bill_id>[^)\s]+)\)$")


def summary_value(bill: EnrichedBill) -> str:
    return f"{invoice_ref(bill)} {bill.bill_date} {bill.erp_total:.2f} {bill.currency} (m3ter bill {bill.bill_id})"


def shown_invoice(value: Any) -> tuple[str | None, str | None]:
    """``(date, invoice)`` of the summary a deal shows now; ``(None, None)`` for anything else."""
    found = _SUMMARY.match(str(value or ""))
    return (found["date"], found["ref"]) if found else (None, None)


def parse_summary(value: Any) -> dict[str, Any] | None:
    """The parts of a summary :func:`summary_value` wrote (``invoice``, ``date``, ``total``,
    ``currency``, ``bill_id``); None for anything else (empty, or edited by hand)."""
    found = _FULL_SUMMARY.match(str(value or ""))
    if not found:
        return None
    return {"invoice": found["ref"], "date": found["date"], "total": float(found["total"]),
            "currency": found["currency"], "bill_id": found["bill_id"]}


def read_deal_invoices(dest: HubSpotDestination, deal_ids: Sequence[str], hook: Any | None = None) -> dict[str, Any]:
    """Reconciliation's read-back: the summary each deal shows in the destination's property
    (``None`` when empty); deals HubSpot no longer has are absent."""
    if not deal_ids:
        return {}
    if hook is None:
        from m3sh.hooks.hubspot import HubSpotHook

        hook = HubSpotHook(dest.conn_id)
    deals = hook.batch_read("deals", sorted(set(deal_ids)), [dest.deal_property])
    return {str(deal_id): (deal.get("properties") or {}).get(dest.deal_property) for deal_id, deal in deals.items()}


class HubSpotDelivery(DestinationDelivery):
    def __init__(self, dest: HubSpotDestination, ledger: Ledger, hook: Any | None = None) -> None:
        super().__init__(dest.name, ledger)
        self.dest = dest
        self._hook = hook
        self._property_ready = False
        self._deal_lock = KeyedLocks()

    @property
    def hook(self) -> Any:
        if self._hook is None:
            from m3sh.hooks.hubspot import HubSpotHook

            self._hook = HubSpotHook(self.dest.conn_id)
        return self._hook

    def send(self, bill: EnrichedBill) -> tuple[str, str | None, str]:
        deal_id = bill.crm.opportunity_id
        if bill.crm.source != "hubspot" or not deal_id:
            return "not_applicable", None, "the account has no HubSpot deal to update"
        if self.dest.crm_source is not None and bill.crm.source_name != self.dest.crm_source:
            # another org's customer: its record ids mean nothing in this destination's org
            return "not_applicable", None, (f"the customer's {bill.crm.source} record is in source "
                                            f"{bill.crm.source_name!r}, not {self.dest.crm_source!r}")
        prop = self.dest.deal_property
        if not self._property_ready:  # a concurrent first call is harmless: ensure_property is idempotent
            self.hook.ensure_property("deals", prop, "m3ter last invoice", description="Written by m3sh_invoice_sync")
            self._property_ready = True
        value = summary_value(bill)
        with self._deal_lock(deal_id):
            deal = self.hook.batch_read("deals", [deal_id], [prop]).get(deal_id)
            if deal is None:
                raise RuntimeError(f"HubSpot deal {deal_id} of company {bill.crm.account_id} (bill {bill.bill_id}) "
                                   "was not found: deleted or merged since the bill was enriched")
            shown = (deal.get("properties") or {}).get(prop)
            if shown == value:
                return "delivered", deal_id, f"deal {deal_id} already shows it"
            shown_date, shown_ref = shown_invoice(shown)
            if shows_newer(bill, shown_date, shown_ref):
                return "delivered", deal_id, f"deal {deal_id} left alone: it shows a later invoice ({shown})"
            result = self.hook.batch_update("deals", [{"id": deal_id, "properties": {prop: value}}])
        if not result.ok:
            reason = result.failed[0][1] if result.failed else "unknown"
            raise RuntimeError(f"HubSpot deal {deal_id} (bill {bill.bill_id}), property {prop}: {reason}")
        return "delivered", deal_id, f"deal {deal_id} updated"
