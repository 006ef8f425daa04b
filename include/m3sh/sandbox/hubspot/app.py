"""The HubSpot emulator: private-app auth, HubSpot's rate-limit policies, and the CRM routes.

Auth and rate limiting sit in a small raw-ASGI gate in front of FastAPI (rather than dependencies)
so that every route, including unknown paths, answers 401/429 exactly like HubSpot and so the
``X-HubSpot-RateLimit-*`` headers can be added to any response.
"""

from __future__ import annotations

import hmac
import json
import math
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from m3sh.sandbox import credentials
from m3sh.sandbox.common import ASGIApp, Emulator, Receive, Scope, Send, WindowLimiter
from m3sh.sandbox.hubspot import routes_assoc, routes_objects, routes_properties
from m3sh.sandbox.hubspot.demo import seed_demo
from m3sh.sandbox.hubspot.errors import HubSpotHTTPError, RecordError, error_body, rate_limit_body
from m3sh.sandbox.hubspot.schema import LASTMOD_PROPERTY, canonical_type, iso_ms
from m3sh.sandbox.hubspot.store import PortalState, parse_datetime_value

# Documented limits (api-notes A.9/A.7): private app on Free/Starter.
TEN_SECONDLY_MAX = 100
TEN_SECONDLY_WINDOW_S = 10.0
SEARCH_PER_SECOND = 5
DAILY_MAX = 250_000
BULK_MAX = 50_000


class _Limiter(WindowLimiter):
    def remaining(self, key: str) -> int:
        """Requests left in the current window, for the ``X-HubSpot-RateLimit-Remaining`` header."""
        with self._lock:
            return max(0, self.limit - len(self._hits.get(key, ())))


def _is_search(path: str) -> bool:
    return path.startswith("/crm/v3/objects/") and path.rstrip("/").endswith("/search")


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
        self._default_limits()
        api = FastAPI(title="HubSpot emulator", docs_url=None, redoc_url=None, openapi_url=None)
        self._install_handlers(api)
        routes_objects.register(api, self)
        routes_assoc.register(api, self)
        routes_properties.register(api, self)

        @api.get("/crm/v3/owners")
        @api.get("/crm/v3/owners/")
        async def list_owners() -> Any:
            with self.lock:
                return {"results": list(self.state.owners)}

        self.app = self._gate(api)
        self.admin_actions["bulk_create"] = self._bulk_create
        self.admin_actions["set_modified"] = self._set_modified
        self.admin_actions["rate_limit"] = self._set_rate_limit

    # -- Emulator contract ------------------------------------------------------------------------
    def reset(self, seed: str = "empty") -> None:
        with self.lock:
            self.state = PortalState()
            self.daily_count = 0
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

            await api(scope, receive, send_with_headers)

        return gate


async def _reply(
    send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json;charset=utf-8"),
                            (b"content-length", str(len(raw)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": raw})

