"""The legacy CRM read endpoints published connectors still call, and the v3 object schemas list.

``airbyte-source-hubspot`` 5.7 and Singer's ``tap-hubspot`` 4.5 read property definitions through the
legacy properties APIs and tap-hubspot pages companies and deals through the legacy companies v2 and
deals v1 APIs (issue 20). HubSpot still documents and serves them under "Legacy" on
developers.hubspot.com/docs/api-reference/legacy/ (pages cited per route below); their request and
answer shapes are taken from those pages. HubSpot publishes no OpenAPI document for them in
``HubSpot/HubSpot-public-api-spec-collection``, so the spec guard judges them by
``tests/specs/hubspot/legacy-crm.json``, written by m3sh from the same pages (see PROVENANCE.md):
where the emulator and that document agree, no machine-readable source stands behind either.

Legacy shapes differ from v3: ids are numbers (``companyId``, ``dealId``, ``portalId``), each
property is ``{"value", "timestamp", "source", "sourceId", "versions": [...]}`` with date and
datetime values as epoch milliseconds, and paging is ``offset`` + ``has-more`` (companies) or
``hasMore`` (deals). Each property's ``timestamp`` and ``source`` are those of its latest change in
the property history the v3 reads serve (store.py); ``propertiesWithHistory`` asks for every
version, newest first, the others carry only the current one. A property without recorded history
(``hs_lastmodifieddate``, which HubSpot itself moves) is stamped with the record's last
modification, which for that property is exact (what incremental readers compare). The legacy
pages show ``source`` values like the v3 ``sourceType`` ("API", "CRM_UI", "INTEGRATION"); that the
two agree for one write is the emulator's assumption.

``GET /crm/v3/schemas`` (custom object schemas; published as ``/crm-object-schemas/v3/schemas`` in
``CRM/Schemas``, documented as ``/crm/v3/schemas`` on developers.hubspot.com/docs/api/crm/crm-custom-objects):
the emulated portal has no custom objects, so the list is empty.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request

from m3sh.sandbox.hubspot.errors import HubSpotHTTPError
from m3sh.sandbox.hubspot.routes_objects import query_bool, query_list
from m3sh.sandbox.hubspot.schema import canonical_type, unmodelled_properties
from m3sh.sandbox.hubspot.store import PortalState, Record, to_epoch_ms

if TYPE_CHECKING:
    from m3sh.sandbox.hubspot.app import HubSpotEmulator

# "Get all companies": limit defaults to 100, at most 250 (legacy crm-companies-v2 get-all-companies);
# "Get all deals": the same (legacy crm/objects/deals/v1 get-deals-v1-deal-paged).
PAGED_DEFAULT = 100
PAGED_MAX = 250
SCHEMA_PATHS = ("/crm/v3/schemas", "/crm-object-schemas/v3/schemas")
LEGACY_ID = {"companies": "companyId", "deals": "dealId"}


def _ms(value: str | None, kind: str) -> str | None:
    """Legacy APIs carry dates and datetimes as epoch milliseconds (as strings)."""
    if value is None or kind not in ("date", "datetime") or value.isdigit():
        return value
    try:
        return str(to_epoch_ms(value))
    except ValueError:
        return value


def legacy_property(pdef: dict[str, Any]) -> dict[str, Any]:
    """A property definition as the legacy properties APIs return it (v1/v2: flat, ms timestamps)."""
    meta = pdef.get("modificationMetadata") or {}
    return {
        "name": pdef["name"], "label": pdef["label"], "description": pdef.get("description", ""),
        "groupName": pdef.get("groupName", ""), "type": pdef["type"], "fieldType": pdef["fieldType"],
        "options": [{"label": o.get("label", ""), "value": o.get("value", ""),
                     "displayOrder": o.get("displayOrder", -1), "hidden": bool(o.get("hidden", False))}
                    for o in pdef.get("options") or []],
        "displayOrder": pdef.get("displayOrder", -1), "calculated": bool(pdef.get("calculated", False)),
        "externalOptions": bool(pdef.get("externalOptions", False)),
        "hasUniqueValue": bool(pdef.get("hasUniqueValue", False)), "hidden": bool(pdef.get("hidden", False)),
        "hubspotDefined": bool(pdef.get("hubspotDefined", False)), "formField": bool(pdef.get("formField", False)),
        "readOnlyValue": bool(meta.get("readOnlyValue", False)),
        "readOnlyDefinition": bool(meta.get("readOnlyDefinition", False)),
        "mutableDefinitionNotDeletable": bool(pdef.get("hubspotDefined", False)),
        "deleted": bool(pdef.get("archived", False)),
        "createdAt": to_epoch_ms(pdef["createdAt"]), "updatedAt": to_epoch_ms(pdef["updatedAt"]),
    }


def legacy_record(state: PortalState, object_type: str, rec: Record, *, names: list[str] | None,
                  history: list[str], portal_id: int, associations: bool = False) -> dict[str, Any]:
    """A company (v2) or deal (v1): only the asked-for properties (all when ``names`` is None)."""
    defs = state.properties[object_type]
    stamp = to_epoch_ms(rec.properties.get("hs_lastmodifieddate") or rec.updated_at.isoformat())
    props: dict[str, Any] = {}
    wanted = list(rec.properties) if names is None else [*names, *history]
    for name in dict.fromkeys(wanted):
        raw = rec.properties.get(name)
        if raw is None or name not in defs:
            continue  # legacy answers leave out properties without a value
        kind = defs[name]["type"]
        value = _ms(raw, kind)
        changes = rec.history.get(name) if name != "hs_lastmodifieddate" else None
        versions: list[dict[str, Any]]
        if changes:
            versions = [{"name": name, "value": _ms(c["value"], kind), "timestamp": to_epoch_ms(c["timestamp"]),
                         "source": c["sourceType"], "sourceId": c.get("sourceId"), "sourceVid": []}
                        for c in (changes if name in history else changes[:1])]
        else:
            versions = [{"name": name, "value": value, "timestamp": stamp, "source": "API", "sourceId": None,
                         "sourceVid": []}]
        latest = versions[0]
        props[name] = {"value": value, "timestamp": latest["timestamp"], "source": latest["source"],
                       "sourceId": latest["sourceId"], "versions": versions}
    out: dict[str, Any] = {"portalId": portal_id, LEGACY_ID[object_type]: int(rec.id), "isDeleted": rec.archived,
                           "properties": props}
    if object_type == "companies":
        out["additionalDomains"] = []
        out["stateChanges"] = []
        out["mergeAudits"] = []
    if associations:
        def ids(to_type: str) -> list[int]:
            return [int(a["toObjectId"]) for a in state.associated(object_type, rec.id, to_type)]

        out["associations"] = {"associatedVids": ids("contacts"), "associatedCompanyIds": ids("companies"),
                               "associatedDealIds": [], "associatedTicketIds": []}
    return out


def _int_param(request: Request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HubSpotHTTPError(400, f"{name} must be an integer, got {raw!r}", "VALIDATION_ERROR") from None
    if value < 0 or (maximum is not None and value > maximum):
        raise HubSpotHTTPError(400, f"{name} must be between 0 and {maximum}, got {value}", "VALIDATION_ERROR")
    return value


def _page(state: PortalState, object_type: str, request: Request) -> tuple[list[Record], int | None]:
    """Records in id order after the ``offset`` (the last id of the previous page), and the next offset."""
    limit = _int_param(request, "limit", PAGED_DEFAULT, PAGED_MAX) or PAGED_DEFAULT
    offset = _int_param(request, "offset", 0)
    recs = [r for r in state.live(object_type) if int(r.id) > offset]
    recs.sort(key=lambda r: int(r.id))
    page = recs[:limit]
    return page, (int(page[-1].id) if len(recs) > limit else None)


def register(app: FastAPI, emu: HubSpotEmulator) -> None:
    from m3sh.sandbox.hubspot.app import HUB_ID

    def properties_of(object_type: str) -> list[dict[str, Any]]:
        common = unmodelled_properties(object_type)
        if common is not None:
            return [legacy_property(p) for p in common]
        t = canonical_type(object_type)
        with emu.lock:
            return [legacy_property(p) for p in emu.state.properties[t].values() if not p["archived"]]

    # developers.hubspot.com/docs/api-reference/legacy/crm-properties-v1 ("Get all properties"):
    # /properties/v1/{objectType}/properties; the v2 path is the same API's later version, and
    # /companies/v2/properties the companies API's own ("Get all company properties").
    @app.get("/properties/v1/{object_type}/properties")
    @app.get("/properties/v1/{object_type}/properties/")
    @app.get("/properties/v2/{object_type}/properties")
    @app.get("/properties/v2/{object_type}/properties/")
    async def legacy_properties(object_type: str) -> Any:
        return properties_of(object_type)

    @app.get("/companies/v2/properties")
    @app.get("/companies/v2/properties/")
    async def company_properties() -> Any:
        return properties_of("companies")

    # legacy crm-companies-v2 "Get all companies": offset paging, has-more.
    @app.get("/companies/v2/companies/paged")
    async def companies_paged(request: Request) -> Any:
        names = query_list(request, "properties")
        history = query_list(request, "propertiesWithHistory")
        with emu.lock:
            page, nxt = _page(emu.state, "companies", request)
            return {"companies": [legacy_record(emu.state, "companies", r, names=names, history=history,
                                                       portal_id=HUB_ID) for r in page],
                    "has-more": nxt is not None, "offset": nxt if nxt is not None else 0}

    # legacy crm-companies-v2 "Get a company": every property with a value.
    @app.get("/companies/v2/companies/{company_id}")
    async def company_by_id(company_id: str) -> Any:
        with emu.lock:
            rec = emu.state.objects["companies"].get(company_id)
            if rec is None or rec.archived:
                raise HubSpotHTTPError(404, f"No company with ID {company_id} exists", "OBJECT_NOT_FOUND")
            return legacy_record(emu.state, "companies", rec, names=None, history=[], portal_id=HUB_ID)

    # legacy deals v1 "Get all deals": offset paging, hasMore; includeAllProperties returns every
    # property with a value (not on the page; tap-hubspot's comment of 2020-02-12 says HubSpot
    # recommended it with allPropertiesFetchMode=latest_version, the only mode emulated).
    @app.get("/deals/v1/deal/paged")
    async def deals_paged(request: Request) -> Any:
        mode = request.query_params.get("allPropertiesFetchMode", "latest_version")
        if mode != "latest_version":
            raise HubSpotHTTPError(400, f"allPropertiesFetchMode {mode!r} is not implemented by the m3sh sandbox "
                                   "(only latest_version)", "VALIDATION_ERROR")
        names = None if query_bool(request, "includeAllProperties") else query_list(request, "properties")
        history = query_list(request, "propertiesWithHistory")
        assoc = query_bool(request, "includeAssociations")
        with emu.lock:
            page, nxt = _page(emu.state, "deals", request)
            return {"deals": [legacy_record(emu.state, "deals", r, names=names, history=history, portal_id=HUB_ID,
                                                   associations=assoc) for r in page],
                    "hasMore": nxt is not None, "offset": nxt if nxt is not None else 0}

    for path in SCHEMA_PATHS:
        @app.get(path)
        async def list_schemas(request: Request) -> Any:
            query_bool(request, "archived")
            return {"results": []}

