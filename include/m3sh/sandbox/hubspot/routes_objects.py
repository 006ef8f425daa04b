"""CRM v3 object endpoints: list, get, create, update, archive, the batch endpoints and search."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from m3sh.sandbox.hubspot.errors import HubSpotHTTPError, RecordError
from m3sh.sandbox.hubspot.schema import KNOWN_ASSOCIATION_TYPES, SINGULAR, canonical_type, iso_ms
from m3sh.sandbox.hubspot.search import search
from m3sh.sandbox.hubspot.store import API_SOURCE, PortalState, Record, now_utc

if TYPE_CHECKING:
    from m3sh.sandbox.hubspot.app import HubSpotEmulator

PAGE_MAX = 100
BATCH_MAX = 100
V3 = "/crm/v3/objects/{object_type}"


def query_list(request: Request, name: str) -> list[str]:
    """Array query params arrive repeated (what the client sends) or comma-joined (what the spec says)."""
    out: list[str] = []
    for raw in request.query_params.getlist(name):
        out.extend(p for p in raw.split(",") if p)
    return out


def query_bool(request: Request, name: str) -> bool:
    return request.query_params.get(name, "false").lower() == "true"


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return await request.json()
    except ValueError:
        raise HubSpotHTTPError(400, "Invalid input JSON on line 1", "VALIDATION_ERROR") from None


def batch_inputs(body: Any, maximum: int = BATCH_MAX) -> list[dict[str, Any]]:
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list):
        raise HubSpotHTTPError(400, "Invalid input JSON: 'inputs' must be a list", "VALIDATION_ERROR")
    if len(inputs) > maximum:
        raise HubSpotHTTPError(
            400, f"Batch input limit exceeded: at most {maximum} inputs are allowed, got {len(inputs)}",
            "VALIDATION_ERROR",
            context={"inputs": [str(len(inputs))]},
        )
    return inputs


def batch_response(results: list[dict[str, Any]], errors: list[dict[str, Any]], ok_status: int,
                   started: dt.datetime) -> JSONResponse:
    """``BatchResponse...`` or, when any record failed, the 207 ``...WithErrors`` variant."""
    body: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "requestedAt": iso_ms(started),
        "startedAt": iso_ms(started),
        "completedAt": iso_ms(now_utc()),
        "links": {},
    }
    if errors:
        body["numErrors"] = len(errors)
        body["errors"] = errors
        return JSONResponse(body, status_code=207)
    return JSONResponse(body, status_code=ok_status)


def _trace_context(inp: dict[str, Any], extra: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    ctx = dict(extra or {})
    if inp.get("objectWriteTraceId"):
        ctx["objectWriteTraceId"] = [str(inp["objectWriteTraceId"])]
    return ctx


def _with_trace(out: dict[str, Any], inp: dict[str, Any]) -> dict[str, Any]:
    if inp.get("objectWriteTraceId"):
        out["objectWriteTraceId"] = str(inp["objectWriteTraceId"])
    return out


def _props_of(inp: Any) -> dict[str, Any]:
    props = inp.get("properties") if isinstance(inp, dict) else None
    if not isinstance(props, dict):
        raise RecordError(400, "Invalid input: 'properties' must be an object", "VALIDATION_ERROR")
    return props


def _create_associations(state: PortalState, object_type: str, rec: Record, assocs: Any) -> None:
    """Associations given with a create: the target type follows from each HUBSPOT_DEFINED type id."""
    for a in assocs or []:
        to_id = str((a.get("to") or {}).get("id", ""))
        types = [(t.get("associationCategory", "HUBSPOT_DEFINED"), int(t.get("associationTypeId", 0)))
                 for t in a.get("types") or []]
        known = KNOWN_ASSOCIATION_TYPES.get(types[0][1]) if types else None
        if known is None or known[0] != object_type:
            raise RecordError(400, f"Unknown association type for {object_type}: {a.get('types')}",
                              "VALIDATION_ERROR")
        to_type = known[1]
        if state.objects[to_type].get(to_id) is None:
            raise RecordError(404, f"No {SINGULAR[to_type]} with ID {to_id} exists", "OBJECT_NOT_FOUND",
                              context={"id": [to_id]})
        state.associate(object_type, rec.id, to_type, to_id, types)


def _with_associations(state: PortalState, object_type: str, rec: Record, out: dict[str, Any],
                       to_types: list[str]) -> dict[str, Any]:
    """``associations`` on v3 reads: ``{toType: {results: [{id, type}]}}`` (api-notes A.3)."""
    if not to_types:
        return out
    assoc: dict[str, Any] = {}
    for raw in to_types:
        to_type = canonical_type(raw)
        results = []
        for item in state.associated(object_type, rec.id, to_type):
            for t in item["associationTypes"]:
                label = f"_{t['label'].lower()}" if t.get("label") else ""
                results.append({"id": item["toObjectId"],
                                "type": f"{SINGULAR[object_type]}_to_{SINGULAR[to_type]}{label}"})
        if results:
            assoc[raw] = {"results": results}
    if assoc:
        out["associations"] = assoc
    return out


def register(app: FastAPI, emu: HubSpotEmulator) -> None:
    def locked(fn: Callable[[PortalState], Any]) -> Any:
        with emu.lock:
            return fn(emu.state)

    # ---- batch + search first, so "batch"/"search" never match {object_id} -------------------
    @app.post(V3 + "/search")
    async def do_search(object_type: str, request: Request) -> Any:
        t = canonical_type(object_type)
        body = await json_body(request)
        return locked(lambda s: search(s, t, body))

    @app.post(V3 + "/batch/read")
    async def batch_read(object_type: str, request: Request) -> Any:
        t = canonical_type(object_type)
        body = await json_body(request)
        inputs = batch_inputs(body)
        started = now_utc()
        archived = query_bool(request, "archived")
        props = body.get("properties") or None
        history = body.get("propertiesWithHistory") or []
        id_prop = body.get("idProperty")

        def run(s: PortalState) -> JSONResponse:
            results, missing = [], []
            for inp in inputs:
                try:
                    results.append(s.get(t, str(inp.get("id")), id_prop, archived).to_json(t, props, history))
                except RecordError:
                    missing.append(str(inp.get("id")))
            errors = []
            if missing:
                errors.append(RecordError(
                    404, f"Could not get some {SINGULAR[t].upper()} objects, they may be deleted or not "
                    "exist. Check that ids are valid.", "OBJECT_NOT_FOUND", context={"ids": missing},
                ).standard_error())
            return batch_response(results, errors, 200, started)

        return locked(run)

    @app.post(V3 + "/batch/create")
    async def batch_create(object_type: str, request: Request) -> Any:
        t = canonical_type(object_type)
        inputs = batch_inputs(await json_body(request))
        started = now_utc()

        def run(s: PortalState) -> JSONResponse:
            results, errors = [], []
            for inp in inputs:
                try:
                    rec = s.create(t, _props_of(inp), source=API_SOURCE)
                    _create_associations(s, t, rec, inp.get("associations"))
                    results.append(_with_trace(rec.to_json(t, list(rec.properties)), inp))
                except RecordError as exc:
                    errors.append(exc.standard_error(_trace_context(inp)))
            return batch_response(results, errors, 201, started)

        return locked(run)

    @app.post(V3 + "/batch/update")
    async def batch_update(object_type: str, request: Request) -> Any:
        t = canonical_type(object_type)
        inputs = batch_inputs(await json_body(request))
        started = now_utc()

        def run(s: PortalState) -> JSONResponse:
            results, errors = [], []
            for inp in inputs:
                rid = str(inp.get("id", ""))
                try:
                    rec = s.get(t, rid, inp.get("idProperty"))
                    s.update(t, rec, _props_of(inp))
                    results.append(_with_trace(rec.to_json(t, list(rec.properties)), inp))
                except RecordError as exc:
                    errors.append(exc.standard_error(_trace_context(inp, {"ids": [rid]})))
            return batch_response(results, errors, 200, started)

        return locked(run)

    @app.post(V3 + "/batch/upsert")
    async def batch_upsert(object_type: str, request: Request) -> Any:
        t = canonical_type(object_type)
        inputs = batch_inputs(await json_body(request))
        started = now_utc()

        def run(s: PortalState) -> JSONResponse:
            seen: set[tuple[str, str]] = set()
            for inp in inputs:
                key = (str(inp.get("idProperty") or "hs_object_id"), str(inp.get("id", "")))
                if key in seen:
                    raise HubSpotHTTPError(400, f"Duplicate IDs found in batch input: {[key[1]]}. IDs must "
                                           "be unique", "VALIDATION_ERROR")
                seen.add(key)
            results, errors = [], []
            for inp in inputs:
                rid = str(inp.get("id", ""))
                id_prop = str(inp.get("idProperty") or "hs_object_id")
                try:
                    pdef = s.properties[t].get(id_prop)
                    if pdef is None:
                        raise RecordError(400, f'Property "{id_prop}" does not exist', "VALIDATION_ERROR")
                    if not pdef["hasUniqueValue"]:
                        raise RecordError(400, f"Upsert requires a unique idProperty; {id_prop!r} does not "
                                          "have unique values", "VALIDATION_ERROR")
                    props = _props_of(inp)
                    existing = s.find_by(t, id_prop, rid)
                    if existing is not None:
                        s.update(t, existing, props)
                        rec, new = existing, False
                    elif id_prop == "hs_object_id":
                        raise RecordError(404, f"No {SINGULAR[t]} with ID {rid} exists", "OBJECT_NOT_FOUND")
                    else:
                        rec, new = s.create(t, {**props, id_prop: rid}, source=API_SOURCE), True
                    out = rec.to_json(t, list(rec.properties))
                    out["new"] = new
                    results.append(_with_trace(out, inp))
                except RecordError as exc:
                    errors.append(exc.standard_error(_trace_context(inp, {"ids": [rid]})))
            return batch_response(results, errors, 200, started)

        return locked(run)

    @app.post(V3 + "/batch/archive")
    async def batch_archive(object_type: str, request: Request) -> Any:
        t = canonical_type(object_type)
        inputs = batch_inputs(await json_body(request))

        def run(s: PortalState) -> Response:
            for inp in inputs:
                rec = s.objects[t].get(str(inp.get("id", "")))
                if rec is not None and not rec.archived:
                    s.archive(t, rec)
            return Response(status_code=204)

        return locked(run)

    # ---- collection + single record ------------------------------------------------------------
    @app.get(V3)
    async def list_objects(object_type: str, request: Request) -> Any:
        t = canonical_type(object_type)
        try:
            limit = int(request.query_params.get("limit", "10"))
        except ValueError:
            raise HubSpotHTTPError(400, "limit must be an integer", "VALIDATION_ERROR") from None
        if limit < 1 or limit > PAGE_MAX:
            raise HubSpotHTTPError(400, f"limit must be between 1 and {PAGE_MAX}", "VALIDATION_ERROR")
        after = request.query_params.get("after")
        archived = query_bool(request, "archived")
        props = query_list(request, "properties") or None
        history = query_list(request, "propertiesWithHistory")
        assoc = query_list(request, "associations")

        def run(s: PortalState) -> dict[str, Any]:
            # Records sit in id order (seeded ascending, new ids above), so the cursor is the next id.
            recs = [r for r in s.objects[t].values() if r.archived == archived]
            if after:
                try:
                    cursor = int(after)
                except ValueError:
                    raise HubSpotHTTPError(400, f"Invalid after cursor {after!r}",
                                           "VALIDATION_ERROR") from None
                recs = [r for r in recs if int(r.id) >= cursor]
            page = recs[:limit]
            out: dict[str, Any] = {
                "results": [_with_associations(s, t, r, r.to_json(t, props, history), assoc) for r in page]
            }
            if len(recs) > limit:
                nxt = recs[limit].id
                out["paging"] = {"next": {"after": nxt, "link": f"?after={nxt}"}}
            return out

        return locked(run)

    @app.post(V3)
    async def create_object(object_type: str, request: Request) -> Any:
        t = canonical_type(object_type)
        body = await json_body(request)

        def run(s: PortalState) -> JSONResponse:
            try:
                rec = s.create(t, _props_of(body), source=API_SOURCE)
                _create_associations(s, t, rec, body.get("associations"))
            except RecordError as exc:
                raise exc.to_http() from None
            return JSONResponse(rec.to_json(t, list(rec.properties)), status_code=201)

        return locked(run)

    @app.get(V3 + "/{object_id}")
    async def get_object(object_type: str, object_id: str, request: Request) -> Any:
        t = canonical_type(object_type)
        props = query_list(request, "properties") or None
        history = query_list(request, "propertiesWithHistory")
        assoc = query_list(request, "associations")

        def run(s: PortalState) -> dict[str, Any]:
            try:
                rec = s.get(t, object_id, request.query_params.get("idProperty"),
                            query_bool(request, "archived"))
            except RecordError as exc:
                raise exc.to_http() from None
            return _with_associations(s, t, rec, rec.to_json(t, props, history), assoc)

        return locked(run)

    @app.patch(V3 + "/{object_id}")
    async def update_object(object_type: str, object_id: str, request: Request) -> Any:
        t = canonical_type(object_type)
        body = await json_body(request)

        def run(s: PortalState) -> dict[str, Any]:
            try:
                rec = s.get(t, object_id, request.query_params.get("idProperty"))
                s.update(t, rec, _props_of(body))
            except RecordError as exc:
                raise exc.to_http() from None
            return rec.to_json(t, list(rec.properties))

        return locked(run)

    @app.delete(V3 + "/{object_id}")
    async def archive_object(object_type: str, object_id: str) -> Response:
        t = canonical_type(object_type)

        def run(s: PortalState) -> Response:
            rec = s.objects[t].get(object_id)
            if rec is not None and not rec.archived:
                s.archive(t, rec)
            return Response(status_code=204)  # HubSpot answers 204 even for unknown ids

        return locked(run)
