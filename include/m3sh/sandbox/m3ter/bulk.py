"""``POST /_sandbox/bulk_seed``: many accounts with prepaid balances at once, for benchmarks.

``{"accounts": 10000, "prefix": "bench", "credit": 1000, "depleted_every": 100, "depleted_amount": 50}``
creates ``accounts`` accounts (codes ``<prefix>-00000`` ...) each with one active prepaid balance
credited ``credit`` through a ``prepaid_credit`` transaction; every ``depleted_every``-th balance is
then drawn down to ``depleted_amount``. Entities are inserted directly (no per-entity events), which
is what makes 10,000 accounts take well under a second; the wire format is the same as the API's.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from m3sh.sandbox.m3ter.store import SERVICE_USER

if TYPE_CHECKING:
    from m3sh.sandbox.m3ter.app import M3terEmulator


def admin_bulk_seed(emu: M3terEmulator, body: dict[str, Any]) -> dict[str, Any]:
    n = int(body.get("accounts", 10_000))
    prefix = str(body.get("prefix", "bench"))
    credit = float(body.get("credit", 1000.0))
    every = int(body.get("depleted_every", 100))
    low = float(body.get("depleted_amount", 50.0))
    if not 1 <= n <= 200_000:
        raise ValueError("accounts must be between 1 and 200000")
    today = dt.datetime.now(dt.UTC).date()
    start = f"{(today - dt.timedelta(days=30)).isoformat()}T00:00:00Z"
    end = f"{(today + dt.timedelta(days=365)).isoformat()}T00:00:00Z"
    with emu.lock:
        tx_type = emu.store.find("transactiontypes", "code", "prepaid_credit")
        depleted = 0
        for i in range(n):
            code = f"{prefix}-{i:05d}"
            account = emu.store.insert("accounts", {
                "code": code, "name": f"Bench {i}", "emailAddress": f"billing@{code}.example", "currency": "USD",
                "customFields": {}})
            balance = emu.store.insert("balances", {
                "code": f"prepaid-{code}", "name": f"prepaid-{code}", "accountId": account["id"], "currency": "USD",
                "startDate": start, "endDate": end, "amount": 0.0, "description": "Prepaid API credits"})
            for amount, desc in ((credit, "Initial prepaid credit"),
                                 (-(credit - low), "Usage draw-down")) if every and i % every == 0 else (
                                     ((credit, "Initial prepaid credit"),)):
                tx = emu.store.insert("transactions", {
                    "amount": amount, "description": desc, "entityType": "SERVICE_USER", "entityId": SERVICE_USER,
                    **({"transactionTypeId": tx_type["id"]} if tx_type and amount > 0 else {})})
                tx["_balanceId"] = balance["id"]
                tx.setdefault("transactionDate", tx["dtCreated"])
                tx.setdefault("appliedDate", tx["dtCreated"])
                balance["amount"] = round(balance["amount"] + amount, 10)
            depleted += bool(every and i % every == 0)
    return {"accounts": n, "depleted": depleted}
