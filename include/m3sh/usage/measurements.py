"""Usage row -> m3ter measurement: validation against the meter definitions and deterministic uids."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable
from typing import Any

from m3sh.config import MeterDefinition, UsageFeed
from m3sh.exceptions import InvalidRecord

_DIMENSION_SECTIONS = ("who", "where", "what", "other")
MAX_FUTURE_SKEW = dt.timedelta(minutes=5)


def measurement_uid(feed: str, source_key: str, line: int, row_id: str | None) -> str:
    """Stable uid (<= 50 chars): the same event always gets the same uid, so m3ter drops re-sends.

    With an id column the uid depends only on (feed, id), so an event re-exported in another file is
    still de-duplicated; without one, on (feed, object key, line).
    """
    basis = f"{feed}|id|{row_id}" if row_id else f"{feed}|{source_key}|{line}"
    return "m3sh-" + hashlib.sha256(basis.encode()).hexdigest()[:40]


def parse_ts(value: Any) -> dt.datetime:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("missing timestamp")
    text = value.strip().replace("Z", "+00:00")
    ts = dt.datetime.fromisoformat(text)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return ts.astimezone(dt.UTC)


class MeasurementBuilder:
    """Validates rows of one feed; ``account_exists`` is a cached lookup of m3ter account codes."""

    def __init__(self, feed: UsageFeed, account_exists: Callable[[str], bool], now: dt.datetime | None = None) -> None:
        self.feed = feed
        self.meters: dict[str, MeterDefinition] = {m.code: m for m in feed.meters}
        self.account_exists = account_exists
        self.now = now or dt.datetime.now(dt.UTC)

    def build(self, row: dict[str, Any], source: str, line: int) -> dict[str, Any]:
        def bad(reason: str, field: str | None = None) -> InvalidRecord:
            return InvalidRecord(reason, source=source, line=line, field=field)

        meter_code = str(row.get(self.feed.meter_field) or "").strip()
        if len(self.meters) == 1 and not meter_code:
            meter_code = next(iter(self.meters))
        meter = self.meters.get(meter_code)
        if meter is None:
            raise bad(f"unknown meter {meter_code!r}; configured: {sorted(self.meters)}", self.feed.meter_field)
        account = str(row.get(meter.account_field) or "").strip()
        if not account:
            raise bad("missing account code", meter.account_field)
        if len(account) > 80:
            raise bad("account code longer than 80 characters", meter.account_field)
        try:
            ts = parse_ts(row.get(meter.timestamp_field))
        except ValueError as exc:
            raise bad(f"invalid timestamp {row.get(meter.timestamp_field)!r}: {exc}", meter.timestamp_field) from None
        if ts > self.now + MAX_FUTURE_SKEW:
            raise bad(f"timestamp {ts.isoformat()} is in the future", meter.timestamp_field)
        if ts < self.now - dt.timedelta(days=meter.max_age_days):
            raise bad(f"timestamp {ts.isoformat()} is older than {meter.max_age_days} days", meter.timestamp_field)
        measure: dict[str, float] = {}
        for target, column in meter.measures.items():
            raw = row.get(column)
            try:
                value = float(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise bad(f"not a number: {str(raw)[:40]!r}", column) from None
            if not math.isfinite(value):
                raise bad(f"not a finite number: {raw!r}", column)
            measure[target] = value
        if not self.account_exists(account):
            raise bad(f"account {account!r} does not exist in m3ter", meter.account_field)
        row_id = str(row.get(self.feed.id_field) or "").strip() if self.feed.id_field else ""
        m: dict[str, Any] = {
            "uid": measurement_uid(self.feed.name, source, line, row_id or None),
            "meter": meter.code,
            "account": account,
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "measure": measure,
        }
        if meter.dimensions:
            where = {k: str(row[col])[:256] for k, col in meter.dimensions.items() if row.get(col) not in (None, "")}
            if where:
                m["where"] = where
        return m
