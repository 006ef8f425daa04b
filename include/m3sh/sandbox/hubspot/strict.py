"""What the HubSpot emulator implements, and a 400 for everything else it is sent.

An emulator that ignores a field it does not understand answers a different question than the one
asked (a search body with a top-level ``filters`` got unfiltered results; an ``offset`` on a list got
the first page again and again), and a client built against it passes every test. So every query
parameter and JSON body key is checked against what the routes implement, before the route runs.

The tables are the published request schemas (tests/specs/hubspot: ``PublicObjectSearchRequest``,
``BatchInputSimplePublicObjectBatchInput``... and their parameters) narrowed to what the routes
act on. A documented parameter the emulator does not implement (``paginateAssociations``) is
refused too, saying so: a visible failure, never a silently different answer.

The refusal is HubSpot's 400 ``VALIDATION_ERROR`` body. For an unknown body key its message is the
Jackson text HubSpot's Java services answer with ("Invalid input JSON on line 1, column N:
Unrecognized field ... not marked as ignorable"), as quoted in public issue threads; HubSpot
publishes no schema for error messages, so the exact wording is modelled, not specified. For an
unknown query parameter the message names the parameter and what the endpoint implements.

Stricter than production on purpose: HubSpot ignores a query parameter it does not know (the spec
guard says so when m3sh sends one). Here it is refused, so a client that relies on one fails in the
sandbox instead of reading the wrong page in production.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from m3sh.sandbox.hubspot.errors import error_body

Shape = Mapping[str, Any]  # key -> None (any value) | a nested Shape (object, or list of objects) | EMPTY_ONLY
# A documented key the emulator does not implement, accepted only when it asks for nothing (a
# required key of a published request schema that the routes do not act on).
EMPTY_ONLY = "empty-only"

_ASSOCIATION_TYPE: Shape = {"associationCategory": None, "associationTypeId": None}
_ID: Shape = {"id": None}
_CREATE_ASSOCIATION: Shape = {"to": _ID, "types": _ASSOCIATION_TYPE}
_FILTER: Shape = {"propertyName": None, "operator": None, "value": None, "values": None, "highValue": None}
_SORT: Shape = {"propertyName": None, "direction": None}
# ``filters`` at the top level is HubSpot's undocumented one-group form (search.py says why it is taken).
SEARCH: Shape = {"after": None, "filterGroups": {"filters": _FILTER}, "filters": _FILTER, "limit": None,
                 "properties": None, "sorts": _SORT, "query": None}
_WRITE_INPUT: Shape = {"id": None, "idProperty": None, "properties": None, "objectWriteTraceId": None}

_OBJ = r"/crm/v3/objects/[^/]+"
_V4_OBJ = r"/crm/v4/objects/[^/]+/[^/]+/associations"
_V4_BATCH = r"/crm/v4/associations/[^/]+/[^/]+/batch"
_PROPS = r"/crm/v3/properties/[^/]+"

# (method, path pattern, query parameters implemented, body shape or None when there is no JSON body)
ROUTES: list[tuple[str, re.Pattern[str], frozenset[str], Shape | None]] = [
    (m, re.compile(f"^{p}/?$"), frozenset(q), b) for m, p, q, b in [
        ("POST", _OBJ + "/search", (), SEARCH),
        ("POST", _OBJ + "/batch/read", ("archived",),
         {"inputs": _ID, "properties": None, "idProperty": None, "propertiesWithHistory": None}),
        ("POST", _OBJ + "/batch/create", (),
         {"inputs": {"properties": None, "associations": _CREATE_ASSOCIATION, "objectWriteTraceId": None}}),
        ("POST", _OBJ + "/batch/update", (), {"inputs": _WRITE_INPUT}),
        ("POST", _OBJ + "/batch/upsert", (), {"inputs": _WRITE_INPUT}),
        ("POST", _OBJ + "/batch/archive", (), {"inputs": _ID}),
        ("GET", _OBJ, ("limit", "after", "properties", "propertiesWithHistory", "associations", "archived"), None),
        ("POST", _OBJ, (), {"properties": None, "associations": _CREATE_ASSOCIATION}),
        ("GET", _OBJ + "/[^/]+", ("properties", "propertiesWithHistory", "associations", "archived", "idProperty"),
         None),
        ("PATCH", _OBJ + "/[^/]+", ("idProperty",), {"properties": None, "objectWriteTraceId": None}),
        ("DELETE", _OBJ + "/[^/]+", (), None),
        ("PUT", _V4_OBJ + "/default/[^/]+/[^/]+", (), None),
        ("PUT", _V4_OBJ + "/[^/]+/[^/]+", (), None),  # the body is a JSON list of association types
        ("GET", _V4_OBJ + "/[^/]+", ("limit", "after"), None),
        ("DELETE", _V4_OBJ + "/[^/]+/[^/]+", (), None),
        ("POST", _V4_BATCH + "/read", (), {"inputs": {"id": None, "after": None}}),
        ("POST", _V4_BATCH + "/associate/default", (), {"inputs": {"from": _ID, "to": _ID}}),
        ("POST", _V4_BATCH + "/create", (), {"inputs": {"from": _ID, "to": _ID, "types": _ASSOCIATION_TYPE}}),
        ("POST", _V4_BATCH + "/archive", (), {"inputs": {"from": _ID, "to": _ID}}),
        ("GET", _PROPS + "/groups", (), None),
        ("GET", _PROPS, ("archived",), None),
        ("POST", _PROPS, (), {k: None for k in ("name", "label", "type", "fieldType", "groupName", "description",
                                                "options", "hasUniqueValue", "displayOrder", "hidden",
                                                "formField")}),
        ("GET", _PROPS + "/[^/]+", ("archived",), None),
        ("PATCH", _PROPS + "/[^/]+", (), {k: None for k in ("label", "type", "fieldType", "groupName",
                                                             "description", "options", "displayOrder", "hidden",
                                                             "formField")}),
        ("DELETE", _PROPS + "/[^/]+", (), None),
        # the legacy read endpoints (routes_legacy) and the object schemas list
        ("GET", r"/properties/v[12]/[^/]+/properties", (), None),
        ("GET", r"/companies/v2/properties", (), None),
        ("GET", r"/companies/v2/companies/paged", ("limit", "offset", "properties", "propertiesWithHistory"), None),
        ("GET", r"/companies/v2/companies/\d+", (), None),
        ("GET", r"/deals/v1/deal/paged", ("limit", "offset", "properties", "propertiesWithHistory",
                                          "includeAssociations", "includeAllProperties", "allPropertiesFetchMode"),
         None),
        ("GET", r"/crm(?:-object-schemas)?/v3/schemas", ("archived",), None),
    ]
]
# HubSpot's documented but unimplemented parameters get this hint instead of "unknown".
NOT_IMPLEMENTED = {"paginateAssociations"}
# Undocumented parameters a published client is known to send, with what HubSpot does instead.
# ``offset`` on a v3 list: the published list operations (tests/specs/hubspot objects.json,
# lineItems.json...: after, archived, associations, limit, properties, propertiesWithHistory) page by
# the ``paging.next.after`` cursor only, and HubSpot ignores the unknown ``offset``, so each such
# request reads the first page again. airbyte-source-hubspot 5.7.0 (its last PyPI release) pages its
# line_items, products and goals streams this way (source_hubspot/manifest.yaml: ``offset_paginator``
# under ``base_retriever``); Airbyte's fix, airbytehq/airbyte#61502 "a wrong type of pagination were
# applied to crm object streams, which lead to stuck sync. set cursor based pagination", moved them
# to ``after``.
KNOWN_MISUSE = {
    ("GET", _OBJ, "offset"): "HubSpot pages this list by the paging.next.after cursor only: it ignores offset "
                             "and answers the first page again, so a client that pages by offset until a short "
                             "page never ends",
}


def route_of(method: str, path: str) -> tuple[frozenset[str], Shape | None] | None:
    """The implemented query parameters and body shape of a request's route (None: not checked here,
    e.g. the owners list, the token-info call or an unknown path, which the routes answer)."""
    for m, pattern, query, shape in ROUTES:
        if m == method and pattern.match(path):
            return query, shape
    return None


def query_problem(names: list[str], allowed: frozenset[str], method: str, path: str) -> dict[str, Any] | None:
    for name in names:
        if name not in allowed:
            what = ("is documented by HubSpot but not implemented by the m3sh sandbox"
                    if name in NOT_IMPLEMENTED else "is not a parameter of this endpoint")
            hint = next((h for (m, pattern, param), h in KNOWN_MISUSE.items()
                         if (m, param) == (method, name) and re.match(f"^{pattern}/?$", path)), "")
            if hint:
                what += f": {hint}"
            implemented = ", ".join(sorted(allowed)) or "none"
            return error_body(400, f"Query parameter '{name}' {what} ({method} {path}; implemented: {implemented})",
                              "VALIDATION_ERROR", errors=[{"message": f"Unknown query parameter '{name}'",
                                                           "in": name}])
    return None


def body_problem(raw: bytes, shape: Shape) -> dict[str, Any] | None:
    """HubSpot's answer to the first key of ``raw`` that ``shape`` does not have, or None. Malformed
    JSON and wrong value types are left to the route, which answers them."""
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return None
    unknown = _unknown(body, shape, "")
    if unknown is None:
        return None
    key, where = unknown
    column = _column(raw, key)
    if shape_of(shape, where).get(key) == EMPTY_ONLY:
        return error_body(400, f"'{key}' is documented by HubSpot but not implemented by the m3sh sandbox: send it "
                               "empty or leave it out", "VALIDATION_ERROR", errors=[{"message": f"{key} not "
                                                                                     "implemented", "in": key}])
    return error_body(
        400, f'Invalid input JSON on line 1, column {column}: Unrecognized field "{key}" ({where or "request"}), '
             "not marked as ignorable", "VALIDATION_ERROR")


def _unknown(value: Any, shape: Shape, where: str) -> tuple[str, str] | None:
    if isinstance(value, list):
        for item in value:
            found = _unknown(item, shape, where)
            if found:
                return found
        return None
    if not isinstance(value, dict):
        return None
    for key, item in value.items():
        if key not in shape or (shape[key] == EMPTY_ONLY and item):
            return key, where
        inner = shape[key]
        if isinstance(inner, Mapping):
            found = _unknown(item, inner, f"{where}.{key}" if where else key)
            if found:
                return found
    return None


def shape_of(shape: Shape, where: str) -> Shape:
    """The nested shape at a dotted ``where`` (as :func:`_unknown` reports it)."""
    for part in filter(None, where.split(".")):
        shape = shape[part]
    return shape


def _column(raw: bytes, key: str) -> int:
    at = raw.find(json.dumps(key).encode())
    return at + 1 if at >= 0 else 1
