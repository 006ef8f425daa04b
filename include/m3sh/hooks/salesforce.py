"""Salesforce access for m3sh: the official Airflow ``SalesforceHook``, plus incremental reads and writes.

There is no hand-written Salesforce client here. :func:`salesforce_hook` returns the provider's
``SalesforceHook`` (with one change: m3sh's pinned API version as its default, see below), and
:class:`SalesforceSync` only composes SOQL and calls the simple-salesforce client the hook owns, so
auth (SOAP password + security token, OAuth, JWT), session refresh and error parsing stay the
provider's.

API version
-----------
m3sh pins the Salesforce API version (:data:`API_VERSION`): the SOAP login goes to
``/services/Soap/u/<version>`` and every REST call to ``/services/data/v<version>/`` on the
instance. Without the pin, a connection with no ``version`` extra would get simple-salesforce's
``DEFAULT_API_VERSION``, which moves with that library's releases, so an upgrade could change the
API (and its behaviour) m3sh talks to. A connection's extra ``version`` still overrides the pin.

Reaching the sandbox (or any plain-http Salesforce stand-in)
-----------------------------------------------------------
simple-salesforce always builds ``https://`` URLs and logs in against the hard-coded
``https://login.salesforce.com`` (crm-erp.md C.2), then sends every REST call to the instance the
login response's ``serverUrl`` names. The documented way to send it elsewhere without patching
anything is the hook's ``session`` argument: if the connection's extra has ``sandbox_hosts`` (a map
of production host -> base URL; ``runner.py`` writes it for the sandbox, whose login host and
instance listen on separate ports as in production), the hook gets a ``requests.Session`` whose
adapter sends each request to its host's base URL, keeping path and query, and refuses a host the
map does not name. Without the extra, a plain ``SalesforceHook`` is returned, so pointing m3sh at a
real org only means changing the Airflow connection.

Incremental reads use ``SystemModstamp`` (changes by automation and system jobs too, unlike
``LastModifiedDate``) over a half-open window ``[start, end)`` so consecutive data intervals
neither overlap nor leave gaps, ordered by ``SystemModstamp, Id`` so paging is stable.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from airflow.providers.salesforce.hooks.salesforce import SalesforceHook
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter
from simple_salesforce import exceptions as sf_exc

from m3sh.exceptions import ExternalApiError, RetryableError

log = logging.getLogger(__name__)

SANDBOX_EXTRA = "sandbox_hosts"
# The API version m3sh is written and tested against (the sandbox emulates it); see the module docstring.
API_VERSION = "59.0"
MIN_BATCH_SIZE = 200
MAX_BATCH_SIZE = 2000


class _HostMapAdapter(HTTPAdapter):
    """Sends each request to the base URL (scheme + host:port) its host maps to, keeping path and query.

    A host the map does not name is refused rather than guessed: a request for the wrong host is a
    bug that production would show too.
    """

    def __init__(self, hosts: Mapping[str, str], **kwargs: Any) -> None:
        self._targets: dict[str, tuple[str, str]] = {}
        for host, base_url in hosts.items():
            parts = urlsplit(str(base_url))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{SANDBOX_EXTRA}[{host!r}] must be an absolute http(s) URL, got {base_url!r}")
            self._targets[host.lower()] = (parts.scheme, parts.netloc)
        super().__init__(**kwargs)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        target = self._targets.get((parts.hostname or "").lower())
        if target is None:
            raise requests.ConnectionError(
                f"{SANDBOX_EXTRA} names no base URL for host {parts.hostname!r} (it has {sorted(self._targets)})")
        request.url = urlunsplit((*target, parts.path, parts.query, parts.fragment))
        return super().send(request, *args, **kwargs)


def sandbox_session(hosts: Mapping[str, str]) -> requests.Session:
    """A session that routes simple-salesforce's https traffic host by host to ``hosts``' base URLs."""
    session = requests.Session()
    adapter = _HostMapAdapter(hosts)
    session.mount("https://", adapter)
    # http:// too, in case a redirect or absolute URL in a response uses it.
    session.mount("http://", adapter)
    return session


class _PinnedSalesforceHook(SalesforceHook):
    """The provider's hook, defaulting the API version to :data:`API_VERSION` instead of
    simple-salesforce's (the hook reads every extra through ``_get_field``)."""

    def _get_field(self, extras: dict[str, Any], field_name: str) -> Any:
        value = super()._get_field(extras, field_name)
        return value or API_VERSION if field_name == "version" else value


def salesforce_hook(conn_id: str = "salesforce_default") -> SalesforceHook:
    """The provider's ``SalesforceHook`` for ``conn_id`` at m3sh's pinned API version (unless the
    connection names one), routed to the sandbox when the extra says so."""
    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson or {}
    if "sandbox_base_url" in extra:
        raise ValueError(f"connection {conn_id!r}: the extra 'sandbox_base_url' was replaced by "
                         f"'{SANDBOX_EXTRA}' (login and instance hosts); `m3sh sandbox up` writes it")
    hosts = extra.get(SANDBOX_EXTRA)
    if not hosts:
        return _PinnedSalesforceHook(salesforce_conn_id=conn_id)
    if not isinstance(hosts, Mapping):
        raise ValueError(f"connection {conn_id!r}: extra '{SANDBOX_EXTRA}' must map hosts to base URLs")
    log.info("Salesforce connection %s is routed to %s", conn_id, sorted(hosts.values()))
    return _PinnedSalesforceHook(salesforce_conn_id=conn_id, session=sandbox_session(hosts))


# ----------------------------------------------------------------------------------- errors
class SalesforceSyncError(ExternalApiError):
    """A Salesforce call failed; names the operation, sObject, record and Salesforce's ``errorCode``.

    Subclasses of :class:`~m3sh.exceptions.RetryableError` (server errors, dropped connections)
    are worth an Airflow retry; the others (bad data, missing record, exhausted daily allowance,
    bad credentials) are not.
    """

    def __init__(self, operation: str, sobject: str, record_id: str | None, error_code: str,
                 message: str, *, status: int | None = None) -> None:
        self.operation = operation
        self.sobject = sobject
        self.error_code = error_code
        super().__init__("Salesforce", f"{operation} failed: {error_code}: {message}", entity=sobject,
                         record_id=record_id, status=status)

    @property
    def retryable(self) -> bool:
        return isinstance(self, RetryableError)


class SalesforceNotFoundError(SalesforceSyncError):
    """The record (or external id) does not exist, or was deleted."""


class SalesforceValidationError(SalesforceSyncError):
    """Salesforce rejected the request content: bad SOQL, unknown or read-only field, bad value."""


class SalesforceAuthError(SalesforceSyncError):
    """Login failed or the session could not be refreshed: fix the connection."""


class SalesforceLimitError(SalesforceSyncError):
    """The org's API allowance is used up (403 ``REQUEST_LIMIT_EXCEEDED``); retrying now won't help."""


class SalesforceUnavailableError(SalesforceSyncError, RetryableError):
    """A server-side or transport failure; safe to retry."""


def _first_error(content: Any) -> tuple[str, str]:
    """Salesforce's error body is an array ``[{message, errorCode, fields}]``; be lenient."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("errorCode", "UNKNOWN")), str(content[0].get("message", ""))
    if isinstance(content, dict):
        return str(content.get("errorCode", "UNKNOWN")), str(content.get("message", ""))
    return "UNKNOWN", str(content)[:200]


def translate_error(exc: Exception, operation: str, sobject: str,
                    record_id: str | None = None) -> SalesforceSyncError:
    """Map simple-salesforce's and requests' exceptions to m3sh's, without URLs or credentials."""
    if isinstance(exc, sf_exc.SalesforceAuthenticationFailed):
        return SalesforceAuthError(operation, sobject, record_id, str(exc.code), str(exc.message))
    if isinstance(exc, sf_exc.SalesforceError):
        code, message = _first_error(exc.content)
        cls: type[SalesforceSyncError]
        if isinstance(exc, sf_exc.SalesforceResourceNotFound):
            cls = SalesforceNotFoundError
        elif isinstance(exc, sf_exc.SalesforceMalformedRequest | sf_exc.SalesforceMoreThanOneRecord):
            cls = SalesforceValidationError
        elif isinstance(exc, sf_exc.SalesforceExpiredSession):
            cls = SalesforceAuthError
        elif isinstance(exc, sf_exc.SalesforceRefusedRequest):
            cls = SalesforceLimitError if code == "REQUEST_LIMIT_EXCEEDED" else SalesforceValidationError
        else:
            cls = SalesforceUnavailableError
        return cls(operation, sobject, record_id, code, message, status=exc.status)
    if isinstance(exc, requests.RequestException):
        return SalesforceUnavailableError(operation, sobject, record_id, type(exc).__name__,
                                          "connection to Salesforce failed")
    raise TypeError(f"not a Salesforce error: {type(exc).__name__}") from exc


_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*$")
_TRANSLATED = (sf_exc.SalesforceError, sf_exc.SalesforceAuthenticationFailed, requests.RequestException)


# ------------------------------------------------------------------------------------- SOQL
def soql_datetime(value: dt.datetime) -> str:
    """An unquoted SOQL datetime literal in UTC. Naive datetimes are rejected: they are ambiguous."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"SOQL datetimes must be timezone-aware, got naive {value!r}")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def soql_literal(value: Any) -> str:
    """A SOQL literal for ``value``; strings are quoted and escaped so callers can't inject SOQL."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dt.datetime):
        return soql_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value).replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{text}'"


def strip_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    """Drop the REST ``attributes`` envelope, also from nested relationship records."""
    return {k: strip_attributes(v) if isinstance(v, Mapping) else v
            for k, v in record.items() if k != "attributes"}


@dataclass(frozen=True)
class UpsertResult:
    id: str | None
    created: bool


class SalesforceSync:
    """Incremental reads and idempotent writes on top of the provider hook's simple-salesforce client."""

    def __init__(self, hook: SalesforceHook | None = None, conn_id: str = "salesforce_default",
                 batch_size: int | None = None) -> None:
        self.hook = hook or salesforce_hook(conn_id)
        if batch_size is not None and not MIN_BATCH_SIZE <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be within {MIN_BATCH_SIZE}..{MAX_BATCH_SIZE}")
        self.batch_size = batch_size

    @property
    def client(self) -> Any:
        """The hook's ``simple_salesforce.Salesforce`` (logs in on first use)."""
        try:
            return self.hook.get_conn()
        except _TRANSLATED as exc:
            raise translate_error(exc, "login", "org") from None

    # ---------------------------------------------------------------------------- reads
    def query(self, soql: str, sobject: str = "query",
              include_deleted: bool = False) -> Iterator[dict[str, Any]]:
        """Stream records page by page (``query`` + ``query_more``), never holding the full result."""
        headers = {"Sforce-Query-Options": f"batchSize={self.batch_size}"} if self.batch_size else {}
        client = self.client
        try:
            page = client.query(soql, include_deleted=include_deleted, headers=headers)
            while True:
                for record in page["records"]:
                    yield strip_attributes(record)
                if page.get("done", True) or not page.get("nextRecordsUrl"):
                    return
                page = client.query_more(page["nextRecordsUrl"], identifier_is_url=True, headers=headers)
        except _TRANSLATED as exc:
            raise translate_error(exc, "query", sobject) from None

    def query_modified(self, sobject: str, fields: Iterable[str], start: dt.datetime, end: dt.datetime,
                       extra_where: str | None = None, *,
                       include_deleted: bool = False) -> Iterator[dict[str, Any]]:
        """Records of ``sobject`` whose ``SystemModstamp`` lies in ``[start, end)``, oldest first.

        ``extra_where`` is ANDed in parentheses; build its values with :func:`soql_literal`.
        ``include_deleted`` uses ``queryAll`` so deletions in the window come back too (with
        ``IsDeleted`` true; a delete bumps ``SystemModstamp``), letting a sync propagate them.
        """
        if end <= start:
            raise ValueError(f"empty window: end {end!r} is not after start {start!r}")
        wanted = list(dict.fromkeys(["Id", *fields, "SystemModstamp"]))
        bad = [n for n in [sobject, *wanted] if not _NAME_RE.match(n)]
        if bad:
            raise ValueError(f"not valid Salesforce object/field names: {bad}")
        where = f"SystemModstamp >= {soql_datetime(start)} AND SystemModstamp < {soql_datetime(end)}"
        if extra_where:
            where += f" AND ({extra_where})"
        # Names are checked against _NAME_RE and values are SOQL literals, so this is not injectable.
        soql = f"SELECT {', '.join(wanted)} FROM {sobject} WHERE {where} ORDER BY SystemModstamp, Id"  # noqa: S608
        return self.query(soql, sobject=sobject, include_deleted=include_deleted)

    def get_record(self, sobject: str, record_id: str, fields: Iterable[str] | None = None) -> dict[str, Any]:
        """One record by Id; raises :class:`SalesforceNotFoundError` if missing or deleted."""
        kwargs: dict[str, Any] = {"params": {"fields": ",".join(fields)}} if fields else {}
        try:
            return strip_attributes(getattr(self.client, sobject).get(record_id, **kwargs))
        except _TRANSLATED as exc:
            raise translate_error(exc, "read", sobject, record_id) from None

    # ---------------------------------------------------------------------------- writes
    def update_record(self, sobject: str, record_id: str, fields: Mapping[str, Any]) -> None:
        """PATCH ``fields`` onto an existing record."""
        try:
            getattr(self.client, sobject).update(record_id, dict(fields))
        except _TRANSLATED as exc:
            raise translate_error(exc, "update", sobject, record_id) from None

    def create_record(self, sobject: str, fields: Mapping[str, Any]) -> str:
        """Insert a record and return its Id (prefer :meth:`upsert_by_external_id` for re-runnable tasks)."""
        try:
            result = getattr(self.client, sobject).create(dict(fields))
        except _TRANSLATED as exc:
            raise translate_error(exc, "create", sobject) from None
        return str(result["id"])

    def upsert_by_external_id(self, sobject: str, ext_field: str, value: str,
                              fields: Mapping[str, Any]) -> UpsertResult:
        """Insert or update by an external id field: re-running a task never duplicates records."""
        key = f"{ext_field}/{quote(str(value), safe='')}"
        record = f"{ext_field}={value}"
        try:
            response = getattr(self.client, sobject).upsert(key, dict(fields), raw_response=True)
        except _TRANSLATED as exc:
            raise translate_error(exc, "upsert", sobject, record) from None
        body: dict[str, Any] = {}
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = {}
        return UpsertResult(id=body.get("id"), created=response.status_code == 201)

    # ---------------------------------------------------------------------------- metadata
    def describe(self, sobject: str) -> dict[str, Any]:
        """The sObject's describe (``GET sobjects/{sobject}/describe``, Salesforce REST API
        "sObject Describe"): ``fields[]`` with ``name``, ``type``, ``createable``, ``updateable``,
        ``externalId``, ``referenceTo``, ``picklistValues``... A missing object (or one the user
        cannot see) raises :class:`SalesforceNotFoundError`."""
        if not _NAME_RE.match(sobject):
            raise ValueError(f"not a valid Salesforce object name: {sobject!r}")
        try:
            result: dict[str, Any] = getattr(self.client, sobject).describe()
        except _TRANSLATED as exc:
            raise translate_error(exc, "describe", sobject) from None
        return result
