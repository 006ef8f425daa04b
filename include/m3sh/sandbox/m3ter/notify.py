"""Events, notification calculations and signed webhook delivery, as m3ter documents them where
it does.

Documented, and emulated as documented:

* a notification is delivered only to the webhook destinations a *Notification Integration
  Configuration* links it to (``POST /integrationconfigs`` with ``entityType: "Notification"``,
  ``entityId`` = the notification, ``destinationId`` = the webhook), and only while the notification
  and the destination are active (m3ter "Example - Notification Setup for Commitment Updated Event"
  and "Creating, Managing, and Reviewing Notifications");
* the body is the Event as m3ter's API returns it (OpenAPI ``EventResponse``:
  ``{id, eventName, eventTime, dtActioned, m3terEvent: {eventData: {newDto, oldDto}}}``,
  https://docs.m3ter.com/api/events/retrieve-eventresponse), and nothing else;
* the destination's ``credentials`` are ``M3TER_SIGNED_REQUEST`` with an ``apiKey`` and a
  ``secret`` that "is used in conjunction with the API key to generate a signature" (OpenAPI).

**Assumed** (m3ter describes the signing in the "Webhook Authentication for M3TER_SIGNED_REQUEST"
section of its "Creating and Managing Destinations" guide, which no source available to us
reproduces), kept in :func:`delivery_headers` so it can be swapped once the real one is known;
m3sh's receiver verifies exactly this by default and can be configured for another scheme:

* ``X-m3ter-Timestamp``: unix seconds; ``X-m3ter-Event-Id``: the event id (= the body's ``id``);
* ``X-m3ter-ApiKey``: the destination's ``credentials.apiKey``;
* ``X-m3ter-Signature``: hex HMAC-SHA256 of ``timestamp + "." + body`` with ``credentials.secret``;
* three attempts, retrying a 5xx or a connection error.

Delivery runs on a background thread so a balance update never waits on a slow receiver.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import logging
import operator
import queue
import re
import threading
import time
from collections.abc import Iterable
from typing import Any

import requests

from m3sh.sandbox.m3ter.schemas import ApiError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-m3ter-Signature"
TIMESTAMP_HEADER = "X-m3ter-Timestamp"
EVENT_ID_HEADER = "X-m3ter-Event-Id"
API_KEY_HEADER = "X-m3ter-ApiKey"
DELIVERY_ATTEMPTS = 3


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The (assumed) M3TER_SIGNED_REQUEST signature: HMAC-SHA256 over ``timestamp.body``."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def delivery_headers(credentials: dict[str, Any], body: bytes, event_id: str, now: float | None = None
                     ) -> dict[str, str]:
    """Every header of one delivery attempt: the whole (assumed) signing scheme in one place."""
    stamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: stamp,
        EVENT_ID_HEADER: event_id,
        API_KEY_HEADER: str(credentials.get("apiKey", "")),
        SIGNATURE_HEADER: sign(str(credentials.get("secret", "")), stamp, body),
    }


def linked_destinations(notification_id: str, integration_configs: Iterable[dict[str, Any]],
                        webhooks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The active webhook destinations an enabled Notification Integration Configuration links
    ``notification_id`` to, each once (m3ter sends nothing for a notification with no link)."""
    out: dict[str, dict[str, Any]] = {}
    for cfg in integration_configs:
        if str(cfg.get("entityType", "")).lower() != "notification" or cfg.get("entityId") != notification_id:
            continue
        dest = webhooks.get(str(cfg.get("destinationId") or ""))
        if cfg.get("enabled", True) and dest is not None and dest.get("active", True):
            out.setdefault(dest["id"], dest)
    return list(out.values())


# -- calculations -------------------------------------------------------------------------------
# m3ter calculations look like ``new.amount < 100 AND old.amount >= 100``. They are translated
# to a Python expression and evaluated over a whitelist of AST nodes, never with eval().
_WORD_OPS = [
    (re.compile(r"\bAND\b", re.I), " and "),
    (re.compile(r"\bOR\b", re.I), " or "),
    (re.compile(r"\bNOT\b", re.I), " not "),
    (re.compile(r"\bTRUE\b", re.I), " True "),
    (re.compile(r"\bFALSE\b", re.I), " False "),
    (re.compile(r"\bNULL\b", re.I), " None "),
]
_SINGLE_EQ = re.compile(r"(?<![<>!=])=(?!=)")
_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}
_CMP = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


def parse_calculation(calculation: str) -> ast.Expression:
    text = calculation.replace("&&", " and ").replace("||", " or ")
    for pattern, repl in _WORD_OPS:
        text = pattern.sub(repl, text)
    text = _SINGLE_EQ.sub("==", text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ApiError(400, f"calculation: cannot parse {calculation!r}") from None
    for node in ast.walk(tree):
        allowed = (
            ast.Expression,
            ast.BoolOp,
            ast.And,
            ast.Or,
            ast.UnaryOp,
            ast.Not,
            ast.USub,
            ast.BinOp,
            ast.Compare,
            ast.Constant,
            ast.Name,
            ast.Attribute,
            ast.Load,
            *_BIN,
            *_CMP,
        )
        if not isinstance(node, allowed):
            raise ApiError(400, f"calculation: unsupported syntax {type(node).__name__}")
    return tree


def evaluate(calculation: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> bool:
    """Evaluate a calculation; a missing field makes the comparison false rather than an error."""
    scope = {"new": new or {}, "old": old or {}}

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return scope.get(node.id)
        if isinstance(node, ast.Attribute):
            base = ev(node.value)
            return base.get(node.attr) if isinstance(base, dict) else None
        if isinstance(node, ast.BoolOp):
            values = [ev(v) for v in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.UnaryOp):
            value = ev(node.operand)
            return (not value) if isinstance(node.op, ast.Not) else (-value if value is not None else None)
        if isinstance(node, ast.BinOp):
            left, right = ev(node.left), ev(node.right)
            if left is None or right is None:
                return None
            try:
                return _BIN[type(node.op)](left, right)
            except (ZeroDivisionError, TypeError):
                return None
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = ev(comparator)
                try:
                    if not _CMP[type(op)](left, right):
                        return False
                except TypeError:
                    return False
                left = right
            return True
        raise ApiError(400, f"calculation: unsupported syntax {type(node).__name__}")

    return bool(ev(parse_calculation(calculation)))


# -- delivery -----------------------------------------------------------------------------------
class WebhookDispatcher:
    """Posts signed event payloads from one daemon thread and records each delivery outcome."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[dict[str, Any], bytes, str]] = queue.Queue()
        self.deliveries: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._session = requests.Session()

    def submit(self, destination: dict[str, Any], body: bytes, event_id: str) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="m3ter-webhooks", daemon=True)
            self._thread.start()
        self._queue.put((destination, body, event_id))

    def clear(self) -> None:
        with self._lock:
            self.deliveries = []

    def _run(self) -> None:
        while True:
            destination, body, event_id = self._queue.get()
            try:
                self._deliver(destination, body, event_id)
            except Exception:  # the worker must survive any single bad delivery
                log.exception("webhook delivery crashed for destination %s", destination.get("id"))

    def _deliver(self, destination: dict[str, Any], body: bytes, event_id: str) -> None:
        creds = destination.get("credentials") or {}
        record: dict[str, Any] = {
            "destinationId": destination["id"],
            "url": destination["url"],
            "eventId": event_id,
            "attempts": 0,
            "status": None,
            "error": None,
        }
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            record["attempts"] = attempt
            headers = delivery_headers(creds, body, event_id)
            try:
                resp = self._session.post(destination["url"], data=body, headers=headers, timeout=5)
                record["status"] = resp.status_code
                record["error"] = None
                if resp.status_code < 500:
                    break
            except requests.RequestException as exc:
                record["error"] = type(exc).__name__
            time.sleep(0.2 * attempt)
        record["delivered"] = record["status"] is not None and 200 <= record["status"] < 300
        with self._lock:
            self.deliveries.append(record)


EVENT_FIELDS = ("id", "eventName", "eventTime", "dtActioned", "m3terEvent")  # OpenAPI EventResponse


def event_body(event: dict[str, Any]) -> bytes:
    """The delivered body: the Event exactly as ``GET /events/{id}`` returns it."""
    return json.dumps({k: event[k] for k in EVENT_FIELDS if k in event}, separators=(",", ":")).encode()
