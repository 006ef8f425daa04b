"""The NetSuite emulator: accounts, admin actions (governance, latency, closed periods) and state.

Admin actions (``POST /_sandbox/<name>``, see :mod:`m3sh.sandbox.common`):

* ``concurrency`` ``{"account": "1234567", "limit": 5, "reset_max": false}`` sets an account's
  concurrency limit (all accounts when ``account`` is omitted) and returns the governance figures.
* ``latency`` ``{"ms": 20, "account": ...}`` makes request handling take ``ms`` while holding an
  in-flight slot, so client-side concurrency control becomes measurable (``max_in_flight``).
* ``close_period`` ``{"account": "1234567", "before": "YYYY-MM-DD"}`` closes every accounting
  period before that date (``null`` reopens everything).
* ``account_fault`` ``{"account": "eu", "status": 503}`` makes every request of one account answer
  that status (the generic ``faults`` cannot tell accounts apart: they share a port and paths);
  ``{"account": "eu"}`` (no status) ends it.
* ``pay_invoice`` ``{"account": "1234567", "invoice": "<internal id> | eid:<externalId>",
  "amount": 60.0, "date": "YYYY-MM-DD"}`` applies a customer payment to an invoice, in full when
  ``amount`` is omitted, in part otherwise: the invoice's ``amountPaid``/``amountRemaining``,
  status (Open / Paid In Full) and ``lastModifiedDate`` follow, as in NetSuite, and SuiteQL's
  ``transaction`` table shows it (``foreignamountpaid``/``foreignamountunpaid``, a ``CustPymt``
  row). Real payments are entered in NetSuite by finance; m3sh only reads them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from m3sh.sandbox import credentials as cred
from m3sh.sandbox.common import Emulator, Receive, Scope, Send
from m3sh.sandbox.netsuite import seed_data
from m3sh.sandbox.netsuite.auth import HOST_ACCOUNT_SCOPE_KEY, TbaVerifier, normalise_account
from m3sh.sandbox.netsuite.errors import CONCURRENCY_DETAIL, DEFAULT_CODES, NetSuiteApiError, ns_error_body
from m3sh.sandbox.netsuite.routes import build_app
from m3sh.sandbox.netsuite.state import ITEM_TYPES, PAYMENT_TYPES, TRANSACTION_TYPES, AccountState

DEFAULT_CONCURRENCY = 5


class AccountHost:
    """An ASGI app as one account's host: tags each request's scope with the account it addresses."""

    def __init__(self, app: Any, account_id: str) -> None:
        self.app, self.account = app, normalise_account(account_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, HOST_ACCOUNT_SCOPE_KEY: self.account}
        await self.app(scope, receive, send)


class NetSuiteEmulator(Emulator):
    """Every account of :data:`m3sh.sandbox.credentials.NETSUITE`, side by side in one process."""

    name = "netsuite"

    def __init__(self) -> None:
        super().__init__()
        self.verifier = TbaVerifier(cred.NETSUITE)
        self.accounts: dict[str, AccountState] = {}
        self.admin_actions.update(
            concurrency=self._admin_concurrency,
            latency=self._admin_latency,
            close_period=self._admin_close_period,
            account_fault=self._admin_account_fault,
            pay_invoice=self._admin_pay_invoice,
        )
        # One host per account, as <account>.suitetalk.api.netsuite.com in production: the main port
        # is the default account's host, each other account listens on its own port (its label is
        # the listener role). A request signed for another account's realm fails there, as it would
        # at NetSuite.
        app = build_app(self)
        self.account_apps = {label: AccountHost(app, creds.account_id) for label, creds in cred.NETSUITE.items()}
        self.app = self.account_apps["default"]
        self.reset("empty")

    def listener_apps(self) -> dict[str, Any]:
        return {label: host for label, host in self.account_apps.items() if label != "default"}

    # -- Emulator contract --------------------------------------------------------------------
    def reset(self, seed: str = "empty") -> None:
        with self.lock:
            self.verifier.reset()
            self.accounts = {}
            for label, creds in cred.NETSUITE.items():
                acct = AccountState(account_id=creds.account_id, label=label, credentials=creds)
                acct.governance.limit = DEFAULT_CONCURRENCY
                # Reference data exists in every account (an empty NetSuite still has its company).
                currencies = seed_data.currencies(seed_data.SUBSIDIARIES[label]["base"])
                for c in currencies:
                    acct.records["currency"][c["id"]] = c
                sub = seed_data.subsidiary(label, currencies)
                acct.records["subsidiary"][sub["id"]] = sub
                if seed == "demo":
                    for record_type, item in seed_data.items():
                        acct.records[record_type][item["id"]] = dict(item)
                self.accounts[normalise_account(creds.account_id)] = acct

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accounts": {}, "auth_failures": list(self.verifier.failures),
                               "limits_enabled": self.limits_enabled}
        for acct in self.accounts.values():
            recs = acct.records
            out["accounts"][acct.account_id] = {
                "label": acct.label,
                "closed_before": acct.closed_before.isoformat() if acct.closed_before else None,
                "governance": acct.governance.snapshot(),
                "subsidiaries": list(recs["subsidiary"].values()),
                "currencies": list(recs["currency"].values()),
                "items": [dict(r, recordType=rt) for rt in ITEM_TYPES for r in recs[rt].values()],
                "customers": list(recs["customer"].values()),
                "invoices": list(recs["invoice"].values()),
                "creditMemos": list(recs["creditMemo"].values()),
                "customerPayments": list(recs["customerPayment"].values()),
                "counts": {rt: len(recs[rt]) for rt in ("customer", *TRANSACTION_TYPES, *PAYMENT_TYPES)},
            }
        return out

    def error_body(self, status: int, message: str) -> Any:
        detail = CONCURRENCY_DETAIL if status == 429 else message
        return ns_error_body(status, DEFAULT_CODES.get(status), detail)

    # -- admin actions ------------------------------------------------------------------------
    def account(self, key: str) -> AccountState:
        """An account by id (any case, ``-`` or ``_``) or by its credentials label (``eu``)."""
        norm = normalise_account(key)
        if norm in self.accounts:
            return self.accounts[norm]
        for acct in self.accounts.values():
            if acct.label == key:
                return acct
        raise ValueError(f"unknown NetSuite account {key!r}; known: {sorted(self.accounts)}")

    def _targets(self, body: dict[str, Any]) -> list[AccountState]:
        key = body.get("account")
        return [self.account(str(key))] if key else list(self.accounts.values())

    def _admin_concurrency(self, body: dict[str, Any]) -> dict[str, Any]:
        targets = self._targets(body)
        for acct in targets:
            if "limit" in body:
                limit = int(body["limit"])
                if limit < 1:
                    raise ValueError("limit must be at least 1")
                acct.governance.limit = limit
            if body.get("reset_max"):
                acct.governance.max_in_flight = 0
                acct.governance.rejected_429 = 0
        return {a.account_id: a.governance.snapshot() for a in targets}

    def _admin_latency(self, body: dict[str, Any]) -> dict[str, Any]:
        ms = int(body.get("ms", 0))
        if ms < 0:
            raise ValueError("ms must be >= 0")
        targets = self._targets(body)
        for acct in targets:
            acct.governance.latency_ms = ms
        return {a.account_id: a.governance.latency_ms for a in targets}

    def _admin_account_fault(self, body: dict[str, Any]) -> dict[str, Any]:
        status = body.get("status")
        if status is not None and not 400 <= int(status) <= 599:
            raise ValueError("status must be an HTTP error status (400..599)")
        targets = self._targets(body)
        for acct in targets:
            acct.governance.fault_status = int(status) if status is not None else None
        return {a.account_id: a.governance.fault_status for a in targets}

    def _admin_close_period(self, body: dict[str, Any]) -> dict[str, Any]:
        if "account" not in body:
            raise ValueError("close_period needs 'account'")
        acct = self.account(str(body["account"]))
        before = body.get("before")
        acct.closed_before = dt.date.fromisoformat(before) if before else None
        return {"account": acct.account_id, "closed_before": before}

    def _admin_pay_invoice(self, body: dict[str, Any]) -> dict[str, Any]:
        if "account" not in body or not body.get("invoice"):
            raise ValueError("pay_invoice needs 'account' and 'invoice' (internal id or eid:<externalId>)")
        acct = self.account(str(body["account"]))
        try:
            return acct.apply_payment(str(body["invoice"]), body.get("amount"), body.get("date"))
        except NetSuiteApiError as exc:
            raise ValueError(exc.detail) from None
