"""Reading bills from m3ter, building a destination's delivery object, and running a batch.

A batch runs bills through a thread pool and turns *any* exception of one bill into a ``failed``
:class:`Delivery` naming the bill, so one bad bill never stops the others.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from m3sh import layout
from m3sh.config import (
    HubSpotDestination,
    M3shConfig,
    NetSuiteDestination,
    S3Destination,
    SalesforceDestination,
    WebhookDestination,
)
from m3sh.invoicing.ledger import Ledger, now_iso
from m3sh.invoicing.models import DONE_STATUSES, Delivery, EnrichedBill

log = logging.getLogger(__name__)


class Deliverer(Protocol):
    def deliver(self, bill: EnrichedBill, dry_run: bool = False) -> Delivery: ...


def bill_state(bill: dict[str, Any]) -> str:
    return "LOCKED" if bill.get("locked") else str(bill.get("status") or "")


def _parse(ts: str | None) -> dt.datetime | None:
    if not ts:
        return None
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def fetch_bills(m3ter: Any, states: Iterable[str], start: dt.datetime | None = None,
                end: dt.datetime | None = None, bill_ids: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Bills in ``states`` (PENDING, APPROVED, LOCKED) last changed in ``[start, end)``, with line items.

    ``bill_ids`` reads exactly those bills (any change time) and still checks their state, so a
    manual run cannot export a bill that is not ready.
    """
    wanted = set(states)
    if bill_ids:
        candidates: Iterable[dict[str, Any]] = (m3ter.get_bill(i) for i in bill_ids)
    else:
        statuses = sorted({"APPROVED" if s == "LOCKED" else s for s in wanted})
        candidates = (b for s in statuses for b in m3ter.list_bills(status=s))
    seen: set[str] = set()
    for bill in candidates:
        if bill["id"] in seen or bill_state(bill) not in wanted:
            continue
        seen.add(bill["id"])
        changed = _parse(bill.get("dtLastModified"))
        if not bill_ids and changed is not None and (
                (start is not None and changed < start) or (end is not None and changed >= end)):
            continue
        if "lineItems" not in bill:
            yield {**bill, "lineItems": list(m3ter.list_bill_line_items(bill["id"]))}
        else:
            yield bill


def make_delivery(cfg: M3shConfig, name: str, ledger: Ledger) -> Deliverer:
    return delivery_for(cfg.destination(name), ledger)


def delivery_for(dest: Any, ledger: Ledger) -> Deliverer:
    """The delivery object of one destination (a config destination model)."""
    name = getattr(dest, "name", "?")
    if isinstance(dest, NetSuiteDestination):
        from m3sh.invoicing.netsuite import NetSuiteDelivery

        return NetSuiteDelivery(dest, ledger)
    if isinstance(dest, SalesforceDestination):
        from m3sh.invoicing.salesforce import SalesforceDelivery

        return SalesforceDelivery(dest, ledger)
    if isinstance(dest, HubSpotDestination):
        from m3sh.invoicing.hubspot import HubSpotDelivery

        return HubSpotDelivery(dest, ledger)
    if isinstance(dest, S3Destination):
        from m3sh.invoicing.s3archive import S3ArchiveDelivery

        return S3ArchiveDelivery(dest, ledger)
    if isinstance(dest, WebhookDestination):
        from m3sh.invoicing.webhook import WebhookDelivery

        return WebhookDelivery(dest, ledger)
    raise ValueError(f"destination {name!r} has an unknown type {type(dest).__name__}")


def _safe_deliver(deliverer: Deliverer, bill: EnrichedBill, name: str, dry_run: bool) -> Delivery:
    try:
        return deliverer.deliver(bill, dry_run=dry_run)
    except Exception as exc:
        log.exception("bill %s -> %s failed unexpectedly", bill.bill_id, name)
        return Delivery(bill_id=bill.bill_id, destination=name, status="failed", account_code=bill.account_code,
                        detail=f"{type(exc).__name__}: {exc}"[:1000], fingerprint=bill.fingerprint)


def deliver_batch(deliverer: Deliverer, bills: list[EnrichedBill], name: str, *, threads: int = 1,
                  dry_run: bool = False) -> list[Delivery]:
    """Deliver every bill; results in input order."""
    if threads <= 1 or len(bills) <= 1:
        return [_safe_deliver(deliverer, b, name, dry_run) for b in bills]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"deliver-{name}") as pool:
        return list(pool.map(lambda b: _safe_deliver(deliverer, b, name, dry_run), bills))


def exported_destinations(results: list[dict[str, Any]], routed: dict[str, list[str]]) -> dict[str, list[str]]:
    """Bills every routed destination accepted, with the destinations that *newly* took them.

    Only these are stamped as exported in m3ter; a bill with nothing new (a re-run) is left alone.
    """
    by_bill: dict[str, dict[str, str]] = {}
    for r in results:
        by_bill.setdefault(r["bill_id"], {})[r["destination"]] = r["status"]
    out: dict[str, list[str]] = {}
    for bill_id, dests in routed.items():
        got = by_bill.get(bill_id, {})
        if dests and all(got.get(d) in DONE_STATUSES for d in dests) and any(
                got.get(d) == "delivered" for d in dests):
            out[bill_id] = [d for d in dests if got.get(d) == "delivered"]
    return out


def mark_exported(m3ter: Any, field: str, bills: list[EnrichedBill], exported: dict[str, list[str]],
                  storage: Any) -> int:
    """Stamp the export on the m3ter *account* (bills have no custom fields in m3ter's API) and
    record it per bill in S3 (``state/invoicing/exported/<bill id>.json``). Returns accounts updated."""
    stamp = now_iso()
    latest: dict[str, tuple[EnrichedBill, list[str]]] = {}
    for bill in bills:
        if bill.bill_id in exported:
            storage.put_json(layout.exported_marker(storage, bill.bill_id),
                             {"bill_id": bill.bill_id, "account_id": bill.account_id, "exported_at": stamp,
                              "destinations": exported[bill.bill_id], "fingerprint": bill.fingerprint})
            latest[bill.account_id] = (bill, exported[bill.bill_id])
    for account_id, (bill, dests) in latest.items():
        m3ter.update_account(account_id, {"customFields": {
            field: stamp, "exported_bill": bill.bill_id, "exported_to": ",".join(dests)}})
    return len(latest)
