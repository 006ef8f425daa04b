"""Customer webhook delivery: the bill as JSON, HMAC-SHA256 signed like m3sh alerts
(``X-M3sh-Signature`` over ``timestamp.body`` with the connection password) plus an
``Idempotency-Key`` of bill id + content version, so the receiver drops repeats of the same version.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import requests

from m3sh.config import WebhookDestination
from m3sh.exceptions import RetryableError
from m3sh.invoicing.base import DestinationDelivery
from m3sh.invoicing.ledger import Ledger
from m3sh.invoicing.models import EnrichedBill
from m3sh.invoicing.s3archive import archive_json


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signed_headers(secret: bytes, body: bytes, idempotency_key: str, now: float | None = None) -> dict[str, str]:
    ts = str(int(now if now is not None else time.time()))
    return {"Content-Type": "application/json", "X-M3sh-Timestamp": ts,
            "X-M3sh-Signature": sign(secret, ts, body), "Idempotency-Key": idempotency_key}


class WebhookDelivery(DestinationDelivery):
    def __init__(self, dest: WebhookDestination, ledger: Ledger, timeout_s: float = 15.0) -> None:
        super().__init__(dest.name, ledger)
        self.dest = dest
        self.timeout_s = timeout_s
        self._conn: Any | None = None

    def _connection(self) -> tuple[str, bytes]:
        if self._conn is None:
            from airflow.sdk import BaseHook

            self._conn = BaseHook.get_connection(self.dest.conn_id)
        url = (self._conn.host or "").rstrip("/") + "/" + self.dest.endpoint.lstrip("/")
        if "://" not in url:
            url = "https://" + url
        return url, (self._conn.password or "").encode()

    def send(self, bill: EnrichedBill) -> tuple[str, str | None, str]:
        url, secret = self._connection()
        body = json.dumps({"event": "invoice", "version": bill.fingerprint, "invoice": archive_json(bill)},
                          default=str, separators=(",", ":")).encode()
        try:
            resp = requests.post(url, data=body, timeout=self.timeout_s,
                                 headers=signed_headers(secret, body, bill.idempotency_key))
        except requests.RequestException as exc:
            raise RetryableError(f"webhook {self.dest.name}: {type(exc).__name__}") from None
        if resp.status_code >= 500 or resp.status_code == 429:
            raise RetryableError(f"webhook {self.dest.name}: HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise ValueError(f"webhook {self.dest.name} refused the invoice: HTTP {resp.status_code} "
                             f"{resp.text[:200]}")
        return "delivered", bill.idempotency_key, f"HTTP {resp.status_code}"
