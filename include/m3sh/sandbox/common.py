"""Shared machinery for the sandbox emulators: fault injection, request stats, admin API, rate limits.

Every emulator is a FastAPI app wrapped in :class:`SandboxMiddleware`. The middleware is raw ASGI
(not a Starlette ``BaseHTTPMiddleware``) because the m3ter ingest emulator must sustain tens of
thousands of measurements per second and the extra task/queue per request of ``BaseHTTPMiddleware``
costs too much.

Admin endpoints (no auth, never faulted, never counted):

* ``GET  /_sandbox/health``               -> ``{"status": "ok", "emulator": name, "pid": pid}``
* ``GET  /_sandbox/state``                -> the emulator's full state snapshot (for tests)
* ``POST /_sandbox/reset``  ``{"seed": "demo"|"empty"}`` -> restores the seed, clears faults and stats
* ``GET|POST|DELETE /_sandbox/faults``    -> see :class:`FaultConfig`
* ``GET|POST /_sandbox/limits`` ``{"enabled": bool}`` -> switch documented rate limits on/off
* ``GET|DELETE /_sandbox/stats``          -> request counts and the recent request log
  (``counts`` keyed by "METHOD /normalised/path", ``paths`` by the path as requested)
* ``POST /_sandbox/<custom>``             -> emulator-specific admin actions (see ``admin_actions``)
* ``GET|POST|DELETE /_sandbox/spec``      -> the spec guard's state; ``{"expect_invalid": {"path_regex",
  "count", "reason"}}`` declares a test's next invalid requests deliberate (``m3sh.sandbox.specguard``)
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ADMIN_PREFIX = "/_sandbox"


class FaultConfig(BaseModel):
    """Faults injected into non-admin requests. All off by default.

    Count-based faults (``fail_next``, ``burst_429``) are deterministic and preferred in tests;
    rate-based ones (``error_rate``, ``drop_rate``, ``timeout_rate``) are for chaos runs.
    """

    model_config = ConfigDict(extra="forbid")

    path_regex: str | None = Field(None, description="Only requests whose path matches are faulted")
    methods: list[str] | None = Field(None, description="Only these HTTP methods are faulted")
    latency_ms: int = Field(0, ge=0, description="Added to every matching request")
    error_rate: float = Field(0.0, ge=0, le=1, description="Probability of answering error_status")
    error_status: int = Field(500, ge=400, le=599)
    fail_next: int = Field(0, ge=0, description="The next N matching requests answer error_status")
    burst_429: int = Field(0, ge=0, description="The next N matching requests answer 429")
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with injected 429s")
    drop_rate: float = Field(0.0, ge=0, le=1, description="Probability of dropping the connection")
    drop_next: int = Field(0, ge=0, description="Drop the connection on the next N matching requests")
    drop_after_processing: bool = Field(
        False,
        description="Drops happen after the emulator applied the request (lost response, state changed)",
    )
    timeout_rate: float = Field(0.0, ge=0, le=1, description="Probability of hanging timeout_s")
    timeout_s: float = Field(30.0, ge=0)


class WindowLimiter:
    """Sliding-window request counter: ``limit`` requests per ``window_s`` seconds per key.

    Hand-written because the emulator must answer exactly like the documented server-side limit
    (reject, don't queue); client-side limiter libraries block instead.
    """

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._hits: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def hit(self, key: str = "") -> float | None:
        """Record a request; return None when allowed, else seconds until a slot frees up."""
        now = time.monotonic()
        with self._lock:
            q = self._hits[key]
            while q and now - q[0] >= self.window_s:
                q.popleft()
            if len(q) >= self.limit:
                return max(0.0, self.window_s - (now - q[0]))
            q.append(now)
            return None

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()


class FixedWindowLimiter:
    """``limit`` requests per clock-aligned ``window_s`` (the calendar second for 1 s) per key: once a
    window is full, every further request in it is refused until the next one starts.

    m3ter's per-organization limits work this way: "429 is returned for the remainder of the second in
    which throttling has occurred" (m3ter docs "Ingest API Limits" / "Config API Limits"; api-notes
    m3ter.md "Rate limits"), whereas its per-IP limits count a rolling 5 minutes (:class:`WindowLimiter`).
    """

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._counts: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str = "") -> float | None:
        """Record a request; return None when allowed, else seconds until the current window ends."""
        now = self._clock()
        window = int(now // self.window_s)
        with self._lock:
            current, n = self._counts.get(key, (window, 0))
            if current != window:
                n = 0
            if n >= self.limit:
                return max(0.0, (window + 1) * self.window_s - now)
            self._counts[key] = (window, n + 1)
            return None

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


# POSTs that only read: searches, batch reads, logins and token requests, queries (m3ter usage
# query, SuiteQL). Every API here serves some reads through POST, so "is it a write?" needs these.
READ_ONLY_POST_MARKERS = ("/search", "/batch/read", "token", "/services/Soap/", "/query", "/suiteql")


def is_data_write(method: str, path: str) -> bool:
    """Whether a request changes data in the emulated system (what "zero writes on re-run" counts)."""
    if method in ("PUT", "PATCH", "DELETE"):
        return True
    return method == "POST" and not any(marker in path for marker in READ_ONLY_POST_MARKERS)


class RequestStats:
    """Counts requests so tests can assert e.g. "zero writes on re-run" or "one token request".

    ``counts["writes"]`` and each recent entry's ``write`` are data writes (:func:`is_data_write`),
    so a test or benchmark does not need its own list of which POSTs only read.
    """

    def __init__(self, keep: int = 20000) -> None:
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self.counts: collections.Counter[str] = collections.Counter()
        # The same requests by their path as requested: _normalise_path's id heuristic also rewrites
        # some literal segments (``/externalmappings`` -> ``/{id}``), so whoever must tell operations
        # apart (tests/wiring classifies every request of a DAG run) reads these.
        self.paths: collections.Counter[str] = collections.Counter()
        # Requests being served right now, so a test can wait until a request it raced has finished.
        self.in_flight = 0
        # Responses by status code ("429": n), over every request, not only the recent ones kept.
        self.statuses: collections.Counter[str] = collections.Counter()

    def record(self, method: str, path: str, status: int) -> None:
        self.counts[f"{method} {_normalise_path(path)}"] += 1
        self.paths[f"{method} {path}"] += 1
        self.counts["total"] += 1
        self.statuses[str(status)] += 1
        write = is_data_write(method, path)
        if write:
            self.counts["writes"] += 1
        self.recent.append({"method": method, "path": path, "status": status, "t": time.time(), "write": write})

    def snapshot(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "paths": dict(self.paths), "in_flight": self.in_flight,
                "statuses": dict(self.statuses),
                "recent": list(self.recent)[-500:]}

    def clear(self) -> None:
        self.recent.clear()
        self.counts.clear()
        self.paths.clear()
        self.statuses.clear()


_ID_RE = re.compile(
    r"/(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d{3,}|[0-9A-Za-z]{15,18}|eid:[^/]+)"
)


def _normalise_path(path: str) -> str:
    """Collapse ids in paths so counts group per endpoint (``/accounts/{id}``)."""
    return _ID_RE.sub("/{id}", path)


class Emulator:
    """Base class of an emulator: a FastAPI app plus state that can be reset and inspected.

    Subclasses set ``name``, build ``self.app`` in ``__init__`` and implement ``reset`` and
    ``snapshot``. ``admin_actions`` maps ``/_sandbox/<name>`` POST actions to callables taking the
    JSON body, for emulator-specific controls (e.g. closing a NetSuite accounting period).
    """

    name = "emulator"
    # Listener roles served by uvicorn's h11 protocol, which sends header names as the app spells
    # them (httptools, the default where installed, lowercases them): for clients that look headers
    # up case-sensitively.
    case_preserving_roles: frozenset[str | None] = frozenset()

    def __init__(self) -> None:
        self.faults = FaultConfig()
        self.limits_enabled = True
        self.stats = RequestStats()
        self.lock = threading.RLock()
        self.admin_actions: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self.app: Any  # a FastAPI app (any ASGI callable)

    def listener_apps(self) -> dict[str, Any]:
        """Extra listeners of this emulator's process: role -> ASGI app, each served on a port of its own.

        Where production splits one system across hosts (m3ter's Config and Ingest APIs, a
        Salesforce login host and the org's instance, one NetSuite host per account), the sandbox
        does too, so a client that sends a request to the wrong host fails here as it would there.
        The roles share the process, so they share state.
        """
        return {}

    def reset(self, seed: str = "empty") -> None:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def on_limits_changed(self) -> None:
        """Hook for subclasses that keep limiter state."""

    def error_body(self, status: int, message: str) -> Any:
        """The system's own error body shape, used for injected faults (override per emulator)."""
        return {"message": message}


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> tuple[int, bytes, list]:
    raw = json.dumps(body, default=str).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    for k, v in (headers or {}).items():
        hdrs.append((k.lower().encode(), v.encode()))
    return status, raw, hdrs


async def _send_response(send: Send, status: int, raw: bytes, headers: list) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


class HostGate:
    """One production host's share of an emulator: operations that host serves go to ``app``; the rest
    are answered ``status`` with ``body``, as a request sent to the wrong host would be.

    ``serves(method, path)`` decides. What a real host answers for an operation it does not serve is
    not documented by any of the vendors (assumed: their plain 404); the body names the right host
    so a misrouted client fails with a message that says what to fix.
    """

    def __init__(self, app: ASGIApp, serves: Callable[[str, str], bool], status: int, body: Any) -> None:
        self.app, self.serves, self.status, self.body = app, serves, status, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.serves(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        await _read_body(receive)
        await _send_response(send, *_json_response(self.status, self.body))


class DropConnection(Exception):
    """Raised mid-response so uvicorn closes the socket: the client sees a dropped connection."""


class SandboxMiddleware:
    """Wraps an emulator's app with the admin API, fault injection and request stats."""

    def __init__(self, emulator: Emulator, app: ASGIApp | None = None,
                 spec_servers: tuple[str, ...] | None = None) -> None:
        self.emulator = emulator
        self.app = app if app is not None else emulator.app
        self.error_body = emulator.error_body
        self._rng = random.Random()
        # The spec guard judges everything but the admin API, faults included (an injected 429
        # must look like the real one too); it sits inside the stats so they count what clients saw.
        self._serve: ASGIApp = self._faults_and_app
        if spec_servers is not None:
            from m3sh.sandbox import specguard

            self.spec_guard: specguard.SpecGuard | None = specguard.guard_for(
                emulator.name, spec_servers, emulator.error_body)
            self._serve = self.spec_guard.wrap(self._faults_and_app)
        else:
            self.spec_guard = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(ADMIN_PREFIX):
            await self._admin(scope, receive, send)
            return
        status_holder = {"status": 0}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        self.emulator.stats.in_flight += 1
        try:
            await self._serve(scope, receive, counting_send)
        except DropConnection:
            status_holder["status"] = -1
            raise
        finally:
            self.emulator.stats.in_flight -= 1
            self.emulator.stats.record(scope["method"], path, status_holder["status"])

    async def _faults_and_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        fault = self._pick_fault(scope)
        if fault is not None:
            handled = await self._apply_fault(fault, scope, receive, send)
            if handled:
                return
        await self.app(scope, receive, send)

    def _matches(self, scope: Scope) -> bool:
        f = self.emulator.faults
        if f.methods and scope["method"] not in f.methods:
            return False
        return not (f.path_regex and not re.search(f.path_regex, scope["path"]))

    def _pick_fault(self, scope: Scope) -> str | None:
        f = self.emulator.faults
        if f == _NO_FAULTS or not self._matches(scope):
            return None
        with self.emulator.lock:
            if f.burst_429 > 0:
                f.burst_429 -= 1
                return "429"
            if f.fail_next > 0:
                f.fail_next -= 1
                return "error"
            if f.drop_next > 0:
                f.drop_next -= 1
                return "drop"
        r = self._rng.random()
        if r < f.error_rate:
            return "error"
        if r < f.error_rate + f.drop_rate:
            return "drop"
        if r < f.error_rate + f.drop_rate + f.timeout_rate:
            return "timeout"
        return "latency" if f.latency_ms else None

    async def _apply_fault(self, fault: str, scope: Scope, receive: Receive, send: Send) -> bool:
        f = self.emulator.faults
        if f.latency_ms:
            await asyncio.sleep(f.latency_ms / 1000)
        if fault == "latency":
            return False
        if fault == "timeout":
            await asyncio.sleep(f.timeout_s)
            return False
        if fault == "429":
            await _send_response(
                send, *_json_response(429, self.error_body(429, "Too Many Requests (injected)"),
                                      {"Retry-After": str(f.retry_after_s)})
            )
            return True
        if fault == "error":
            await _send_response(
                send, *_json_response(f.error_status, self.error_body(f.error_status, "Injected fault"))
            )
            return True
        # drop
        if f.drop_after_processing:

            async def swallow(message: Message) -> None:
                return None

            await self.app(scope, receive, swallow)
        # Start a response that promises more bytes than it sends, then fail: uvicorn closes the
        # socket mid-response, so the client sees a dropped connection (not a clean HTTP 500).
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        raise DropConnection("sandbox dropped the connection (injected fault)")

    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        emu = self.emulator
        method = scope["method"]
        action = scope["path"][len(ADMIN_PREFIX):].strip("/")
        body_raw = await _read_body(receive)
        try:
            body = json.loads(body_raw) if body_raw else {}
        except json.JSONDecodeError:
            await _send_response(send, *_json_response(400, {"error": "admin body must be JSON"}))
            return
        try:
            if action == "spec":  # the spec guard's test controls (m3sh.sandbox.specguard)
                result = self.spec_guard.admin(method, body) if self.spec_guard else {"enabled": False}
            else:
                result = self._admin_dispatch(emu, method, action, body)
                if action == "reset" and self.spec_guard:
                    self.spec_guard.expected_invalid.clear()
        except KeyError:
            await _send_response(send, *_json_response(404, {"error": f"unknown admin action {action!r}"}))
            return
        except (ValueError, TypeError) as exc:
            await _send_response(send, *_json_response(400, {"error": str(exc)}))
            return
        await _send_response(send, *_json_response(200, result))

    @staticmethod
    def _admin_dispatch(emu: Emulator, method: str, action: str, body: dict[str, Any]) -> Any:
        if action == "health":
            # The pid lets the runner tell its own emulator from another session's on the same port.
            return {"status": "ok", "emulator": emu.name, "pid": os.getpid()}
        if action == "state":
            with emu.lock:
                return emu.snapshot()
        if action == "reset" and method == "POST":
            with emu.lock:
                emu.reset(body.get("seed", "empty"))
                emu.faults = FaultConfig()
                emu.stats.clear()
                emu.limits_enabled = bool(body.get("limits", emu.limits_enabled))
                emu.on_limits_changed()
            return {"status": "reset", "seed": body.get("seed", "empty")}
        if action == "faults":
            if method == "POST":
                emu.faults = FaultConfig.model_validate(body)
            elif method == "DELETE":
                emu.faults = FaultConfig()
            return emu.faults.model_dump()
        if action == "limits":
            if method == "POST":
                emu.limits_enabled = bool(body.get("enabled", True))
                emu.on_limits_changed()
            return {"enabled": emu.limits_enabled}
        if action == "stats":
            if method == "DELETE":
                emu.stats.clear()
            return emu.stats.snapshot()
        if method == "POST" and action in emu.admin_actions:
            with emu.lock:
                return emu.admin_actions[action](body)
        raise KeyError(action)


_NO_FAULTS = FaultConfig()


def build_asgi(emulator: Emulator, role: str | None = None,
               spec_servers: tuple[str, ...] | None = None) -> ASGIApp:
    """The emulator's main app (``role`` None) or one of its :meth:`~Emulator.listener_apps`, wrapped
    with the admin API, fault injection and stats (shared by every listener of the process).

    ``spec_servers``: the production URLs this listener stands in for; given (and
    ``M3SH_SANDBOX_SPEC_CHECK`` on), the spec guard judges its traffic against them."""
    from m3sh.sandbox import specguard

    if spec_servers is not None and not specguard.enabled():
        spec_servers = None
    if role is None:
        return SandboxMiddleware(emulator, spec_servers=spec_servers)
    apps = emulator.listener_apps()
    if role not in apps:
        raise ValueError(f"emulator {emulator.name!r} has no listener {role!r}; it has {sorted(apps)}")
    return SandboxMiddleware(emulator, apps[role], spec_servers)
