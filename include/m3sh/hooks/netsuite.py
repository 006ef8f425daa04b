"""NetSuite SuiteTalk REST hook: TBA-signed record API and SuiteQL with account-wide governance.

NetSuite allows a small number of concurrent requests per *account* (5 on a shared tier), shared
by every integration, and answers anything beyond with 429 ``CONCURRENCY_LIMIT_EXCEEDED``. So the
hook keeps one slot counter per account (:func:`account_slots`), shared by every thread and hook of a
process and, through Redis, by every worker: each waits for a slot instead of being rejected, and the few
429s left (other integrations using the same account) are retried with exponential backoff and
jitter. User errors (4xx) are never retried: they need a person, and :class:`NetSuiteError` says
which record and quotes NetSuite's own words so they can go to an "action needed" list.

Idempotency: a create (POST) that loses its response cannot be retried safely, so m3sh writes
with :meth:`NetSuiteHook.upsert_by_external_id` (``PUT .../eid:<externalId>``), which is retried on
timeouts and dropped connections and still yields exactly one record.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import zoneinfo
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlsplit

import requests
from airflow.sdk import BaseHook

from m3sh.exceptions import ExternalApiError, M3shError, RetryableError
from m3sh.hooks.base import absolute_url, backoff_wait, mask, retrying
from m3sh.hooks.limits import Slots, bucket_key, key_prefix, resolve_limiter_url, shared_slots

if TYPE_CHECKING:
    from tenacity import Retrying

log = logging.getLogger(__name__)

REST_PATH = "/services/rest"
RECORD_PATH = f"{REST_PATH}/record/v1"
SUITEQL_PATH = f"{REST_PATH}/query/v1/suiteql"
MAX_PAGE_SIZE = 1000
DEFAULT_CONCURRENCY = 5

# Codes that describe a problem with the *data* (or the NetSuite account's set-up) rather than
# with m3sh: a person must act, e.g. reopen a period or fix a customer's currency.
_NOT_ACTION_CODES = {"INVALID_PARAMETER", "INVALID_HEADER", "INVALID_REQUEST"}

# No response (or half of one): the request may or may not have been applied.
_TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)

def normalise_account_id(account_id: str) -> str:
    """The realm form (``1234567_SB1``), so ``1234567-sb1`` and ``1234567_sb1`` share a limiter."""
    return account_id.strip().upper().replace("-", "_")


def account_slots(account_id: str, limit: int = DEFAULT_CONCURRENCY, *, limiter_url: str | None = None,
                  limiter_prefix: str | None = None, lease_s: float = 90.0) -> Slots:
    """The in-flight limiter of one NetSuite account, shared by every thread and hook of this process
    and, through Redis (extra ``limiter_url``, see :mod:`m3sh.hooks.limits`), by every worker: the
    limit is NetSuite's per account. A slot's lease (a request's timeout plus a margin) frees the
    slot of a worker killed mid-request. The first caller in a process fixes the limit."""
    key = bucket_key(key_prefix(limiter_prefix), "netsuite", f"account:{normalise_account_id(account_id)}",
                     "requests", "slots")
    return shared_slots(key, limit, url=resolve_limiter_url(limiter_url), lease_s=lease_s)


_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")


def _pct(value: str) -> str:
    """RFC 5849 3.6 percent-encoding: everything but ALPHA, DIGIT, ``-._~`` (UTF-8 first). Most values
    (nonce, timestamp, keys, parameter names) need none, and the check is cheaper than ``quote``."""
    return value if _UNRESERVED.fullmatch(value) else quote(value, safe="~")


class TbaAuth(requests.auth.AuthBase):
    """OAuth 1.0a request signing as NetSuite's Token-Based Authentication wants it: HMAC-SHA256, the
    ``Authorization`` header with ``realm`` = account id, query parameters signed, the JSON body not.

    Hand-written rather than ``requests_oauthlib.OAuth1`` for CPU: oauthlib's generic signer (every
    signature type and body kind) cost about 0.9 ms per request, a third of the client's CPU per
    invoice, which on a 2-core worker decided the delivery rate instead of NetSuite's concurrency
    limit. This is the one profile NetSuite accepts, signed the same way; the sandbox verifies every
    request with oauthlib, and ``tests/unit/test_netsuite_tba.py`` compares the two signatures.
    """

    def __init__(self, consumer_key: str, consumer_secret: str, token_id: str, token_secret: str, realm: str,
                 *, nonce: Callable[[], str] = lambda: secrets.token_hex(16),
                 clock: Callable[[], float] = time.time) -> None:
        self.consumer_key = consumer_key
        self.token_id = token_id
        self.realm = realm
        self._key = f"{_pct(consumer_secret)}&{_pct(token_secret)}".encode()
        self._nonce = nonce
        self._clock = clock

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if r.body and "application/x-www-form-urlencoded" in str(r.headers.get("Content-Type", "")):
            # A form body's parameters are signed too (RFC 5849 3.4.1.3.1); m3sh sends JSON only.
            raise ValueError("TbaAuth signs JSON and bodiless requests only, not form-encoded bodies")
        parts = urlsplit(str(r.url))
        oauth = [("oauth_consumer_key", self.consumer_key), ("oauth_nonce", self._nonce()),
                 ("oauth_signature_method", "HMAC-SHA256"), ("oauth_timestamp", str(int(self._clock()))),
                 ("oauth_token", self.token_id), ("oauth_version", "1.0")]
        # RFC 5849 3.4.1.3: the query's parameters (decoded) and the oauth_* ones, each encoded, sorted.
        pairs = sorted((_pct(k), _pct(v)) for k, v in [*oauth, *parse_qsl(parts.query, keep_blank_values=True)])
        normalized = "&".join(f"{k}={v}" for k, v in pairs)
        # RFC 5849 3.4.1.2: scheme and host in lower case, the default port left out, no query.
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
        netloc = f"[{host}]" if ":" in host else host
        if port and (scheme, port) not in (("http", 80), ("https", 443)):
            netloc += f":{port}"
        uri = f"{scheme}://{netloc}{parts.path or '/'}".replace(" ", "%20")
        base = f"{str(r.method).upper()}&{_pct(uri)}&{_pct(normalized)}"
        signature = base64.b64encode(hmac.new(self._key, base.encode(), hashlib.sha256).digest()).decode()
        fields = ", ".join(f'{_pct(k)}="{_pct(v)}"' for k, v in [*oauth, ("oauth_signature", signature)])
        r.headers["Authorization"] = f'OAuth realm="{self.realm}", {fields}'
        return r


class NetSuiteError(ExternalApiError):
    """A failed NetSuite call, with NetSuite's error code and exact detail text.

    ``status`` is 0 for transport failures (timeout, dropped connection). The message never
    contains credentials: it is built only from the record coordinates and NetSuite's answer.
    Transient failures are raised as :class:`NetSuiteRetryableError` (also a ``RetryableError``).
    """

    status: int  # always set: 0 when no response came

    @classmethod
    def of(cls, *args: Any, retryable: bool = False, **kwargs: Any) -> NetSuiteError:
        """The error, as :class:`NetSuiteRetryableError` when ``retryable``."""
        kind = NetSuiteRetryableError if retryable else cls
        return kind(*args, retryable=retryable, **kwargs)

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        record_type: str | None = None,
        external_id: str | None = None,
        record_id: str | None = None,
        operation: str | None = None,
        error_path: str | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.record_type = record_type
        self.external_id = external_id
        self.record_id = record_id
        self.operation = operation
        self.error_path = error_path
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.system = "netsuite"
        self.entity = record_type
        # ExternalApiError's own message format would lose NetSuite's code and error path.
        M3shError.__init__(self, self._message())

    def _message(self) -> str:
        what = self.record_type or "request"
        if self.external_id is not None:
            what += f" with external id {self.external_id!r}"
        if self.record_id is not None:
            what += f" (internal id {self.record_id})"
        op = f"{self.operation} of " if self.operation else ""
        where = f" [field {self.error_path}]" if self.error_path else ""
        return f"NetSuite {op}{what} failed: HTTP {self.status} {self.code}{where}: {self.detail}"

    @property
    def is_closed_period(self) -> bool:
        text = self.detail.lower()
        return self.status == 400 and ("period is closed" in text or "closed period" in text)

    @property
    def is_action_needed(self) -> bool:
        """True when a person must fix data or NetSuite set-up; retrying or re-running won't help."""
        return self.status == 400 and self.code not in _NOT_ACTION_CODES

    @property
    def is_not_found(self) -> bool:
        return self.status == 404


class NetSuiteRetryableError(NetSuiteError, RetryableError):
    """429, 503, or a 5xx / lost response of an idempotent call: safe to repeat."""


@dataclass(frozen=True)
class _Settings:
    account_id: str
    base_url: str
    concurrency: int
    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float
    timeout_s: float
    limiter_url: str | None = None
    limiter_prefix: str | None = None
    timezone: str = "UTC"


# Invoices' payment state, as the analytics ``transaction`` record names it in NetSuite's Records
# Catalog (SuiteScript Records Browser 2021.1, analytics/record/transaction.html: foreignamountpaid,
# foreignamountunpaid "(Transaction Currency)", duedate, lastmodifieddate); BUILTIN.CF(status) gives the
# criteria form CustInvc:A (open) / CustInvc:B (paid in full), the raw column only the letter (third-party
# SuiteQL, e.g. Tim Dietrich's query library). Only invoices m3sh wrote: they carry an external id.
INVOICE_PAYMENTS_SELECT = (
    "SELECT t.id, t.tranid, t.externalid, t.foreigntotal, t.foreignamountpaid, t.foreignamountunpaid, "
    "BUILTIN.CF(t.status) AS status, BUILTIN.DF(t.currency) AS currency, "
    "TO_CHAR(t.duedate, 'YYYY-MM-DD') AS duedate, "
    "TO_CHAR(t.lastmodifieddate, 'YYYY-MM-DD HH24:MI:SS') AS lastmodified "
    "FROM transaction t WHERE t.type = 'CustInvc' AND t.externalid IS NOT NULL")
_TS_FORMAT = "YYYY-MM-DD HH24:MI:SS"


def invoice_payments_query(*, modified_from: dt.datetime | None = None, modified_until: dt.datetime | None = None,
                           due_from: dt.date | None = None, due_until: dt.date | None = None,
                           timezone: str = "UTC") -> str:
    """The SuiteQL of :meth:`NetSuiteHook.invoice_payment_rows` (pure, so it is tested without NetSuite).

    Invoices modified in ``[modified_from, modified_until)`` (either bound may be open), plus, when
    ``due_from``/``due_until`` are given, open invoices falling due in ``[due_from, due_until)``:
    becoming overdue changes no record, so no ``lastmodifieddate`` would show it. Date-times are
    written in the account's time zone (``timezone``), as SuiteQL compares them.
    """
    zone = zoneinfo.ZoneInfo(timezone)

    def ts(value: dt.datetime) -> str:
        if value.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone: give an aware datetime")
        local = value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
        return f"TO_DATE('{local}', '{_TS_FORMAT}')"

    def day(value: dt.date) -> str:
        return f"TO_DATE('{value.isoformat()}', 'YYYY-MM-DD')"

    modified = [f"t.lastmodifieddate >= {ts(modified_from)}"] if modified_from else []
    modified += [f"t.lastmodifieddate < {ts(modified_until)}"] if modified_until else []
    due = []
    if due_from is not None and due_until is not None:
        due = ["BUILTIN.CF(t.status) = 'CustInvc:A'", f"t.duedate >= {day(due_from)}", f"t.duedate < {day(due_until)}"]
    where = ""
    if modified and due:
        where = f" AND (({' AND '.join(modified)}) OR ({' AND '.join(due)}))"
    elif modified:
        where = f" AND {' AND '.join(modified)}"
    return INVOICE_PAYMENTS_SELECT + where + " ORDER BY t.id"


class NetSuiteHook(BaseHook):
    """Talks to one NetSuite account over SuiteTalk REST with Token-Based Authentication.

    Connection: ``login`` = consumer key, ``password`` = consumer secret, extras ``account_id``,
    ``token_id``, ``token_secret``; optional ``host`` (base URL override, e.g. the sandbox) and
    extras ``concurrency`` (default 5), ``max_attempts`` (6), ``backoff_base_s`` (0.5),
    ``backoff_max_s`` (30), ``timeout_s`` (60), ``timezone`` (the account's, as SuiteQL date-times
    are written; default ``UTC``).

    :param netsuite_conn_id: the Airflow connection to use.
    """

    conn_name_attr = "netsuite_conn_id"
    default_conn_name = "netsuite_default"
    conn_type = "netsuite"
    hook_name = "NetSuite"

    def __init__(self, netsuite_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.netsuite_conn_id = netsuite_conn_id
        self._session_lock = threading.Lock()
        self._session: requests.Session | None = None
        self._send_kwargs: dict[str, Any] = {}
        self._retries: dict[str, Retrying] = {}

    # -- connection ---------------------------------------------------------------------------
    @cached_property
    def _credentials(self) -> tuple[str, str, str, str, _Settings]:
        conn = self.get_connection(self.netsuite_conn_id)
        extra = conn.extra_dejson
        consumer_secret = conn.password or ""
        token_secret = str(extra.get("token_secret") or "")
        for secret in (consumer_secret, token_secret):
            if secret:
                mask(secret)
        account_id = str(extra.get("account_id") or "")
        required = {
            "login (consumer key)": conn.login,
            "password (consumer secret)": consumer_secret,
            "extra.account_id": account_id,
            "extra.token_id": extra.get("token_id"),
            "extra.token_secret": token_secret,
        }
        missing = [name for name, value in required.items() if not value]
        if missing:
            raise ValueError(f"NetSuite connection {self.netsuite_conn_id!r} is missing {', '.join(missing)}")
        timezone = str(extra.get("timezone") or "UTC")
        try:
            zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"NetSuite connection {self.netsuite_conn_id!r}: extra.timezone {timezone!r} is not an "
                             "IANA time zone (e.g. America/Los_Angeles)") from None
        # NetSuite's own host per account (1234567_SB1 -> 1234567-sb1.suitetalk.api.netsuite.com).
        default = f"https://{account_id.lower().replace('_', '-')}.suitetalk.api.netsuite.com"
        host = absolute_url(conn.host, default).removesuffix(REST_PATH)
        settings = _Settings(
            account_id=normalise_account_id(account_id),
            base_url=host,
            concurrency=int(extra.get("concurrency") or DEFAULT_CONCURRENCY),
            max_attempts=int(extra.get("max_attempts") or 6),
            backoff_base_s=float(extra.get("backoff_base_s") or 0.5),
            backoff_max_s=float(extra.get("backoff_max_s") or 30.0),
            timeout_s=float(extra.get("timeout_s") or 60.0),
            limiter_url=extra.get("limiter_url") or None,
            limiter_prefix=extra.get("limiter_prefix") or None,
            timezone=timezone,
        )
        return str(conn.login), consumer_secret, str(extra["token_id"]), token_secret, settings

    @property
    def settings(self) -> _Settings:
        return self._credentials[4]

    @property
    def account_id(self) -> str:
        return self.settings.account_id

    def get_conn(self) -> requests.Session:
        """A session signing every request with OAuth 1.0a HMAC-SHA256, realm = account id."""
        with self._session_lock:
            if self._session is None:
                key, secret, token, token_secret, settings = self._credentials
                session = requests.Session()
                session.auth = TbaAuth(key, secret, token, token_secret, realm=settings.account_id)
                session.headers.update({"Accept": "application/json", "Content-Type": "application/json"})
                adapter = requests.adapters.HTTPAdapter(pool_maxsize=max(10, settings.concurrency * 2))
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                # requests re-reads the whole environment (proxy variables, CA bundle) for every call
                # it makes through ``Session.request``: with a worker's hundred-odd variables that was
                # a third of a request's client CPU. A worker's environment does not change under a
                # running task, so it is read once per session; every request goes to ``base_url``.
                self._send_kwargs = dict(session.merge_environment_settings(settings.base_url, {}, None, None, None))
                self._session = session
            return self._session

    @cached_property
    def _slots(self) -> Slots:
        """The account's in-flight limiter, looked up once per hook: resolving the limiter URL reads
        Airflow's configuration, too slow to repeat for every request."""
        s = self.settings
        return account_slots(s.account_id, s.concurrency, limiter_url=s.limiter_url,
                             limiter_prefix=s.limiter_prefix, lease_s=s.timeout_s + 30)

    # -- transport ----------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        operation: str,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        record_type: str | None = None,
        external_id: str | None = None,
        record_id: str | None = None,
    ) -> requests.Response:
        ctx = {"record_type": record_type, "external_id": external_id, "record_id": record_id,
               "operation": operation}
        retry = self._retries.get(operation)
        if retry is None:
            # One policy per operation, built once: tenacity keeps each call's state per thread.
            s = self.settings
            retry = self._retries[operation] = retrying(
                "NetSuite", operation, attempts=s.max_attempts, log=log,
                wait=backoff_wait(s.backoff_base_s, s.backoff_max_s,
                                  lambda e: e.retry_after_s if isinstance(e, NetSuiteError) else None),
                retryable=lambda e: isinstance(e, NetSuiteError) and e.retryable)
        response: requests.Response = retry(
            self._send, method, path, idempotent, ctx, params=params, json=json, headers=headers
        )
        return response

    def _send(
        self,
        method: str,
        path: str,
        idempotent: bool,
        ctx: dict[str, Any],
        *,
        params: dict[str, Any] | None,
        json: Any,
        headers: dict[str, str] | None,
    ) -> requests.Response:
        session = self.get_conn()
        settings = self.settings
        # Encoding and OAuth signing (pure-Python HMAC over the request) happen before taking the
        # account's slot, so the slot is held only for the round trip: with the slot held for the
        # CPU work too, throughput fell ~20 % short of the concurrency limit's bound. A fresh
        # nonce/timestamp per attempt: each retry is prepared (and signed) again. Prepared directly
        # rather than through ``Session.prepare_request``, whose merging of cookie jars and settings
        # the session never uses (TBA sets no cookies) and cost as much as the signing.
        prepared = requests.PreparedRequest()
        prepared.prepare(method=method, url=settings.base_url + path, params=params, json=json,
                         headers={**session.headers, **headers} if headers else session.headers, auth=session.auth)
        # The slot is held for one attempt only, never across a backoff sleep.
        with self._slots.slot():
            try:
                resp = session.send(prepared, timeout=settings.timeout_s, **self._send_kwargs)
            except _TRANSPORT_ERRORS as exc:
                # A lost response to a non-idempotent call may mean the write happened: don't repeat it.
                raise NetSuiteError.of(0, "CONNECTION_ERROR", f"{type(exc).__name__}: no response from NetSuite",
                                       retryable=idempotent, **ctx) from exc
        log.debug("NetSuite %s %s -> %s", method, path, resp.status_code)
        if resp.status_code < 400:
            return resp
        raise self._error(resp, idempotent, ctx)

    @staticmethod
    def _error(resp: requests.Response, idempotent: bool, ctx: dict[str, Any]) -> NetSuiteError:
        code, detail, error_path = "", resp.reason or "", None
        try:
            body = resp.json()
            first = (body.get("o:errorDetails") or [{}])[0]
            code = str(first.get("o:errorCode") or "")
            detail = str(first.get("detail") or body.get("title") or detail)
            error_path = first.get("o:errorPath")
        except (ValueError, AttributeError, IndexError):
            detail = resp.text[:500] or detail
        status = resp.status_code
        # 429 and 503 mean "not processed": safe to repeat even a create. Other 5xx may hide a
        # committed write, so only idempotent calls repeat them.
        retryable = status in {429, 503} or (status >= 500 and idempotent)
        retry_after = resp.headers.get("Retry-After")
        return NetSuiteError.of(
            status, code or f"HTTP_{status}", detail, error_path=error_path, retryable=retryable,
            retry_after_s=float(retry_after) if retry_after and retry_after.isdigit() else None, **ctx,
        )

    # -- records ------------------------------------------------------------------------------
    @staticmethod
    def _eid(external_id: str) -> str:
        return "eid:" + quote(external_id, safe="-_.~")

    @staticmethod
    def _id_from_location(resp: requests.Response) -> str:
        location = resp.headers.get("Location", "")
        return location.rstrip("/").rsplit("/", 1)[-1]

    @staticmethod
    def _replace_for(body: dict[str, Any], replace: tuple[str, ...] | None) -> tuple[str, ...]:
        """Sublists sent in full replace the stored lines; otherwise NetSuite *adds* them again."""
        if replace is not None:
            return replace
        return tuple(k for k, v in body.items() if isinstance(v, dict) and "items" in v)

    def get_record(
        self, record_type: str, record_id: str, *, expand_sub_resources: bool = True,
        fields: list[str] | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"expandSubResources": str(expand_sub_resources).lower()}
        if fields:
            params["fields"] = ",".join(fields)
        resp = self._request("GET", f"{RECORD_PATH}/{record_type}/{record_id}", idempotent=True,
                             operation="read", params=params, record_type=record_type, record_id=record_id)
        result: dict[str, Any] = resp.json()
        return result

    def get_by_external_id(self, record_type: str, external_id: str, **kwargs: Any) -> dict[str, Any] | None:
        """The record with this external id, or None when NetSuite has none."""
        try:
            return self.get_record(record_type, self._eid(external_id), **kwargs)
        except NetSuiteError as err:
            if err.is_not_found:
                return None
            err.external_id = external_id
            raise

    def create_record(self, record_type: str, body: dict[str, Any]) -> str:
        """POST a new record and return its internal id (from ``Location``). Not retried on timeouts."""
        resp = self._request("POST", f"{RECORD_PATH}/{record_type}", idempotent=False, operation="create",
                             json=body, record_type=record_type, external_id=body.get("externalId"))
        return self._id_from_location(resp)

    def upsert_by_external_id(
        self,
        record_type: str,
        external_id: str,
        body: dict[str, Any],
        *,
        replace: tuple[str, ...] | None = None,
    ) -> str:
        """Create or update the record keyed by ``external_id``; returns its internal id.

        Safe to retry after any failure: repeating it converges on one record with this body.
        """
        payload = {k: v for k, v in body.items() if k != "externalId"}
        sublists = self._replace_for(payload, replace)
        params = {"replace": ",".join(sublists)} if sublists else None
        resp = self._request("PUT", f"{RECORD_PATH}/{record_type}/{self._eid(external_id)}", idempotent=True,
                             operation="upsert", params=params, json=payload, record_type=record_type,
                             external_id=external_id)
        return self._id_from_location(resp)

    def patch_record(
        self,
        record_type: str,
        record_id: str,
        body: dict[str, Any],
        *,
        replace: tuple[str, ...] | None = None,
    ) -> None:
        """Update only the given fields (``record_id`` may be ``eid:...``)."""
        sublists = self._replace_for(body, replace)
        params = {"replace": ",".join(sublists)} if sublists else None
        self._request("PATCH", f"{RECORD_PATH}/{record_type}/{record_id}", idempotent=True,
                      operation="update", params=params, json=body, record_type=record_type,
                      record_id=record_id, external_id=body.get("externalId"))

    def delete_record(self, record_type: str, record_id: str) -> None:
        self._request("DELETE", f"{RECORD_PATH}/{record_type}/{record_id}", idempotent=True,
                      operation="delete", record_type=record_type, record_id=record_id)

    # -- SuiteQL ------------------------------------------------------------------------------
    def suiteql(self, query: str, *, page_size: int = MAX_PAGE_SIZE, max_rows: int | None = None
                ) -> Iterator[dict[str, Any]]:
        """Yield every row of a SuiteQL query, paging with ``limit``/``offset`` while ``hasMore``.

        Use a unique ``ORDER BY`` so pages don't overlap. Values are strings as NetSuite sends them.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        offset, yielded = 0, 0
        while True:
            resp = self._request("POST", SUITEQL_PATH, idempotent=True, operation="SuiteQL query",
                                 params={"limit": page_size, "offset": offset}, json={"q": query},
                                 headers={"Prefer": "transient"})
            page = resp.json()
            for item in page.get("items", []):
                yield {k: v for k, v in item.items() if k != "links"}
                yielded += 1
                if max_rows is not None and yielded >= max_rows:
                    return
            count = int(page.get("count", 0))
            if not page.get("hasMore") or count == 0:
                return
            offset += count

    def invoice_payment_rows(self, *, modified_from: dt.datetime | None = None,
                             modified_until: dt.datetime | None = None, due_from: dt.date | None = None,
                             due_until: dt.date | None = None, page_size: int = MAX_PAGE_SIZE
                             ) -> Iterator[dict[str, Any]]:
        """Payment state of the account's invoices m3sh wrote, changed in a window, paged (see
        :func:`invoice_payments_query`); rows as NetSuite sends them (strings, nulls omitted):
        ``id, tranid, externalid, foreigntotal, foreignamountpaid, foreignamountunpaid, status
        (CustInvc:A|B), currency, duedate (YYYY-MM-DD), lastmodified``."""
        query = invoice_payments_query(modified_from=modified_from, modified_until=modified_until,
                                       due_from=due_from, due_until=due_until, timezone=self.settings.timezone)
        yield from self.suiteql(query, page_size=page_size)

    def test_connection(self) -> tuple[bool, str]:
        try:
            rows = list(self.suiteql("SELECT id, name FROM subsidiary ORDER BY id", page_size=1, max_rows=1))
        except NetSuiteError as err:
            return False, str(err)
        except (ValueError, requests.RequestException) as err:
            return False, f"{type(err).__name__}: {err}"
        return True, f"Connected to NetSuite account {self.account_id} ({len(rows)} subsidiary visible)"


