"""Events, notification calculations and signed webhook delivery.

m3ter does not publish its webhook signing scheme (``M3TER_SIGNED_REQUEST``; see the api-notes
§3.12), so the scheme here is an **assumption**, kept in one function so it can be swapped once
the real one is known:

* body: the Event JSON exactly as ``GET /events/{id}`` returns it;
* ``X-m3ter-Timestamp``: unix seconds; ``X-m3ter-Event-Id``: the event id;
* ``X-m3ter-ApiKey``: the destination's ``credentials.apiKey``;
* ``X-m3ter-Signature``: hex HMAC-SHA256 of ``timestamp + "." + body`` with ``credentials.secret``.

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
            stamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: stamp,
                EVENT_ID_HEADER: event_id,
                API_KEY_HEADER: str(creds.get("apiKey", "")),
                SIGNATURE_HEADER: sign(str(creds.get("secret", "")), stamp, body),
            }
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


def event_body(event: dict[str, Any]) -> bytes:
    return json.dumps(
        {k: v for k, v in event.items() if not k.startswith("_")}, separators=(",", ":")
    ).encode()
