"""Airflow hook for HubSpot CRM, built on the official ``hubspot-api-client``.

The hook owns everything operators must not care about: the client and its host, a client-side
rate limiter shared by every thread of the task (and every worker, through Redis: extra
``limiter_url``, see :mod:`m3sh.hooks.limits`), retries with backoff on 429/5xx honouring
``Retry-After``, cursor paging, the 10,000-result search cap (by bisecting the time window),
chunking of batch writes to 100 inputs and per-record reporting of 207 partial failures.

Connection (``conn_type="hubspot"``):

* ``password``: private-app token (``Authorization: Bearer``); masked, never logged.
* ``host``: optional base URL override (empty -> ``https://api.hubapi.com``), e.g. the sandbox.
* extras: ``rate_limit_requests`` (default 100) per ``rate_limit_window_s`` (default 10) for the
  ten-secondly burst policy; ``search_rate_limit_per_s`` (default 5) for the search endpoints,
  which HubSpot limits separately.

Retries: tenacity wraps every call, *not* urllib3's ``Retry`` through the client's ``retry``
argument, because a retried attempt must pass through the rate limiter again (urllib3 retries
inside the connection pool, invisible to the limiter, and would burst straight into another 429),
and because only the hook knows which operation and record it was, for logs and error messages.
The client's own urllib3 retries are switched off so there is exactly one retry layer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import urllib3
from airflow.sdk import BaseHook
from hubspot import HubSpot
from hubspot.crm.associations.v4 import BatchInputPublicFetchAssociationsBatchRequest
from hubspot.crm.associations.v4.exceptions import ApiException as AssociationsApiException
from hubspot.crm.objects import (
    BatchInputSimplePublicObjectBatchInput,
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchReadInputSimplePublicObjectId,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInput,
    SimplePublicObjectBatchInputUpsert,
)
from hubspot.crm.objects.exceptions import ApiException as ObjectsApiException
from hubspot.crm.properties import PropertyCreate
from hubspot.crm.properties.exceptions import ApiException as PropertiesApiException

from m3sh.exceptions import ExternalApiError, RetryableError
from m3sh.hooks.base import absolute_url, backoff_wait, mask, retrying
from m3sh.hooks.limits import RateLimiter, Rules, bucket_key, key_prefix, resolve_limiter_url, shared_limiter

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.hubapi.com"
PAGE_MAX = 100            # list endpoints (api-notes A.5)
BATCH_MAX = 100           # batch create/update/upsert/read (api-notes A.4)
ASSOC_BATCH_MAX = 1000    # v4 association batch read (api-notes A.8)
SEARCH_PAGE_MAX = 200     # search limit (api-notes A.7)
SEARCH_RESULT_CAP = 10_000
RETRYABLE_STATUS = frozenset({423, 429, 477, 500, 502, 503, 504, 524})
LASTMOD_PROPERTY = {"contacts": "lastmodifieddate"}  # everything else: hs_lastmodifieddate
_API_EXCEPTIONS = (ObjectsApiException, PropertiesApiException, AssociationsApiException)
_FIELD_TYPES = {"string": "text", "number": "number", "date": "date", "datetime": "date",
                "bool": "booleancheckbox", "enumeration": "select", "phone_number": "phonenumber"}
# HubSpot's default property group per object type is "<singular>information".
_SINGULAR = {"companies": "company", "contacts": "contact", "deals": "deal", "products": "product",
             "line_items": "lineitem"}
T = TypeVar("T")
_Chunk = list[tuple[int, dict[str, Any]]]  # (input index = objectWriteTraceId, prepared input)


class HubSpotError(ExternalApiError):
    """A HubSpot call failed for good; the message names the operation, object type and record."""

    def __init__(self, message: str, *, object_type: str | None = None, object_id: str | None = None,
                 status: int | None = None, category: str | None = None) -> None:
        super().__init__("HubSpot", message, entity=object_type, record_id=object_id, status=status)
        self.object_type = object_type
        self.object_id = object_id
        self.status = status
        self.category = category


class HubSpotAuthError(HubSpotError):
    """401/403: the token is wrong, revoked or lacks a scope. Retrying will not help."""


class HubSpotRetryableError(HubSpotError, RetryableError):
    """429/5xx/connection failures that outlasted the hook's own retries: Airflow may retry the task."""


@dataclass
class BatchResult:
    """Outcome of a chunked batch write: what HubSpot accepted and what it refused, per input."""

    succeeded: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[dict[str, Any], str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _shared_limiter(base_url: str, token: str, kind: str, max_calls: int, window_s: float, *,
                    extra: Mapping[str, Any]) -> RateLimiter:
    """The limiter of one (portal, token, policy), shared by every hook and thread of this process
    and, through Redis (extra ``limiter_url``, see :mod:`m3sh.hooks.limits`), by every process:
    HubSpot's limits are per app, not per worker.

    A sliding window: HubSpot's burst policy *is* a rolling window. Its margin (10 % of the window,
    at most 0.5 s) absorbs network jitter: the server counts arrival times, and requests that left
    ``window_s`` apart can arrive closer together.
    """
    if max_calls < 1 or window_s <= 0:
        raise ValueError("rate limit needs max_calls >= 1 and window_s > 0")
    token_key = hashlib.sha256(token.encode()).hexdigest()[:16]  # never keep the token as a key
    prefix = key_prefix(extra.get("limiter_prefix"))
    scope = f"app:{token_key}"
    rules = Rules(window_limit=max_calls, window_s=window_s, margin_s=min(0.5, 0.1 * window_s))
    return shared_limiter(rules, url=resolve_limiter_url(extra.get("limiter_url")),
                          rate_key=bucket_key(prefix, base_url, scope, kind, "rate"),
                          window_key=bucket_key(prefix, base_url, scope, kind, "window"))


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status", None) if isinstance(exc, _API_EXCEPTIONS) else None


def _error_json(exc: BaseException) -> dict[str, Any]:
    body = getattr(exc, "body", None)
    if not body:
        return {}
    try:
        parsed = json.loads(body)
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None  # an HTTP-date form is not used by HubSpot; fall back to backoff


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, urllib3.exceptions.HTTPError):  # dropped connection, timeout, refused
        return True
    status = _status(exc)
    return status is not None and (status == 0 or status in RETRYABLE_STATUS)


def _to_dict(model: Any) -> dict[str, Any]:
    return model.to_dict() if hasattr(model, "to_dict") else dict(model)


class HubSpotHook(BaseHook):
    """HubSpot CRM access for m3sh DAGs (see the module docstring for connection fields)."""

    conn_name_attr = "hubspot_conn_id"
    default_conn_name = "hubspot_default"
    conn_type = "hubspot"
    hook_name = "HubSpot"

    def __init__(
        self,
        hubspot_conn_id: str = default_conn_name,
        *,
        max_attempts: int = 6,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__()
        self.hubspot_conn_id = hubspot_conn_id
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self._timeout = {"_request_timeout": timeout_s}  # passed to every generated API call
        self._client: HubSpot | None = None
        self._apis: dict[str, Any] = {}
        self._init_lock = threading.Lock()
        self.host = DEFAULT_HOST
        self._limiter: RateLimiter | None = None
        self._search_limiter: RateLimiter | None = None

    # -- connection ---------------------------------------------------------------------------------
    def get_conn(self) -> HubSpot:
        """The configured official client (cached). Reads the connection once and masks the token."""
        with self._init_lock:
            if self._client is not None:
                return self._client
            conn = self.get_connection(self.hubspot_conn_id)
            token = conn.password or ""
            if not token:
                raise HubSpotAuthError(
                    f"connection {self.hubspot_conn_id!r} has no private-app token in its password field"
                )
            mask(token)
            extra = conn.extra_dejson
            self.host = absolute_url(conn.host, DEFAULT_HOST)
            self._limiter = _shared_limiter(
                self.host, token, "burst", int(extra.get("rate_limit_requests", 100)),
                float(extra.get("rate_limit_window_s", 10)), extra=extra,
            )
            self._search_limiter = _shared_limiter(
                self.host, token, "search", int(extra.get("search_rate_limit_per_s", 5)), 1.0, extra=extra
            )
            self._client = HubSpot(
                access_token=token,
                host=self.host,
                # One retry layer only (tenacity, below): urllib3 must neither retry nor follow redirects.
                retry=urllib3.util.Retry(total=0, redirect=False, raise_on_status=False),
                connection_pool_maxsize=int(extra.get("connection_pool_maxsize", 16)),
            )
            return self._client

    def _api(self, name: str) -> Any:
        """Generated API objects are built once: each client attribute access makes a new pool."""
        client = self.get_conn()
        with self._init_lock:
            if name not in self._apis:
                crm = client.crm
                self._apis[name] = {
                    "objects": lambda: crm.objects.basic_api,
                    "batch": lambda: crm.objects.batch_api,
                    "search": lambda: crm.objects.search_api,
                    "properties": lambda: crm.properties.core_api,
                    "assoc": lambda: crm.associations.v4.basic_api,
                    "assoc_batch": lambda: crm.associations.v4.batch_api,
                }[name]()
            return self._apis[name]

    # -- the one place every request goes through ----------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T], *, object_type: str | None = None,
              object_id: str | None = None, search: bool = False, attempts: int | None = None) -> T:
        """Run one API call: rate-limit every attempt, retry transient failures, translate errors."""
        self.get_conn()
        limiter = self._search_limiter if search else self._limiter
        assert limiter is not None

        def attempt() -> T:
            limiter.acquire()
            return fn()

        try:
            return retrying("HubSpot", what, attempts=attempts or self.max_attempts, log=log,
                            wait=backoff_wait(self.backoff_base_s, self.backoff_max_s, _retry_after),
                            retryable=_is_retryable,
                            describe=lambda e: _status(e) or type(e).__name__)(attempt)
        except (*_API_EXCEPTIONS, urllib3.exceptions.HTTPError) as exc:
            raise self._translate(exc, what, object_type, object_id) from None

    @staticmethod
    def _translate(exc: BaseException, what: str, object_type: str | None,
                   object_id: str | None) -> HubSpotError:
        status = _status(exc)
        body = _error_json(exc)
        category = body.get("category")
        detail = body.get("message") or getattr(exc, "reason", None) or type(exc).__name__
        message = f"{what} failed" + (f" ({category})" if category else "") + f": {detail}"
        cls: type[HubSpotError] = HubSpotError
        if status in (401, 403):
            cls = HubSpotAuthError
        elif _is_retryable(exc):
            cls = HubSpotRetryableError
        return cls(message, object_type=object_type, object_id=object_id, status=status, category=category)

    # -- reads ----------------------------------------------------------------------------------------
    def batch_read(self, object_type: str, ids: Sequence[str], properties: Sequence[str] | None = None,
                   history: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
        """``{id: record}`` for many ids, 100 per request (one call instead of one per record).

        Ids HubSpot doesn't know are simply absent from the result (a 207 with per-id errors).
        ``history``: properties whose change history to include, as the official client's model
        gives it (``properties_with_history``: ``{name: [{value, timestamp, source_type,
        source_id, ...}]}``, newest first).
        """
        out: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(str(i) for i in ids))
        api = self._api("batch")
        for start in range(0, len(unique), BATCH_MAX):
            chunk = unique[start:start + BATCH_MAX]
            # propertiesWithHistory is required by the published contract (HubSpot's OpenAPI
            # document, the API reference and the official client's model, whose validation is
            # off by default, so leaving it out went unnoticed); empty = no property history.
            body = BatchReadInputSimplePublicObjectId(inputs=[{"id": i} for i in chunk],
                                                      properties=list(properties or []),
                                                      properties_with_history=list(history))
            result = self._call("batch read", partial(api.read, object_type, body, **self._timeout),
                                object_type=object_type)
            for rec in getattr(result, "results", None) or []:
                d = _to_dict(rec)
                if d.get("properties_with_history"):  # the model's to_dict leaves these entries as models
                    d["properties_with_history"] = {name: [_to_dict(v) for v in versions]
                                                    for name, versions in d["properties_with_history"].items()}
                out[str(d["id"])] = d
        return out

    def get_object(self, object_type: str, object_id: str, properties: Sequence[str] | None = None,
                   id_property: str | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"properties": list(properties)} if properties else {}
        if id_property:
            kwargs["id_property"] = id_property
        api = self._api("objects")
        result = self._call("get", partial(api.get_by_id, object_type, object_id, **kwargs, **self._timeout),
                            object_type=object_type, object_id=object_id)
        return _to_dict(result)

    def iter_objects(self, object_type: str, properties: Sequence[str] | None = None, *,
                     archived: bool = False, page_size: int = PAGE_MAX) -> Iterator[dict[str, Any]]:
        """Every record of a type, following ``paging.next.after`` (pages of at most 100)."""
        after: str | None = None
        limit = max(1, min(page_size, PAGE_MAX))
        while True:
            kwargs: dict[str, Any] = {"limit": limit, "archived": archived}
            if properties:
                kwargs["properties"] = list(properties)
            if after:
                kwargs["after"] = after
            api = self._api("objects")
            page = self._call(f"list (after={after})",
                              partial(api.get_page, object_type, **kwargs, **self._timeout),
                              object_type=object_type)
            for rec in page.results:
                yield _to_dict(rec)
            nxt = page.paging.next if page.paging else None
            if nxt is None or not nxt.after:
                return
            after = nxt.after

    def search_modified(self, object_type: str, start: dt.datetime, end: dt.datetime,
                        properties: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
        """Records whose last-modified time is in ``[start, end)``, oldest first.

        HubSpot refuses to page past 10,000 search results, so a window whose ``total`` exceeds the
        cap is bisected (recursively) until every half fits; the halves are read in time order. The
        property is ``hs_lastmodifieddate`` except for contacts (``lastmodifieddate``).
        """
        prop = LASTMOD_PROPERTY.get(object_type, "hs_lastmodifieddate")
        wanted = list(properties) if properties else None
        windows = [(_epoch_ms(start), _epoch_ms(end))]
        while windows:
            lo, hi = windows.pop()
            if lo >= hi:
                continue
            page = self._search_page(object_type, prop, lo, hi, properties=wanted, after=None)
            if page.total > SEARCH_RESULT_CAP:
                if hi - lo <= 1:
                    raise HubSpotError(
                        f"HubSpot search for {object_type} has {page.total} records modified in the same "
                        f"millisecond ({lo}); more than the {SEARCH_RESULT_CAP} search cap allows",
                        object_type=object_type,
                    )
                mid = (lo + hi) // 2
                log.info("HubSpot %s window %s..%s has %d results (> %d): splitting", object_type,
                         lo, hi, page.total, SEARCH_RESULT_CAP)
                windows.extend([(mid, hi), (lo, mid)])  # stack: the older half is read first
                continue
            while True:
                for rec in page.results:
                    yield _to_dict(rec)
                nxt = page.paging.next if page.paging else None
                if nxt is None or not nxt.after:
                    break
                page = self._search_page(object_type, prop, lo, hi, properties=wanted,
                                         after=nxt.after)

    def _search_page(self, object_type: str, prop: str, lo: int, hi: int, *,
                     properties: list[str] | None, after: str | None) -> Any:
        request = PublicObjectSearchRequest(
            filter_groups=[{"filters": [
                {"propertyName": prop, "operator": "GTE", "value": str(lo)},
                {"propertyName": prop, "operator": "LT", "value": str(hi)},
            ]}],
            sorts=[prop],
            properties=properties,
            limit=SEARCH_PAGE_MAX,
            after=after,
        )
        return self._call(f"search ({prop} in [{lo}, {hi}) after={after})",
                          lambda: self._api("search").do_search(object_type, request, **self._timeout),
                          object_type=object_type, search=True)

    def get_associations(self, from_type: str, ids: Sequence[str], to_type: str) -> dict[str, list[str]]:
        """``{from_id: [to_id, ...]}`` via the v4 batch read; ids without associations map to ``[]``."""
        out: dict[str, list[str]] = {str(i): [] for i in ids}
        pending: list[dict[str, Any]] = [{"id": str(i)} for i in ids]
        while pending:
            chunk, pending = pending[:ASSOC_BATCH_MAX], pending[ASSOC_BATCH_MAX:]
            body = BatchInputPublicFetchAssociationsBatchRequest(inputs=chunk)
            api = self._api("assoc_batch")
            resp = self._call("association batch read",
                              partial(api.get_page, from_type, to_type, body, **self._timeout),
                              object_type=f"{from_type}->{to_type}")
            for item in resp.results or []:
                fid = str(item._from.id)
                out.setdefault(fid, []).extend(str(t.to_object_id) for t in item.to or [])
                nxt = item.paging.next if item.paging else None
                if nxt is not None and nxt.after:
                    pending.append({"id": fid, "after": nxt.after})
            # 207 errors here mean "no associations" (NO_ASSOCIATIONS_FOUND): the empty list stands.
        return out

    # -- writes ---------------------------------------------------------------------------------------
    def batch_upsert(self, object_type: str, inputs: Sequence[Mapping[str, Any]],
                     id_property: str) -> BatchResult:
        """Create-or-update by a unique property, 100 inputs per request.

        Each input is ``{"id": <value of id_property>, "properties": {...}}`` or just a property map
        that contains ``id_property``. Upsert is idempotent, so retrying a failed request is safe.
        """
        prepared = []
        for inp in inputs:
            props = dict(inp.get("properties", inp))
            value = inp.get("id", props.get(id_property))
            if value in (None, ""):
                raise HubSpotError(f"batch upsert of {object_type}: an input has no {id_property!r} value",
                                   object_type=object_type)
            props.pop("id", None)
            prepared.append({"id": str(value), "properties": {k: _wire(v) for k, v in props.items()}})

        def build(chunk: list[tuple[int, dict[str, Any]]]) -> Any:
            return BatchInputSimplePublicObjectBatchInputUpsert(inputs=[
                SimplePublicObjectBatchInputUpsert(id=inp["id"], id_property=id_property,
                                                   properties=inp["properties"],
                                                   object_write_trace_id=str(i))
                for i, inp in chunk
            ])

        return self._batch("batch upsert", object_type, prepared,
                           lambda body: self._api("batch").upsert(object_type, body, **self._timeout), build)

    def batch_update(self, object_type: str, inputs: Sequence[Mapping[str, Any]]) -> BatchResult:
        """Update records by id (``{"id": ..., "properties": {...}}``), 100 inputs per request."""
        prepared = [{"id": str(inp["id"]), "properties": {k: _wire(v) for k, v in inp["properties"].items()}}
                    for inp in inputs]

        def build(chunk: list[tuple[int, dict[str, Any]]]) -> Any:
            return BatchInputSimplePublicObjectBatchInput(inputs=[
                SimplePublicObjectBatchInput(id=inp["id"], properties=inp["properties"],
                                             object_write_trace_id=str(i))
                for i, inp in chunk
            ])

        return self._batch("batch update", object_type, prepared,
                           lambda body: self._api("batch").update(object_type, body, **self._timeout), build)

    def _batch(self, what: str, object_type: str, prepared: list[dict[str, Any]],
               send: Callable[[Any], Any], build: Callable[[_Chunk], Any]) -> BatchResult:
        """Chunk to 100, send, and map 207 errors back to inputs through ``objectWriteTraceId``."""
        result = BatchResult()
        indexed = list(enumerate(prepared))
        for start in range(0, len(indexed), BATCH_MAX):
            chunk = indexed[start:start + BATCH_MAX]
            body = build(chunk)
            try:
                resp = self._call(f"{what} ({len(chunk)} inputs)", partial(send, body),
                                  object_type=object_type)
            except HubSpotAuthError:
                raise
            except HubSpotError as exc:
                if exc.status is None or exc.status >= 500 or exc.status == 429:
                    raise
                # A 4xx for the whole request (e.g. duplicate ids): every input of the chunk failed.
                result.failed.extend((inp, str(exc)) for _, inp in chunk)
                continue
            by_trace = dict(chunk)
            done: set[int] = set()
            for rec in resp.results or []:
                rec_dict = _to_dict(rec)
                trace = rec_dict.get("object_write_trace_id")
                if trace is not None and trace.isdigit():
                    done.add(int(trace))
                result.succeeded.append(rec_dict)
            for err in getattr(resp, "errors", None) or []:
                idx = self._error_index(err, chunk)
                reason = f"{err.category}: {err.message}"
                if idx is None:
                    log.warning("HubSpot %s of %s: unmatched error %s", what, object_type, reason)
                    continue
                done.add(idx)
                result.failed.append((by_trace[idx], reason))
            for idx, inp in chunk:  # neither a result nor an error: report, never drop silently
                if idx not in done:
                    result.failed.append((inp, "no result returned for this input"))
        if result.failed:
            log.warning("HubSpot %s of %s: %d succeeded, %d failed", what, object_type,
                        len(result.succeeded), len(result.failed))
        return result

    @staticmethod
    def _error_index(err: Any, chunk: list[tuple[int, dict[str, Any]]]) -> int | None:
        ctx = err.context or {}
        for trace in ctx.get("objectWriteTraceId") or []:
            if str(trace).isdigit() and int(trace) in dict(chunk):
                return int(trace)
        ids = set(ctx.get("ids") or ctx.get("id") or [])
        for idx, inp in chunk:
            if inp["id"] in ids:
                return idx
        return None

    def ensure_property(self, object_type: str, name: str, label: str, type: str = "string",
                        *, field_type: str | None = None, group_name: str | None = None,
                        has_unique_value: bool = False, description: str = "") -> dict[str, Any]:
        """Create a custom property unless it exists (idempotent; a lost-response retry sees 409)."""
        api = self._api("properties")
        try:
            found = self._call("get property", partial(api.get_by_name, object_type, name, **self._timeout),
                               object_type=object_type, object_id=name)
            return _to_dict(found)
        except HubSpotError as exc:
            if exc.status != 404:
                raise
        create = PropertyCreate(
            name=name, label=label, type=type, field_type=field_type or _FIELD_TYPES.get(type, "text"),
            group_name=group_name or f"{_SINGULAR.get(object_type, object_type)}information",
            has_unique_value=has_unique_value, description=description,
        )
        try:
            created = self._call("create property", lambda: api.create(object_type, create, **self._timeout),
                                 object_type=object_type, object_id=name)
        except HubSpotError as exc:
            if exc.status != 409:
                raise
            created = self._call("get property", lambda: api.get_by_name(object_type, name, **self._timeout),
                                 object_type=object_type, object_id=name)
        log.info("Created HubSpot %s property %s", object_type, name)
        return _to_dict(created)

    # -- UI ------------------------------------------------------------------------------------------
    def test_connection(self) -> tuple[bool, str]:
        """One cheap authenticated read; the message never contains the token."""
        try:
            api = self._api("objects")
            self._call("test connection", partial(api.get_page, "companies", limit=1, **self._timeout),
                       attempts=2)
        except HubSpotAuthError as exc:
            return False, (f"HubSpot rejected the private-app token (HTTP {exc.status}"
                           f"{', ' + exc.category if exc.category else ''}): check the connection's "
                           "password field and the app's scopes")
        except HubSpotError as exc:
            return False, str(exc)
        except Exception as exc:  # the UI button must answer, whatever went wrong
            return False, f"Could not reach HubSpot at {self.host}: {type(exc).__name__}"
        return True, f"Connected to HubSpot at {self.host}"

    # -- token introspection (m3sh preflight) -------------------------------------------------------
    def access_token_info(self) -> dict[str, Any]:
        """The private app token's account and scopes: ``{"userId", "hubId", "appId", "scopes"}``.

        ``POST /oauth/v2/private-apps/get/access-token-info`` with ``{"tokenKey": <token>}``, as
        documented at developers.hubspot.com/docs/api/private-apps ("View private app access token
        information"); it needs no scope. The official client has no typed API for it (its OAuth
        module covers OAuth tokens only, hubspot-api-php#171 asks for this one), so the request goes
        through the client's generated transport: same host, timeout, retries and errors as every
        other call here. The token travels in the body to the host the Authorization header already
        reaches, and is never logged (the transport logs no bodies).
        """
        api_client = self._api("objects").api_client
        token = self.get_conn().access_token

        def fetch() -> Any:
            return api_client.call_api(
                "/oauth/v2/private-apps/get/access-token-info", "POST",
                header_params={"Content-Type": "application/json", "Accept": "application/json"},
                body={"tokenKey": token}, response_types_map={200: "object"}, auth_settings=["oauth2"],
                _return_http_data_only=True, _request_timeout=self.timeout_s)

        info = self._call("access token info", fetch, attempts=3)
        return dict(info) if isinstance(info, dict) else {}

    def property_names(self, object_type: str) -> set[str]:
        """Names of the object type's properties (not archived), from the Properties API's list."""
        api = self._api("properties")
        result = self._call("list properties", partial(api.get_all, object_type, **self._timeout),
                            object_type=object_type)
        return {str(p.name) for p in getattr(result, "results", None) or []}


def _epoch_ms(value: dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def _wire(value: Any) -> str | None:
    """Property values are strings on the wire (api-notes A.3): bools lower-case, dates ISO."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dt.datetime):
        return str(_epoch_ms(value))
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)
