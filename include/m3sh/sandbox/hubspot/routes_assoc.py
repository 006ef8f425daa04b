"""Associations v4 (api-notes A.8): default and labelled links, list, delete and the batch endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from m3sh.sandbox.hubspot.errors import HubSpotHTTPError, RecordError
from m3sh.sandbox.hubspot.routes_objects import batch_inputs, batch_response, json_body
from m3sh.sandbox.hubspot.schema import OBJECT_TYPE_IDS, REVERSE_TYPE, SINGULAR, canonical_type
from m3sh.sandbox.hubspot.store import PortalState, now_utc

if TYPE_CHECKING:
    from m3sh.sandbox.hubspot.app import HubSpotEmulator

LIST_MAX = 500
BATCH_READ_MAX = 1000
V4_OBJ = "/crm/v4/objects/{from_type}/{from_id}/associations"
V4_BATCH = "/crm/v4/associations/{from_type}/{to_type}/batch"


def _default_results(from_type: str, from_id: str, to_type: str, to_id: str,
                     types: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return [
        {"from": {"id": from_id}, "to": {"id": to_id},
         "associationSpec": {"associationCategory": c, "associationTypeId": t}}
        for c, t in types
    ]


def _labels_pair(s: PortalState, from_type: str, from_id: str, to_type: str, to_id: str) -> dict[str, Any]:
    labels = [
        t["label"]
        for item in s.associated(from_type, from_id, to_type) if item["toObjectId"] == to_id
        for t in item["associationTypes"] if t.get("label")
    ]
    # LabelsBetweenObjectPair types every id as a string.
    return {"fromObjectTypeId": OBJECT_TYPE_IDS[from_type], "fromObjectId": from_id,
            "toObjectTypeId": OBJECT_TYPE_IDS[to_type], "toObjectId": to_id, "labels": labels}


def _spec_types(raw: Any) -> list[tuple[str, int]]:
    if not isinstance(raw, list) or not raw:
        raise RecordError(400, "Association types must be a non-empty list of "
                          "{associationCategory, associationTypeId}", "VALIDATION_ERROR")
    return [(str(t.get("associationCategory", "HUBSPOT_DEFINED")), int(t.get("associationTypeId", 0)))
            for t in raw]


def register(app: FastAPI, emu: HubSpotEmulator) -> None:
    @app.put(V4_OBJ + "/default/{to_type}/{to_id}")
    async def create_default(from_type: str, from_id: str, to_type: str, to_id: str) -> Any:
        ft, tt = canonical_type(from_type), canonical_type(to_type)
        started = now_utc()
        with emu.lock:
            s = emu.state
            s.require(ft, from_id)
            s.require(tt, to_id)
            try:
                types = s.associate(ft, from_id, tt, to_id)
            except RecordError as exc:
                raise exc.to_http() from None
            results = _default_results(ft, from_id, tt, to_id, types)
            results += _default_results(tt, to_id, ft, from_id, _reverse(types))
            return batch_response(results, [], 200, started)

    @app.put(V4_OBJ + "/{to_type}/{to_id}")
    async def create_labelled(
        from_type: str, from_id: str, to_type: str, to_id: str, request: Request
    ) -> Any:
        ft, tt = canonical_type(from_type), canonical_type(to_type)
        body = await json_body(request)
        with emu.lock:
            s = emu.state
            s.require(ft, from_id)
            s.require(tt, to_id)
            try:
                s.associate(ft, from_id, tt, to_id, _spec_types(body))
            except RecordError as exc:
                raise exc.to_http() from None
            return JSONResponse(_labels_pair(s, ft, from_id, tt, to_id), status_code=201)

    @app.get(V4_OBJ + "/{to_type}")
    async def list_associations(from_type: str, from_id: str, to_type: str, request: Request) -> Any:
        ft, tt = canonical_type(from_type), canonical_type(to_type)
        limit = int(request.query_params.get("limit", str(LIST_MAX)))
        if limit < 1 or limit > LIST_MAX:
            raise HubSpotHTTPError(400, f"limit must be between 1 and {LIST_MAX}", "VALIDATION_ERROR")
        offset = int(request.query_params.get("after") or 0)
        with emu.lock:
            emu.state.require(ft, from_id)
            items = emu.state.associated(ft, from_id, tt)
        out: dict[str, Any] = {"results": items[offset:offset + limit]}
        if offset + limit < len(items):
            nxt = str(offset + limit)
            out["paging"] = {"next": {"after": nxt, "link": f"?after={nxt}"}}
        return out

    @app.delete(V4_OBJ + "/{to_type}/{to_id}")
    async def delete_association(from_type: str, from_id: str, to_type: str, to_id: str) -> Response:
        ft, tt = canonical_type(from_type), canonical_type(to_type)
        with emu.lock:
            emu.state.remove_association(ft, from_id, tt, to_id)
        return Response(status_code=204)

    @app.post(V4_BATCH + "/read")
    async def batch_read(from_type: str, to_type: str, request: Request) -> Any:
        ft, tt = canonical_type(from_type), canonical_type(to_type)
        inputs = batch_inputs(await json_body(request), BATCH_READ_MAX)
        started = now_utc()
        results, errors = [], []
        with emu.lock:
            for inp in inputs:
                fid = str(inp.get("id", ""))
                items = emu.state.associated(ft, fid, tt)
                offset = int(inp.get("after") or 0)
                if not items:
                    # Real HubSpot reports "no associations" as a per-input error in a 207.
                    errors.append(RecordError(
                        404, f"No {SINGULAR[tt]} is associated with {SINGULAR[ft]} {fid}.",
                        "OBJECT_NOT_FOUND", sub_category="crm.associations.NO_ASSOCIATIONS_FOUND",
                        context={"fromObjectId": [fid]},
                    ).standard_error())
                    continue
                entry: dict[str, Any] = {"from": {"id": fid}, "to": items[offset:offset + LIST_MAX]}
                if offset + LIST_MAX < len(items):
                    entry["paging"] = {"next": {"after": str(offset + LIST_MAX)}}
                results.append(entry)
        return batch_response(results, errors, 200, started)

    @app.post(V4_BATCH + "/associate/default")
    async def batch_default(from_type: str, to_type: str, request: Request) -> Any:
        ft, tt = canonical_type(from_type), canonical_type(to_type)
        inputs = batch_inputs(await json_body(request), BATCH_READ_MAX)
        started = now_utc()
        results, errors = [], []
        with emu.lock:
            s = emu.state
            for inp in inputs:
                fid, tid = _pair(inp)
                try:
                    _require(s, ft, fid)
                    _require(s, tt, tid)
                    types = s.associate(ft, fid, tt, tid)
                    results += _default_results(ft, fid, tt, tid, types)
                except RecordError as exc:
                    errors.append(exc.standard_error({"fromObjectId": [fid], "toObjectId": [tid]}))
        return batch_response(results, errors, 200, started)

    @app.post(V4_BATCH + "/create")
    async def batch_create(from_type: str, to_type: str, request: Request) -> Any:
        ft, tt = canonical_type(from_type), canonical_type(to_type)
        inputs = batch_inputs(await json_body(request), BATCH_READ_MAX)
        started = now_utc()
        results, errors = [], []
        with emu.lock:
            s = emu.state
            for inp in inputs:
                fid, tid = _pair(inp)
                try:
                    _require(s, ft, fid)
                    _require(s, tt, tid)
                    s.associate(ft, fid, tt, tid, _spec_types(inp.get("types")))
                    results.append(_labels_pair(s, ft, fid, tt, tid))
                except RecordError as exc:
                    errors.append(exc.standard_error({"fromObjectId": [fid], "toObjectId": [tid]}))
        return batch_response(results, errors, 201, started)

    @app.post(V4_BATCH + "/archive")
    async def batch_archive(from_type: str, to_type: str, request: Request) -> Response:
        ft, tt = canonical_type(from_type), canonical_type(to_type)
        inputs = batch_inputs(await json_body(request), BATCH_READ_MAX)
        with emu.lock:
            for inp in inputs:
                fid = str((inp.get("from") or {}).get("id", ""))
                for to in inp.get("to") or []:
                    emu.state.remove_association(ft, fid, tt, str(to.get("id", "")))
        return Response(status_code=204)


def _reverse(types: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return [(c, REVERSE_TYPE.get(t, t)) for c, t in types]


def _pair(inp: dict[str, Any]) -> tuple[str, str]:
    return str((inp.get("from") or {}).get("id", "")), str((inp.get("to") or {}).get("id", ""))


def _require(s: PortalState, object_type: str, object_id: str) -> None:
    rec = s.objects[object_type].get(object_id)
    if rec is None or rec.archived:
        raise RecordError(404, f"No {SINGULAR[object_type]} with ID {object_id} exists", "OBJECT_NOT_FOUND")
