"""The m3ter emulator: OAuth, org scoping, rate limits and the raw-ASGI ingest fast path.

Everything under ``/organizations/{orgId}`` is authenticated and rate limited here, before the
FastAPI routes run, so every route gets the same 403/429 behaviour and the ingest path can skip
FastAPI entirely.
"""

from __future__ import annotations

import base64
import binascii
import collections
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from m3sh.sandbox import credentials as cred
from m3sh.sandbox.common import ASGIApp, Emulator, FixedWindowLimiter, HostGate, Receive, Scope, Send, WindowLimiter
from m3sh.sandbox.m3ter import fileuploads, ingest, notify
from m3sh.sandbox.m3ter.schemas import ApiError
from m3sh.sandbox.m3ter.store import Store, new_id, public
from m3sh.sandbox.m3ter.timeutil import now_iso

TOKEN_TTL_S = 18_000
# limiter -> (requests, window seconds), as m3ter documents them (per org / per source IP).
DOCUMENTED_LIMITS: dict[str, tuple[int, float]] = {
    "config_org": (50, 1.0),
    "config_ip": (20_000, 300.0),
    "ingest_org": (50, 1.0),
    "ingest_ip": (5_000, 300.0),
}
ORG_PREFIX = "/organizations/"


def is_ingest_operation(method: str, path: str) -> bool:
    """``POST /organizations/{orgId}/measurements``: the one operation of m3ter's Ingest API host."""
    if method != "POST" or not path.startswith(ORG_PREFIX):
        return False
    _org, _, sub = path[len(ORG_PREFIX):].partition("/")
    return sub.rstrip("/") == "measurements"


class TokenBucket:
    """``rate`` requests per second with a burst of ``burst`` (the Data Explorer v2 limit)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def hit(self) -> float | None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate


class M3terEmulator(Emulator):
    """Stateful m3ter Config + Ingest API for one organization (``credentials.M3TER_ORG_ID``)."""

    name = "m3ter"

    def __init__(self) -> None:
        super().__init__()
        self.store = Store(cred.M3TER_ORG_ID)
        self.usage = ingest.UsageStore()
        self.uploads = fileuploads.UploadState()
        self.tokens: dict[str, float] = {}
        self.token_ttl_s: float = TOKEN_TTL_S
        self.token_requests = 0
        self.webhooks = notify.WebhookDispatcher()
        self.drawn: dict[tuple[str, str], float] = {}  # (account, meter) -> quantity already drawn down
        self.seeding = False  # the demo seed emits no events
        # Scaled-down limits set through the limit_windows admin action (cleared by reset).
        self.limit_overrides: dict[str, tuple[int, float]] = {}
        # 429s sent, by limiter (e.g. "ingest_org", "ingest_ip"): which limit a client tripped.
        self.rate_limited: collections.Counter[str] = collections.Counter()
        self._make_limiters()
        # Typed as a plain ASGI callable: the middleware and _asgi hand it plain dict scopes.
        self.api: ASGIApp = self._build_api()  # type: ignore[assignment]
        # Production serves the Config API (and OAuth) at api.m3ter.com and measurements at
        # ingest.m3ter.com only (the spec's operation-level ``servers``); so does the sandbox: the
        # main port is the Config API, the ``ingest`` listener the Ingest API.
        self.app = HostGate(self._asgi, lambda m, p: not is_ingest_operation(m, p), 404, {
            "message": "Not Found: measurements go to the Ingest API host (https://ingest.m3ter.com; in the "
                       "sandbox the m3ter_ingest port), not the Config API host"})
        self.ingest_app = HostGate(self._asgi, is_ingest_operation, 404, {
            "message": "Not Found: the Ingest API host serves POST /organizations/{orgId}/measurements only; "
                       "everything else, OAuth tokens included, is on the Config API host"})
        self.admin_actions["token_ttl"] = self._admin_token_ttl
        self.admin_actions["limit_windows"] = self._admin_limit_windows
        # Imported here to avoid an import cycle (billing uses the emulator's helpers).
        from m3sh.sandbox.m3ter import billing

        self.admin_actions["run_billing"] = lambda body: billing.admin_run_billing(self, body)
        self.admin_actions["drawdown"] = lambda body: billing.admin_drawdown(self, body)
        from m3sh.sandbox.m3ter import bulk

        self.admin_actions["bulk_seed"] = lambda body: bulk.admin_bulk_seed(self, body)
        self.admin_actions["fileuploads"] = lambda body: fileuploads.admin_settings(self, body)

    def listener_apps(self) -> dict[str, Any]:
        return {"ingest": self.ingest_app}

    # -- lifecycle ------------------------------------------------------------------------------
    def reset(self, seed: str = "empty") -> None:
        from m3sh.sandbox.m3ter.seed_demo import seed_demo

        if seed not in ("demo", "empty"):
            raise ValueError(f"unknown seed {seed!r}; use 'demo' or 'empty'")
        self.store = Store(cred.M3TER_ORG_ID)
        self.usage = ingest.UsageStore()
        self.uploads.close()
        self.uploads = fileuploads.UploadState()
        self.tokens = {}
        self.token_ttl_s = TOKEN_TTL_S
        self.token_requests = 0
        self.drawn = {}
        self.webhooks.clear()
        self.limit_overrides = {}
        self.rate_limited.clear()
        self._make_limiters()
        if seed == "demo":
            seed_demo(self)

    def on_limits_changed(self) -> None:
        self._make_limiters()

    def _make_limiters(self) -> None:
        # m3ter's documented limits (api-notes/m3ter.md "Rate limits"): per org 50 requests/s on each
        # API, per source IP 20,000 (Config) / 5,000 (Ingest) per rolling 5 minutes.
        # Per org a clock-aligned window ("429 for the remainder of the second in which throttling has
        # occurred"), per IP a rolling one ("until the total in the rolling 5-minute period drops").
        limits = {**DOCUMENTED_LIMITS, **self.limit_overrides}
        self.limiters: dict[str, WindowLimiter | FixedWindowLimiter] = {
            name: (FixedWindowLimiter if name.endswith("_org") else WindowLimiter)(n, window)
            for name, (n, window) in limits.items()}
        self.query_bucket = TokenBucket(2.0, 20)

    def _admin_limit_windows(self, body: dict[str, Any]) -> dict[str, Any]:
        """Scale limits down so "hours" fit a test: ``{"ingest_ip": {"limit": 500, "window_s": 30}}``
        (any of config_org, config_ip, ingest_org, ingest_ip); ``{}`` restores the documented ones."""
        overrides: dict[str, tuple[int, float]] = {}
        for name, spec in body.items():
            if name not in DOCUMENTED_LIMITS:
                raise ValueError(f"limit_windows: unknown limiter {name!r}; use one of {sorted(DOCUMENTED_LIMITS)}")
            limit, window = (spec or {}).get("limit"), (spec or {}).get("window_s")
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1 \
                    or not isinstance(window, int | float) or isinstance(window, bool) or window <= 0:
                raise ValueError(f"limit_windows.{name}: needs {{'limit': n >= 1, 'window_s': s > 0}}")
            overrides[name] = (limit, float(window))
        self.limit_overrides = overrides
        self._make_limiters()
        return {name: {"limit": n, "window_s": w}
                for name, (n, w) in {**DOCUMENTED_LIMITS, **overrides}.items()}

    def error_body(self, status: int, message: str) -> Any:
        return {"message": message}

    def snapshot(self) -> dict[str, Any]:
        store = self.store
        return {
            "orgId": store.org_id,
            "token_requests": self.token_requests,
            "tokens_issued": len(self.tokens),
            "token_ttl_s": self.token_ttl_s,
            "entities": {kind: [public(e) for e in coll.values()] for kind, coll in store.entities.items()},
            "customFields": store.custom_fields,
            "events": [public(e) for e in store.events.values()][-500:],
            "event_count": len(store.events),
            "usage": self.usage.snapshot(),
            "file_uploads": fileuploads.snapshot(self.uploads),
            "rate_limited": dict(self.rate_limited),
            "webhook_deliveries": list(self.webhooks.deliveries),
        }

    # -- admin actions --------------------------------------------------------------------------
    def _admin_token_ttl(self, body: dict[str, Any]) -> dict[str, Any]:
        seconds = body.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValueError("token_ttl needs {'seconds': n} with n >= 0")
        self.token_ttl_s = float(seconds)
        return {"token_ttl_s": self.token_ttl_s}

    # -- events ---------------------------------------------------------------------------------
    def emit(
        self,
        event_name: str,
        new: dict[str, Any] | None,
        old: dict[str, Any] | None = None,
        event_type: str = "Configuration",
    ) -> None:
        """Record an event and fire matching active notifications (caller holds the lock)."""
        if self.seeding:
            return
        new_dto = public(new) if new else None
        old_dto = public(old) if old else None
        stamp = now_iso()
        resource = new_dto or old_dto or {}
        event = {
            "id": new_id(),
            "eventName": event_name,
            "eventTime": stamp,
            "dtActioned": stamp,
            "m3terEvent": {"eventData": {"newDto": new_dto, "oldDto": old_dto}},  # as in EventResponse
            "_type": event_type,
            "_resourceId": resource.get("id"),
            "_accountId": resource.get("accountId")
            or (resource.get("id") if "emailAddress" in resource else None),
        }
        self.store.add_event(event)
        for notif in list(self.store.coll("notifications").values()):
            if not notif.get("active", True) or notif.get("eventName") != event_name:
                continue
            calculation = notif.get("calculation")
            fired = bool(notif.get("alwaysFireEvent")) or not calculation
            if not fired and calculation:
                fired = notify.evaluate(calculation, new_dto, old_dto)
            if fired:
                self._fire_notification(notif, event)

    def _fire_notification(self, notif: dict[str, Any], source: dict[str, Any]) -> None:
        stamp = now_iso()
        event = {
            "id": new_id(),
            "eventName": source["eventName"],
            "eventTime": stamp,
            "dtActioned": stamp,
            "m3terEvent": source["m3terEvent"],
            "_type": "Notification",
            "_resourceId": source["_resourceId"],
            "_accountId": source["_accountId"],
            "_notificationId": notif["id"],
            "_notificationCode": notif["code"],
        }
        self.store.add_event(event)
        body = notify.event_body(event)
        links = self.store.coll("integrationconfigs").values()
        for dest in notify.linked_destinations(notif["id"], links, self.store.coll("webhooks")):
            self.webhooks.submit(public(dest), body, event["id"])

    # -- ASGI -----------------------------------------------------------------------------------
    def _build_api(self) -> FastAPI:
        from m3sh.sandbox.m3ter import billing, dataexports, routes_config, routes_misc

        api = FastAPI(title="m3ter sandbox", openapi_url=None, docs_url=None, redoc_url=None)

        @api.exception_handler(ApiError)
        async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
            return JSONResponse({"message": exc.message}, status_code=exc.status, headers=exc.headers)

        @api.exception_handler(StarletteHTTPException)
        async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
            return JSONResponse({"message": str(exc.detail)}, status_code=exc.status_code)

        routes_misc.register(api, self)
        fileuploads.register(api, self)
        billing.register(api, self)
        dataexports.register(api, self)
        routes_config.register(api, self)
        return api

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(ORG_PREFIX):
            await self.api(scope, receive, send)
            return
        rest = path[len(ORG_PREFIX) :]
        org_id, _, sub = rest.partition("/")
        headers = dict(scope["headers"])
        try:
            self._authorize(org_id, headers.get(b"authorization", b""))
            is_ingest = sub.rstrip("/") == "measurements" and scope["method"] == "POST"
            self._rate_limit(org_id, scope, is_ingest, sub)
        except ApiError as exc:
            await _respond(send, exc.status, {"message": exc.message}, exc.headers)
            return
        if is_ingest:
            await self._ingest(receive, send)
            return
        await self.api(scope, receive, send)

    def _authorize(self, org_id: str, auth: bytes) -> None:
        """Unknown org, missing, invalid or expired bearer token: all 403, as m3ter documents."""
        scheme, _, token = auth.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(403, "Forbidden: missing bearer token")
        issued = self.tokens.get(token.strip())
        if issued is None:
            raise ApiError(403, "Forbidden: invalid bearer token")
        if time.time() >= issued + self.token_ttl_s:
            raise ApiError(403, "Forbidden: the bearer token has expired; request a new one")
        if org_id != self.store.org_id:
            raise ApiError(403, f"Forbidden: no access to organization {org_id}")

    def _rate_limit(self, org_id: str, scope: Scope, is_ingest: bool, sub: str) -> None:
        if not self.limits_enabled:
            return
        client = (scope.get("client") or ("local", 0))[0]
        api = "ingest" if is_ingest else "config"
        for key, limiter_name in ((org_id, f"{api}_org"), (client, f"{api}_ip")):
            wait = self.limiters[limiter_name].hit(key)
            if wait is not None:
                self.rate_limited[limiter_name] += 1
                _raise_429(wait, f"Rate limit exceeded for the {api} API ({limiter_name.split('_')[1]})")
        if sub.rstrip("/") == "usage/query":
            wait = self.query_bucket.hit()
            if wait is not None:
                _raise_429(wait, "Rate limit exceeded for usage queries (2 requests/s, burst 20)")

    async def _ingest(self, receive: Receive, send: Send) -> None:
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            more = message.get("more_body", False)
        # Validated and stored off the event loop: m3ter's limits are counted on arrival (at its
        # gateway), so a batch being processed here must not hold back the next requests' count
        # (on the loop, ~10 ms of parsing per 1,000 items bunched arrivals into 429s the client's
        # evenly paced requests had not earned).
        problem = await anyio.to_thread.run_sync(self._accept_batch, b"".join(chunks))
        if problem is not None:
            await _respond(send, problem.status, {"message": problem.message})
            return
        await _respond(send, 200, {"result": "accepted"})

    def _accept_batch(self, raw: bytes) -> ApiError | None:
        try:
            batch = ingest.parse_batch(raw)
        except ApiError as exc:
            with self.lock:
                self.usage.rejected += 1
            return exc
        with self.lock:
            self._store_batch(batch)
        return None

    def _store_batch(self, batch: list[ingest.Measurement]) -> int:
        """Store a validated batch (caller holds the lock); the number of measurements that failed
        m3ter's asynchronous validation (each also an ``ingest.validation.failure`` event)."""
        failed = 0
        usage = self.usage
        uids = usage.uids
        store = self.store
        # Looked up through the store's code index once per code and batch (not a set of every
        # account built per batch: O(accounts) per request at 10k+ accounts).
        known_meters: dict[str, bool] = {}
        known_accounts: set[str] = set()
        for m in batch:
            if m.uid is not None:
                if m.uid in uids:
                    usage.duplicates += 1
                    self._ingest_failure(
                        "DuplicateUid", m, "A measurement with this uid was already ingested"
                    )
                    failed += 1
                    continue
                uids.add(m.uid)
            meter_ok = known_meters.get(m.meter)
            if meter_ok is None:
                meter_ok = known_meters[m.meter] = store.find("meters", "code", m.meter) is not None
            if not meter_ok:
                self._ingest_failure("UndefinedMeter", m, f"Meter code {m.meter!r} is not defined")
                failed += 1
                continue
            if m.account not in known_accounts:
                if store.find("accounts", "code", m.account) is None:
                    # Documented behaviour: an unknown account code creates a skeleton Account.
                    store.insert("accounts", {"code": m.account, "name": m.account})
                known_accounts.add(m.account)
            usage.add(m)
        return failed

    def _ingest_failure(self, failure: str, m: ingest.Measurement, message: str) -> None:
        stamp = now_iso()
        self.store.add_event(
            {
                "id": new_id(),
                "eventName": "ingest.validation.failure",
                "eventTime": stamp,
                "dtActioned": stamp,
                "m3terEvent": {
                    "eventName": "ingest.validation.failure",
                    "eventTime": stamp,
                    "eventData": {
                        "failureType": failure,
                        "message": message,
                        "uid": m.uid,
                        "account": m.account,
                        "meter": m.meter,
                        "ts": m.item.get("ts"),
                    },
                },
                "_type": "IngestValidationFailure",
                "_resourceId": m.uid,
                "_accountId": None,
            }
        )

    # -- OAuth ----------------------------------------------------------------------------------
    def issue_token(self, authorization: str, body: bytes, content_type: str) -> dict[str, Any]:
        """Client-credentials grant with Basic auth; JSON or form body (the docs' cURL uses form)."""
        scheme, _, encoded = authorization.partition(" ")
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        key, _, secret = decoded.partition(":")
        if scheme.lower() != "basic" or not (
            secrets.compare_digest(key, cred.M3TER_ACCESS_KEY)
            and secrets.compare_digest(secret, cred.M3TER_API_SECRET)
        ):
            raise ApiError(403, "Forbidden: invalid client credentials")
        grant = None
        if body:
            if "json" in content_type:
                try:
                    parsed = json.loads(body)
                except ValueError:
                    raise ApiError(400, "Request body is not valid JSON") from None
                grant = parsed.get("grant_type") if isinstance(parsed, dict) else None
            else:
                grant = next(iter(parse_qs(body.decode(errors="replace")).get("grant_type", [])), None)
        if grant != "client_credentials":
            raise ApiError(400, "grant_type: must be client_credentials")
        token = secrets.token_urlsafe(32)
        with self.lock:
            self.token_requests += 1
            self.tokens[token] = time.time()
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": int(self.token_ttl_s),
        }


def _raise_429(wait: float, message: str) -> None:
    # No Retry-After: no m3ter source mentions one (api-notes m3ter.md "Retry-After"; m3ter recommends
    # exponential back-off), so clients are judged on their own back-off. When the limit frees is in
    # the message, for whoever reads the log.
    raise ApiError(429, f"{message}; retry in {wait:.2f} s")


async def _respond(send: Send, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs.extend((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})
