"""Pure rule evaluation: m3ter entities in, :class:`Firing` records out. No I/O here.

The same functions serve the DAG's evaluate task (sync hook), the sensors' ``poke`` and the
triggers' async ``run``, so all three agree on what fires and on each firing's key.

**Firing keys** are deterministic so a re-run, a backfill or a duplicate webhook maps to the same
ledger object:

* ``balance_below``: ``<rule>|<account id>|balance:<balance id>|credits=<total credit>``. The
  *threshold crossing* is identified by the balance's total credit (sum of its credit
  transactions): a debit that keeps the balance low (including our own reset to 0) keeps the key,
  a top-up starts a new crossing.
* ``usage_over_limit``: ``<rule>|<account id>|meter:<meter code>|period=<YYYY-MM>`` - once per
  account and billing period (calendar month, UTC).
* ``contract_ending`` / ``contract_ended``: ``<rule>|<account id>|contract:<contract id>|end=<date>``.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from m3sh.config import TriggerRule

CONDITION_KINDS = ("balance_below", "usage_over_limit", "contract_ending", "contract_ended")


@dataclass(frozen=True)
class Firing:
    """One rule firing for one account: what the actions act on, and its exactly-once key."""

    rule: str
    kind: str
    account_id: str
    entity: str  # "balance" | "meter" | "contract"
    entity_id: str
    crossing: str
    event_time: str  # ISO instant plan switches use (now, or the contract's end)
    account_code: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.rule}|{self.account_id}|{self.entity}:{self.entity_id}|{self.crossing}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Firing:
        fields = {k: v for k, v in data.items() if k != "key"}
        return cls(**fields)

    def with_code(self, code: str | None) -> Firing:
        return Firing(**{**asdict(self), "account_code": code})


# -------------------------------------------------------------------------------- time helpers
def parse_instant(value: str) -> dt.datetime:
    """m3ter date-times (``...Z``, with or without millis) or dates (midnight UTC)."""
    if "T" not in value:
        return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(0), dt.UTC)
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def iso_instant(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def billing_period(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The current billing period: the calendar month (UTC) containing ``now``.

    An assumption (documented in the README): m3sh does not read each account's bill epoch, so
    plans billed on other cycles are measured per calendar month.
    """
    start = dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def active_at(entity: Mapping[str, Any], at: dt.datetime) -> bool:
    start = entity.get("startDate")
    end = entity.get("endDate")
    return (not start or parse_instant(start) <= at) and (not end or at < parse_instant(end))


# ------------------------------------------------------------------------------------ selection
def select_rules(rules: Iterable[TriggerRule], names: Sequence[str] | None = None,
                 kinds: Sequence[str] | None = None) -> list[TriggerRule]:
    """Enabled rules, optionally only ``names`` and/or condition ``kinds``; unknown names are an error."""
    rules = list(rules)
    if names:
        unknown = sorted(set(names) - {r.name for r in rules})
        if unknown:
            raise ValueError(f"unknown trigger rule(s) {unknown}; known: {sorted(r.name for r in rules)}")
    return [r for r in rules if r.enabled and (not names or r.name in names)
            and (not kinds or r.when.kind in kinds)]


def _code_allowed(rule: TriggerRule, code: str | None, wanted: set[str] | None) -> bool:
    if rule.accounts is not None and code not in rule.accounts:
        return False
    return not wanted or code in wanted


def filter_accounts(firings: Iterable[Firing], rules: Mapping[str, TriggerRule],
                    accounts: Sequence[str] | None = None) -> list[Firing]:
    """Apply each rule's ``accounts`` list and the run's ``accounts`` param (codes must be resolved)."""
    wanted = set(accounts) if accounts else None
    return [f for f in firings if _code_allowed(rules[f.rule], f.account_code, wanted)]


# ------------------------------------------------------------------------------------- balances
def balance_in_scope(rule: TriggerRule, balance: Mapping[str, Any], now: dt.datetime,
                     product_ids: set[str] | None) -> bool:
    cond = rule.when.balance_below
    assert cond is not None
    if not active_at(balance, now):
        return False
    if cond.balance_codes and not any(fnmatch.fnmatchcase(str(balance.get("code", "")), p)
                                      for p in cond.balance_codes):
        return False
    if product_ids is not None:
        drawn = set(balance.get("productIds") or [])
        if drawn and not drawn & product_ids:  # no productIds: the balance covers every product
            return False
    return True


def balance_candidates(rule: TriggerRule, balances: Iterable[Mapping[str, Any]], now: dt.datetime,
                       product_ids: set[str] | None = None) -> list[Mapping[str, Any]]:
    """Balances whose total credit is needed: those below an absolute threshold, or all in scope
    for a percentage rule (the threshold depends on the credit)."""
    cond = rule.when.balance_below
    assert cond is not None
    out = []
    for b in balances:
        if not balance_in_scope(rule, b, now, product_ids):
            continue
        if cond.amount is not None and not float(b.get("amount") or 0.0) < cond.amount:
            continue
        out.append(b)
    return out


def balance_firings(rule: TriggerRule, candidates: Iterable[Mapping[str, Any]],
                    credits: Mapping[str, float | None], now: dt.datetime) -> list[Firing]:
    """Firings for candidates whose amount is under the threshold; ``credits`` = total credit by id."""
    cond = rule.when.balance_below
    assert cond is not None
    out = []
    for b in candidates:
        credit = credits.get(b["id"])
        if credit is None:
            continue  # unknown original: never guess (the caller logs it)
        amount = float(b.get("amount") or 0.0)
        threshold = cond.amount if cond.amount is not None else credit * float(cond.percent_of_original or 0) / 100
        if amount < threshold:
            out.append(Firing(
                rule=rule.name, kind="balance_below", account_id=str(b["accountId"]), entity="balance",
                entity_id=str(b["id"]), crossing=f"credits={credit:g}", event_time=iso_instant(now),
                detail={"amount": amount, "threshold": round(threshold, 6), "original": credit,
                        "balance_code": b.get("code")}))
    return out


# ---------------------------------------------------------------------------------------- usage
def usage_query_body(rule: TriggerRule, meter_id: str, now: dt.datetime) -> dict[str, Any]:
    cond = rule.when.usage_over_limit
    assert cond is not None
    start, end = billing_period(now)
    return {"startDate": iso_instant(start), "endDate": iso_instant(end), "meterIds": [meter_id],
            "groups": [{"groupType": "ACCOUNT"}], "limit": 20000,
            "aggregations": [{"meterId": meter_id, "fieldCode": cond.field, "fieldType": "MEASURE",
                              "function": cond.aggregation}]}


def usage_firings(rule: TriggerRule, rows: Iterable[Mapping[str, Any]], now: dt.datetime) -> list[Firing]:
    cond = rule.when.usage_over_limit
    assert cond is not None
    start, _ = billing_period(now)
    column = f"{cond.field}_{cond.aggregation.lower()}"
    out = []
    for row in rows:
        value = row.get(column)
        if value is None or not row.get("accountId") or not float(value) > cond.limit:
            continue
        out.append(Firing(
            rule=rule.name, kind="usage_over_limit", account_id=str(row["accountId"]), entity="meter",
            entity_id=cond.meter, crossing=f"period={start:%Y-%m}", event_time=iso_instant(now),
            account_code=row.get("accountCode"),
            detail={"usage": float(value), "limit": cond.limit, "aggregation": cond.aggregation}))
    return out


# ------------------------------------------------------------------------------------ contracts
def contract_end_instant(contract: Mapping[str, Any]) -> dt.datetime:
    """A contract's ``endDate`` is its last day; plans and balances end at midnight after it."""
    return parse_instant(str(contract["endDate"])) + dt.timedelta(days=1)


def contract_firings(rule: TriggerRule, contracts: Iterable[Mapping[str, Any]], now: dt.datetime) -> list[Firing]:
    """``contract_ending``: last day within N days from today; ``contract_ended``: last day passed.

    A contract the account has already renewed (another contract of the account starts after it
    ends and covers later dates) never fires: the renewal happened outside m3sh.
    """
    kind = rule.when.kind
    contracts = list(contracts)
    by_account: dict[str, list[Mapping[str, Any]]] = {}
    for c in contracts:
        by_account.setdefault(str(c.get("accountId")), []).append(c)
    today = now.date()
    out = []
    for c in contracts:
        if not c.get("endDate") or not c.get("accountId"):
            continue
        last_day = dt.date.fromisoformat(str(c["endDate"])[:10])
        if kind == "contract_ending":
            days = rule.when.contract_ending_within_days
            assert days is not None
            if not today <= last_day <= today + dt.timedelta(days=days):
                continue
        elif kind == "contract_ended":
            if not last_day < today:
                continue
        else:
            continue
        renewed = any(o is not c and o.get("startDate") and dt.date.fromisoformat(str(o["startDate"])[:10]) > last_day
                      for o in by_account[str(c["accountId"])])
        if renewed:
            continue
        out.append(Firing(
            rule=rule.name, kind=kind, account_id=str(c["accountId"]), entity="contract", entity_id=str(c["id"]),
            crossing=f"end={last_day.isoformat()}", event_time=iso_instant(contract_end_instant(c)),
            detail={"end_date": last_day.isoformat(), "days_left": (last_day - today).days,
                    "contract_code": c.get("code")}))
    return out


def dedupe(firings: Iterable[Firing]) -> list[Firing]:
    """One firing per key, in a stable order (rule, account, key)."""
    seen: dict[str, Firing] = {}
    for f in firings:
        seen.setdefault(f.key, f)
    return sorted(seen.values(), key=lambda f: (f.rule, f.account_id, f.key))
