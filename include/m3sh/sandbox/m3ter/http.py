"""Small request/response helpers shared by the route modules."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from m3sh.sandbox.m3ter.schemas import ApiError

ORG = "/organizations/{orgId}"


async def read_json(request: Request, *, optional: bool = False) -> Any:
    raw = await request.body()
    if not raw:
        if optional:
            return {}
        raise ApiError(400, "Request body is required")
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "Request body is not valid JSON") from None


def ok(body: Any) -> Response:
    """JSON response without FastAPI's encoder pass (bodies are already JSON-ready dicts)."""
    return Response(json.dumps(body), media_type="application/json")


def as_bool(value: str | None, name: str) -> bool | None:
    if value is None or value == "":
        return None
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise ApiError(400, f"{name}: must be true or false")
