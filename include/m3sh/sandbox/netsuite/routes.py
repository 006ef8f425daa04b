"""HTTP surface of the NetSuite emulator: auth, governance, then the record or SuiteQL handler.

One catch-all route dispatches by hand instead of FastAPI path operations so that *every* answer,
including malformed bodies and unknown paths, comes back as an ``nsError`` (FastAPI's own 422/404
bodies would teach clients the wrong shape). Governance is counted around the whole handler and
released before the response is sent, so a client that waits for a response before sending the
next request never trips the limit.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from m3sh.sandbox.common import ASGIApp
from m3sh.sandbox.netsuite.auth import HOST_ACCOUNT_SCOPE_KEY, SignedRequest
from m3sh.sandbox.netsuite.errors import CONCURRENCY_DETAIL, NetSuiteApiError, ns_error_body, user_error
from m3sh.sandbox.netsuite.metadata import SCHEMA_JSON, check_accept, record_schema
from m3sh.sandbox.netsuite.record_query import compile_filter, filterable
from m3sh.sandbox.netsuite.state import RECORD_TYPES, TRANSACTION_TYPES, AccountState, known_field
from m3sh.sandbox.netsuite.suiteql import execute
from m3sh.sandbox.netsuite.tables import build_tables

if TYPE_CHECKING:
    from m3sh.sandbox.netsuite.emulator import NetSuiteEmulator

# What each route implements (query parameters), checked before it runs. NetSuite's help center
# (SuiteTalk REST Web Services: "Collection Paging", "Record Collection Filtering" (q, record_query.py),
# "Working with JSON Schema Metadata" (metadata.py), "Getting a Record Instance", "Updating a Record",
# "Using the Upsert Operation", "Executing SuiteQL Queries Through REST Web Services"; crm-erp.md B.3,
# B.5) names these parameters; no
# machine-readable spec of the REST record service is vendored (the metadata catalog is per account),
# so this table rests on the docs' prose. A documented parameter the emulator lacks is refused as
# unimplemented, an unknown one as invalid, both ``INVALID_PARAMETER`` with ``o:errorQueryParam``
# ("Error Handling in REST Web Services": section_156570709583.html); the wording is modelled.
_ROUTE_PARAMS: dict[str, frozenset[str]] = {
    "GET record": frozenset({"expandSubResources", "fields"}),
    "GET collection": frozenset({"limit", "offset", "q"}),
    "GET sublist": frozenset(),
    "POST collection": frozenset(),
    "PATCH record": frozenset({"replace"}),
    "PUT record": frozenset({"replace"}),
    "DELETE record": frozenset(),
    "POST suiteql": frozenset({"limit", "offset"}),
    "GET metadata-catalog": frozenset(),
    "GET metadata-catalog record": frozenset(),
}
_DOCUMENTED_PARAMS = {
    "simpleEnumFormat": "simpleEnumFormat is documented by NetSuite but not implemented by the m3sh sandbox",
    "replaceSelectedFields": "replaceSelectedFields is documented by NetSuite but not implemented by the m3sh "
                             "sandbox",
    "select": "metadata-catalog's select is documented by NetSuite but not implemented by the m3sh sandbox",
}
_VALIDATION_MODES = ("Error", "Warning", "Ignore")
_BOOLEANS = ("true", "false")
# Sublists ``replace`` may name: the emulator's only modelled sublist is ``item`` (``addressBook``
# is stored as sent, so replacing it is what storing does anyway).
_SUBLISTS = frozenset({"item", "addressBook"})  # X-NetSuite-Property{Name,Value}Validation values

RECORD_PREFIX = "/services/rest/record/v1"
SUITEQL_PATH = "/services/rest/query/v1/suiteql"
MAX_PAGE = 1000


def _error(exc: NetSuiteApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _page_params(request: Request) -> tuple[int, int]:
    try:
        limit = int(request.query_params.get("limit", MAX_PAGE))
        offset = int(request.query_params.get("offset", 0))
    except ValueError:
        raise NetSuiteApiError(400, "INVALID_PARAMETER",
                               "Invalid value for the query parameter limit or offset.",
                               query_param="limit") from None
    if limit < 1 or limit > MAX_PAGE:
        raise NetSuiteApiError(
            400, "INVALID_PARAMETER",
            f"Invalid query parameter value: limit. The value must be between 1 and {MAX_PAGE}.",
            query_param="limit")
    if offset < 0:
        raise NetSuiteApiError(400, "INVALID_PARAMETER", "Invalid query parameter value: offset.",
                               query_param="offset")
    return limit, offset


def _check_params(request: Request, route: str) -> None:
    allowed = _ROUTE_PARAMS[route]
    for name in request.query_params:
        if name in allowed:
            continue
        detail = _DOCUMENTED_PARAMS.get(name) or (
            f"Invalid query parameter name: {name}. The m3sh sandbox implements "
            f"{', '.join(sorted(allowed)) or 'no query parameters'} for {route}.")
        raise NetSuiteApiError(400, "INVALID_PARAMETER", detail, query_param=name)


def _check_headers(request: Request, suiteql: bool) -> str:
    """The property-name validation mode; refuses header values NetSuite does not define and the
    asynchronous mode, which the emulator would otherwise answer synchronously."""
    for header in ("X-NetSuite-PropertyNameValidation", "X-NetSuite-PropertyValueValidation"):
        value = request.headers.get(header)
        if value is not None and value not in _VALIDATION_MODES:
            raise NetSuiteApiError(400, "INVALID_HEADER", f"Invalid value '{value}' for the header {header}. "
                                   f"Provide one of: {', '.join(_VALIDATION_MODES)}.", header=header)
    if "respond-async" in request.headers.get("prefer", "").lower():
        raise NetSuiteApiError(
            400, "INVALID_HEADER", "Asynchronous requests (Prefer: respond-async) are documented by NetSuite "
            f"but not implemented by the m3sh sandbox for {'SuiteQL' if suiteql else 'records'}.", header="Prefer")
    return request.headers.get("x-netsuite-propertynamevalidation", "Error")


def _paged(base_href: str, items: list[dict[str, Any]], limit: int, offset: int,
           extra: dict[str, str] | None = None) -> dict[str, Any]:
    total = len(items)
    page = items[offset:offset + limit]
    has_more = offset + len(page) < total

    def href(off: int) -> str:
        # The filter stays in the paging links, so following ``next`` pages the same filtered list.
        return f"{base_href}?{urlencode({**(extra or {}), 'limit': limit, 'offset': off})}"

    links = [{"rel": "self", "href": href(offset)}]
    if offset > 0:
        links.append({"rel": "previous", "href": href(max(0, offset - limit))})
    if has_more:
        links.append({"rel": "next", "href": href(offset + limit)})
    links.append({"rel": "first", "href": href(0)})
    last = max(0, ((total - 1) // limit) * limit) if total else 0
    links.append({"rel": "last", "href": href(last)})
    return {"links": links, "count": len(page), "hasMore": has_more, "items": page, "offset": offset,
            "totalResults": total}


class _Handler:
    def __init__(self, emu: NetSuiteEmulator) -> None:
        self.emu = emu

    async def __call__(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await request.body()
        signed = SignedRequest(
            method=request.method,
            scheme=request.url.scheme,
            host=request.headers.get("host", request.url.netloc),
            raw_path=(request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1"),
            query_string=request.scope.get("query_string", b"").decode("latin-1"),
            authorization=request.headers.get("authorization"),
            body=body,
            host_account=request.scope.get(HOST_ACCOUNT_SCOPE_KEY),
        )
        try:
            account_key = self.emu.verifier.account_for(signed)
            self.emu.verifier.verify(account_key, signed)
        except NetSuiteApiError as exc:
            return _error(exc)
        acct = self.emu.accounts[account_key]
        gov = acct.governance
        if gov.fault_status is not None:
            return JSONResponse(ns_error_body(gov.fault_status, None, "Injected fault (account_fault)"),
                                status_code=gov.fault_status)
        gov.in_flight += 1
        if self.emu.limits_enabled and gov.in_flight > gov.limit:
            gov.in_flight -= 1
            gov.rejected_429 += 1
            return JSONResponse(ns_error_body(429, "CONCURRENCY_LIMIT_EXCEEDED", CONCURRENCY_DETAIL),
                                status_code=429)
        gov.max_in_flight = max(gov.max_in_flight, gov.in_flight)
        try:
            try:
                response = self.dispatch(acct, request, body, f"{signed.scheme}://{signed.host}")
            except NetSuiteApiError as exc:
                response = _error(exc)
            if gov.latency_ms:
                # The answer leaves ``latency_ms`` after the request arrived, the emulator's own work
                # (signature check, the write) included: what is emulated is NetSuite's time, not
                # ours. As with the real service, the write is committed before the answer comes
                # back, so a client that times out meanwhile must not assume nothing happened.
                remaining = gov.latency_ms / 1000 - (time.monotonic() - arrived)
                if remaining > 0:
                    await asyncio.sleep(remaining)
            return response
        finally:
            gov.in_flight -= 1

    def dispatch(self, acct: AccountState, request: Request, raw: bytes, base: str) -> Response:
        # Split the *raw* path: an external id may contain an encoded "/" (eid:BILL%2F2030).
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = raw_path.decode("latin-1").rstrip("/")
        method = request.method
        if path == SUITEQL_PATH:
            if method != "POST":
                raise NetSuiteApiError(405, "INVALID_REQUEST", "SuiteQL queries must be sent with POST.")
            _check_headers(request, suiteql=True)
            _check_params(request, "POST suiteql")
            return self.suiteql(acct, request, raw, base)
        if not path.startswith(RECORD_PREFIX + "/"):
            raise NetSuiteApiError(404, "INVALID_REQUEST", f"The requested URL {path} was not found.")
        parts = [unquote(p) for p in path[len(RECORD_PREFIX) + 1:].split("/")]
        record_type = parts[0]
        validation = _check_headers(request, suiteql=False)
        if record_type == "metadata-catalog" and method == "GET" and len(parts) == 1:
            _check_params(request, "GET metadata-catalog")
            return JSONResponse({"items": [
                {"name": rt, "links": [{"rel": "canonical", "href": f"{base}{RECORD_PREFIX}/{rt}"}]}
                for rt in sorted(RECORD_TYPES)]})
        if record_type == "metadata-catalog" and method == "GET" and len(parts) == 2:
            _check_params(request, "GET metadata-catalog record")
            check_accept(request.headers.get("accept", ""), parts[1])
            return JSONResponse(record_schema(parts[1]), media_type=SCHEMA_JSON)
        if record_type == "metadata-catalog":
            raise NetSuiteApiError(405 if len(parts) == 2 else 404, "INVALID_REQUEST",
                                   f"{method} {RECORD_PREFIX}/{'/'.join(parts)} is not a metadata-catalog resource.",
                                   url_path=f"{RECORD_PREFIX}/{'/'.join(parts)}")
        if record_type not in RECORD_TYPES:
            raise NetSuiteApiError(404, "NONEXISTENT_ID", f"Record type '{record_type}' does not exist.")
        if len(parts) > 2:
            return self.sub_resource(acct, request, method, parts, base)
        with self.emu.lock:
            if len(parts) == 1:
                if method == "GET":
                    _check_params(request, "GET collection")
                    return self.list_records(acct, request, record_type, base)
                if method == "POST":
                    _check_params(request, "POST collection")
                    new_id, _ = acct.write(record_type, _json_object(raw), validation=validation)
                    return _created(base, record_type, new_id)
                raise NetSuiteApiError(405, "INVALID_REQUEST", f"{method} is not allowed on a collection.")
            key = parts[1]
            if method in ("GET", "PATCH", "PUT", "DELETE"):
                _check_params(request, f"{method} record")
            replace = {p for p in request.query_params.get("replace", "").split(",") if p}
            for name in sorted(replace - _SUBLISTS):
                raise NetSuiteApiError(400, "INVALID_PARAMETER", f"Invalid value for the query parameter replace: "
                                       f"'{name}' is not a sublist of {record_type} the m3sh sandbox implements "
                                       f"({', '.join(sorted(_SUBLISTS))}).", query_param="replace")
            if method == "GET":
                rec = acct.get(record_type, key)
                return JSONResponse(_render(rec, record_type, base, request))
            if method == "PATCH":
                rec = acct.get(record_type, key)
                rid, _ = acct.write(record_type, _json_object(raw), existing=rec, replace=replace,
                                    validation=validation)
                return _created(base, record_type, rid)
            if method == "PUT":
                if not key.startswith("eid:") or len(key) <= 4:
                    raise NetSuiteApiError(
                        405, "INVALID_REQUEST",
                        "PUT is only supported with an external ID (eid:<externalId>) for upsert.")
                existing = acct.find(record_type, key)
                rid, _ = acct.write(record_type, _json_object(raw), existing=existing, external_id=key[4:],
                                    replace=replace, validation=validation)
                return _created(base, record_type, rid)
            if method == "DELETE":
                acct.delete(record_type, key)
                return Response(status_code=204)
        raise NetSuiteApiError(405, "INVALID_REQUEST", f"{method} is not allowed on a record.")

    def sub_resource(self, acct: AccountState, request: Request, method: str, parts: list[str],
                     base: str) -> Response:
        """``GET {type}/{id}/item``: the item sublist the record's ``item`` link points at (the only
        sub-resource the emulator has). Transforms and other sub-resources are refused by name."""
        record_type, key, sub = parts[0], parts[1], "/".join(parts[2:])
        url_path = f"{RECORD_PREFIX}/{'/'.join(parts)}"
        if sub.startswith("!transform"):
            raise NetSuiteApiError(400, "INVALID_REQUEST", "Record transformation (!transform) is documented by "
                                   "NetSuite but not implemented by the m3sh sandbox.", url_path=url_path)
        if sub != "item" or record_type not in TRANSACTION_TYPES:
            raise NetSuiteApiError(404, "INVALID_REQUEST", f"The sub-resource '{sub}' of record type "
                                   f"'{record_type}' is not implemented by the m3sh sandbox.", url_path=url_path)
        if method != "GET":
            raise NetSuiteApiError(405, "INVALID_REQUEST", f"{method} on a sublist is not implemented by the m3sh "
                                   "sandbox; change lines through the record (replace=item).", url_path=url_path)
        _check_params(request, "GET sublist")
        with self.emu.lock:
            rec = acct.get(record_type, key)
            href = f"{base}{RECORD_PREFIX}/{record_type}/{rec['id']}/item"
            return JSONResponse(_sublist(href, rec.get("item", [])))

    def list_records(self, acct: AccountState, request: Request, record_type: str, base: str) -> Response:
        limit, offset = _page_params(request)
        href = f"{base}{RECORD_PREFIX}/{record_type}"
        ids = sorted(acct.records[record_type], key=lambda i: (len(i), i))
        q = request.query_params.get("q")
        if q is not None:
            keep = compile_filter(q, filterable(record_type, set(TRANSACTION_TYPES)))
            table = acct.records[record_type]
            ids = [i for i in ids if keep(table[i])]
        items = [{"links": [{"rel": "self", "href": f"{href}/{i}"}], "id": i} for i in ids]
        return JSONResponse(_paged(href, items, limit, offset, {"q": q} if q is not None else {}))

    def suiteql(self, acct: AccountState, request: Request, raw: bytes, base: str) -> Response:
        prefer = request.headers.get("prefer", "")
        if "transient" not in prefer.lower():
            raise NetSuiteApiError(
                400, "INVALID_HEADER",
                "SuiteQL requests must include the header 'Prefer: transient'.", header="Prefer")
        limit, offset = _page_params(request)
        body = _json_object(raw)
        for key in body:
            if key != "q":  # the documented body is {"q": ...} only
                raise NetSuiteApiError(400, "NONEXISTENT_FIELD", f"Invalid field name '{key}' in the SuiteQL "
                                       "request body; the body has only 'q'.", error_path=key)
        query = body.get("q")
        if not isinstance(query, str):
            raise user_error("The request body must contain the SuiteQL query in 'q'.", error_path="q")
        with self.emu.lock:
            rows = execute(query, build_tables(acct))
        items = [{"links": [], **row} for row in rows]
        return JSONResponse(_paged(f"{base}{SUITEQL_PATH}", items, limit, offset))


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise user_error("Invalid content in the request body. The body must be valid JSON.") from None
    if not isinstance(body, dict):
        raise user_error("Invalid content in the request body. The body must be a JSON object.")
    return body


def _created(base: str, record_type: str, rid: str) -> Response:
    return Response(status_code=204, headers={"Location": f"{base}{RECORD_PREFIX}/{record_type}/{rid}"})


def _render(rec: dict[str, Any], record_type: str, base: str, request: Request) -> dict[str, Any]:
    href = f"{base}{RECORD_PREFIX}/{record_type}/{rec['id']}"
    out: dict[str, Any] = {"links": [{"rel": "self", "href": href}]}
    expand_value = request.query_params.get("expandSubResources", "false").lower()
    if expand_value not in _BOOLEANS:
        raise NetSuiteApiError(400, "INVALID_PARAMETER", "Invalid value for the query parameter "
                               f"expandSubResources: '{expand_value}'. Provide true or false.",
                               query_param="expandSubResources")
    expand = expand_value == "true"
    for key, value in rec.items():
        if key == "refName":
            continue
        if key == "item" and isinstance(value, list):
            sub_href = f"{href}/item"
            if expand:
                out["item"] = _sublist(sub_href, value)
            else:
                out["item"] = {"links": [{"rel": "self", "href": sub_href}]}
            continue
        out[key] = value
    fields = request.query_params.get("fields")
    if fields:
        wanted = {f.strip() for f in fields.split(",")}
        for name in sorted(wanted):
            # Dropping an unknown name would answer a narrower read than the one asked for.
            if not known_field(record_type, name, rec):
                raise NetSuiteApiError(400, "INVALID_PARAMETER", f"Invalid value for the query parameter fields: "
                                       f"'{name}' is not a field of record type '{record_type}'.",
                                       query_param="fields")
        keep = wanted | {"links", "id"}
        out = {k: v for k, v in out.items() if k in keep}
    return out


def _sublist(href: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
    items = [{"links": [{"rel": "self", "href": f"{href}/{ln['line']}"}], **ln} for ln in lines]
    return {"links": [{"rel": "self", "href": href}], "count": len(items), "hasMore": False, "items": items,
            "offset": 0, "totalResults": len(items)}


def build_app(emu: NetSuiteEmulator) -> ASGIApp:
    app = FastAPI(title="m3sh NetSuite sandbox", docs_url=None, redoc_url=None, openapi_url=None)
    handler = _Handler(emu)
    app.add_api_route("/{path:path}", handler, methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                      include_in_schema=False)
    return cast("ASGIApp", app)
