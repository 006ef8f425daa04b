"""Date/time parsing and formatting with m3ter's conventions (ISO-8601, UTC, ``Z`` suffix)."""

from __future__ import annotations

import datetime as dt

from m3sh.sandbox.m3ter.schemas import ApiError

UTC = dt.UTC


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def iso(ts: dt.datetime) -> str:
    """m3ter renders instants with millisecond precision and a ``Z`` suffix."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def now_iso() -> str:
    return iso(now())


def parse_datetime(value: str, field: str = "value") -> dt.datetime:
    """Parse an ISO-8601 date-time; a date without a time is rejected as the spec asks."""
    if not isinstance(value, str) or "T" not in value:
        raise ApiError(400, f"{field}: must be an ISO-8601 date-time such as 2024-01-31T00:00:00Z")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, f"{field}: must be an ISO-8601 date-time such as 2024-01-31T00:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_date(value: str, field: str = "value") -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{field}: must be an ISO-8601 date such as 2024-01-31") from None


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), UTC)
