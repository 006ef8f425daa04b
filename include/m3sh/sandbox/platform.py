"""The "customer platform" emulator: a paged usage API, and sinks for webhooks, Slack and email.

* ``GET /api/usage?since=&until=&cursor=&limit=`` — the product platform's own usage feed (paged
  JSON ``{"data": [...], "next_cursor": ...}``), bearer-token auth, for HTTP usage feeds.
* ``POST /slack/{token path}`` — a Slack incoming-webhook stand-in (answers ``ok`` like Slack).
* ``POST /hooks/{name}`` — any signed webhook (invoice delivery, alerts); stored with headers.
* An SMTP catcher (aiosmtpd) on ``port + 1`` records alert emails.

Everything received is visible at ``GET /_sandbox/state`` so tests can assert what was sent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import threading
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from m3sh.sandbox import credentials as cred
from m3sh.sandbox.common import Emulator
from m3sh.sandbox.seed import demo_company

PLATFORM_TOKEN = "sandbox-platform-token-61"  # noqa: S105 - sandbox credential
MAX_PAGE = 500


def platform_usage_rows(days: int = 3, today: dt.date | None = None) -> list[dict[str, Any]]:
    """The platform's own events: one 'seats' reading per active customer per day, last ``days`` days."""
    company = demo_company()
    today = today or dt.datetime.now(dt.UTC).date()
    rows = []
    for back in range(days, 0, -1):
        day = today - dt.timedelta(days=back)
        for i, c in enumerate(company.customers):
            if not (c.contract_start <= day <= c.contract_end):
                continue
            rows.append({"event_id": f"plat-{day:%Y%m%d}-{c.key}", "account": c.key, "meter": "api_calls",
                         "ts": f"{day}T06:00:00Z", "quantity": 100 + (i * 37 + day.toordinal()) % 900,
                         "region": "eu-west-1" if c.currency == "EUR" else "us-east-1"})
    return rows


class PlatformEmulator(Emulator):
    name = "platform"

    def __init__(self) -> None:
        super().__init__()
        self.usage: list[dict[str, Any]] = []
        self.webhooks: list[dict[str, Any]] = []
        self.slack: list[dict[str, Any]] = []
        self.emails: list[dict[str, Any]] = []
        self.app = self._build()
        self._smtp_started = False
        self.admin_actions["usage"] = self._set_usage

    def reset(self, seed: str = "empty") -> None:
        self.usage = platform_usage_rows() if seed == "demo" else []
        self.webhooks, self.slack, self.emails = [], [], []
        self._start_smtp()

    def snapshot(self) -> dict[str, Any]:
        return {"usage_rows": len(self.usage), "webhooks": self.webhooks, "slack": self.slack,
                "emails": self.emails}

    def _set_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        self.usage = list(body.get("rows", []))
        return {"usage_rows": len(self.usage)}

    def _start_smtp(self) -> None:
        """SMTP catcher on port+1 (aiosmtpd: a maintained server rather than a hand-written one)."""
        port = os.environ.get("M3SH_PLATFORM_SMTP_PORT")
        if self._smtp_started or not port:
            return
        from aiosmtpd.controller import Controller

        emulator = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with emulator.lock:
                    emulator.emails.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                            "data": envelope.content.decode("utf-8", "replace")})
                return "250 Message accepted for delivery"

        Controller(Handler(), hostname="127.0.0.1", port=int(port)).start()
        self._smtp_started = True

    def _build(self) -> FastAPI:
        app = FastAPI(title="m3sh sandbox: customer platform", docs_url=None, redoc_url=None)
        lock = threading.Lock()

        @app.get("/api/usage")
        def usage(cursor: int = 0, limit: int = 100, since: str | None = None, until: str | None = None,
                  authorization: str | None = Header(None)) -> dict[str, Any]:
            if authorization != f"Bearer {PLATFORM_TOKEN}":
                raise HTTPException(401, "invalid or missing bearer token")
            if not 1 <= limit <= MAX_PAGE:
                raise HTTPException(400, f"limit must be 1..{MAX_PAGE}")
            # The platform returns whatever it stores, malformed rows included (m3sh must dead-letter
            # them); rows without a usable timestamp are kept when no window is asked for.
            def in_window(r: dict[str, Any]) -> bool:
                ts = str(r.get("ts") or "") if isinstance(r, dict) else ""
                return (not since or ts >= since) and (not until or ts < until)

            rows = [r for r in self.usage if (not since and not until) or in_window(r)]
            page = rows[cursor:cursor + limit]
            nxt = cursor + limit if cursor + limit < len(rows) else None
            return {"data": page, "next_cursor": nxt}

        @app.post("/slack/{path:path}")
        async def slack(path: str, request: Request) -> PlainTextResponse:
            body = await request.json()
            with lock:
                self.slack.append({"path": path, "text": body.get("text"), "body": body})
            return PlainTextResponse("ok")

        @app.post("/hooks/{name}")
        async def hook(name: str, request: Request) -> JSONResponse:
            raw = await request.body()
            ts = request.headers.get("x-m3sh-timestamp", "")
            sig = request.headers.get("x-m3sh-signature", "")
            expected = hmac.new(cred.WEBHOOK_SECRET.encode(), ts.encode() + b"." + raw, hashlib.sha256).hexdigest()
            verified = bool(sig) and hmac.compare_digest(sig, expected)
            if not verified:
                return JSONResponse({"error": "invalid signature"}, status_code=401)
            idem = request.headers.get("idempotency-key")
            with lock:
                if idem and any(w.get("idempotency_key") == idem for w in self.webhooks if w["name"] == name):
                    return JSONResponse({"status": "duplicate ignored"}, status_code=200)
                self.webhooks.append({"name": name, "body": raw.decode(), "idempotency_key": idem,
                                      "verified": verified})
            return JSONResponse({"status": "received"}, status_code=202)

        return app
