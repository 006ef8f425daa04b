"""S3 archive: each bill as JSON and CSV under a date partition, at deterministic keys.

``<prefix>year=YYYY/month=MM/day=DD/<bill id>.json`` (and ``.csv``), partitioned by bill date, so
Athena/Glue can read the archive and a re-delivery overwrites the same objects instead of adding.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from typing import Any

from m3sh.config import S3Destination
from m3sh.invoicing.base import DestinationDelivery
from m3sh.invoicing.ledger import Ledger
from m3sh.invoicing.models import EnrichedBill
from m3sh.storage import Storage

CSV_COLUMNS = ["bill_id", "invoice_number", "account_code", "account_name", "currency", "bill_date", "due_date",
               "line", "line_type", "product_code", "description", "quantity", "unit_price", "amount"]


def archive_keys(dest: S3Destination, bill_id: str, bill_date: str) -> tuple[str, str]:
    y, m, d = bill_date[:10].split("-")
    base = f"{dest.prefix.rstrip('/')}/year={y}/month={m}/day={d}/{bill_id}".lstrip("/")
    return base + ".json", base + ".csv"


def archive_json(bill: EnrichedBill) -> dict[str, Any]:
    return {**bill.model_dump(mode="json"), "erp_total": bill.erp_total, "fingerprint": bill.fingerprint}


def archive_csv(bill: EnrichedBill) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS)
    writer.writeheader()
    for n, line in enumerate(bill.lines, start=1):
        writer.writerow({"bill_id": bill.bill_id, "invoice_number": bill.invoice_number,
                         "account_code": bill.account_code, "account_name": bill.account_name,
                         "currency": bill.currency, "bill_date": bill.bill_date, "due_date": bill.due_date,
                         "line": n, "line_type": line.line_type, "product_code": line.product_code,
                         "description": line.description, "quantity": line.quantity,
                         "unit_price": line.unit_price, "amount": line.amount_2dp})
    return buf.getvalue().encode()


class S3ArchiveDelivery(DestinationDelivery):
    def __init__(self, dest: S3Destination, ledger: Ledger, storage: Storage | None = None) -> None:
        super().__init__(dest.name, ledger)
        self.dest = dest
        self.storage = storage or Storage(dest.conn_id, dest.bucket)

    def send(self, bill: EnrichedBill) -> tuple[str, str | None, str]:
        json_key, csv_key = archive_keys(self.dest, bill.bill_id, bill.bill_date)
        self.storage.put_bytes(json_key, json.dumps(archive_json(bill), indent=1).encode(), "application/json")
        self.storage.put_bytes(csv_key, archive_csv(bill), "text/csv")
        return "delivered", json_key, f"archived at {self.storage.uri(json_key)}"


def read_archived(dest: S3Destination, bill_dates: Mapping[str, str],
                  storage: Storage | None = None) -> dict[str, dict[str, Any]]:
    """Reconciliation's read-back: the archived JSON of each bill (``bill_dates``: bill id -> bill
    date, which places it) that exists, as ``{"total", "currency"}``."""
    storage = storage or Storage(dest.conn_id, dest.bucket)
    found: dict[str, dict[str, Any]] = {}
    for bill_id, bill_date in bill_dates.items():
        data = storage.get_json(archive_keys(dest, bill_id, bill_date)[0])
        if isinstance(data, dict):
            found[bill_id] = {"total": data.get("erp_total"), "currency": data.get("currency")}
    return found
