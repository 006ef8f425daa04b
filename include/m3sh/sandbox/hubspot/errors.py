"""HubSpot's error bodies, so the official client and the hook parse emulator errors like real ones.

Shapes follow the ``Error`` / ``StandardError`` schemas of the CRM OpenAPI files plus the
``"status": "error"`` field real responses carry (api-notes A.10).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

CATEGORY_BY_STATUS = {
    400: "VALIDATION_ERROR",
    401: "INVALID_AUTHENTICATION",
    403: "MISSING_SCOPES",
    404: "OBJECT_NOT_FOUND",
    409: "CONFLICT",
    429: "RATE_LIMITS",
}


def error_body(
    status: int,
    message: str,
    category: str | None = None,
    *,
    sub_category: str | None = None,
    context: dict[str, list[str]] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A top-level (non-batch) HubSpot error body."""
    body: dict[str, Any] = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category or CATEGORY_BY_STATUS.get(status, "INTERNAL_ERROR"),
    }
    if sub_category:
        body["subCategory"] = sub_category
    if context:
        body["context"] = context
    if errors:
        body["errors"] = errors
    return body


def rate_limit_body(policy: str, message: str) -> dict[str, Any]:
    """The 429 body HubSpot sends (api-notes A.9); clients key on ``errorType`` and ``policyName``."""
    body = error_body(429, message, "RATE_LIMITS")
    body.update({"errorType": "RATE_LIMIT", "policyName": policy, "requestId": str(uuid.uuid4())})
    return body


class HubSpotHTTPError(Exception):
    """Raised inside route handlers; the app turns it into a HubSpot-shaped JSON response."""

    def __init__(
        self,
        status: int,
        message: str,
        category: str | None = None,
        *,
        sub_category: str | None = None,
        context: dict[str, list[str]] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(
            status, message, category, sub_category=sub_category, context=context, errors=errors
        )


class RecordError(Exception):
    """One record of a batch failed; becomes a ``StandardError`` entry of a 207 response."""

    def __init__(
        self,
        status: int,
        message: str,
        category: str,
        *,
        sub_category: str | None = None,
        details: list[dict[str, Any]] | None = None,
        context: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.category = category
        self.sub_category = sub_category
        self.details = details or []
        self.context = context or {}

    def standard_error(self, extra_context: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """``StandardError`` (required: status, category, message, errors, context, links)."""
        out: dict[str, Any] = {
            "status": "error",
            "category": self.category,
            "message": self.message,
            "errors": self.details,
            "context": {**self.context, **(extra_context or {})},
            "links": {},
            "id": str(uuid.uuid4()),
        }
        if self.sub_category:
            out["subCategory"] = self.sub_category
        return out

    def to_http(self) -> HubSpotHTTPError:
        return HubSpotHTTPError(
            self.status, self.message, self.category, sub_category=self.sub_category,
            context=self.context or None, errors=self.details or None,
        )


def invalid_properties(problems: list[dict[str, str]]) -> RecordError:
    """HubSpot's property-validation error: the message embeds a JSON list of per-property results.

    Real responses read ``Property values were not valid: [{"isValid":false,"message":"Property
    \\"foo\\" does not exist","error":"PROPERTY_DOESNT_EXIST","name":"foo",...}]``; clients grep
    the error code out of the message, so it is reproduced verbatim.
    """
    entries = [
        {
            "isValid": False,
            "message": p["message"],
            "error": p["error"],
            "name": p["name"],
            "localizedErrorMessage": p["message"],
        }
        for p in problems
    ]
    return RecordError(
        400,
        "Property values were not valid: " + json.dumps(entries, separators=(",", ":")),
        "VALIDATION_ERROR",
        details=[
            {"message": p["message"], "code": p["error"], "in": p["name"],
             "context": {"propertyName": [p["name"]]}}
            for p in problems
        ],
        context={"propertyName": [p["name"] for p in problems]},
    )
