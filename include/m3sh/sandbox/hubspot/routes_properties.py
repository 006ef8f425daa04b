"""Properties API (api-notes A.6): custom fields such as ``m3ter_account_id`` must exist before writes."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from m3sh.sandbox.hubspot.errors import HubSpotHTTPError
from m3sh.sandbox.hubspot.routes_objects import json_body, query_bool
from m3sh.sandbox.hubspot.schema import (
    VALID_FIELD_TYPES,
    VALID_TYPES,
    canonical_type,
    default_group,
    iso_ms,
    property_definition,
    unmodelled_properties,
)
from m3sh.sandbox.hubspot.store import now_utc

if TYPE_CHECKING:
    from m3sh.sandbox.hubspot.app import HubSpotEmulator

V3P = "/crm/v3/properties/{object_type}"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_REQUIRED = ("name", "label", "type", "fieldType", "groupName")


def create_property(emu: HubSpotEmulator, object_type: str, body: Any) -> dict[str, Any]:
    """Validate a ``PropertyCreate`` and store it; shared by the route and the demo seed."""
    if not isinstance(body, dict):
        raise HubSpotHTTPError(400, "Invalid input JSON", "VALIDATION_ERROR")
    missing = [k for k in _REQUIRED if not body.get(k)]
    if missing:
        raise HubSpotHTTPError(400, f"Missing required fields: {missing}", "VALIDATION_ERROR",
                               context={"missing": missing})
    name = str(body["name"])
    if not _NAME_RE.match(name):
        raise HubSpotHTTPError(400, f"Invalid property name {name!r}: use lower case letters, digits and "
                               "underscores, starting with a letter", "VALIDATION_ERROR")
    if body["type"] not in VALID_TYPES or body["fieldType"] not in VALID_FIELD_TYPES:
        raise HubSpotHTTPError(400, f"Invalid type/fieldType {body['type']}/{body['fieldType']}",
                               "VALIDATION_ERROR")
    if body["type"] == "enumeration" and not body.get("options"):
        raise HubSpotHTTPError(400, "Enumeration properties need options", "VALIDATION_ERROR")
    defs = emu.state.properties[object_type]
    if name in defs and not defs[name]["archived"]:
        raise HubSpotHTTPError(409, f"A property named '{name}' already exists.", "OBJECT_ALREADY_EXISTS",
                               context={"name": [name]})
    prop = property_definition(
        name, str(body["type"]), str(body["label"]),
        field_type=str(body["fieldType"]), group_name=str(body["groupName"]),
        has_unique_value=bool(body.get("hasUniqueValue", False)), hubspot_defined=False,
        description=str(body.get("description", "")), options=body.get("options") or [],
        created=now_utc(),
    )
    for key in ("displayOrder", "hidden", "formField"):
        if key in body:
            prop[key] = body[key]
    defs[name] = prop
    return prop


def register(app: FastAPI, emu: HubSpotEmulator) -> None:
    @app.get(V3P + "/groups")
    async def list_groups(object_type: str) -> Any:
        t = canonical_type(object_type)
        with emu.lock:
            names = sorted({p["groupName"] for p in emu.state.properties[t].values()} | {default_group(t)})
        return {"results": [{"name": n, "label": n.replace("_", " ").title(), "displayOrder": -1,
                             "archived": False} for n in names]}

    @app.get(V3P)
    async def list_properties(object_type: str, request: Request) -> Any:
        archived = query_bool(request, "archived")
        common = unmodelled_properties(object_type)
        if common is not None:
            return {"results": [] if archived else common}
        t = canonical_type(object_type)
        with emu.lock:
            return {"results": [p for p in emu.state.properties[t].values() if p["archived"] == archived]}

    @app.post(V3P)
    async def create(object_type: str, request: Request) -> Any:
        t = canonical_type(object_type)
        body = await json_body(request)
        with emu.lock:
            return JSONResponse(create_property(emu, t, body), status_code=201)

    @app.get(V3P + "/{name}")
    async def get_property(object_type: str, name: str, request: Request) -> Any:
        t = canonical_type(object_type)
        with emu.lock:
            prop = emu.state.properties[t].get(name)
            if prop is None or prop["archived"] != query_bool(request, "archived"):
                raise HubSpotHTTPError(404, f"Unable to find property {name}", "OBJECT_NOT_FOUND",
                                       context={"name": [name]})
            return prop

    @app.patch(V3P + "/{name}")
    async def update_property(object_type: str, name: str, request: Request) -> Any:
        t = canonical_type(object_type)
        body = await json_body(request)
        with emu.lock:
            prop = emu.state.properties[t].get(name)
            if prop is None or prop["archived"]:
                raise HubSpotHTTPError(404, f"Unable to find property {name}", "OBJECT_NOT_FOUND")
            if prop["hubspotDefined"]:
                raise HubSpotHTTPError(400, f"Property {name} is HubSpot-defined and read-only",
                                       "VALIDATION_ERROR")
            for key in ("label", "description", "groupName", "options", "displayOrder", "hidden",
                        "formField", "type", "fieldType"):
                if key in body:
                    prop[key] = body[key]
            prop["updatedAt"] = iso_ms(now_utc())
            return prop

    @app.delete(V3P + "/{name}")
    async def archive_property(object_type: str, name: str) -> Response:
        t = canonical_type(object_type)
        with emu.lock:
            prop = emu.state.properties[t].get(name)
            if prop is None:
                raise HubSpotHTTPError(404, f"Unable to find property {name}", "OBJECT_NOT_FOUND")
            if prop["hubspotDefined"]:
                raise HubSpotHTTPError(400, f"Property {name} is HubSpot-defined and cannot be archived",
                                       "VALIDATION_ERROR")
            prop["archived"] = True
        return Response(status_code=204)
