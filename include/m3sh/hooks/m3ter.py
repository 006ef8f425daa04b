"""m3ter hooks: :class:`M3terHook` (sync, official ``M3ter`` SDK) and :class:`M3terAsyncHook` (``AsyncM3ter``).

What the SDK gives us and we keep: its retries (429 honouring ``Retry-After``, 408/409/5xx, connection
errors, with jittered backoff), its typed errors and its ``nextToken`` cursors. What we add:

* **Token reuse.** SDK 0.9 stores ``token_expiry = fromtimestamp(expires_in - 300)`` (a 1970 date), so
  it fetches a new token before *every* request, and ``AsyncM3ter`` never fetches one. We fetch the
  token ourselves once per (host, key) per process, cache it until 5 minutes before expiry, pass it
  with a real ``token_expiry`` and mask it in logs.
* **Wire-format entity access.** Entities are read and written as the documented camelCase JSON
  through the SDK's own HTTP client (``client.get/post/put`` and ``get_api_list`` with
  ``SyncCursor``), so m3sh's mapping layer and the API docs speak the same field names.
* **Read-modify-write with ``version``**, retried on a version conflict, and upserts by ``code`` that
  write nothing when nothing changed.
* **Measurement batching** to <= 1000 items and < 512,000 bytes per request, each measurement
  serialised once (the encoded body travels with the batch).
* **Client-side limits** to the documented per-org rates (Config and Ingest API, 50 requests/s
  each) and per-IP rolling windows, shared by every process through :mod:`m3sh.hooks.limits`
  (Redis when the deployment has one), so several workers run at the limit instead of in 429 storms.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import m3ter
import orjson
from airflow.sdk import BaseHook
from m3ter.pagination import AsyncCursor, SyncCursor

from m3sh.exceptions import M3terApiError, M3terVersionConflict, RetryableError
from m3sh.hooks.base import absolute_url, mask
from m3sh.hooks.limits import RateLimiter, Rules, bucket_key, key_prefix, resolve_limiter_url, shared_limiter
from m3sh.hooks.m3ter_ops import OPS

if TYPE_CHECKING:
    from airflow.sdk import Connection

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.m3ter.com"
# m3ter's OpenAPI document gives POST /organizations/{orgId}/measurements its own server, and the
# SDK's usage.submit posts there unless base_url is overridden: the Ingest API is a separate host.
DEFAULT_INGEST_URL = "https://ingest.m3ter.com"
TOKEN_REFRESH_MARGIN_S = 300
MAX_BATCH_ITEMS = 1000
MAX_BATCH_BYTES = 512_000
# JSON envelope {"measurements":[...]} plus separators; keep a margin under the hard limit.
_BATCH_BYTES_BUDGET = MAX_BATCH_BYTES - 1_000
VERSION_CONFLICT_RETRIES = 3
# The SDK returns parsed JSON for cast_to=object; typed as Any so results flow as plain dicts.
_JSON: Any = object


# ------------------------------------------------------------------ pure helpers (sync + async)
@dataclass(frozen=True)
class M3terSettings:
    """Everything needed to talk to one m3ter org, read once from the Airflow connection."""

    base_url: str
    api_key: str
    api_secret: str = field(repr=False)
    org_id: str
    # The Ingest API's base URL (measurements only); see ingest_base_url().
    ingest_url: str = DEFAULT_INGEST_URL
    max_retries: int = 5
    timeout_s: float = 60.0
    page_size: int = 100
    # Client-side limits, shared by every process through m3sh.hooks.limits. Per org (requests/s):
    # the documented 50/s of the Ingest and of the Config API less 4 %: m3ter counts each clock second
    # ("429 for the remainder of the second"), which an evenly spaced 49/s can fill to 50, so two
    # requests that leave late (a busy core, network jitter) make a 429 (two workers on one org met
    # ~1.4 % 429s at 49/s, none at 48/s: benchmarks.usage_ingest, 2026-12-02); per source
    # IP: 5,000 (Ingest) and 20,000 (Config) requests per rolling 5 minutes. Source: m3ter's "Rate and
    # Payload Limits" page as summarised in shared/api-notes/m3ter.md ("Rate limits"); the
    # emulator enforces the same numbers. ingest_rps / config_rps 0 turns that API's client limits
    # off (an org whose limits m3ter raised, a sandbox with limits off); an *_ip_limit of 0 only the window.
    ingest_rps: float = 48.0
    config_rps: float = 48.0
    ingest_ip_limit: int = 5_000
    ingest_ip_window_s: float = 300.0
    config_ip_limit: int = 20_000
    config_ip_window_s: float = 300.0
    # Where limits are shared (a redis:// URL, or "memory"); None: env / Celery broker / in-process.
    limiter_url: str | None = field(default=None, repr=False)
    limiter_prefix: str | None = None
    # The source IP a worker's requests come from, for the per-IP window (see api_limiters()).
    egress_id: str = "default"

    @classmethod
    def from_connection(cls, conn: Connection) -> M3terSettings:
        extra = conn.extra_dejson
        org_id = extra.get("org_id") or conn.schema
        missing = [n for n, v in (("login (Access Key ID)", conn.login), ("password (API Secret)", conn.password),
                                  ("extra.org_id", org_id)) if not v]
        if missing:
            raise M3terApiError(f"connection {conn.conn_id!r} is missing {', '.join(missing)}")
        host = absolute_url(conn.host, DEFAULT_BASE_URL)
        return cls(
            base_url=host,
            ingest_url=ingest_base_url(host, extra.get("ingest_url")),
            api_key=str(conn.login),
            api_secret=str(conn.password),
            org_id=str(org_id),
            max_retries=int(extra.get("max_retries", 5)),
            timeout_s=float(extra.get("timeout_s", 60.0)),
            page_size=int(extra.get("page_size", 100)),
            ingest_rps=float(extra.get("ingest_rps", 48.0)),
            config_rps=float(extra.get("config_rps", 48.0)),
            ingest_ip_limit=int(extra.get("ingest_ip_limit", 5_000)),
            ingest_ip_window_s=float(extra.get("ingest_ip_window_s", 300.0)),
            config_ip_limit=int(extra.get("config_ip_limit", 20_000)),
            config_ip_window_s=float(extra.get("config_ip_window_s", 300.0)),
            limiter_url=extra.get("limiter_url") or None,
            limiter_prefix=extra.get("limiter_prefix") or None,
            egress_id=str(extra.get("egress_id") or "default"),
        )

    def token_request(self) -> tuple[str, dict[str, str], dict[str, str]]:
        basic = base64.b64encode(f"{self.api_key}:{self.api_secret}".encode()).decode()
        return (f"{self.base_url}/oauth/token", {"Authorization": f"Basic {basic}"},
                {"grant_type": "client_credentials"})

    def org_path(self, path: str) -> str:
        return f"/organizations/{self.org_id}/{path.lstrip('/')}"

    def measurements_url(self) -> str:
        """Where measurements go: the Ingest API host, never the Config API's (absolute, so the SDK
        client, whose base URL is the Config API, sends it there as its own ``usage.submit`` does)."""
        return f"{self.ingest_url}{self.org_path(OPS['submit_measurements'].path)}"




def ingest_base_url(config_url: str, configured: str | None = None) -> str:
    """The Ingest API's base URL for a Config API base URL.

    ``extra.ingest_url`` when the connection gives one (the sandbox does: its Ingest API listens on
    a port of its own); else derived the way the SDK's ``usage.submit_all`` derives it, ``api.`` ->
    ``ingest.`` in the host (``https://api.m3ter.com`` -> ``https://ingest.m3ter.com``). A host
    without ``api.`` (a proxy, a stand-in) keeps the same host, as the SDK's ``usage.submit`` does
    with an overridden base URL; name the ingest host in the extra if it differs.
    """
    if configured:
        return absolute_url(configured, configured)
    scheme, _, rest = config_url.partition("://")
    host, sep, path = rest.partition("/")
    if host.startswith("api."):
        host = "ingest." + host[len("api."):]
    return f"{scheme}://{host}{sep}{path}"


@dataclass(frozen=True)
class CachedToken:
    access_token: str = field(repr=False)
    expires_at: float  # epoch seconds at which we stop using it (real expiry minus the margin)

    def valid(self, now: float | None = None) -> bool:
        return (now or time.time()) < self.expires_at

    @property
    def expiry_naive_local(self) -> dt.datetime:
        # The SDK compares token_expiry with naive datetime.now(), so hand it a naive local time.
        return dt.datetime.fromtimestamp(self.expires_at)


def parse_token_response(status: int, body: Any, now: float) -> CachedToken:
    if status != 200 or not isinstance(body, dict) or "access_token" not in body:
        msg = body.get("message") if isinstance(body, dict) else None
        raise M3terApiError(f"token request rejected: {msg or 'no access_token in response'}", status=status)
    expires_in = float(body.get("expires_in", 18_000))
    return CachedToken(str(body["access_token"]), now + max(expires_in - TOKEN_REFRESH_MARGIN_S, 30.0))


class _TokenCache:
    """Process-wide token cache: every hook instance and thread of a worker shares one token per key."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], CachedToken] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # observable in tests and benchmarks

    def get(self, settings: M3terSettings) -> CachedToken:
        key = (settings.base_url, settings.api_key)
        with self._lock:
            tok = self._tokens.get(key)
            if tok is not None and tok.valid():
                return tok
            url, headers, body = settings.token_request()
            resp = httpx.post(url, headers=headers, json=body, timeout=settings.timeout_s)
            tok = parse_token_response(resp.status_code, _json_or_none(resp), time.time())
            self.fetches += 1
            mask(tok.access_token)
            self._tokens[key] = tok
            return tok

    async def aget(self, settings: M3terSettings) -> CachedToken:
        key = (settings.base_url, settings.api_key)
        tok = self._tokens.get(key)
        if tok is not None and tok.valid():
            return tok
        url, headers, body = settings.token_request()
        async with httpx.AsyncClient(timeout=settings.timeout_s) as client:
            resp = await client.post(url, headers=headers, json=body)
        tok = parse_token_response(resp.status_code, _json_or_none(resp), time.time())
        with self._lock:
            self.fetches += 1
            self._tokens[key] = tok
        mask(tok.access_token)
        return tok

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()

    def invalidate(self, settings: M3terSettings, token: CachedToken | None) -> None:
        """Forget a token the API rejected (revoked, or the org was reset) unless already replaced."""
        key = (settings.base_url, settings.api_key)
        with self._lock:
            if token is None or self._tokens.get(key) is token:
                self._tokens.pop(key, None)


TOKEN_CACHE = _TokenCache()


def _json_or_none(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None




def translate_error(exc: Exception, *, entity: str | None = None, record_id: str | None = None) -> Exception:
    """SDK errors -> m3sh errors that name the entity; transient ones become RetryableError."""
    if isinstance(exc, m3ter.RateLimitError | m3ter.InternalServerError | m3ter.APIConnectionError):
        return RetryableError(f"m3ter {entity or ''} {record_id or ''}: transient failure after SDK retries: "
                              f"{_message(exc)}".replace("  ", " "))
    if isinstance(exc, m3ter.APIStatusError):
        return M3terApiError(_message(exc), entity=entity, record_id=record_id, status=exc.status_code)
    return exc


def _message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return exc.__class__.__name__


def _list_query(params: dict[str, Any], page_size: int) -> dict[str, Any]:
    """List-endpoint query parameters: list values comma-joined (the SDK's form; the API takes both),
    ``None`` dropped, and the page size."""
    query = {k: (",".join(v) if isinstance(v, list | tuple) else v) for k, v in params.items() if v is not None}
    query["pageSize"] = page_size
    return query


def _retry_after_s(exc: Exception, attempt: int) -> float:
    """Seconds to wait before the next attempt: Retry-After when given (<= 60 s), else 0.5 * 2^n (<= 8 s)."""
    response = getattr(exc, "response", None)
    header = response.headers.get("retry-after") if response is not None else None
    try:
        if header is not None and 0 <= float(header) <= 60:
            return float(header)
    except ValueError:
        pass
    return float(min(0.5 * 2 ** (attempt - 1), 8.0))


def is_token_rejected(exc: Exception) -> bool:
    return isinstance(exc, m3ter.PermissionDeniedError) and "token" in _message(exc).lower()


def is_version_conflict(exc: Exception) -> bool:
    return isinstance(exc, m3ter.BadRequestError) and "version" in _message(exc).lower()


# One encoding for sizing *and* sending: each measurement is serialised exactly once, straight to
# UTF-8 bytes. orjson rather than the stdlib encoder: on the ingest hot path (a million rows) it
# cuts the encoding share of client CPU from ~12 % to ~2 %. It writes NaN/inf as null where the
# stdlib raised; MeasurementBuilder rejects non-finite values per row before they get here.
_encode = orjson.dumps
_ENVELOPE_HEAD = b'{"measurements":['
_ENVELOPE_TAIL = b"]}"
# A measurement as a dict, or already encoded as one JSON object (m3sh.usage.columnar builds those a
# block at a time, without a dict per row).
Measurement = dict[str, Any] | bytes


def measurement_uid_of(m: Measurement) -> Any:
    """The ``uid`` of a measurement in either form (for error messages)."""
    return (orjson.loads(m) if isinstance(m, bytes) else m).get("uid")


def encode_measurement(m: Measurement) -> bytes:
    return m if isinstance(m, bytes) else _encode(m)


class EncodedBatch(list[Measurement]):
    """A batch of measurements plus its request body, serialised once while sizing the batch.

    ``submit_measurements`` sends ``body`` as is, so the hot ingest path never encodes a measurement
    twice; a batch changed after sealing (length differs) is re-encoded instead of trusted.
    """

    body: bytes = b""
    sealed_len: int = -1

    def seal(self, parts: list[bytes]) -> EncodedBatch:
        self.body = _ENVELOPE_HEAD + b",".join(parts) + _ENVELOPE_TAIL
        self.sealed_len = len(self)
        return self

    @property
    def fresh(self) -> bool:
        return self.sealed_len == len(self)


def measurement_batches(measurements: Iterable[Measurement],
                        max_items: int = MAX_BATCH_ITEMS,
                        max_bytes: int = _BATCH_BYTES_BUDGET) -> Iterator[EncodedBatch]:
    """Group measurements so each request has <= max_items and a body under max_bytes.

    Fast path: ``max_items`` measurements are encoded in one call (typical usage rows are a few
    hundred bytes, so 1000 of them fit easily); only a group whose body is too big is split item by
    item. Sizes are UTF-8 bytes as sent, and the encoded body travels with the batch.
    """
    it = iter(measurements)
    return measurement_batches_of_blocks(iter(lambda: list(islice(it, max_items)), []), max_items, max_bytes)


def measurement_batches_of_blocks(blocks: Iterable[Sequence[Measurement]],
                                  max_items: int = MAX_BATCH_ITEMS,
                                  max_bytes: int = _BATCH_BYTES_BUDGET) -> Iterator[EncodedBatch]:
    """:func:`measurement_batches` over measurements that come a block at a time (a usage file's
    blocks): groups are cut by slicing, so the hot ingest path touches no measurement one by one."""
    group: list[Measurement] = []
    for block in blocks:
        start = 0
        while start < len(block):
            take = max_items - len(group)
            group += block[start:start + take]
            start += take
            if len(group) >= max_items:
                yield from _seal_group(group, max_items, max_bytes)
                group = []
    if group:
        yield from _seal_group(group, max_items, max_bytes)


def _seal_group(group: list[Measurement], max_items: int, max_bytes: int) -> Iterator[EncodedBatch]:
    try:  # all pre-encoded (m3sh.usage.columnar's rows): one join, no call per measurement
        body = _ENVELOPE_HEAD + b",".join(group) + _ENVELOPE_TAIL  # type: ignore[arg-type]
    except TypeError:  # some are dicts
        if any(type(m) is bytes for m in group):
            body = _ENVELOPE_HEAD + b",".join([encode_measurement(m) for m in group]) + _ENVELOPE_TAIL
        else:
            body = _encode({"measurements": group})
    if len(body) <= max_bytes:
        batch = EncodedBatch(group)
        batch.body, batch.sealed_len = body, len(batch)
        yield batch
        return
    batch = EncodedBatch()
    parts: list[bytes] = []
    size = 0
    for m in group:
        raw = encode_measurement(m)
        item_size = len(raw) + 1
        if item_size > max_bytes:
            raise M3terApiError(f"measurement uid={measurement_uid_of(m)!r} alone is {item_size} bytes, over the "
                                f"{MAX_BATCH_BYTES}-byte request limit", entity="measurement")
        if batch and (len(batch) >= max_items or size + item_size > max_bytes):
            yield batch.seal(parts)
            batch, parts, size = EncodedBatch(), [], 0
        batch.append(m)
        parts.append(raw)
        size += item_size
    if batch:
        yield batch.seal(parts)


def ingest_rules(settings: M3terSettings) -> Rules:
    """The Ingest API's limits as this client keeps them: the per-org rate and the per-IP window
    (``ingest_rps`` 0 turns both off, as it turned pacing off before there was a window)."""
    if settings.ingest_rps <= 0:
        return Rules()
    return Rules(settings.ingest_rps, settings.ingest_ip_limit, settings.ingest_ip_window_s)


def config_rules(settings: M3terSettings) -> Rules:
    """The Config API's limits as this client keeps them (``config_rps`` 0 turns both off)."""
    if settings.config_rps <= 0:
        return Rules()
    return Rules(settings.config_rps, settings.config_ip_limit, settings.config_ip_window_s)


def api_limiters(settings: M3terSettings) -> tuple[RateLimiter, RateLimiter]:
    """The (ingest, config) limiters of one org, shared by every hook and thread of this process and,
    through Redis, by every process (see :mod:`m3sh.hooks.limits`).

    Keys: the per-org rate by (API host, org, API); the per-IP window by (API host, egress, API), since
    m3ter counts a source IP's requests whichever org they are for. ``egress_id`` names the IP a
    worker sends from; by default every worker is assumed to share one (one NAT), the safe side.
    """
    url = resolve_limiter_url(settings.limiter_url)
    prefix = key_prefix(settings.limiter_prefix)
    out = []
    for api, host, rules in (("ingest", settings.ingest_url, ingest_rules(settings)),
                             ("config", settings.base_url, config_rules(settings))):
        out.append(shared_limiter(
            rules, url=url,
            rate_key=bucket_key(prefix, host, f"org:{settings.org_id}", api, "rate"),
            window_key=bucket_key(prefix, host, f"ip:{settings.egress_id}", api, "window")))
    return out[0], out[1]


def _limited_api(settings: M3terSettings, request: httpx.Request) -> str | None:
    """Which API's limits a request counts against ("ingest", "config"), or None (the token endpoint
    and anything else outside the org is not rate limited)."""
    path = request.url.path
    if not path.startswith(f"/organizations/{settings.org_id}/"):
        return None
    return "ingest" if request.method == "POST" and path.rstrip("/").endswith("/measurements") else "config"


def pacing_hook(settings: M3terSettings) -> Any:
    """An httpx ``request`` event hook: every request, SDK retries and pagination included, waits for
    its API's shared limiter, so a healthy run does not provoke 429s (the SDK still retries those)."""
    ingest, config = api_limiters(settings)

    def pace(request: httpx.Request) -> None:
        api = _limited_api(settings, request)
        if api is not None:
            (ingest if api == "ingest" else config).acquire()

    return pace


def apacing_hook(settings: M3terSettings) -> Any:
    """:func:`pacing_hook` for ``AsyncM3ter`` (the triggers' client): waits without blocking the loop."""
    ingest, config = api_limiters(settings)

    async def pace(request: httpx.Request) -> None:
        api = _limited_api(settings, request)
        if api is not None:
            await (ingest if api == "ingest" else config).aacquire()

    return pace


def _limits_active(s: M3terSettings) -> bool:
    return ingest_rules(s).active or config_rules(s).active


def changed_fields(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``desired`` that differs from ``current`` (nested maps compared by their keys)."""
    diff: dict[str, Any] = {}
    for k, v in desired.items():
        cur = current.get(k)
        if isinstance(v, dict) and isinstance(cur, dict):
            if any(cur.get(ik) != iv for ik, iv in v.items()):
                diff[k] = v
        elif cur != v:
            diff[k] = v
    return diff


_READ_ONLY = {"id", "version", "dtCreated", "dtLastModified", "createdBy", "lastModifiedBy", "productId"}
# Per update operation: response fields its request schema in the published spec lacks (the sandbox's
# spec guard refuses a PUT that sends them; m3ter computes them).
_RESPONSE_ONLY = {"update_balance": frozenset({"amount"})}


def merge_for_put(current: dict[str, Any], changes: dict[str, Any], put_op: str = "") -> dict[str, Any]:
    """A full PUT body: the current entity without read-only fields, with ``changes`` applied."""
    drop = _READ_ONLY | _RESPONSE_ONLY.get(put_op, frozenset())
    body = {k: v for k, v in current.items() if k not in drop and v is not None}
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(body.get(k), dict):
            body[k] = {**body[k], **v}
        else:
            body[k] = v
    body["version"] = current.get("version")
    return body


@dataclass
class IngestResult:
    measurements: int = 0
    batches: int = 0


# File Upload Service job statuses (the spec's ``JobStatus``): the terminal ones, shared by the sync
# waiter and the deferrable trigger. ``notUploaded`` and ``running`` are still pending.
UPLOAD_JOB_TERMINAL = frozenset({"succeeded", "failed"})
UPLOAD_CONTENT_TYPE = "application/json"
UPLOAD_PUT_TIMEOUT_S = 300.0


class UploadUrlExpired(RetryableError):
    """The storage behind an upload URL answered 403 (m3ter's upload URLs are valid for one minute):
    ask for a new URL and send the file again."""


def _redact_url(url: str) -> str:
    """A pre-signed URL without its query (the signature is a credential for the upload)."""
    return url.split("?", 1)[0]


def _s3_error(text: str) -> str:
    """``Code: Message`` of an S3 XML error body, nothing else: S3 echoes the request's signature
    (``SignatureProvided``) in some error bodies, and it is a credential of the URL."""
    code = re.search(r"<Code>([^<]{0,100})</Code>", text)
    message = re.search(r"<Message>([^<]{0,300})</Message>", text)
    return ": ".join(m.group(1) for m in (code, message) if m) or "no S3 error code"


@dataclass
class UpsertResult:
    entity: dict[str, Any]
    action: str  # "created" | "updated" | "unchanged"
    changes: dict[str, Any] = field(default_factory=dict)


# (list, create, get, update) operations of the collections upserted by code
_ACCOUNT_OPS = ("list_accounts", "create_account", "get_account", "update_account")
_CONTRACT_OPS = ("list_contracts", "create_contract", "get_contract", "update_contract")
_PRODUCT_OPS = ("list_products", "create_product", "get_product", "update_product")
_NOTIFICATION_OPS = ("list_notification_configurations", "create_notification_configuration",
                     "get_notification_configuration", "update_notification_configuration")
_WEBHOOK_OPS = ("list_webhook_destinations", "create_webhook_destination", "get_webhook_destination",
                "update_webhook_destination")


# ------------------------------------------------------------------------------------ sync hook
class M3terHook(BaseHook):
    """Talks to one m3ter organization through the official SDK.

    :param m3ter_conn_id: Airflow connection of type ``m3ter``: host = API base URL (empty for
        production), login = Access Key ID, password = API Secret, extra ``org_id``.
    """

    conn_name_attr = "m3ter_conn_id"
    default_conn_name = "m3ter_default"
    conn_type = "m3ter"
    hook_name = "m3ter"

    def __init__(self, m3ter_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.m3ter_conn_id = m3ter_conn_id
        self._client: m3ter.M3ter | None = None
        self._client_token: CachedToken | None = None

    @cached_property
    def settings(self) -> M3terSettings:
        return M3terSettings.from_connection(self.get_connection(self.m3ter_conn_id))

    @cached_property
    def _upload_client(self) -> httpx.Client:
        """The client of every upload PUT: one TLS context and a kept-alive connection to the storage
        host, not a new client (loading the CA bundle) per file."""
        return httpx.Client(timeout=UPLOAD_PUT_TIMEOUT_S)

    def get_conn(self) -> m3ter.M3ter:
        """An SDK client holding a cached token; rebuilt only when the token is about to expire."""
        s = self.settings
        tok = TOKEN_CACHE.get(s)
        if self._client is None or self._client_token is not tok:
            http_client = None
            if _limits_active(s):
                http_client = m3ter.DefaultHttpxClient(event_hooks={"request": [pacing_hook(s)]})
            self._client = m3ter.M3ter(
                api_key=s.api_key, api_secret=s.api_secret, org_id=s.org_id, base_url=s.base_url,
                token=tok.access_token, token_expiry=tok.expiry_naive_local,
                max_retries=s.max_retries, timeout=s.timeout_s, http_client=http_client,
            )
            self._client_token = tok
        return self._client

    def _with_fresh_token(self, call: Callable[[m3ter.M3ter], T]) -> T:
        """``call(client)``; if m3ter rejects the cached token (revoked, or expired early), drop it
        and call once more with a new one. Every request path goes through here."""
        try:
            return call(self.get_conn())
        except m3ter.PermissionDeniedError as exc:
            if not is_token_rejected(exc):
                raise
            log.warning("m3ter rejected the cached token; fetching a new one")
            TOKEN_CACHE.invalidate(self.settings, self._client_token)
        return call(self.get_conn())

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 content: bytes | None = None) -> Any:
        """One SDK request. ``content`` is an already-serialised JSON body (measurement batches), sent as is."""
        def call(client: m3ter.M3ter) -> Any:
            fn = getattr(client, method)
            if method == "get":
                return fn(path, cast_to=_JSON)
            if content is not None:
                return fn(path, content=content, cast_to=_JSON)
            return fn(path, body=body if body is not None else {}, cast_to=_JSON)

        return self._with_fresh_token(call)

    # -- plumbing: every request is one of m3ter_ops.OPS ------------------------------------
    def _path(self, op: str, **params: str) -> str:
        return self.settings.org_path(OPS[op].render(**params))

    def _list(self, op: str, *, page_size: int | None = None, path: dict[str, str] | None = None,
              **query: Any) -> Iterator[dict[str, Any]]:
        """Every entity of a list operation, following ``nextToken``."""
        params = _list_query(query, min(page_size or self.settings.page_size, OPS[op].page_max))
        url = self._path(op, **(path or {}))
        try:
            cursor = self._with_fresh_token(lambda client: client.get_api_list(  # the first page is fetched here
                url, model=object, page=SyncCursor[object], options={"params": params}))
            yield from cursor  # type: ignore[misc]
        except m3ter.APIError as exc:
            raise translate_error(exc, entity=OPS[op].path) from exc

    def _get(self, op: str, **path: str) -> dict[str, Any]:
        try:
            return self._request("get", self._path(op, **path))  # type: ignore[no-any-return]
        except m3ter.APIError as exc:
            raise translate_error(exc, entity=OPS[op].path, record_id=next(iter(path.values()), None)) from exc

    def _post(self, op: str, body: dict[str, Any], **path: str) -> Any:
        try:
            return self._request("post", self._path(op, **path), body)
        except m3ter.APIError as exc:
            raise translate_error(exc, entity=OPS[op].path) from exc

    def _put(self, op: str, body: dict[str, Any], **path: str) -> Any:
        try:
            return self._request("put", self._path(op, **path), body)
        except m3ter.APIError as exc:
            raise translate_error(exc, entity=OPS[op].path, record_id=next(iter(path.values()), None)) from exc

    def _find_by_code(self, list_op: str, code: str, **query: Any) -> dict[str, Any] | None:
        """The entity with ``code``: through the ``codes`` filter where the spec has one, else by
        reading the list (m3ter ignores a filter it does not have and would answer the first page).
        The code is checked either way."""
        if OPS[list_op].codes_filter:
            found = self._list(list_op, codes=[code], page_size=1, **query)
        else:
            found = self._list(list_op, page_size=OPS[list_op].page_max, **query)
        return next((e for e in found if e.get("code") == code), None)

    def _create(self, op: str, body: dict[str, Any], find_existing: Callable[[], dict[str, Any] | None] | None,
                **path: str) -> dict[str, Any]:
        """Create an entity exactly once.

        m3ter has no idempotency key, and the SDK re-sends a POST whose response was lost (the
        entity may already exist). So creates go out without SDK retries; after a lost response or
        a 5xx, ``find_existing`` decides whether the first attempt landed before anything is sent
        again. 429s are retried as usual: m3ter did not apply them.
        """
        try:
            return self._create_once(self._path(op, **path), body, find_existing)  # type: ignore[no-any-return]
        except m3ter.APIError as exc:
            raise translate_error(exc, entity=OPS[op].path, record_id=body.get("code")) from exc

    def _create_once(self, url: str, body: dict[str, Any],
                     find_existing: Callable[[], dict[str, Any] | None] | None) -> Any:
        if find_existing is None:
            return self._request("post", url, body)
        s = self.settings
        for attempt in range(1, s.max_retries + 2):
            try:
                return self._with_fresh_token(
                    lambda client: client.with_options(max_retries=0).post(url, body=body, cast_to=_JSON))
            except m3ter.RateLimitError as exc:
                if attempt > s.max_retries:
                    raise
                time.sleep(_retry_after_s(exc, attempt))
            except (m3ter.APIConnectionError, m3ter.InternalServerError) as exc:
                existing = find_existing()
                if existing is not None:
                    log.warning("m3ter %s: the response to a create was lost (%s) but the entity exists; "
                                "using it instead of creating it again", url, exc.__class__.__name__)
                    return existing
                if attempt > s.max_retries:
                    raise
                time.sleep(_retry_after_s(exc, attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _update(self, get_op: str, put_op: str, entity_id: str, changes: dict[str, Any],
                current: dict[str, Any] | None = None) -> dict[str, Any]:
        """Read-modify-write with optimistic locking: on a version conflict, re-read and re-apply."""
        entity = OPS[put_op].path
        for attempt in range(VERSION_CONFLICT_RETRIES + 1):
            if current is None:
                current = self._get(get_op, id=entity_id)
            body = merge_for_put(current, changes, put_op)
            try:
                return self._request("put", self._path(put_op, id=entity_id), body)  # type: ignore[no-any-return]
            except m3ter.APIError as exc:
                if is_version_conflict(exc) and attempt < VERSION_CONFLICT_RETRIES:
                    log.info("m3ter %s %s: version %s is stale, re-reading (attempt %d)", entity, entity_id,
                             current.get("version"), attempt + 1)
                    current = None
                    continue
                if is_version_conflict(exc):
                    raise M3terVersionConflict(f"version conflict persisted after {attempt + 1} attempts",
                                               entity=entity, record_id=entity_id, status=400) from exc
                raise translate_error(exc, entity=entity, record_id=entity_id) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _upsert(self, ops: tuple[str, str, str, str], code: str, desired: dict[str, Any], *,
                existing: dict[str, Any] | None = None, dry_run: bool = False,
                known_missing: bool = False) -> UpsertResult:
        """Create the entity with ``code`` or update only what differs; no write when unchanged.

        ``ops`` = (list, create, get, update). ``known_missing`` skips the look-up when the caller
        just listed the collection (a create that races another writer is still safe: m3ter
        refuses the duplicate code).
        """
        list_op, create_op, get_op, put_op = ops
        current = existing if existing is not None or known_missing else self._find_by_code(list_op, code)
        if current is None:
            if dry_run:
                return UpsertResult({"code": code, **desired}, "created", desired)
            created = self._create(create_op, {"code": code, **desired},
                                   lambda: self._find_by_code(list_op, code))
            return UpsertResult(created, "created", desired)
        diff = changed_fields(current, desired)
        if not diff:
            return UpsertResult(current, "unchanged")
        if dry_run:
            return UpsertResult(current, "updated", diff)
        return UpsertResult(self._update(get_op, put_op, current["id"], diff, current=current), "updated", diff)

    # -- accounts ---------------------------------------------------------------------------------
    def list_accounts(self, *, ids: Sequence[str] | None = None, codes: Sequence[str] | None = None,
                      page_size: int | None = None) -> Iterator[dict[str, Any]]:
        return self._list("list_accounts", ids=ids, codes=codes, page_size=page_size)

    def get_account(self, account_id: str) -> dict[str, Any]:
        return self._get("get_account", id=account_id)

    def find_account(self, code: str) -> dict[str, Any] | None:
        return self._find_by_code("list_accounts", code)

    def create_account(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create an account (exactly once: after a lost response it is looked up by its code)."""
        code = str(body["code"])
        return self._create("create_account", body, lambda: self.find_account(code))

    def upsert_account(self, code: str, desired: dict[str, Any], **kw: Any) -> UpsertResult:
        """See :meth:`_upsert` for ``existing``, ``dry_run`` and ``known_missing``."""
        return self._upsert(_ACCOUNT_OPS, code, desired, **kw)

    def update_account(self, account_id: str, changes: dict[str, Any],
                       current: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._update("get_account", "update_account", account_id, changes, current)

    # -- catalogue --------------------------------------------------------------------------------
    def list_plans(self, *, page_size: int | None = None) -> Iterator[dict[str, Any]]:
        return self._list("list_plans", page_size=page_size)

    def find_plan(self, code: str) -> dict[str, Any] | None:
        return self._find_by_code("list_plans", code)

    def list_products(self, *, codes: Sequence[str] | None = None,
                      page_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Products, only those with ``codes`` when given (filtered here: the API has no code filter)."""
        wanted = set(codes) if codes is not None else None
        return (p for p in self._list("list_products", page_size=page_size or 200)
                if wanted is None or p.get("code") in wanted)

    def find_product(self, code: str) -> dict[str, Any] | None:
        return self._find_by_code("list_products", code)

    def upsert_product(self, code: str, desired: dict[str, Any], **kw: Any) -> UpsertResult:
        return self._upsert(_PRODUCT_OPS, code, desired, **kw)

    def list_meters(self, *, codes: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        return self._list("list_meters", codes=codes)

    def find_meter(self, code: str) -> dict[str, Any] | None:
        return self._find_by_code("list_meters", code)

    def get_custom_fields(self) -> dict[str, Any]:
        """The organization's custom field definitions, by entity (``account``, ``plan``, ...)."""
        return self._get("get_custom_fields")

    def list_transaction_types(self) -> Iterator[dict[str, Any]]:
        return self._list("list_transaction_types")

    def find_transaction_type(self, code: str) -> dict[str, Any] | None:
        return self._find_by_code("list_transaction_types", code)

    # -- contracts and account plans ------------------------------------------------------------
    def list_contracts(self, *, account_id: str | None = None,
                       page_size: int | None = None) -> Iterator[dict[str, Any]]:
        return self._list("list_contracts", accountId=account_id, page_size=page_size)

    def get_contract(self, contract_id: str) -> dict[str, Any]:
        return self._get("get_contract", id=contract_id)

    def upsert_contract(self, code: str, desired: dict[str, Any], **kw: Any) -> UpsertResult:
        return self._upsert(_CONTRACT_OPS, code, desired, **kw)

    def update_contract(self, contract_id: str, changes: dict[str, Any],
                        current: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._update("get_contract", "update_contract", contract_id, changes, current)

    def list_account_plans(self, *, account_id: str | None = None,
                           include_all: bool = False) -> Iterator[dict[str, Any]]:
        return self._list("list_account_plans", account=account_id, includeall="true" if include_all else None)

    def create_account_plan(self, body: dict[str, Any],
                            find_existing: Callable[[], dict[str, Any] | None] | None = None) -> dict[str, Any]:
        """Attach a plan; after a lost response ``find_existing`` (default: the account's plan with the
        body's ``code``, when it has one) tells whether it landed."""
        if find_existing is None and body.get("code"):
            code, account = str(body["code"]), str(body["accountId"])

            def find_existing() -> dict[str, Any] | None:
                return self._find_by_code("list_account_plans", code, account=account, includeall="true")

        return self._create("create_account_plan", body, find_existing)

    def update_account_plan(self, account_plan_id: str, changes: dict[str, Any],
                            current: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._update("get_account_plan", "update_account_plan", account_plan_id, changes, current)

    # -- balances ---------------------------------------------------------------------------------
    def list_balances(self, *, account_id: str | None = None, end_date_start: str | None = None,
                      page_size: int | None = None) -> Iterator[dict[str, Any]]:
        return self._list("list_balances", accountId=account_id, endDateStart=end_date_start, page_size=page_size)

    def get_balance(self, balance_id: str) -> dict[str, Any]:
        return self._get("get_balance", id=balance_id)

    def update_balance(self, balance_id: str, changes: dict[str, Any],
                       current: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._update("get_balance", "update_balance", balance_id, changes, current)

    def create_balance(self, body: dict[str, Any],
                       find_existing: Callable[[], dict[str, Any] | None] | None = None) -> dict[str, Any]:
        return self._create("create_balance", body, find_existing)

    def list_balance_transactions(self, balance_id: str) -> Iterator[dict[str, Any]]:
        return self._list("list_balance_transactions", path={"balanceId": balance_id}, page_size=200)

    def balance_transaction_summary(self, balance_id: str) -> dict[str, Any]:
        return self._get("balance_transaction_summary", balanceId=balance_id)

    def create_balance_transaction(self, balance_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Post a balance transaction exactly once; its ``description`` must identify it uniquely.

        Balance transactions have no code, so the description (m3sh puts the firing key in it) is
        what tells a lost-response retry that the first attempt was applied.
        """
        note = body.get("description")
        if not note:
            raise ValueError("a balance transaction needs a unique description to be posted exactly once")

        def find_existing() -> dict[str, Any] | None:
            return next((t for t in self.list_balance_transactions(balance_id) if t.get("description") == note),
                        None)

        return self._create("create_balance_transaction", body, find_existing, balanceId=balance_id)

    # -- external mappings --------------------------------------------------------------------------
    def list_external_mappings(self) -> Iterator[dict[str, Any]]:
        return self._list("list_external_mappings", page_size=200)

    def list_external_mappings_of(self, m3ter_entity: str, m3ter_id: str) -> Iterator[dict[str, Any]]:
        """The mappings of one m3ter entity (e.g. ``Account`` and its id) to external records."""
        return self._list("list_external_mappings_by_m3ter_entity", page_size=200,
                          path={"entity": m3ter_entity, "m3terId": m3ter_id})

    def find_external_mapping(self, system: str, table: str, external_id: str) -> dict[str, Any] | None:
        """The mapping of one external record (system, table, id), if m3ter has it."""
        return next(iter(self._list("list_external_mappings_by_external_id", path={
            "system": system, "externalTable": table, "externalId": external_id})), None)

    def create_external_mapping(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._create("create_external_mapping", body, lambda: self.find_external_mapping(
            str(body["externalSystem"]), str(body["externalTable"]), str(body["externalId"])))

    def update_external_mapping(self, mapping_id: str, changes: dict[str, Any],
                                current: dict[str, Any]) -> dict[str, Any]:
        return self._update("get_external_mapping", "update_external_mapping", mapping_id, changes, current)

    # -- notifications ----------------------------------------------------------------------------
    def list_notification_configurations(self) -> Iterator[dict[str, Any]]:
        return self._list("list_notification_configurations")

    def find_notification_configuration(self, code: str) -> dict[str, Any] | None:
        return self._find_by_code("list_notification_configurations", code)

    def upsert_notification_configuration(self, code: str, desired: dict[str, Any], **kw: Any) -> UpsertResult:
        return self._upsert(_NOTIFICATION_OPS, code, desired, **kw)

    def list_webhook_destinations(self) -> Iterator[dict[str, Any]]:
        return self._list("list_webhook_destinations", page_size=200)

    def find_webhook_destination(self, code: str) -> dict[str, Any] | None:
        return self._find_by_code("list_webhook_destinations", code)

    def upsert_webhook_destination(self, code: str, desired: dict[str, Any], **kw: Any) -> UpsertResult:
        return self._upsert(_WEBHOOK_OPS, code, desired, **kw)

    def list_integration_configs(self, *, destination_id: str | None = None) -> Iterator[dict[str, Any]]:
        return self._list("list_integration_configs", destinationId=destination_id, page_size=200)

    def create_integration_config(self, body: dict[str, Any],
                                  find_existing: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        return self._create("create_integration_config", body, find_existing)

    def enable_integration_config(self, config_id: str) -> dict[str, Any]:
        return self._post("enable_integration_config", {}, id=config_id)  # type: ignore[no-any-return]

    # -- bills --------------------------------------------------------------------------------------
    def list_bills(self, *, status: str | None = None, bill_date: str | None = None,
                   exclude_line_items: bool = False) -> Iterator[dict[str, Any]]:
        return self._list("list_bills", status=status, billDate=bill_date,
                          excludeLineItems="true" if exclude_line_items else None)

    def get_bill(self, bill_id: str) -> dict[str, Any]:
        return self._get("get_bill", id=bill_id)

    def list_bill_line_items(self, bill_id: str) -> Iterator[dict[str, Any]]:
        return self._list("list_bill_line_items", path={"billId": bill_id})

    def approve_bills(self, bill_ids: Sequence[str]) -> dict[str, Any]:
        return self._post("approve_bills", {"billIds": list(bill_ids)})  # type: ignore[no-any-return]

    def recalculate_bills(self, bill_ids: Sequence[str]) -> dict[str, Any]:
        return self._post("recalculate_bills", {"billIds": list(bill_ids)})  # type: ignore[no-any-return]

    def update_bill_status(self, bill_id: str, status: str) -> dict[str, Any]:
        return self._put("update_bill_status", {"status": status}, id=bill_id)  # type: ignore[no-any-return]

    def lock_bill(self, bill_id: str) -> dict[str, Any]:
        return self._put("lock_bill", {}, id=bill_id)  # type: ignore[no-any-return]

    # -- data exports -------------------------------------------------------------------------------
    def create_adhoc_data_export(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._post("create_adhoc_data_export", body)  # type: ignore[no-any-return]

    def get_data_export_job(self, job_id: str) -> dict[str, Any]:
        return self._get("get_data_export_job", id=job_id)

    def get_data_export_download_url(self, job_id: str) -> str:
        return str(self._get("get_data_export_download_url", jobId=job_id)["url"])

    # -- measurements -------------------------------------------------------------------------
    def submit_measurements(self, measurements: Iterable[Measurement]) -> IngestResult:
        """Ingest in <=1000-item, <512,000-byte requests. Idempotent when every measurement has a uid."""
        path = self.settings.measurements_url()
        result = IngestResult()
        # A batch from measurement_batches() arrives encoded already: send its body, don't re-batch.
        batches: Iterable[EncodedBatch] = (
            [measurements] if isinstance(measurements, EncodedBatch) and measurements.fresh
            else measurement_batches(measurements))
        for batch in batches:
            try:
                self._request("post", path, content=batch.body)
            except m3ter.APIError as exc:
                first, last = measurement_uid_of(batch[0]), measurement_uid_of(batch[-1])
                raise translate_error(exc, entity="measurements", record_id=f"{first}..{last}") from exc
            result.batches += 1
            result.measurements += len(batch)
        return result

    def query_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._post("query_usage", body)  # type: ignore[no-any-return]

    # -- measurement file uploads (m3ter's File Upload Service) ----------------------------------
    # https://docs.m3ter.com/guides/billing-and-usage-data/submitting-usage-data/file-upload-service-api:
    # POST generateUploadUrl -> {jobId, url, headers}; PUT the JSON file to url with those headers
    # within one minute; then follow the job (status, totalRows, processedRows, failedRows).
    def generate_upload_url(self, file_name: str, content_length: int,
                            content_type: str = UPLOAD_CONTENT_TYPE) -> dict[str, Any]:
        """``{"jobId", "url", "headers"}`` for one file (``file_name`` 1..100 characters, at most 1 GiB)."""
        return self._post("generate_upload_url", {  # type: ignore[no-any-return]
            "fileName": file_name, "contentType": content_type, "contentLength": content_length})

    def list_upload_jobs(self, *, date_created_start: str | None = None,
                         date_created_end: str | None = None) -> Iterator[dict[str, Any]]:
        """File upload jobs, newest first (m3ter filters by creation date only, not by file name)."""
        return self._list("list_upload_jobs", dateCreatedStart=date_created_start, dateCreatedEnd=date_created_end)

    def get_upload_job(self, job_id: str) -> dict[str, Any]:
        return self._get("get_upload_job", id=job_id)

    def get_upload_job_original_url(self, job_id: str) -> str:
        """A download URL of the file uploaded for ``job_id`` (as m3ter received it)."""
        return str(self._get("get_upload_job_original", id=job_id)["url"])

    def put_upload(self, url: str, headers: dict[str, str], body: Any, content_length: int) -> None:
        """PUT a file (a binary file object, read in chunks: memory stays flat) to an upload URL from
        :meth:`generate_upload_url`, with the headers it came with. The URL is a pre-signed storage
        URL, not an m3ter API path: no bearer token goes with it, and it is never logged whole.

        Raises :class:`UploadUrlExpired` on a 403 (ask for a new URL), RetryableError on a 5xx or a
        connection failure, M3terApiError otherwise."""
        def chunks() -> Iterator[bytes]:
            while data := body.read(1 << 20):
                yield data

        where = _redact_url(url)
        try:
            resp = self._upload_client.put(url, content=chunks(),
                                           headers={**headers, "Content-Length": str(content_length)})
        except httpx.HTTPError as exc:
            raise RetryableError(f"upload to {where} failed: {type(exc).__name__}") from None
        if resp.status_code == 403:
            raise UploadUrlExpired(f"upload to {where} refused (403; the URL is valid for one minute): "
                                   f"{_s3_error(resp.text)}")
        if resp.status_code >= 500 or resp.status_code == 429:
            raise RetryableError(f"upload to {where} failed: HTTP {resp.status_code}")
        if resp.status_code >= 300:
            raise M3terApiError(f"upload to {where} refused: HTTP {resp.status_code} {_s3_error(resp.text)}",
                                entity="fileuploads/measurements", status=resp.status_code)

    # -- Airflow UI -----------------------------------------------------------------------------
    def test_connection(self) -> tuple[bool, str]:
        try:
            TOKEN_CACHE.clear()
            next(iter(self.list_products(page_size=1)), None)
        except Exception as exc:
            return False, f"m3ter connection {self.m3ter_conn_id!r} failed: {_safe(exc)}"
        return True, f"Connected to m3ter org {self.settings.org_id}"


def _safe(exc: Exception) -> str:
    """An error message without anything secret (SDK messages contain only status + body)."""
    if isinstance(exc, M3terApiError):
        return str(exc)
    if isinstance(exc, m3ter.APIStatusError):
        return f"HTTP {exc.status_code}: {_message(exc)}"
    return exc.__class__.__name__ + (f": {exc}" if isinstance(exc, httpx.HTTPError | RetryableError) else "")


# ----------------------------------------------------------------------------------- async hook
class M3terAsyncHook(M3terHook):
    """The async twin for triggers: same settings, token cache and helpers, ``AsyncM3ter`` client.

    The connection is read once per hook and one client is kept while the token stays the same
    (requests reuse its connections); :meth:`aclose` releases it.
    """

    def __init__(self, m3ter_conn_id: str = M3terHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(m3ter_conn_id, **kwargs)
        self._asettings: M3terSettings | None = None
        self._aclient: m3ter.AsyncM3ter | None = None
        self._aclient_token: CachedToken | None = None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None

    async def aget_settings(self) -> M3terSettings:
        if self._asettings is None:
            conn = await BaseHook.aget_connection(self.m3ter_conn_id)
            self._asettings = M3terSettings.from_connection(conn)
        return self._asettings

    async def aget_conn(self) -> m3ter.AsyncM3ter:
        s = await self.aget_settings()
        tok = await TOKEN_CACHE.aget(s)
        loop = asyncio.get_running_loop()
        if self._aclient_loop is not loop:  # a client's connections belong to the loop that opened them
            self._aclient = None
        if self._aclient is None or self._aclient_token is not tok:
            await self.aclose()
            self._aclient, self._aclient_token, self._aclient_loop = self._async_client(s, tok), tok, loop
        return self._aclient

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.close()
            self._aclient = self._aclient_token = None

    @staticmethod
    def _async_client(s: M3terSettings, tok: CachedToken) -> m3ter.AsyncM3ter:
        http_client = None
        if _limits_active(s):
            http_client = m3ter.DefaultAsyncHttpxClient(event_hooks={"request": [apacing_hook(s)]})
        return m3ter.AsyncM3ter(api_key=s.api_key, api_secret=s.api_secret, org_id=s.org_id,
                                base_url=s.base_url, token=tok.access_token, max_retries=s.max_retries,
                                timeout=s.timeout_s, http_client=http_client)

    async def _token_rejected(self, exc: m3ter.PermissionDeniedError) -> bool:
        """Whether m3ter rejected the token (then it is dropped, so the next call fetches a new one)."""
        if not is_token_rejected(exc):
            return False
        log.warning("m3ter rejected the cached token; fetching a new one")
        TOKEN_CACHE.invalidate(await self.aget_settings(), self._aclient_token)
        return True

    async def _aiter(self, op: str, page_size: int = 100, **query: Any) -> Any:
        """Like :meth:`M3terHook._list`, a rejected token included: dropped, and the listing started
        once more with a new one (only before anything was yielded, so nothing repeats)."""
        s = await self.aget_settings()
        params = _list_query(query, min(page_size, OPS[op].page_max))
        url = s.org_path(OPS[op].render())
        for attempt in (1, 2):
            yielded = False
            try:
                client = await self.aget_conn()
                cursor = client.get_api_list(url, model=object, page=AsyncCursor[object], options={"params": params})
                async for item in cursor:
                    yielded = True
                    yield item
                return
            except m3ter.PermissionDeniedError as exc:
                if attempt == 1 and not yielded and await self._token_rejected(exc):
                    continue
                raise translate_error(exc, entity=OPS[op].path) from exc
            except m3ter.APIError as exc:
                raise translate_error(exc, entity=OPS[op].path) from exc

    async def _alist(self, op: str, page_size: int = 100, **query: Any) -> list[dict[str, Any]]:
        return [item async for item in self._aiter(op, page_size=page_size, **query)]

    async def _arequest(self, op: str, body: dict[str, Any] | None = None, **path: str) -> Any:
        """One request of ``op``; a rejected token is dropped and the request sent once more."""
        s = await self.aget_settings()
        spec = OPS[op]
        url = s.org_path(spec.render(**path))
        for attempt in (1, 2):
            try:
                client = await self.aget_conn()
                if spec.method == "GET":
                    return await client.get(url, cast_to=_JSON)
                return await client.post(url, body=body or {}, cast_to=_JSON)
            except m3ter.PermissionDeniedError as exc:
                if attempt == 1 and await self._token_rejected(exc):
                    continue
                raise translate_error(exc, entity=spec.path) from exc
            except m3ter.APIError as exc:
                raise translate_error(exc, entity=spec.path) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def alist_accounts(self, *, ids: Sequence[str] | None = None, page_size: int = 100) -> list[dict[str, Any]]:
        return await self._alist("list_accounts", page_size=page_size, ids=ids)

    async def alist_balances(self, *, page_size: int = 100) -> list[dict[str, Any]]:
        return await self._alist("list_balances", page_size=page_size)

    async def alist_products(self, *, codes: Sequence[str] | None = None, page_size: int = 200) -> list[dict[str, Any]]:
        """As :meth:`M3terHook.list_products` (filtered here: the API has no code filter)."""
        wanted = set(codes) if codes is not None else None
        return [p for p in await self._alist("list_products", page_size=page_size)
                if wanted is None or p.get("code") in wanted]

    async def alist_meters(self, *, codes: Sequence[str] | None = None, page_size: int = 100) -> list[dict[str, Any]]:
        return await self._alist("list_meters", page_size=page_size, codes=codes)

    async def alist_contracts(self, *, page_size: int = 100) -> list[dict[str, Any]]:
        return await self._alist("list_contracts", page_size=page_size)

    async def abalance_transaction_summary(self, balance_id: str) -> dict[str, Any]:
        return await self._arequest("balance_transaction_summary", balanceId=balance_id)  # type: ignore[no-any-return]

    async def aquery_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._arequest("query_usage", body)  # type: ignore[no-any-return]

    async def aget_upload_job(self, job_id: str) -> dict[str, Any]:
        return await self._arequest("get_upload_job", id=job_id)  # type: ignore[no-any-return]
