"""OAuth token, org custom fields, account search/children, events and usage queries."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from m3sh.sandbox.m3ter import ingest
from m3sh.sandbox.m3ter.http import ORG, as_bool, ok, read_json
from m3sh.sandbox.m3ter.schemas import REQUEST_FIELDS, ApiError, validate_body
from m3sh.sandbox.m3ter.store import SERVICE_USER, Entity, multi, new_id, page_size, paginate, public
from m3sh.sandbox.m3ter.timeutil import now_iso

if TYPE_CHECKING:
    from m3sh.sandbox.m3ter.app import M3terEmulator

EVENT_TYPES = sorted(
    [
        f"configuration.{e}.{op}"
        for e in (
            "account",
            "accountplan",
            "aggregation",
            "contract",
            "meter",
            "plan",
            "plantemplate",
            "product",
            "transactiontype",
        )
        for op in ("created", "updated", "deleted")
    ]
    + [
        f"billing.{e}.{op}"
        for e in ("balance", "balanceamount", "bill", "billjob")
        for op in ("created", "updated", "deleted")
    ]
    + ["ingest.validation.failure"]
)
_SEARCH_TERM = re.compile(r"^(?P<field>[A-Za-z0-9_.]+)(?P<op>>=|<=|:|>|<|~)(?P<value>.*)$")
# The fields the published spec lets GET /accounts/search filter on (its ``searchQuery`` parameter:
# "Allowed parameters are: name, code, currency, purchaseOrderNumber, parentAccountId, codes, id,
# createdBy, dtCreated, lastModifiedBy, ids"; tests/specs/m3ter/m3ter-openapi.json). No
# ``dtLastModified``: m3sh's m3ter -> CRM sync cannot ask for accounts changed since a time, so it
# keeps fingerprints (m3sh.crm.outbound); the emulator refuses the filter rather than answer it.
# The 400 for another field is the emulator's choice: the spec does not say what m3ter answers.
ACCOUNT_SEARCH_FIELDS = frozenset({"name", "code", "currency", "purchaseOrderNumber", "parentAccountId", "codes",
                                   "id", "createdBy", "dtCreated", "lastModifiedBy", "ids"})
_LIST_FIELDS = {"codes": "code", "ids": "id"}  # several values, comma-separated, matched exactly


def custom_fields_entity(emu: M3terEmulator) -> Entity:
    """The org singleton, created lazily so ``reset("empty")`` still answers GET /customfields."""
    cf = emu.store.custom_fields
    if not cf:
        stamp = now_iso()
        cf.update(
            {
                "id": new_id(),
                "version": 1,
                **{k: {} for k in REQUEST_FIELDS["customfields"]},
                "dtCreated": stamp,
                "dtLastModified": stamp,
                "createdBy": SERVICE_USER,
                "lastModifiedBy": SERVICE_USER,
            }
        )
    return cf


def _search(items: list[Entity], query: Any, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    """``searchQuery`` terms joined by ``$`` with ``:`` ``~`` ``>`` ``>=`` ``<`` ``<=`` comparators,
    on the ``allowed`` fields only (None: any field)."""
    terms = []
    for raw in (query.get("searchQuery") or "").split("$"):
        if not raw:
            continue
        m = _SEARCH_TERM.match(raw)
        if not m:
            raise ApiError(400, f"searchQuery: cannot parse term {raw!r}")
        if allowed is not None and m["field"] not in allowed:
            raise ApiError(400, f"searchQuery: {m['field']!r} is not a search parameter; allowed: "
                                f"{', '.join(sorted(allowed))}")
        terms.append((m["field"], m["op"], m["value"]))
    match_any = (query.get("operator") or "AND").upper() == "OR"

    def hit(e: Entity, fld: str, op: str, value: str) -> bool:
        if fld in _LIST_FIELDS:
            return op == ":" and str(e.get(_LIST_FIELDS[fld])) in value.split(",")
        have = e.get(fld)
        if have is None:
            return False
        if op == ":":
            return str(have) == value
        if op == "~":
            return str(have).lower().startswith(value.lower())
        try:
            a, b = (float(have), float(value)) if isinstance(have, int | float) else (str(have), value)
        except ValueError:
            return False
        return {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op]  # type: ignore[operator]

    if terms:
        combine = any if match_any else all
        items = [e for e in items if combine(hit(e, *t) for t in terms)]
    sort_by = query.get("sortBy")
    if sort_by:
        items.sort(
            key=lambda e: str(e.get(sort_by, "")), reverse=(query.get("sortOrder") or "").upper() == "DESC"
        )
    try:
        start = int(query.get("fromDocument") or 0)
    except ValueError:
        raise ApiError(400, "fromDocument: must be an integer") from None
    size = page_size(query, 100)
    page = items[start : start + size]
    body: dict[str, Any] = {"data": [public(e) for e in page]}
    if start + size < len(items):
        body["nextToken"] = str(start + size)
    return body


def _event_filter(emu: M3terEmulator, query: Any) -> list[Entity]:
    items = list(emu.store.events.values())
    checks = [
        ("ids", "id"),
        ("eventName", "eventName"),
        ("eventType", "_type"),
        ("accountId", "_accountId"),
        ("resourceId", "_resourceId"),
        ("notificationId", "_notificationId"),
        ("notificationCode", "_notificationCode"),
    ]
    for param, fld in checks:
        wanted = multi(query, param)
        if wanted:
            items = [e for e in items if e.get(fld) in wanted]
    as_bool(
        query.get("includeActioned"), "includeActioned"
    )  # validated; sandbox events are actioned on creation
    return items


def register(api: FastAPI, emu: M3terEmulator) -> None:
    @api.post("/oauth/token")
    async def token(request: Request) -> Response:
        body = await request.body()
        return ok(
            emu.issue_token(
                request.headers.get("authorization", ""), body, request.headers.get("content-type", "")
            )
        )

    @api.get(ORG + "/customfields")
    async def get_custom_fields() -> Response:
        with emu.lock:
            return ok(dict(custom_fields_entity(emu)))

    @api.put(ORG + "/customfields")
    async def put_custom_fields(request: Request) -> Response:
        fields = validate_body("customfields", await read_json(request), update=True)
        with emu.lock:
            current = custom_fields_entity(emu)
            if fields.pop("version") != current["version"]:
                raise ApiError(400, f"Version mismatch for CustomFields: current is {current['version']}")
            for key in REQUEST_FIELDS["customfields"]:
                current[key] = fields.get(key, {})
            current["version"] += 1
            current["dtLastModified"] = now_iso()
            return ok(dict(current))

    @api.get(ORG + "/accounts/search")
    async def search_accounts(request: Request) -> Response:
        with emu.lock:
            return ok(_search(list(emu.store.coll("accounts").values()), request.query_params,
                              ACCOUNT_SEARCH_FIELDS))

    @api.get(ORG + "/accounts/{account_id}/children")
    async def account_children(request: Request, account_id: str) -> Response:
        with emu.lock:
            emu.store.get("accounts", account_id, "Account")
            items = [a for a in emu.store.coll("accounts").values() if a.get("parentAccountId") == account_id]
            return ok(paginate(items, request.query_params, 200))

    @api.get(ORG + "/events/types")
    async def event_types() -> Response:
        return ok({"events": EVENT_TYPES})

    @api.get(ORG + "/events/fields")
    async def event_fields(request: Request) -> Response:
        name = request.query_params.get("eventName")
        kind = {"billing.balance": "balances", "billing.balanceamount": "balances"}.get(
            (name or "").rsplit(".", 1)[0], ""
        )
        fields = {f"new.{f}": t for f, (t, _, _) in REQUEST_FIELDS.get(kind, {}).items()}
        if kind == "balances":
            fields["new.amount"] = "number"
            fields.update({f"old.{k[4:]}": v for k, v in fields.items()})
        return ok({"events": {name: fields} if name else {}})

    @api.get(ORG + "/events")
    async def list_events(request: Request) -> Response:
        with emu.lock:
            return ok(paginate(_event_filter(emu, request.query_params), request.query_params, 100))

    @api.get(ORG + "/events/{event_id}")
    async def get_event(event_id: str) -> Response:
        with emu.lock:
            event = emu.store.events.get(event_id)
            if event is None:
                raise ApiError(404, f"Event with id {event_id} not found")
            return ok(public(event))

    @api.post(ORG + "/usage/query")
    async def usage_query(request: Request) -> Response:
        body = await read_json(request, optional=True)
        with emu.lock:
            return ok(
                ingest.query_usage(emu.usage, body, emu.store.coll("meters"), emu.store.coll("accounts"))
            )
