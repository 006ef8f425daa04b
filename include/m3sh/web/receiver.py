"""The m3ter notification webhook receiver, mounted in the Airflow api-server by the m3sh plugin.

``POST /m3sh/webhooks/m3ter`` (prefix from the plugin): verify the signature, reject stale and
replayed deliveries with **401**, then record an Airflow **asset event** on
``m3sh://m3ter/notifications``; ``m3sh_plan_triggers`` is scheduled on that asset (or every 5
minutes), so the scheduler starts a run within seconds.

What m3ter documents, and what this receiver therefore relies on:

* a webhook destination carries ``credentials {type: "M3TER_SIGNED_REQUEST", apiKey, secret}``
  and the secret is "used in conjunction with the API key to generate a signature" (OpenAPI
  ``IntegrationM3terSignedCredentialsRequest``); the signing scheme itself is described in the
  "Webhook Authentication for M3TER_SIGNED_REQUEST" section of
  https://docs.m3ter.com/guides/integrations/setting-up-integrations/creating-and-managing-destinations,
  which no source available to us reproduces;
* an Event is ``{id, eventName, eventTime, dtActioned, m3terEvent: {eventData: {newDto, ...}}}``
  (OpenAPI ``EventResponse`` and its example, https://docs.m3ter.com/api/events/retrieve-eventresponse).
  The body is parsed with that shape: ``id`` is the replay key, the account is
  ``m3terEvent.eventData.newDto.accountId`` (``oldDto`` for deletions).

**Assumed** (not published where we could read it; the m3sh emulator signs the same way, and every
item is a connection extra, so the real scheme can be matched without a code change):

* ``X-m3ter-Signature`` (``signature_header``): ``hex`` (``encoding``: hex|base64) HMAC-SHA256
  (``algorithm``: sha256|sha512) of ``{timestamp}.{body}`` (``signed_payload``: a template over
  ``{timestamp}``, ``{body}`` (the raw bytes), ``{api_key}`` and ``{event_id}``; it must cover the
  timestamp and the body) keyed with the destination's ``secret``;
* ``X-m3ter-Timestamp`` (``timestamp_header``): unix seconds (``timestamp_unit``: s|ms), accepted
  within ``tolerance_s`` (300) of the server clock;
* ``X-m3ter-ApiKey`` (``api_key_header``): the destination's ``apiKey``; when present it must equal
  the connection's login (default ``m3sh``, what ``m3sh triggers sync-notifications`` registers);
* ``X-m3ter-Event-Id`` (``event_id_header``): optional; when present it must equal the body's ``id``.

Secret and scheme come from the Airflow connection ``m3ter_webhook`` (password = secret, login =
API key, the extras above), or, without that connection, the Airflow variable ``m3sh_webhook_secret``.

Replay protection: one S3 object per event id, created with ``If-None-Match: *`` (atomic; shared by
every api-server using the same bucket) behind an in-process cache. Limits: if S3 is unreachable
the receiver answers 503 (m3ter retries) rather than accept unguarded; a replay needs a valid
signature *and* a fresh timestamp, so the window an attacker has is ``tolerance_s``; markers are
never deleted automatically (add an S3 lifecycle rule on ``<prefix>webhooks/seen/``). Even a
duplicate that got through would only start another evaluation pass: the trigger ledger keeps
actions exactly once.

Asset events are recorded in process through Airflow's asset manager (the same call the public
``POST /api/v2/assets/events`` endpoint makes; the plugin runs inside the api-server, which owns
the metadata DB). Set an ``m3sh_airflow_api`` connection (host = api-server URL, login/password)
to go through the public REST API with a token instead (e.g. when the receiver runs elsewhere).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from m3sh import layout

log = logging.getLogger(__name__)
ASSET_URI = "m3sh://m3ter/notifications"
WEBHOOK_CONN_ID = "m3ter_webhook"
SECRET_VARIABLE = "m3sh_webhook_secret"  # noqa: S105 - a variable name, not a secret
API_CONN_ID = "m3sh_airflow_api"
_ALGORITHMS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


# ------------------------------------------------------------------------------ signature scheme
_PLACEHOLDER = re.compile(r"\{(\w*)\}")
_PARTS = ("timestamp", "body", "api_key", "event_id")
DEFAULT_API_KEY = "m3sh"  # the apiKey sync-notifications registers when the connection has no login


@dataclass(frozen=True)
class WebhookScheme:
    """How a delivery is signed. Every default is an assumption (see the module docstring)."""

    signature_header: str = "X-m3ter-Signature"
    timestamp_header: str = "X-m3ter-Timestamp"
    event_id_header: str = "X-m3ter-Event-Id"
    api_key_header: str = "X-m3ter-ApiKey"
    algorithm: str = "sha256"
    encoding: str = "hex"
    signed_payload: str = "{timestamp}.{body}"
    timestamp_unit: str = "s"
    tolerance_s: float = 300.0

    def __post_init__(self) -> None:
        where = f"connection {WEBHOOK_CONN_ID}"
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(f"{where}: algorithm must be one of {sorted(_ALGORITHMS)}")
        if self.encoding not in ("hex", "base64"):
            raise ValueError(f"{where}: encoding must be hex or base64")
        if self.timestamp_unit not in ("s", "ms"):
            raise ValueError(f"{where}: timestamp_unit must be s or ms")
        names = _PLACEHOLDER.findall(self.signed_payload)
        unknown = sorted(set(names) - set(_PARTS))
        if unknown:
            raise ValueError(f"{where}: signed_payload has unknown placeholder(s) {unknown}; known: {list(_PARTS)}")
        # A signature that does not cover the body can be moved onto a forged one, and one that
        # does not cover the timestamp can be replayed for ever: refuse such a scheme outright.
        if "body" not in names or "timestamp" not in names:
            raise ValueError(f"{where}: signed_payload must contain {{timestamp}} and {{body}}")

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> WebhookScheme:
        names = ("signature_header", "timestamp_header", "event_id_header", "api_key_header", "algorithm",
                 "encoding", "signed_payload", "timestamp_unit")
        known: dict[str, Any] = {k: str(extra[k]) for k in names if extra.get(k)}
        if "tolerance_s" in extra:
            known["tolerance_s"] = float(extra["tolerance_s"])
        return cls(**known)

    def payload(self, timestamp: str, body: bytes, api_key: str = "", event_id: str = "") -> bytes:
        """The bytes that are signed: ``signed_payload`` with the raw body spliced in as bytes."""
        values = {"timestamp": timestamp.encode(), "body": body, "api_key": api_key.encode(),
                  "event_id": event_id.encode()}
        out, pos = [], 0
        for m in _PLACEHOLDER.finditer(self.signed_payload):
            out += [self.signed_payload[pos:m.start()].encode(), values[m.group(1)]]
            pos = m.end()
        out.append(self.signed_payload[pos:].encode())
        return b"".join(out)

    def sign(self, secret: str, timestamp: str, body: bytes, api_key: str = DEFAULT_API_KEY,
             event_id: str = "") -> str:
        digest = hmac.new(secret.encode(), self.payload(timestamp, body, api_key, event_id),
                          _ALGORITHMS[self.algorithm]).digest()
        return digest.hex() if self.encoding == "hex" else base64.b64encode(digest).decode()

    def sent_at(self, stamp: str) -> float:
        """The header's timestamp as unix seconds; raises :class:`Rejected` when it is not one."""
        try:
            sent = float(stamp)
        except ValueError:
            raise Rejected(f"timestamp is not unix {'seconds' if self.timestamp_unit == 's' else 'milliseconds'}"
                           ) from None
        if not math.isfinite(sent):
            raise Rejected("timestamp is not a finite number")
        return sent / 1000 if self.timestamp_unit == "ms" else sent


@dataclass(frozen=True)
class ReceiverSettings:
    secret: str = field(repr=False)
    scheme: WebhookScheme = WebhookScheme()
    api_key: str = DEFAULT_API_KEY


class Rejected(Exception):
    """A delivery the receiver refuses with 401; the message is safe to return (no secrets)."""


def _body_id(body: bytes) -> str | None:
    """The documented ``EventResponse.id`` of a JSON body, if it has one."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    value = payload.get("id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) and value else None


def verify(headers: Any, body: bytes, settings: ReceiverSettings, now: float | None = None) -> str:
    """Check signature and freshness; return the event id (the replay key). Raises :class:`Rejected`."""
    s = settings.scheme
    signature, stamp = headers.get(s.signature_header), headers.get(s.timestamp_header)
    if not signature or not stamp:
        raise Rejected("missing signature or timestamp header")
    header_id = str(headers.get(s.event_id_header) or "")
    sent = s.sent_at(stamp)
    expected = s.sign(settings.secret, stamp, body, settings.api_key, header_id)
    given = signature.strip()
    if s.encoding == "hex":
        given = given.lower()
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise Rejected("signature mismatch")
    # checked after the signature, so an unsigned caller cannot probe for the configured key
    api_key = headers.get(s.api_key_header)
    if api_key is not None and not hmac.compare_digest(str(api_key).encode(), settings.api_key.encode()):
        raise Rejected("api key does not match the configured one")
    if abs((now or time.time()) - sent) > s.tolerance_s:
        raise Rejected(f"stale delivery (timestamp more than {s.tolerance_s:g}s from now)")
    # An event-id header is not covered by the default signature, so it cannot be the replay key on
    # its own: the signed body's own (documented) id is; a header that disagrees with it is refused.
    # Without an id in the body, the signature itself is the key.
    body_id = _body_id(body)
    if body_id is not None:
        if header_id and body_id != header_id:
            raise Rejected("event id header does not match the signed body")
        return body_id
    return "sig-" + hashlib.sha256(given.encode()).hexdigest()[:40]


def load_settings(conn_id: str = WEBHOOK_CONN_ID) -> ReceiverSettings:
    """Secret + scheme from the Airflow connection, else the secret from the variable."""
    conn = _get_connection(conn_id)
    if conn is not None and conn.password:
        return ReceiverSettings(secret=str(conn.password), scheme=WebhookScheme.from_extra(conn.extra_dejson or {}),
                                api_key=str(conn.login or DEFAULT_API_KEY))
    try:
        from airflow.models.variable import Variable

        secret = Variable.get(SECRET_VARIABLE, default_var=None)
    except Exception:
        secret = None
    if not secret:
        raise RuntimeError(f"no webhook secret: set the password of connection {conn_id!r} "
                           f"or the variable {SECRET_VARIABLE!r}")
    return ReceiverSettings(secret=str(secret))


def _get_connection(conn_id: str) -> Any:
    """Server-side lookup (env vars, secrets backends, metadata DB); None when it doesn't exist."""
    try:
        from airflow.models.connection import Connection

        return Connection.get_connection_from_secrets(conn_id)
    except Exception:
        return None


# --------------------------------------------------------------------------- replay protection
class ReplayGuard(Protocol):
    def first_time(self, event_id: str) -> bool: ...

    def forget(self, event_id: str) -> None: ...


class MemoryReplayGuard:
    """Event ids seen by this process (bounded); enough alone only for a single, never-restarted server."""

    def __init__(self, size: int = 100_000) -> None:
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.size = size

    def first_time(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self._seen:
                return False
            self._seen[event_id] = None
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)
            return True

    def forget(self, event_id: str) -> None:
        with self._lock:
            self._seen.pop(event_id, None)


class S3ReplayGuard:
    """Durable: one marker object per event id, created atomically with ``If-None-Match: *``."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage
        self.memory = MemoryReplayGuard()

    def _key(self, event_id: str) -> str:
        return layout.webhook_seen(self.storage, event_id)

    def first_time(self, event_id: str) -> bool:
        if not self.memory.first_time(event_id):
            return False
        body = json.dumps({"event_id": event_id, "received_at": time.time()}).encode()
        try:
            self.storage.client.put_object(Bucket=self.storage.bucket, Key=self._key(event_id), Body=body,
                                           IfNoneMatch="*", ContentType="application/json")
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return False
            self.memory.forget(event_id)
            raise
        return True

    def forget(self, event_id: str) -> None:
        self.memory.forget(event_id)
        try:
            self.storage.delete(self._key(event_id))
        except Exception:  # best effort: a leftover marker only blocks m3ter's retry of this event
            log.warning("could not delete replay marker for event %s", event_id)


# --------------------------------------------------------------------------- asset event recorders
class AssetRecorder(Protocol):
    def record(self, uri: str, extra: dict[str, Any]) -> None: ...


class InProcessAssetRecorder:
    """Records the event through Airflow's asset manager, as ``POST /api/v2/assets/events`` does."""

    def record(self, uri: str, extra: dict[str, Any]) -> None:
        from airflow.assets.manager import asset_manager
        from airflow.models.asset import AssetActive, AssetModel
        from airflow.utils import timezone  # type: ignore[attr-defined]
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            asset = session.scalar(
                select(AssetModel).join(AssetActive, (AssetActive.name == AssetModel.name)
                                        & (AssetActive.uri == AssetModel.uri))
                .where(AssetModel.uri == uri).limit(1))
            if asset is None:
                raise LookupError(f"asset {uri} is not registered (is the m3sh_plan_triggers DAG parsed?)")
            event = asset_manager.register_asset_change(asset=asset, timestamp=timezone.utcnow(), extra=extra,
                                                        source_is_api=True, session=session)
            if event is None:
                raise LookupError(f"asset {uri}: Airflow did not record the event")


class RestAssetRecorder:
    """Records the event through the public REST API (``/auth/token`` then ``/api/v2/assets/events``)."""

    def __init__(self, conn_id: str = API_CONN_ID, timeout_s: float = 10.0) -> None:
        self.conn_id = conn_id
        self.timeout_s = timeout_s
        self._token: tuple[str, float] | None = None
        self._asset_ids: dict[str, int] = {}

    def _base(self) -> tuple[str, Any]:
        conn = _get_connection(self.conn_id)
        if conn is None or not conn.host:
            raise RuntimeError(f"connection {self.conn_id!r} (Airflow api-server URL + user) is not set")
        host = str(conn.host)
        if "://" not in host:
            host = f"{conn.schema or 'http'}://{host}" + (f":{conn.port}" if conn.port else "")
        return host.rstrip("/"), conn

    def _auth(self, base: str, conn: Any) -> dict[str, str]:
        import requests

        if self._token is None or self._token[1] < time.time():
            r = requests.post(f"{base}/auth/token", json={"username": conn.login, "password": conn.password},
                              timeout=self.timeout_s)
            r.raise_for_status()
            self._token = (str(r.json()["access_token"]), time.time() + 3000)
        return {"Authorization": f"Bearer {self._token[0]}"}

    def record(self, uri: str, extra: dict[str, Any]) -> None:
        import requests

        base, conn = self._base()
        headers = self._auth(base, conn)
        if uri not in self._asset_ids:
            r = requests.get(f"{base}/api/v2/assets", params={"uri_pattern": uri, "limit": "10"}, headers=headers,
                             timeout=self.timeout_s)
            r.raise_for_status()
            match = [a for a in r.json().get("assets", []) if a.get("uri") == uri]
            if not match:
                raise LookupError(f"asset {uri} is not registered in Airflow")
            self._asset_ids[uri] = int(match[0]["id"])
        r = requests.post(f"{base}/api/v2/assets/events", json={"asset_id": self._asset_ids[uri], "extra": extra},
                          headers=headers, timeout=self.timeout_s)
        r.raise_for_status()


def default_recorder() -> AssetRecorder:
    return RestAssetRecorder() if _get_connection(API_CONN_ID) is not None else InProcessAssetRecorder()


def default_replay_guard() -> ReplayGuard:
    from m3sh.config import get_config
    from m3sh.storage import Storage

    return S3ReplayGuard(Storage.from_config(get_config().storage))


# ------------------------------------------------------------------------------------------ app
def _event_extra(event_id: str, body: bytes) -> dict[str, Any]:
    """Small, secret-free facts for the asset event (the DAG re-reads state from m3ter anyway).

    Read from the documented Event shape (OpenAPI ``EventResponse``): ``eventName``,
    ``eventTime`` and the entity in ``m3terEvent.eventData.newDto`` (``oldDto`` for a deletion).
    The account is the entity's ``accountId``, or the entity itself for ``configuration.account.*``.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        payload = {}

    def obj(value: Any) -> dict[str, Any]:  # signed does not mean well-formed: never trust the shape
        return value if isinstance(value, dict) else {}

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) and value else None

    payload = obj(payload)
    data = obj(obj(payload.get("m3terEvent")).get("eventData"))
    dto = obj(data.get("newDto")) or obj(data.get("oldDto"))
    event_name = text(payload.get("eventName"))
    account_id = text(dto.get("accountId"))
    if account_id is None and (event_name or "").startswith("configuration.account."):
        account_id = text(dto.get("id"))
    return {"event_id": event_id, "event_name": event_name, "event_time": text(payload.get("eventTime")),
            "account_id": account_id, "entity_id": text(dto.get("id"))}


def create_app(settings: Callable[[], ReceiverSettings] | None = None, recorder: AssetRecorder | None = None,
               replay: ReplayGuard | None = None, asset_uri: str = ASSET_URI) -> FastAPI:
    """The receiver app; every dependency is created lazily at the first delivery (plugin import stays cheap)."""
    app = FastAPI(title="m3sh webhook receiver", docs_url=None, redoc_url=None, openapi_url=None)
    state: dict[str, Any] = {"settings": None, "settings_at": 0.0, "recorder": recorder, "replay": replay}
    settings_ttl_s = 60.0

    def current_settings() -> ReceiverSettings:
        if state["settings"] is None or time.time() - state["settings_at"] > settings_ttl_s:
            state["settings"] = (settings or load_settings)()
            state["settings_at"] = time.time()
        return state["settings"]  # type: ignore[no-any-return]

    @app.get("/webhooks/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "asset": asset_uri}

    @app.post("/webhooks/m3ter")
    async def m3ter_webhook(request: Request) -> JSONResponse:
        body = await request.body()
        # Everything after reading the body blocks (connection look-up, the S3 replay marker, the
        # asset-event write): off the event loop, or one slow delivery stalls the whole Airflow
        # api-server, the Execution API included, and m3ter's retry of it meets a "replay" 401.
        return await run_in_threadpool(handle, request.headers, body)

    def handle(headers: Any, body: bytes) -> JSONResponse:
        try:
            cfg = current_settings()
        except Exception as exc:
            log.error("webhook receiver is not configured: %s", exc)
            return JSONResponse({"detail": "receiver not configured"}, status_code=503)
        try:
            event_id = verify(headers, body, cfg)
        except Rejected as exc:
            log.warning("m3ter webhook rejected: %s", exc)
            return JSONResponse({"detail": f"rejected: {exc}"}, status_code=401)
        guard: ReplayGuard = state["replay"] or default_replay_guard()
        state["replay"] = guard
        try:
            fresh = guard.first_time(event_id)
        except Exception as exc:
            log.error("replay store unavailable (%s); refusing event %s so m3ter retries", type(exc).__name__, event_id)
            return JSONResponse({"detail": "replay store unavailable"}, status_code=503)
        if not fresh:
            log.warning("m3ter webhook rejected: event %s was already received (replay)", event_id)
            return JSONResponse({"detail": "rejected: replayed event"}, status_code=401)
        rec: AssetRecorder = state["recorder"] or default_recorder()
        state["recorder"] = rec
        extra = _event_extra(event_id, body)
        try:
            rec.record(asset_uri, extra)
        except Exception as exc:
            guard.forget(event_id)  # let m3ter's retry through
            log.error("could not record the asset event for m3ter event %s: %s", event_id, exc)
            return JSONResponse({"detail": "could not record the event"}, status_code=503)
        log.info("m3ter event %s accepted -> asset event on %s", event_id, asset_uri)
        return JSONResponse({"status": "accepted", "event_id": event_id}, status_code=202)

    return app
