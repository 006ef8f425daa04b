"""What every destination shares: the ledger check before, and the ledger entry after, a delivery."""

from __future__ import annotations

import threading
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

    def version(self, bill: EnrichedBill) -> str:
        """What the ledger compares to skip a bill: its content fingerprint. A destination that also
        shows something the fingerprint leaves out (Salesforce shows the invoice status) extends it."""
        return bill.fingerprint

    def error_status(self, exc: Exception) -> tuple[str, bool]:
        """``(status, retryable)`` for an exception of :meth:`send`."""
        from m3sh.exceptions import RetryableError

        return "failed", isinstance(exc, RetryableError | ConnectionError | TimeoutError)

    def deliver(self, bill: EnrichedBill, dry_run: bool = False) -> Delivery:
        result = Delivery(bill_id=bill.bill_id, destination=self.name, status="delivered",
                          fingerprint=bill.fingerprint, account_code=bill.account_code)
        entry = self.ledger.get(self.name, bill.bill_id)
        if entry and entry.get("fingerprint") == self.version(bill):
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
            self.ledger.put(self.name, bill.bill_id,
                            ledger_entry(self.name, bill, remote_id, fingerprint=self.version(bill)))
        return result.model_copy(update={"status": status, "remote_id": remote_id, "detail": detail})


def ledger_entry(destination: str, bill: EnrichedBill, remote_id: str | None, **extra: Any) -> dict[str, Any]:
    return {"bill_id": bill.bill_id, "destination": destination, "fingerprint": bill.fingerprint,
            "remote_id": remote_id, "total": bill.erp_total, "currency": bill.currency,
            "account_id": bill.account_id, "delivered_at": now_iso(), **extra}


def invoice_ref(bill: EnrichedBill) -> str:
    """How a CRM record names the bill's invoice: m3ter's sequential invoice number, else the bill id."""
    return bill.invoice_number or bill.bill_id


def shows_newer(bill: EnrichedBill, shown_date: Any, shown_ref: Any = None) -> bool:
    """True when a CRM record already shows a later invoice than ``bill``: a later bill date, or the
    same date and a later invoice reference. Delivering an older bill (a late approval, a correction
    of last month) then leaves the record alone instead of rolling it back."""
    date = str(shown_date or "")[:10]
    if date != bill.bill_date[:10]:
        return date > bill.bill_date[:10]
    ref = str(shown_ref or "")
    return bool(ref) and ref > invoice_ref(bill)


class KeyedLocks:
    """One lock per CRM record, so two bills of one customer delivered by parallel threads cannot
    interleave their read-compare-write of that record. Across worker processes (two mapped tasks
    holding bills of one customer at the same instant) the window is one read and one write; a
    ``redeliver`` run settles the record on the latest bill again."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def __call__(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())
