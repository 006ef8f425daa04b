"""NetSuite's ``nsError`` body and the exception the emulator raises to produce it.

Every failure, including auth and governance, must come back in the same RFC 9457-like shape
(``type``, ``title``, ``status``, ``o:errorDetails``) because the m3sh hook and any third-party
client parse ``o:errorDetails[0]["o:errorCode"]`` to decide between retrying, failing the task and
putting the record on an "action needed" list.

Checked against NetSuite's "Error Handling in REST Web Services"
(https://docs.oracle.com/en/cloud/saas/netsuite/ns-online-help/section_156570709583.html): ``status``,
``o:errorDetails[]`` with ``detail``, ``o:errorCode`` and the optional ``o:errorPath`` (JSON path
into the body), ``o:urlPath`` (the part of the URL), ``o:errorHeader`` and ``o:errorQueryParam``.
Two differences from that page's examples, both deliberate: its examples carry the older
``https://www.w3.org/Protocols/rfc2616/...`` ``type`` URIs, while this emulator answers with the RFC
9110 ones (which a live account sends today is unverified); no client should key on ``type``. And the page's invalid-
reference example uses ``INVALID_CONTENT``, where the emulator keeps ``INVALID_KEY_OR_REF`` (what
third-party clients and mocks record for references, crm-erp.md B.7) with the same ``o:errorPath``.
"""

from __future__ import annotations

from typing import Any

_TYPES: dict[int, tuple[str, str]] = {
    400: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.1", "Bad Request"),
    401: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.2", "Unauthorized"),
    403: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.4", "Forbidden"),
    404: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.5", "Not Found"),
    405: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.6", "Method Not Allowed"),
    429: ("https://www.rfc-editor.org/rfc/rfc6585.html#section-4", "Too Many Requests"),
    500: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.6.1", "Internal Server Error"),
    502: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.6.3", "Bad Gateway"),
    503: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.6.4", "Service Unavailable"),
    504: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.6.5", "Gateway Timeout"),
}

# Default error code per status, used for injected faults whose message carries no code.
DEFAULT_CODES: dict[int, str] = {
    400: "USER_ERROR",
    401: "INVALID_LOGIN",
    403: "INSUFFICIENT_PERMISSION",
    404: "NONEXISTENT_ID",
    405: "INVALID_REQUEST",
    429: "CONCURRENCY_LIMIT_EXCEEDED",
    500: "UNEXPECTED_ERROR",
    502: "SERVICE_UNAVAILABLE",
    503: "SERVICE_UNAVAILABLE",
    504: "SERVICE_UNAVAILABLE",
}

INVALID_LOGIN_DETAIL = (
    "Invalid login attempt. For more details, see the Login Audit Trail in the NetSuite UI at "
    "Setup > Users/Roles > User Management > View Login Audit Trail."
)
CONCURRENCY_DETAIL = "Concurrent request limit exceeded. Request blocked."


def ns_error_body(
    status: int,
    code: str | None,
    detail: str,
    *,
    error_path: str | None = None,
    query_param: str | None = None,
    header: str | None = None,
    url_path: str | None = None,
) -> dict[str, Any]:
    """Build an ``nsError`` body exactly as SuiteTalk REST returns it."""
    type_uri, title = _TYPES.get(
        status, ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15", "Error")
    )
    item: dict[str, Any] = {"detail": detail, "o:errorCode": code or DEFAULT_CODES.get(status, "USER_ERROR")}
    if error_path:
        item["o:errorPath"] = error_path
    if query_param:
        item["o:errorQueryParam"] = query_param
    if header:
        item["o:errorHeader"] = header
    if url_path:
        item["o:urlPath"] = url_path
    return {"type": type_uri, "title": title, "status": status, "o:errorDetails": [item]}


class NetSuiteApiError(Exception):
    """Raised anywhere inside the emulator; the app turns it into an ``nsError`` response."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        error_path: str | None = None,
        query_param: str | None = None,
        header: str | None = None,
        url_path: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.error_path = error_path
        self.query_param = query_param
        self.header = header
        self.url_path = url_path

    def body(self) -> dict[str, Any]:
        return ns_error_body(self.status, self.code, self.detail, error_path=self.error_path,
                             query_param=self.query_param, header=self.header, url_path=self.url_path)


def user_error(detail: str, error_path: str | None = None) -> NetSuiteApiError:
    return NetSuiteApiError(400, "USER_ERROR", detail, error_path=error_path)


def bad_ref(field: str, value: object) -> NetSuiteApiError:
    return NetSuiteApiError(
        400,
        "INVALID_KEY_OR_REF",
        f"Invalid Field Value {value} for the following field: {field}",
        error_path=field,
    )


def not_found(record_type: str, key: str) -> NetSuiteApiError:
    return NetSuiteApiError(
        404,
        "NONEXISTENT_ID",
        f"The record instance does not exist. Provide a valid record instance ID. "
        f"(record type {record_type}, key {key})",
    )
