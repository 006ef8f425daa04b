"""The demo NetSuite accounts: Northwind's US company (USD) and its EU subsidiary company (EUR).

Each NetSuite account is a separate company with its own internal ids, so both use subsidiary
``1`` and currency ``1`` for their base currency, like two real accounts would. Items share the
internal ids from :data:`m3sh.sandbox.seed.NETSUITE_ITEMS` so one item mapping serves both.
Customers and invoices start empty: m3sh creates them.
"""

from __future__ import annotations

from typing import Any

from m3sh.sandbox.seed import NETSUITE_ITEMS

SUBSIDIARIES: dict[str, dict[str, Any]] = {
    "default": {"id": "1", "name": "Northwind Cloud US Inc", "country": "US", "base": "USD"},
    "eu": {"id": "1", "name": "Northwind Cloud EU BV", "country": "NL", "base": "EUR"},
}

_CURRENCY_NAMES = {"USD": "US Dollar", "EUR": "Euro", "GBP": "British pound", "CAD": "Canadian Dollar"}

_ITEM_NAMES = {
    "api_platform": ("API Platform subscription", "serviceSaleItem"),
    "standing_charge": ("Platform standing charge", "serviceSaleItem"),
    "usage": ("API usage", "serviceSaleItem"),
}


def currencies(base: str) -> list[dict[str, Any]]:
    """Base currency first (internal id 1), then the others the account trades in."""
    order = [base] + [c for c in ("USD", "EUR", "GBP", "CAD") if c != base]
    return [
        {"id": str(i), "name": _CURRENCY_NAMES[sym], "symbol": sym, "refName": sym,
         "isBaseCurrency": sym == base, "exchangeRate": 1.0}
        for i, sym in enumerate(order, start=1)
    ]


def subsidiary(label: str, currency_list: list[dict[str, Any]]) -> dict[str, Any]:
    spec = SUBSIDIARIES[label]
    base = next(c for c in currency_list if c["symbol"] == spec["base"])
    return {"id": spec["id"], "name": spec["name"], "refName": spec["name"], "country": spec["country"],
            "currency": {"id": base["id"], "refName": base["refName"]}, "isInactive": False}


def items() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for key, internal_id in NETSUITE_ITEMS.items():
        name, record_type = _ITEM_NAMES.get(key, (key, "serviceSaleItem"))
        out.append((record_type, {"id": internal_id, "itemId": key, "displayName": name, "refName": key,
                                  "externalId": f"m3sh-item-{key}", "isInactive": False,
                                  "includeChildren": True}))
    return out
