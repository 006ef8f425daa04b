"""Measurement ingest and usage queries, written for throughput.

The ingest path is raw ASGI + ``orjson.loads`` + plain type checks (no pydantic per item): the
sandbox must absorb tens of thousands of measurements per second so the usage DAG can be
benchmarked, on the same cores as the clients it serves (json.loads was a fifth of its CPU with two
workers ingesting; orjson, already a dependency, also refuses NaN and Infinity as strict JSON does).
Usage is stored as hourly aggregates per (account code, meter code) rather than raw
rows, which keeps memory flat however much is ingested; queries are therefore hour-granular.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import orjson

from m3sh.sandbox.m3ter.schemas import ApiError

MAX_ITEMS = 1000
MAX_BODY_BYTES = 512_000  # the payload must be *under* this size
FUTURE_SKEW_S = 300.0  # client clocks run ahead a little; m3ter rejects clearly-future timestamps
# map field -> (accepted value types, what the message calls them, longest string allowed)
_MAPS: dict[str, tuple[tuple[type, ...], str, int | None]] = {
    **dict.fromkeys(("measure", "cost", "income"), ((int, float), "number", None)),
    **dict.fromkeys(("who", "where", "what", "other"), ((str,), "string", None)),
    "metadata": ((str,), "string", 256),
}
_UTC = dt.UTC
_fromiso = dt.datetime.fromisoformat


class Measurement:
    """One validated measurement, reduced to what aggregation needs."""

    __slots__ = ("account", "epoch", "item", "meter", "uid")

    def __init__(self, account: str, meter: str, epoch: float, uid: str | None, item: dict[str, Any]) -> None:
        self.account = account
        self.meter = meter
        self.epoch = epoch
        self.uid = uid
        self.item = item


def _bad(index: int, field: str, why: str) -> ApiError:
    return ApiError(400, f"measurements[{index}].{field}: {why}")


def _code(item: dict[str, Any], index: int, field: str) -> str:
    value = item.get(field)
    if type(value) is not str or not value:
        raise _bad(index, field, "is required and must be a non-empty string")
    if len(value) > 80 or value != value.strip() or not value.isprintable():
        raise _bad(index, field, "must be 1..80 printable characters without surrounding whitespace")
    return value


def parse_batch(raw: bytes) -> list[Measurement]:
    """Validate a whole batch before anything is stored: a 400 means nothing was ingested."""
    if len(raw) >= MAX_BODY_BYTES:
        raise ApiError(
            403,
            f"Request payload must be smaller than {MAX_BODY_BYTES} bytes "
            f"(got {len(raw)}); send fewer measurements per request",
        )
    try:
        body = orjson.loads(raw)
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "Request body is not valid JSON") from None
    items = body.get("measurements") if type(body) is dict else None
    if type(items) is not list:
        raise ApiError(400, "measurements: is required and must be an array")
    if not 1 <= len(items) <= MAX_ITEMS:
        raise ApiError(400, f"measurements: must contain between 1 and {MAX_ITEMS} items (got {len(items)})")
    latest = time.time() + FUTURE_SKEW_S
    codes: set[str] = set()
    return [parse_item(item, i, latest, codes) for i, item in enumerate(items)]


def parse_item(item: Any, i: int, latest: float, codes: set[str]) -> Measurement:
    """One measurement of a request (or of an uploaded file: m3ter's file upload service validates
    rows the same way, failing the row instead of the request); raises ApiError naming ``[i].field``.
    ``latest``: the newest acceptable ``ts`` (now plus the clock skew allowed); ``codes``: account and
    meter codes already found valid, added to (a file's rows share a few codes: each is checked once)."""
    if type(item) is not dict:
        raise _bad(i, "", "must be an object")
    account = item.get("account")
    if type(account) is not str or account not in codes:
        codes.add(account := _code(item, i, "account"))
    meter = item.get("meter")
    if type(meter) is not str or meter not in codes:
        codes.add(meter := _code(item, i, "meter"))
    ts = item.get("ts")
    if type(ts) is not str or "T" not in ts:
        raise _bad(i, "ts", "is required and must be an ISO-8601 date-time")
    try:
        parsed = _fromiso(ts)
    except ValueError:
        raise _bad(i, "ts", "is not a valid ISO-8601 date-time") from None
    epoch = (parsed if parsed.tzinfo else parsed.replace(tzinfo=_UTC)).timestamp()
    if epoch > latest:
        raise _bad(i, "ts", "must not be in the future")
    uid = item.get("uid")
    if uid is not None and (type(uid) is not str or len(uid) > 50):
        raise _bad(i, "uid", "must be a string of at most 50 characters")
    ets = item.get("ets")
    if ets is not None:
        try:
            _fromiso(ets)
        except (TypeError, ValueError):
            raise _bad(i, "ets", "is not a valid ISO-8601 date-time") from None
    for name, values in item.items():  # the item's few keys, not every map field looked up
        spec = _MAPS.get(name)
        if spec is None or values is None:
            continue
        kinds, noun, max_len = spec
        if type(values) is not dict:
            raise _bad(i, name, f"must be an object of {noun}s")
        for key, value in values.items():
            if type(value) not in kinds:
                raise _bad(i, f"{name}.{key}", f"must be a {noun}")
            if max_len is not None and len(value) > max_len:
                raise _bad(i, f"{name}.{key}", f"must be at most {max_len} characters")
    return Measurement(account, meter, epoch, uid, item)


class UsageStore:
    """Hourly aggregates: ``(account, meter, hour_epoch) -> [count, {field: [sum, min, max, latest]}]``."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[str, str, int], list[Any]] = {}
        self.uids: set[str] = set()
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0

    def add(self, m: Measurement) -> None:
        key = (m.account, m.meter, int(m.epoch) // 3600 * 3600)
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = [0, {}]
        bucket[0] += 1
        measure = m.item.get("measure")
        if measure:
            fields = bucket[1]
            for name, value in measure.items():
                agg = fields.get(name)
                if agg is None:
                    fields[name] = [value, value, value, value]
                else:
                    agg[0] += value
                    agg[1] = min(agg[1], value)
                    agg[2] = max(agg[2], value)
                    agg[3] = value
        self.accepted += 1

    def totals(
        self,
        account: str | None,
        meter: str,
        field: str | None,
        start: float | None = None,
        end: float | None = None,
    ) -> tuple[float, int]:
        """(sum of ``field`` or None, measurement count) over ``[start, end)`` hours."""
        total = 0.0
        count = 0
        for (acc, met, hour), (n, fields) in self.buckets.items():
            if met != meter or (account is not None and acc != account):
                continue
            if (start is not None and hour < start) or (end is not None and hour >= end):
                continue
            count += n
            if field is not None and field in fields:
                total += fields[field][0]
        return total, count

    def snapshot(self) -> dict[str, Any]:
        per: dict[str, dict[str, Any]] = {}
        for (acc, met, _hour), (n, fields) in self.buckets.items():
            row = per.setdefault(f"{acc}/{met}", {"account": acc, "meter": met, "count": 0, "sums": {}})
            row["count"] += n
            for name, agg in fields.items():
                row["sums"][name] = row["sums"].get(name, 0.0) + agg[0]
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "uids": len(self.uids),
            "totals": list(per.values()),
        }


_TIME_FREQ = {"HOUR": 3600, "DAY": 86400, "WEEK": 7 * 86400}


def _time_key(hour: int, frequency: str) -> str:
    stamp = dt.datetime.fromtimestamp(hour, _UTC)
    if frequency in _TIME_FREQ:
        size = _TIME_FREQ[frequency]
        start = dt.datetime.fromtimestamp(hour // size * size, _UTC)
        if frequency == "WEEK":  # ISO weeks start on Monday
            start = dt.datetime.combine(stamp.date() - dt.timedelta(days=stamp.weekday()), dt.time(0), _UTC)
        return start.strftime("%Y-%m-%dT%H:%M:%SZ")
    if frequency == "MONTH":
        return stamp.strftime("%Y-%m-01T00:00:00Z")
    if frequency == "QUARTER":
        return f"{stamp.year}-{(stamp.month - 1) // 3 * 3 + 1:02d}-01T00:00:00Z"
    if frequency == "YEAR":
        return f"{stamp.year}-01-01T00:00:00Z"
    return "WHOLE_PERIOD"


def query_usage(
    usage: UsageStore,
    body: dict[str, Any],
    meters: dict[str, dict[str, Any]],
    accounts: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """``POST /usage/query`` over the hourly aggregates.

    Rows carry ``accountId``/``accountCode`` (when grouped by account), ``meterId``/``meterCode``,
    ``timeGroup`` (when grouped by time) and one ``<fieldCode>_<function>`` value per aggregation,
    e.g. ``quantity_sum``. Without aggregations each row is one hourly bucket with its count.
    Dimension grouping/filters need raw rows, which this store does not keep: they answer 400.
    """
    from m3sh.sandbox.m3ter.timeutil import parse_datetime

    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    start = parse_datetime(body["startDate"], "startDate").timestamp() if body.get("startDate") else None
    end = parse_datetime(body["endDate"], "endDate").timestamp() if body.get("endDate") else None
    limit = body.get("limit", 20000)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 20000:
        raise ApiError(400, "limit: must be an integer between 1 and 20000")
    if body.get("dimensionFilters"):
        raise ApiError(400, "dimensionFilters: not supported by the sandbox usage store")
    meter_by_code = {m["code"]: m for m in meters.values()}
    acc_by_code = {a["code"]: a for a in accounts.values()}
    meter_codes = {meters[i]["code"] for i in body.get("meterIds") or [] if i in meters}
    if body.get("meterIds") and not meter_codes:
        return {"data": [], "hasMoreData": False}
    acc_codes = {accounts[i]["code"] for i in body.get("accountIds") or [] if i in accounts}
    if body.get("accountIds") and not acc_codes:
        return {"data": [], "hasMoreData": False}
    by_account = time_freq = None
    for group in body.get("groups") or []:
        kind = group.get("groupType") if isinstance(group, dict) else None
        if kind == "ACCOUNT":
            by_account = True
        elif kind == "TIME":
            time_freq = group.get("frequency", "WHOLE_PERIOD")
        else:
            raise ApiError(400, f"groups: groupType {kind!r} is not supported by the sandbox usage store")
    aggs = body.get("aggregations") or []
    for agg in aggs:
        if not isinstance(agg, dict) or agg.get("function") not in (
            "SUM",
            "MIN",
            "MAX",
            "COUNT",
            "LATEST",
            "MEAN",
        ):
            raise ApiError(
                400,
                "aggregations: each needs meterId, fieldCode, fieldType and a function of "
                "SUM, MIN, MAX, COUNT, LATEST or MEAN",
            )
        if agg.get("meterId") not in meters:
            raise ApiError(400, f"aggregations: unknown meterId {agg.get('meterId')!r}")
    rows: dict[tuple[str | None, str, str | None], dict[str, Any]] = {}
    for (acc, met, hour), (n, fields) in sorted(usage.buckets.items(), key=lambda kv: -kv[0][2]):
        if (meter_codes and met not in meter_codes) or (acc_codes and acc not in acc_codes):
            continue
        if (start is not None and hour < start) or (end is not None and hour >= end):
            continue
        if not aggs:
            key: tuple[str | None, str, str | None] = (acc, met, str(hour))
            rows[key] = {
                "accountCode": acc,
                "accountId": acc_by_code.get(acc, {}).get("id"),
                "meterCode": met,
                "meterId": meter_by_code.get(met, {}).get("id"),
                "timeGroup": _time_key(hour, "HOUR"),
                "count": n,
            }
            continue
        key = (acc if by_account else None, met, _time_key(hour, time_freq) if time_freq else None)
        row = rows.get(key)
        if row is None:
            row = rows[key] = {"meterCode": met, "meterId": meter_by_code.get(met, {}).get("id"), "_n": {}}
            if by_account:
                row["accountCode"] = acc
                row["accountId"] = acc_by_code.get(acc, {}).get("id")
            if time_freq:
                row["timeGroup"] = key[2]
        for agg in aggs:
            if meters[agg["meterId"]]["code"] != met:
                continue
            name = f"{agg['fieldCode']}_{agg['function'].lower()}"
            field = fields.get(agg["fieldCode"])
            fn = agg["function"]
            if fn == "COUNT":
                row[name] = row.get(name, 0) + n
            elif field is None:
                continue
            elif fn in ("SUM", "MEAN"):
                row[name] = row.get(name, 0) + field[0]
                row["_n"][name] = row["_n"].get(name, 0) + n
            elif fn == "MIN":
                row[name] = min(row.get(name, field[1]), field[1])
            elif fn == "MAX":
                row[name] = max(row.get(name, field[2]), field[2])
            elif fn == "LATEST" and name not in row:
                row[name] = field[3]  # buckets are visited newest first
    data = list(rows.values())
    for row in data:
        counts = row.pop("_n", {})
        for agg in aggs:
            name = f"{agg['fieldCode']}_{agg['function'].lower()}"
            if agg["function"] == "MEAN" and counts.get(name):
                row[name] = row[name] / counts[name]
    return {"data": data[:limit], "hasMoreData": len(data) > limit}
