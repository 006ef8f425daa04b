"""Which destinations a bill goes to: every route whose conditions all hold, then each
destination's cut-over window (so an entity can graduate from one ERP to another on a date).

Pure functions of the config and the enriched bill, so the rules are unit-tested without systems.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from m3sh.config import InvoicingConfig, Route, RouteMatch
from m3sh.invoicing.models import EnrichedBill


def matches(when: RouteMatch, bill: EnrichedBill) -> bool:
    """All given conditions must hold; list conditions compare case-insensitively."""
    def _in(value: str | None, allowed: list[str]) -> bool:
        return value is not None and value.lower() in {a.lower() for a in allowed}

    if when.currency is not None and not _in(bill.currency, when.currency):
        return False
    if when.subsidiary is not None and not _in(bill.subsidiary, when.subsidiary):
        return False
    if when.accounts is not None and bill.account_code not in when.accounts and bill.account_id not in when.accounts:
        return False
    if when.min_amount is not None and bill.total < when.min_amount:
        return False
    if when.max_amount is not None and bill.total > when.max_amount:
        return False
    if when.custom_field:
        for key, expected in when.custom_field.items():
            if str(bill.value(key) if bill.value(key) is not None else "") != expected:
                return False
    return True


def in_cutover(dest: Any, bill_date: dt.date) -> bool:
    """True when the destination takes bills of this date (``cutover_from`` <= date < ``cutover_until``)."""
    if dest.cutover_from is not None and bill_date < dest.cutover_from:
        return False
    return not (dest.cutover_until is not None and bill_date >= dest.cutover_until)


def route_bill(cfg: InvoicingConfig, bill: EnrichedBill,
               only: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """``(destinations, matched route names)`` in config order; disabled destinations are dropped.

    ``only`` restricts to these destination names (a manual run's ``destinations`` param).
    """
    wanted = set(only or [])
    by_name = {d.name: d for d in cfg.destinations}
    bill_date = dt.date.fromisoformat(bill.bill_date[:10])
    routes: list[Route] = [r for r in cfg.routes if matches(r.when, bill)]
    targets: list[str] = []
    for route in routes:
        for name in route.to:
            dest = by_name[name]
            if name in targets or not dest.enabled or (wanted and name not in wanted):
                continue
            if in_cutover(dest, bill_date):
                targets.append(name)
    return targets, [r.name for r in routes]
