"""What every destination shares: the ledger check before, and the ledger entry after, a delivery."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from m3sh.invoicing.ledger import Ledger, now_iso
from m3sh.invoicing.models import Delivery, EnrichedBill


class DestinationDelivery(ABC):
    """One destination. Subclasses implement :meth:`send` (idempotent) and may return
    ``not_applicable`` for bills the destination cannot take (e.g. no CRM record to attach to)."""

    name: str

    def __init__(self, name: str, ledger: Ledger) -> None:
        self.name = name
        self.ledger = ledger

    @abstractmethod
    def send(self, bill: EnrichedBill) -> tuple[str, str | None, str]:
        """Write the bill; returns ``(status, remote id, detail)``."""

    def error_status(self, exc: Exception) -> tuple[str, bool]:
        """``(status, retryable)`` for an exception of :meth:`send`."""
        from m3sh.exceptions import RetryableError

        return "failed", isinstance(exc, RetryableError | ConnectionError | TimeoutError)

    def deliver(self, bill: EnrichedBill, dry_run: bool = False) -> Delivery:
        result = Delivery(bill_id=bill.bill_id, destination=self.name, status="delivered",
                          fingerprint=bill.fingerprint, account_code=bill.account_code)
        entry = self.ledger.get(self.name, bill.bill_id)
        if entry and entry.get("fingerprint") == bill.fingerprint:
            return result.model_copy(update={"status": "unchanged", "remote_id": entry.get("remote_id")})
        if dry_run:
            return result.model_copy(update={"status": "dry_run",
                                             "detail": "would update (bill changed)" if entry else "would create"})
        try:
            status, remote_id, detail = self.send(bill)
        except Exception as exc:  # one bill's failure never stops the batch; it is reported by name
            status, retryable = self.error_status(exc)
            return result.model_copy(update={"status": status, "detail": f"{type(exc).__name__}: {exc}"[:1000],
                                             "retryable": retryable})
        if status == "delivered":
            self.ledger.put(self.name, bill.bill_id, ledger_entry(self.name, bill, remote_id))
        return result.model_copy(update={"status": status, "remote_id": remote_id, "detail": detail})


def ledger_entry(destination: str, bill: EnrichedBill, remote_id: str | None, **extra: Any) -> dict[str, Any]:
    return {"bill_id": bill.bill_id, "destination": destination, "fingerprint": bill.fingerprint,
            "remote_id": remote_id, "total": bill.erp_total, "currency": bill.currency,
            "account_id": bill.account_id, "delivered_at": now_iso(), **extra}
