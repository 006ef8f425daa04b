"""``POST /crm/v3/objects/{type}/search``: filters, sorts, paging, the 10,000-result cap (api-notes A.7)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from m3sh.sandbox.hubspot.errors import HubSpotHTTPError
from m3sh.sandbox.hubspot.schema import QUERY_PROPERTIES
from m3sh.sandbox.hubspot.store import PortalState, Record, to_epoch_ms

SEARCH_RESULT_CAP = 10_000
MAX_LIMIT = 200
MAX_GROUPS = 6  # the spec says 6, the changelog 5: accept the larger (api-notes D)
MAX_FILTERS_PER_GROUP = 10
MAX_FILTERS_TOTAL = 25

_OPERATORS = {"EQ", "NEQ", "LT", "LTE", "GT", "GTE", "BETWEEN", "IN", "NOT_IN", "HAS_PROPERTY",
              "NOT_HAS_PROPERTY", "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"}


def _bad(message: str, where: str | None = None) -> HubSpotHTTPError:
    return HubSpotHTTPError(
        400, "There was a problem with the request.", "VALIDATION_ERROR",
        errors=[{"message": message, **({"in": where} if where else {})}],
    )


def _comparable(kind: str, value: str) -> Any:
    """Values compare by the property's type: numbers numerically, dates by instant, strings folded."""
    if kind == "number":
        return Decimal(value)
    if kind in ("date", "datetime"):
        return to_epoch_ms(value)
    return value.lower()


def _compile_filter(state: PortalState, object_type: str, flt: Mapping[str, Any]) -> Callable[[Record], bool]:
    name = flt.get("propertyName")
    op = str(flt.get("operator", "")).upper()
    if not name or op not in _OPERATORS:
        raise _bad(f"Invalid filter: propertyName and a known operator are required, got {dict(flt)}",
                   "filterGroups")
    pdef = state.properties[object_type].get(name)
    if pdef is None:
        raise _bad(f"Property {name!r} does not exist", "filterGroups")
    kind = pdef["type"]

    def conv(raw: Any) -> Any:
        try:
            return _comparable(kind, str(raw))
        except (ValueError, InvalidOperation):
            raise _bad(f"Invalid value {raw!r} for {kind} property {name!r}", "filterGroups") from None

    if op == "HAS_PROPERTY":
        return lambda r: bool(r.properties.get(name))
    if op == "NOT_HAS_PROPERTY":
        return lambda r: not r.properties.get(name)
    if op in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
        token = str(flt.get("value", "")).lower().strip("*")
        def hit(r: Record) -> bool:
            return token in r.properties.get(name, "").lower()

        return hit if op == "CONTAINS_TOKEN" else (lambda r: not hit(r))
    if op in ("IN", "NOT_IN"):
        wanted = {conv(v) for v in flt.get("values") or []}
        if op == "IN":
            return lambda r: name in r.properties and conv(r.properties[name]) in wanted
        return lambda r: name not in r.properties or conv(r.properties[name]) not in wanted
    if op == "BETWEEN":
        if flt.get("value") is None or flt.get("highValue") is None:
            raise _bad("BETWEEN needs value and highValue", "filterGroups")
        lo, hi = conv(flt["value"]), conv(flt["highValue"])
        return lambda r: name in r.properties and lo <= conv(r.properties[name]) <= hi
    if flt.get("value") is None:
        raise _bad(f"Operator {op} needs a value", "filterGroups")
    target = conv(flt["value"])
    if op == "NEQ":
        return lambda r: name not in r.properties or conv(r.properties[name]) != target
    cmp: dict[str, Callable[[Any, Any], bool]] = {
        "EQ": lambda a, b: a == b, "LT": lambda a, b: a < b, "LTE": lambda a, b: a <= b,
        "GT": lambda a, b: a > b, "GTE": lambda a, b: a >= b,
    }
    fn = cmp[op]
    return lambda r: name in r.properties and fn(conv(r.properties[name]), target)


def _sort_keys(body: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """Sorts arrive as strings (``"prop"``/``"-prop"``, what the client sends) or objects; accept both."""
    out = []
    for s in body.get("sorts") or []:
        if isinstance(s, str):
            out.append((s.lstrip("-"), s.startswith("-")))
        elif isinstance(s, Mapping) and s.get("propertyName"):
            out.append((str(s["propertyName"]), str(s.get("direction", "ASCENDING")).upper() == "DESCENDING"))
    return out


def _sort_key(prop: str, kind: str) -> Callable[[Record], Any]:
    return lambda r: _comparable(kind, r.properties[prop])


def search(state: PortalState, object_type: str, body: Mapping[str, Any]) -> dict[str, Any]:
    limit = int(body.get("limit") or 10)
    if limit < 1 or limit > MAX_LIMIT:
        raise _bad(f"limit must be between 1 and {MAX_LIMIT}, got {limit}", "limit")
    after_raw = body.get("after")
    try:
        offset = int(after_raw) if after_raw not in (None, "") else 0
    except (TypeError, ValueError):
        raise _bad(f"Invalid after cursor {after_raw!r}", "after") from None
    if offset >= SEARCH_RESULT_CAP:
        # Paging past 10,000 results is rejected outright (api-notes A.7).
        raise _bad(f"Search results are limited to {SEARCH_RESULT_CAP}; 'after' must be below "
                   f"{SEARCH_RESULT_CAP}. Narrow the query (e.g. a lastmodifieddate window).", "after")
    groups = body.get("filterGroups") or []
    if body.get("filters"):
        # Top-level ``filters``: one ANDed group, as the live API treats it (HubSpot/hubspot-api-nodejs#491;
        # airbyte-source-hubspot's incremental searches send it). Undocumented, so with filterGroups too
        # the combination's meaning is unknown: refused rather than guessed.
        if groups:
            raise _bad("Send either filterGroups or a top-level filters list, not both (the m3sh sandbox does "
                       "not implement the combination)", "filters")
        groups = [{"filters": body["filters"]}]
    if len(groups) > MAX_GROUPS:
        raise _bad(f"At most {MAX_GROUPS} filterGroups are allowed", "filterGroups")
    total_filters = sum(len(g.get("filters") or []) for g in groups)
    if total_filters > MAX_FILTERS_TOTAL or any(len(g.get("filters") or []) > MAX_FILTERS_PER_GROUP
                                                for g in groups):
        raise _bad(f"At most {MAX_FILTERS_PER_GROUP} filters per group and {MAX_FILTERS_TOTAL} in total",
                   "filterGroups")
    compiled = [[_compile_filter(state, object_type, f) for f in g.get("filters") or []] for g in groups]
    query = str(body.get("query") or "").lower().strip()
    qprops = QUERY_PROPERTIES[object_type]

    def matches(rec: Record) -> bool:
        if query and not any(query in rec.properties.get(p, "").lower() for p in qprops):
            return False
        # groups are ORed, filters inside a group ANDed
        return not compiled or any(all(f(rec) for f in g) for g in compiled)

    hits = [r for r in state.live(object_type) if matches(r)]
    hits.sort(key=lambda r: int(r.id) if r.id.isdigit() else 0)
    defs = state.properties[object_type]
    for prop, desc in reversed(_sort_keys(body)):
        if prop not in defs:
            raise _bad(f"Cannot sort by unknown property {prop!r}", "sorts")
        kind = defs[prop]["type"]
        present = [r for r in hits if r.properties.get(prop)]
        missing = [r for r in hits if not r.properties.get(prop)]
        present.sort(key=_sort_key(prop, kind), reverse=desc)
        hits = present + missing
    end = min(offset + limit, len(hits), SEARCH_RESULT_CAP)
    wanted = body.get("properties") or None
    out: dict[str, Any] = {
        "total": len(hits),
        "results": [r.to_json(object_type, wanted) for r in hits[offset:end]],
    }
    if end < len(hits):
        out["paging"] = {"next": {"after": str(end), "link": f"?after={end}"}}
    return out
