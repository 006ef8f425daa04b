"""Generic org-scoped CRUD for the configuration entities, plus their entity-specific rules.

Each entity is described by a :class:`Kind`; one set of handlers serves all of them, so
pagination, ``version`` locking, unique codes, audit fields and events behave identically
everywhere, as they do in m3ter.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from m3sh.sandbox.m3ter import notify
from m3sh.sandbox.m3ter.http import ORG, as_bool, ok, read_json
from m3sh.sandbox.m3ter.schemas import ApiError, validate_body
from m3sh.sandbox.m3ter.store import Entity, multi, new_id, paginate, public
from m3sh.sandbox.m3ter.timeutil import now, now_iso, parse_date, parse_datetime

if TYPE_CHECKING:
    from m3sh.sandbox.m3ter.app import M3terEmulator

Prepare = Callable[["M3terEmulator", Entity, Entity | None], None]
Filter = Callable[["M3terEmulator", list[Entity], Any], list[Entity]]
# (query param, entity field, multi-valued): an exact-match filter the kind's Filter applies, so a
# list request carrying it can start from the store's index instead of the whole collection.
Narrow = tuple[tuple[str, str, bool], ...]
IDS_CODES: Narrow = (("ids", "id", True), ("codes", "code", True))


@dataclass
class Kind:
    kind: str  # store collection and REQUEST_FIELDS key
    path: str  # URL segment(s) under /organizations/{orgId}/
    label: str  # used in error messages
    event: str | None = None  # event name prefix, e.g. "configuration.account"
    page_max: int = 100
    unique_code: bool = True
    prepare: Prepare | None = None
    filters: Filter | None = None
    narrow: Narrow = ()  # must only name params ``filters`` matches exactly (see _candidates)
    render: Callable[[Entity], Entity] = public
    defaults: dict[str, Any] = field(default_factory=dict)


# -- filters ------------------------------------------------------------------------------------
def _ids_codes(emu: M3terEmulator, items: list[Entity], query: Any) -> list[Entity]:
    ids, codes = multi(query, "ids"), multi(query, "codes")
    if ids:
        items = [e for e in items if e["id"] in ids]
    if codes:
        items = [e for e in items if e.get("code") in codes]
    return items


def _eq(*params: tuple[str, str]) -> Filter:
    """Filter by query params that must equal an entity field (``productId`` -> ``productId``)."""

    def apply(emu: M3terEmulator, items: list[Entity], query: Any) -> list[Entity]:
        items = _ids_codes(emu, items, query)
        for param, fld in params:
            wanted = multi(query, param)
            if wanted:
                items = [e for e in items if e.get(fld) in wanted]
        return items

    return apply


def _bool_filter(param: str, fld: str, default: bool) -> Filter:
    def apply(emu: M3terEmulator, items: list[Entity], query: Any) -> list[Entity]:
        items = _ids_codes(emu, items, query)
        wanted = as_bool(query.get(param), param)
        return items if wanted is None else [e for e in items if e.get(fld, default) == wanted]

    return apply


def _active_at(entity: Entity, at: dt.datetime) -> bool:
    start = parse_datetime(entity["startDate"])
    end = parse_datetime(entity["endDate"]) if entity.get("endDate") else None
    return start <= at and (end is None or at < end)


def _accountplan_filter(emu: M3terEmulator, items: list[Entity], query: Any) -> list[Entity]:
    """m3ter's rules: ``account`` alone gives active plans only unless ``includeall``;
    ``product`` needs ``account``; ``date`` selects plans active on that date."""
    items = _ids_codes(emu, items, query)
    account, product = query.get("account"), query.get("product")
    if product and not account:
        raise ApiError(400, "product: can only be used together with account")
    for param, fld in (
        ("account", "accountId"),
        ("plan", "planId"),
        ("product", "productId"),
        ("contract", "contractId"),
    ):
        if query.get(param):
            items = [e for e in items if e.get(fld) == query.get(param)]
    date = query.get("date")
    if date:
        at = (
            parse_datetime(date, "date")
            if "T" in date
            else dt.datetime.combine(parse_date(date, "date"), dt.time(0), dt.UTC)
        )
        items = [e for e in items if _active_at(e, at)]
    elif account and not as_bool(query.get("includeall"), "includeall"):
        items = [e for e in items if _active_at(e, now())]
    return items


def _balance_filter(emu: M3terEmulator, items: list[Entity], query: Any) -> list[Entity]:
    items = _eq(("accountId", "accountId"), ("contractId", "contractId"), ("contract", "contractId"))(
        emu, items, query
    )
    lo, hi = query.get("endDateStart"), query.get("endDateEnd")
    if lo:
        items = [e for e in items if parse_datetime(e["endDate"]) >= parse_datetime(lo, "endDateStart")]
    if hi:
        items = [e for e in items if parse_datetime(e["endDate"]) < parse_datetime(hi, "endDateEnd")]
    return items


def _mapping_filter(emu: M3terEmulator, items: list[Entity], query: Any) -> list[Entity]:
    system, ids, config = (
        query.get("externalSystemId"),
        multi(query, "m3terIds"),
        query.get("integrationConfigId"),
    )
    if system:
        items = [e for e in items if e["externalSystem"] == system]
    if ids:
        items = [e for e in items if e["m3terId"] in ids]
    if config:
        items = [e for e in items if e.get("integrationConfigId") == config]
    return items


# -- prepare hooks: references, derived fields, invariants ---------------------------------------
def _need(emu: M3terEmulator, kind: str, entity_id: str | None, fld: str) -> Entity | None:
    if not entity_id:
        return None
    entity = emu.store.coll(kind).get(entity_id)
    if entity is None:
        raise ApiError(400, f"{fld}: no {kind[:-1]} with id {entity_id}")
    return entity


def _prep_plantemplate(emu: M3terEmulator, body: Entity, old: Entity | None) -> None:
    _need(emu, "products", body["productId"], "productId")


def _prep_plan(emu: M3terEmulator, body: Entity, old: Entity | None) -> None:
    template = _need(emu, "plantemplates", body["planTemplateId"], "planTemplateId")
    assert template is not None
    body["productId"] = template["productId"]
    _need(emu, "accounts", body.get("accountId"), "accountId")


def _prep_account(emu: M3terEmulator, body: Entity, old: Entity | None) -> None:
    parent = body.get("parentAccountId")
    if parent and old and parent == old["id"]:
        raise ApiError(400, "parentAccountId: an account cannot be its own parent")
    _need(emu, "accounts", parent, "parentAccountId")


def _prep_accountplan(emu: M3terEmulator, body: Entity, old: Entity | None) -> None:
    _need(emu, "accounts", body["accountId"], "accountId")
    if bool(body.get("planId")) == bool(body.get("planGroupId")):
        raise ApiError(400, "Exactly one of planId or planGroupId must be given")
    if body.get("planGroupId"):
        raise ApiError(400, f"planGroupId: no plan group with id {body['planGroupId']}")
    plan = _need(emu, "plans", body["planId"], "planId")
    assert plan is not None
    _need(emu, "contracts", body.get("contractId"), "contractId")
    body["productId"] = plan["productId"]
    start = parse_datetime(body["startDate"], "startDate")
    end = parse_datetime(body["endDate"], "endDate") if body.get("endDate") else None
    if end is not None and end <= start:
        raise ApiError(400, "endDate: must be after startDate")
    for other in emu.store.select("accountplans", "accountId", [body["accountId"]]):
        if old is not None and other["id"] == old["id"]:
            continue
        if other.get("productId") != body["productId"]:
            continue
        o_start = parse_datetime(other["startDate"])
        o_end = parse_datetime(other["endDate"]) if other.get("endDate") else None
        if (o_end is None or start < o_end) and (end is None or o_start < end):
            raise ApiError(
                400,
                f"Account {body['accountId']} already has account plan {other['id']} for "
                f"product {body['productId']} in this period; only one may be active at a time",
            )


def _prep_contract(emu: M3terEmulator, body: Entity, old: Entity | None) -> None:
    _need(emu, "accounts", body["accountId"], "accountId")
    if parse_date(body["endDate"], "endDate") < parse_date(body["startDate"], "startDate"):
        raise ApiError(400, "endDate: must not be before startDate")


def _prep_balance(emu: M3terEmulator, body: Entity, old: Entity | None) -> None:
    _need(emu, "accounts", body["accountId"], "accountId")
    _need(emu, "contracts", body.get("contractId"), "contractId")
    if body.get("rolloverAmount") is not None and not body.get("rolloverEndDate"):
        raise ApiError(400, "rolloverEndDate: required when rolloverAmount is set")
    if parse_datetime(body["endDate"], "endDate") <= parse_datetime(body["startDate"], "startDate"):
        raise ApiError(400, "endDate: must be after startDate")
    # amount is server-owned: the live remaining balance, changed only by transactions/draw-downs
    body["amount"] = old["amount"] if old else 0.0


def _prep_meter(emu: M3terEmulator, body: Entity, old: Entity | None) -> None:
    _need(emu, "products", body.get("productId"), "productId")
    categories = {"WHO", "WHERE", "WHAT", "OTHER", "METADATA", "MEASURE", "INCOME", "COST"}
    for list_name in ("dataFields", "derivedFields"):
        for i, item in enumerate(body[list_name]):
            if not isinstance(item, dict) or not all(
                isinstance(item.get(k), str) and item.get(k) for k in ("category", "code", "name")
            ):
                raise ApiError(400, f"{list_name}[{i}]: needs category, code and name")
            if item["category"] not in categories:
                raise ApiError(
                    400, f"{list_name}[{i}].category: must be one of {', '.join(sorted(categories))}"
                )
            if list_name == "derivedFields" and not isinstance(item.get("calculation"), str):
                raise ApiError(400, f"derivedFields[{i}].calculation: is required")


def _prep_aggregation(emu: M3terEmulator, body: Entity, old: Entity | None) -> None:
    meter = _need(emu, "meters", body["meterId"], "meterId")
    assert meter is not None
    codes = {f["code"] for f in meter.get("dataFields", []) + meter.get("derivedFields", [])}
    if body["targetField"] not in codes:
        raise ApiError(400, f"targetField: meter {meter['code']} has no field {body['targetField']}")
    # No productId copied from the meter: the published Aggregation has none (the spec guard said so).


def _prep_notification(emu: M3terEmulator, body: Entity, old: Entity | None) -> None:
    if body.get("calculation"):
        notify.parse_calculation(body["calculation"])
    body.setdefault("active", True)
    body.setdefault("alwaysFireEvent", False)


def _prep_webhook(emu: M3terEmulator, body: Entity, old: Entity | None) -> None:
    creds = body["credentials"]
    if creds.get("type") != "M3TER_SIGNED_REQUEST":
        raise ApiError(400, "credentials.type: must be M3TER_SIGNED_REQUEST")
    for key in ("apiKey", "secret"):
        if not isinstance(creds.get(key), str) or not creds[key]:
            raise ApiError(400, f"credentials.{key}: is required")
    if not body["url"].startswith(("http://", "https://")):
        raise ApiError(400, "url: must be an http(s) URL")
    stamp = now_iso()
    old_creds = (old or {}).get("credentials") or {}
    body["credentials"] = {
        "id": old_creds.get("id", new_id()),
        "type": "M3TER_SIGNED_REQUEST",
        "destination": "WEBHOOK",
        "apiKey": creds["apiKey"],
        "secret": creds["secret"],
        "name": body["name"],
        "dtCreated": old_creds.get("dtCreated", stamp),
        "dtLastModified": stamp,
    }
    body.setdefault("active", True)


def _prep_mapping(emu: M3terEmulator, body: Entity, old: Entity | None) -> None:
    for other in emu.store.select("externalmappings", "externalId", [body["externalId"]]):
        if old is not None and other["id"] == old["id"]:
            continue
        same_external = all(
            other[k] == body[k] for k in ("externalSystem", "externalTable", "externalId", "m3terEntity")
        )
        if same_external:
            raise ApiError(
                400,
                f"An external mapping for {body['externalSystem']}/{body['externalTable']}/"
                f"{body['externalId']} already exists ({other['id']})",
            )


_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9_-]*$")  # entityType / destination pattern in the spec


def _prep_integration_config(emu: M3terEmulator, body: Entity, old: Entity | None) -> None:
    """A Notification Integration Configuration links a notification (``entityId``) to a webhook
    destination (``destinationId``); m3ter delivers a notification only through such a link."""
    for name in ("entityType", "destination"):
        if not _NAME_PATTERN.match(body[name]):
            raise ApiError(400, f"{name}: must match ^[a-zA-Z0-9_-]*$")
    # Checking that the linked ids exist is the emulator's choice (m3ter's behaviour is not
    # documented): it turns a client bug into an error instead of a link that never delivers.
    if body["entityType"].lower() == "notification":
        for name, kind, label in (("entityId", "notifications", "Notification"),
                                  ("destinationId", "webhooks", "Webhook")):
            if not body.get(name):
                raise ApiError(400, f"{name}: is required for a Notification integration configuration")
            if body[name] not in emu.store.coll(kind):
                raise ApiError(400, f"{name}: {label} with id {body[name]} not found")
    body.setdefault("enabled", (old or {}).get("enabled", True))
    body.setdefault("authorized", True)


def _webhook_render(entity: Entity) -> Entity:
    out = public(entity)
    if out.get("credentials"):
        out["credentials"] = {**out["credentials"], "destinationId": entity["id"]}
    return out


KINDS: list[Kind] = [
    Kind(
        "products",
        "products",
        "Product",
        "configuration.product",
        page_max=200,
        filters=_ids_codes,
        narrow=IDS_CODES,
    ),
    Kind(
        "plantemplates",
        "plantemplates",
        "PlanTemplate",
        "configuration.plantemplate",
        prepare=_prep_plantemplate,
        filters=_eq(("productId", "productId")),
        narrow=IDS_CODES,
    ),
    Kind(
        "plans",
        "plans",
        "Plan",
        "configuration.plan",
        prepare=_prep_plan,
        filters=_eq(("productId", "productId"), ("accountId", "accountId")),
        narrow=(*IDS_CODES, ("accountId", "accountId", True)),
    ),
    Kind(
        "accounts",
        "accounts",
        "Account",
        "configuration.account",
        prepare=_prep_account,
        filters=_ids_codes,
        narrow=IDS_CODES,
    ),
    Kind(
        "accountplans",
        "accountplans",
        "AccountPlan",
        "configuration.accountplan",
        prepare=_prep_accountplan,
        filters=_accountplan_filter,
        narrow=(*IDS_CODES, ("account", "accountId", False)),
    ),
    Kind(
        "contracts",
        "contracts",
        "Contract",
        "configuration.contract",
        prepare=_prep_contract,
        filters=_eq(("accountId", "accountId")),
        narrow=(*IDS_CODES, ("accountId", "accountId", True)),
    ),
    Kind(
        "balances",
        "balances",
        "Balance",
        "billing.balance",
        prepare=_prep_balance,
        filters=_balance_filter,
        narrow=(*IDS_CODES, ("accountId", "accountId", True)),
    ),
    Kind(
        "meters",
        "meters",
        "Meter",
        "configuration.meter",
        prepare=_prep_meter,
        filters=_eq(("productId", "productId")),
        narrow=IDS_CODES,
    ),
    Kind(
        "aggregations",
        "aggregations",
        "Aggregation",
        "configuration.aggregation",
        prepare=_prep_aggregation,
        filters=_eq(("productId", "productId")),
        narrow=IDS_CODES,
    ),
    Kind(
        "externalmappings",
        "externalmappings",
        "ExternalMapping",
        None,
        page_max=200,
        unique_code=False,
        prepare=_prep_mapping,
        filters=_mapping_filter,
        narrow=(("m3terIds", "m3terId", True),),
    ),
    Kind(
        "notifications",
        "notifications/configurations",
        "Notification",
        None,
        prepare=_prep_notification,
        filters=_bool_filter("active", "active", True),
        narrow=IDS_CODES,
    ),
    Kind(
        "webhooks",
        "integrationdestinations/webhooks",
        "Webhook",
        None,
        page_max=200,
        unique_code=True,
        prepare=_prep_webhook,
        filters=_ids_codes,
        narrow=IDS_CODES,
        render=_webhook_render,
    ),
    Kind(
        "integrationconfigs",
        "integrationconfigs",
        "IntegrationConfig",
        None,
        page_max=200,
        unique_code=False,
        prepare=_prep_integration_config,
        filters=_eq(("destinationId", "destinationId")),
    ),
    Kind(
        "transactiontypes",
        "picklists/transactiontypes",
        "TransactionType",
        "configuration.transactiontype",
        filters=_bool_filter("archived", "archived", False),
        narrow=IDS_CODES,
        defaults={"archived": False},
    ),
]
KIND_BY_NAME = {k.kind: k for k in KINDS}


def create_entity(emu: M3terEmulator, kind: Kind, body: Any, entity_id: str | None = None) -> Entity:
    """Validate and insert; also used by the demo seed so seeded data obeys the same rules."""
    fields = {**kind.defaults, **validate_body(kind.kind, body)}
    with emu.lock:
        _check_code(emu, kind, fields, None)
        if kind.prepare:
            kind.prepare(emu, fields, None)
        entity = emu.store.insert(kind.kind, fields, entity_id)
        if kind.event:
            emu.emit(f"{kind.event}.created", entity)
        return entity


def _check_code(emu: M3terEmulator, kind: Kind, fields: Entity, old: Entity | None) -> None:
    code = fields.get("code")
    if not kind.unique_code or not code:
        return
    for other in emu.store.select(kind.kind, "code", [code]):
        if old is None or other["id"] != old["id"]:
            raise ApiError(400, f"{kind.label} code {code!r} is already in use by {other['id']}")


def register(api: FastAPI, emu: M3terEmulator) -> None:
    for kind in KINDS:
        _register_kind(api, emu, kind)

    @api.get(ORG + "/externalmappings/externalid/{system}/{table}/{external_id}")
    async def mappings_by_external(request: Request, system: str, table: str, external_id: str) -> Response:
        with emu.lock:
            items = [
                e
                for e in emu.store.select("externalmappings", "externalId", [external_id])
                if e["externalSystem"] == system and e["externalTable"] == table
            ]
            return ok(paginate(items, request.query_params, 200, in_seq_order=True))

    @api.get(ORG + "/externalmappings/external/{entity}/{m3ter_id}")
    async def mappings_by_m3ter(request: Request, entity: str, m3ter_id: str) -> Response:
        with emu.lock:
            items = [
                e
                for e in emu.store.select("externalmappings", "m3terId", [m3ter_id])
                if e["m3terEntity"].lower() == entity.lower()
            ]
            return ok(paginate(items, request.query_params, 200, in_seq_order=True))

    @api.put(ORG + "/integrationdestinations/webhooks/{entity_id}/active")
    async def webhook_active(request: Request, entity_id: str) -> Response:
        active = as_bool(request.query_params.get("active"), "active")
        with emu.lock:
            entity = emu.store.get("webhooks", entity_id, "Webhook")
            if active is not None:
                entity["active"] = active
                emu.store.touch(entity)
            return ok(_webhook_render(entity))

    @api.post(ORG + "/integrationconfigs/{entity_id}/enable")
    async def integration_config_enable(request: Request, entity_id: str) -> Response:
        with emu.lock:
            entity = emu.store.get("integrationconfigs", entity_id, "IntegrationConfig")
            entity["enabled"] = True
            emu.store.touch(entity)
            return ok(public(entity))


def _candidates(emu: M3terEmulator, kind: Kind, query: Any) -> list[Entity]:
    """The entities a list request can return, oldest first: the whole collection, or only those
    the first indexed filter param in the query matches. The kind's filter still runs on them, so
    this narrows the work, never the result."""
    for param, fld, is_multi in kind.narrow:
        wanted = multi(query, param) if is_multi else [query.get(param) or ""]
        if any(wanted):
            return emu.store.select(kind.kind, fld, wanted)
    return list(emu.store.coll(kind.kind).values())


def _register_kind(api: FastAPI, emu: M3terEmulator, kind: Kind) -> None:
    base = f"{ORG}/{kind.path}"
    render = kind.render

    async def list_(request: Request) -> Response:
        with emu.lock:
            items = _candidates(emu, kind, request.query_params)
            if kind.filters:
                items = kind.filters(emu, items, request.query_params)
            return ok(paginate(items, request.query_params, kind.page_max, render, in_seq_order=True))

    async def create(request: Request) -> Response:
        entity = create_entity(emu, kind, await read_json(request))
        return ok(render(entity))

    async def retrieve(request: Request, entity_id: str) -> Response:
        with emu.lock:
            return ok(render(emu.store.get(kind.kind, entity_id, kind.label)))

    async def update(request: Request, entity_id: str) -> Response:
        fields = {**kind.defaults, **validate_body(kind.kind, await read_json(request), update=True)}
        with emu.lock:
            old = emu.store.get(kind.kind, entity_id, kind.label)
            _check_code(emu, kind, fields, old)
            if kind.prepare:
                kind.prepare(emu, fields, old)
            entity = emu.store.replace(kind.kind, entity_id, fields, kind.label)
            if kind.event:
                emu.emit(f"{kind.event}.updated", entity, old)
            return ok(render(entity))

    async def delete(request: Request, entity_id: str) -> Response:
        with emu.lock:
            entity = emu.store.delete(kind.kind, entity_id, kind.label)
            if kind.event:
                emu.emit(f"{kind.event}.deleted", None, entity)
            return ok(render(entity))

    api.add_api_route(base, list_, methods=["GET"], name=f"list_{kind.kind}")
    api.add_api_route(base, create, methods=["POST"], name=f"create_{kind.kind}")
    api.add_api_route(base + "/{entity_id}", retrieve, methods=["GET"], name=f"get_{kind.kind}")
    api.add_api_route(base + "/{entity_id}", update, methods=["PUT"], name=f"put_{kind.kind}")
    api.add_api_route(base + "/{entity_id}", delete, methods=["DELETE"], name=f"delete_{kind.kind}")
