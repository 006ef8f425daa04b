"""The HubSpot emulator: private-app auth and scopes, HubSpot's rate-limit policies, and the CRM routes.

Auth, scopes and rate limiting sit in a small raw-ASGI gate in front of FastAPI (rather than
dependencies) so that every route, including unknown paths, answers 401/403/429 exactly like
HubSpot and so the ``X-HubSpot-RateLimit-*`` headers can be added to any response.

Scopes: the private app's token carries a scope set (every CRM scope m3sh can need, by default;
the ``token_scopes`` admin action narrows it, e.g. to plant a missing scope). Requests to
``/crm/v3/objects/{type}`` and the v4 association batch read need ``crm.objects.<type>.read``
(GET, search, batch read) or ``.write`` (anything else) and otherwise answer 403
``MISSING_SCOPES``. The scope names are HubSpot's documented ones (api-notes A.2); the 403 body
(``errors[].context.requiredGranularScopes``) is modelled on responses quoted in public issue
threads, not on a published schema. The Properties API is not scope-checked here: HubSpot accepts
any of many object scopes for reading properties.
"""

from __future__ import annotations

import hmac
import json
import math
from typing import Any, cast
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from m3sh.sandbox import credentials
from m3sh.sandbox.common import ASGIApp, Emulator, Receive, Scope, Send, WindowLimiter
from m3sh.sandbox.hubspot import routes_assoc, routes_legacy, routes_objects, routes_properties, strict
from m3sh.sandbox.hubspot.demo import seed_demo
from m3sh.sandbox.hubspot.errors import HubSpotHTTPError, RecordError, error_body, rate_limit_body
from m3sh.sandbox.hubspot.schema import LASTMOD_PROPERTY, canonical_type, iso_ms
from m3sh.sandbox.hubspot.store import PRIVATE_APP_ID, PortalState, parse_datetime_value

# Documented limits (api-notes A.9/A.7): private app on Free/Starter.
TEN_SECONDLY_MAX = 100
TEN_SECONDLY_WINDOW_S = 10.0
SEARCH_PER_SECOND = 5
DAILY_MAX = 250_000
BULK_MAX = 50_000
HUB_ID = 24_571_003  # the emulated portal's (account's) id; any stable number
APP_ID = PRIVATE_APP_ID  # the private app whose token the sandbox issues
USER_ID = 61_004_117
# Scope names per HubSpot's scopes reference (api-notes A.2): read and write per CRM object type,
# plus the schema scopes that cover creating properties.
OBJECT_SCOPE_TYPES = ("companies", "contacts", "deals", "line_items", "products")
DEFAULT_SCOPES = frozenset(
    {f"crm.objects.{t}.{rw}" for t in OBJECT_SCOPE_TYPES for rw in ("read", "write")}
    | {f"crm.schemas.{t}.{rw}" for t in ("companies", "contacts", "deals") for rw in ("read", "write")}
    | {"crm.objects.owners.read", "oauth"}
)
TOKEN_INFO_PATH = "/oauth/v2/private-apps/get/access-token-info"  # noqa: S105 - an API path, not a secret


class _Limiter(WindowLimiter):
    def remaining(self, key: str) -> int:
        """Requests left in the current window, for the ``X-HubSpot-RateLimit-Remaining`` header."""
        with self._lock:
            return max(0, self.limit - len(self._hits.get(key, ())))


def _is_search(path: str) -> bool:
    return path.startswith("/crm/v3/objects/") and path.rstrip("/").endswith("/search")


def required_scope(method: str, path: str) -> list[str]:
    """The scopes a request needs (any one of them is not enough: all are listed), or ``[]``."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["crm", "v3", "objects"] and len(parts) >= 4:
        types = [parts[3]]
        reading = method == "GET" or (method == "POST" and parts[-1] in ("search", "read"))
    elif parts[:3] == ["crm", "v4", "associations"] and len(parts) >= 6 and parts[-2:] == ["batch", "read"]:
        types, reading = [parts[3], parts[4]], True
    else:
        return []
    try:
        names = [canonical_type(t) for t in types]
    except HubSpotHTTPError:
        return []  # an unknown object type: the route answers it
    return [f"crm.objects.{n}.{'read' if reading else 'write'}" for n in names]


def _exempt_from_ten_secondly(path: str) -> bool:
    # The spec marks search and the v4 association batch endpoints as exempt (api-notes A.7/A.8).
    return _is_search(path) or (path.startswith("/crm/v4/associations/") and "/batch/" in path)


class HubSpotEmulator(Emulator):
    """HubSpot CRM v3/v4 for one private-app portal; seeded from the shared demo company."""

    name = "hubspot"

    def __init__(self) -> None:
        super().__init__()
        self.state = PortalState()
        self.daily_count = 0
        self.token_scopes: set[str] = set(DEFAULT_SCOPES)
        self._default_limits()
        api = FastAPI(title="HubSpot emulator", docs_url=None, redoc_url=None, openapi_url=None)
        self._install_handlers(api)
        routes_objects.register(api, self)
        routes_assoc.register(api, self)
        routes_properties.register(api, self)
        routes_legacy.register(api, self)

        @api.get("/crm/v3/owners")
        @api.get("/crm/v3/owners/")
        async def list_owners() -> Any:
            with self.lock:
                return {"results": list(self.state.owners)}

        @api.post(TOKEN_INFO_PATH)
        async def access_token_info(request: Request) -> Any:
            """The private app token's metadata (developers.hubspot.com/docs/api/private-apps, "View
            private app access token information"): ``{"tokenKey"}`` in, ``userId``, ``hubId``,
            ``appId`` and ``scopes`` out. HubSpot publishes no schema for it; the field names are the
            ones the docs' example and public clients use. Needs no scope."""
            try:
                body = json.loads(await request.body() or b"{}")
            except ValueError:
                body = None
            key = body.get("tokenKey") if isinstance(body, dict) else None
            if not isinstance(key, str) or not key:
                raise HubSpotHTTPError(400, "tokenKey is required", "VALIDATION_ERROR")
            if not hmac.compare_digest(key.encode(), credentials.HUBSPOT_TOKEN.encode()):
                raise HubSpotHTTPError(401, "The token is invalid or expired.", "INVALID_AUTHENTICATION")
            with self.lock:
                return {"userId": USER_ID, "hubId": HUB_ID, "appId": APP_ID, "scopes": sorted(self.token_scopes)}

        self.app = self._gate(api)
        self.admin_actions["token_scopes"] = self._set_token_scopes
        self.admin_actions["bulk_create"] = self._bulk_create
        self.admin_actions["set_modified"] = self._set_modified
        self.admin_actions["rate_limit"] = self._set_rate_limit

    # -- Emulator contract ------------------------------------------------------------------------
    def reset(self, seed: str = "empty") -> None:
        with self.lock:
            self.state = PortalState()
            self.daily_count = 0
            self.token_scopes = set(DEFAULT_SCOPES)
            self._default_limits()
            if seed == "demo":
                seed_demo(self.state)
            elif seed != "empty":
                raise ValueError(f"unknown seed {seed!r}; use 'demo' or 'empty'")

    def snapshot(self) -> dict[str, Any]:
        s = self.state
        return {
            "objects": {
                t: [{**r.to_json(t, list(r.properties)), "properties": dict(r.properties)}
                    for r in recs.values()]
                for t, recs in s.objects.items()
            },
            "associations": [
                {"fromType": ft, "fromId": fid, "toType": tt, "toId": tid,
                 "types": sorted([list(x) for x in types])}
                for (ft, fid, tt), links in s.associations.items() for tid, types in links.items()
            ],
            "properties": {
                t: sorted(n for n, p in defs.items() if not p["hubspotDefined"] and not p["archived"])
                for t, defs in s.properties.items()
            },
            "limits": {"ten_secondly": self.ten_secondly.limit, "window_s": self.ten_secondly.window_s,
                       "search_per_s": self.secondly.limit},
            "token_scopes": sorted(self.token_scopes),
        }

    def on_limits_changed(self) -> None:
        self.ten_secondly.reset()
        self.secondly.reset()

    def error_body(self, status: int, message: str) -> Any:
        if status == 429:
            return rate_limit_body("TEN_SECONDLY_ROLLING", message)
        return error_body(status, message)

    # -- admin actions ----------------------------------------------------------------------------
    def _default_limits(self) -> None:
        self.ten_secondly = _Limiter(TEN_SECONDLY_MAX, TEN_SECONDLY_WINDOW_S)
        self.secondly = _Limiter(SEARCH_PER_SECOND, 1.0)

    def _set_token_scopes(self, body: dict[str, Any]) -> dict[str, Any]:
        """The private app's scopes, as if edited in its settings: ``{"scopes": [...]}`` replaces
        them, ``{"remove": [...]}`` / ``{"add": [...]}`` edit them. The token stays the same here
        (HubSpot's docs do not say whether an edit issues a new one)."""
        if "scopes" in body:
            self.token_scopes = {str(s) for s in body["scopes"]}
        self.token_scopes -= {str(s) for s in body.get("remove") or []}
        self.token_scopes |= {str(s) for s in body.get("add") or []}
        return {"scopes": sorted(self.token_scopes)}

    def _set_rate_limit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Scale the burst policy down for fast tests (``{"ten_secondly": 50, "window_s": 1}``)."""
        self.ten_secondly = _Limiter(int(body.get("ten_secondly", TEN_SECONDLY_MAX)),
                                     float(body.get("window_s", TEN_SECONDLY_WINDOW_S)))
        self.secondly = _Limiter(int(body.get("search_per_s", SEARCH_PER_SECOND)), 1.0)
        return {"ten_secondly": self.ten_secondly.limit, "window_s": self.ten_secondly.window_s,
                "search_per_s": self.secondly.limit}

    def _bulk_create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create many records cheaply (no HTTP per record), last-modified times spread evenly.

        ``{"object_type": "companies", "count": 10050, "modified_from": iso, "modified_to": iso,
        "properties": {...}}``; ``{i}`` in string property values is replaced by the record's index.
        Used to exercise the 10,000-result search cap.
        """
        t = canonical_type(str(body.get("object_type", "companies")))
        count = int(body.get("count", 0))
        if not 0 < count <= BULK_MAX:
            raise ValueError(f"count must be between 1 and {BULK_MAX}")
        start = parse_datetime_value(str(body.get("modified_from", "2020-01-01T00:00:00Z")))
        end = parse_datetime_value(str(body.get("modified_to", "2020-12-31T00:00:00Z")))
        template = body.get("properties") or {"name": "Bulk company {i}"}
        step = (end - start) / count
        lastmod = LASTMOD_PROPERTY[t]
        ids = []
        for i in range(count):
            when = start + step * i
            props = {k: str(v).replace("{i}", str(i)) for k, v in template.items()}
            props[lastmod] = iso_ms(when)
            ids.append(self.state.create(t, props, allow_read_only=True, when=when).id)
        return {"created": count, "first_id": ids[0], "last_id": ids[-1]}

    def _set_modified(self, body: dict[str, Any]) -> dict[str, Any]:
        """Move records' last-modified time (``{"object_type", "ids": [...], "modified_at": iso}``)."""
        t = canonical_type(str(body["object_type"]))
        when = parse_datetime_value(str(body["modified_at"]))
        for rid in body.get("ids") or []:
            rec = self.state.objects[t].get(str(rid))
            if rec is None:
                raise ValueError(f"no {t} record {rid}")
            self.state.touch(t, rec, when)
        return {"updated": len(body.get("ids") or [])}

    # -- HTTP plumbing ----------------------------------------------------------------------------
    def _install_handlers(self, api: FastAPI) -> None:
        @api.exception_handler(HubSpotHTTPError)
        async def _hs_error(request: Request, exc: HubSpotHTTPError) -> JSONResponse:
            return JSONResponse(exc.body, status_code=exc.status)

        @api.exception_handler(RecordError)
        async def _record_error(request: Request, exc: RecordError) -> JSONResponse:
            http = exc.to_http()
            return JSONResponse(http.body, status_code=http.status)

        @api.exception_handler(RequestValidationError)
        async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
            return JSONResponse(error_body(400, f"Invalid request: {exc.errors()}"), status_code=400)

        @api.exception_handler(StarletteHTTPException)
        async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
            return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code)

    def _gate(self, fastapi_app: FastAPI) -> ASGIApp:
        api = cast("ASGIApp", fastapi_app)  # starlette's ASGI aliases differ only nominally

        async def gate(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await api(scope, receive, send)
                return
            headers = dict(scope.get("headers") or [])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not token:
                await _reply(send, 401, error_body(
                    401, "Authentication credentials not found. This API supports both API Key and OAuth 2.0 "
                    "authentication and you can find more details at "
                    "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                    "INVALID_AUTHENTICATION"))
                return
            if not hmac.compare_digest(token.encode(), credentials.HUBSPOT_TOKEN.encode()):
                # Never echo the presented token back.
                await _reply(send, 401, error_body(
                    401, "The OAuth token used to make this call expired or is invalid.",
                    "INVALID_AUTHENTICATION", sub_category="EXPIRED_OR_INVALID_TOKEN"))
                return
            missing = [sc for sc in required_scope(scope["method"], scope["path"]) if sc not in self.token_scopes]
            if missing:
                await _reply(send, 403, error_body(
                    403, "This app hasn't been granted all required scopes to make this call. Read more about "
                    "required scopes here: https://developers.hubspot.com/scopes.", "MISSING_SCOPES",
                    errors=[{"message": "One or more of the following scopes are required.",
                             "context": {"requiredGranularScopes": missing}}]))
                return
            extra: list[tuple[bytes, bytes]] = []
            if self.limits_enabled:
                path: str = scope["path"]
                key = token[-8:]
                if _is_search(path):
                    wait = self.secondly.hit(key)
                    if wait is not None:
                        await _reply(send, 429, rate_limit_body(
                            "SECONDLY", "You have reached your secondly limit."),
                            [(b"retry-after", str(max(1, math.ceil(wait))).encode())])
                        return
                else:
                    self.daily_count += 1
                    limiter = self.ten_secondly
                    if not _exempt_from_ten_secondly(path):
                        wait = limiter.hit(key)
                        if wait is not None:
                            await _reply(send, 429, rate_limit_body(
                                "TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit."),
                                [(b"retry-after", str(max(1, math.ceil(wait))).encode())])
                            return
                    if self.daily_count > DAILY_MAX:
                        await _reply(send, 429,
                                     rate_limit_body("DAILY", "You have reached your daily limit."))
                        return
                    extra = [
                        (b"x-hubspot-ratelimit-daily", str(DAILY_MAX).encode()),
                        (b"x-hubspot-ratelimit-daily-remaining",
                         str(max(0, DAILY_MAX - self.daily_count)).encode()),
                        (b"x-hubspot-ratelimit-interval-milliseconds",
                         str(int(limiter.window_s * 1000)).encode()),
                        (b"x-hubspot-ratelimit-max", str(limiter.limit).encode()),
                        (b"x-hubspot-ratelimit-remaining", str(limiter.remaining(key)).encode()),
                    ]

            async def send_with_headers(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start" and extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
                await send(message)

            refused, receive = await _refuse_unimplemented(scope, receive)
            if refused is not None:
                await _reply(send_with_headers, 400, refused)
                return
            await api(scope, receive, send_with_headers)

        return gate


async def _refuse_unimplemented(scope: Scope, receive: Receive) -> tuple[dict[str, Any] | None, Receive]:
    """HubSpot's 400 for a query parameter or body key the route does not implement (see
    :mod:`~m3sh.sandbox.hubspot.strict`), and a ``receive`` that replays the body it had to read."""
    rule = strict.route_of(scope["method"], scope["path"])
    if rule is None:
        return None, receive
    allowed, shape = rule
    names = [k for k, _ in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)]
    problem = strict.query_problem(names, allowed, scope["method"], scope["path"])
    if problem is not None or shape is None:
        return problem, receive
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return cast("dict[str, Any]", await receive())

    return strict.body_problem(raw, shape), cast("Receive", replay)


async def _reply(
    send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json;charset=utf-8"),
                            (b"content-length", str(len(raw)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": raw})

