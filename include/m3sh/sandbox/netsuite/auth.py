"""OAuth 1.0a Token-Based Authentication (TBA) exactly as NetSuite verifies it.

The signature is recomputed with ``oauthlib`` (the library ``requests-oauthlib`` signs with), so
the emulator accepts precisely what a real client produces and nothing a careless one might:
HMAC-SHA256 only, ``realm`` outside the base string, URL query parameters inside it, a JSON body
outside it. A nonce may be used once per account within the timestamp window, and the timestamp
must lie within five minutes of the server clock, which is what makes replayed requests fail.

Failures always answer NetSuite's single generic ``INVALID_LOGIN`` body (a real account never says
*why*); the precise reason is kept in :attr:`TbaVerifier.failures` for tests and debugging.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from oauthlib.oauth1.rfc5849 import signature as oauth_sig
from oauthlib.oauth1.rfc5849 import utils as oauth_utils

from m3sh.sandbox.credentials import NetSuiteCredentials
from m3sh.sandbox.netsuite.errors import INVALID_LOGIN_DETAIL, NetSuiteApiError

TIMESTAMP_WINDOW_S = 300


def normalise_account(account_id: str) -> str:
    """``1234567-eu`` (host form) and ``1234567_EU`` (realm form) name the same account."""
    return account_id.strip().upper().replace("-", "_")


HOST_ACCOUNT_SCOPE_KEY = "m3sh.netsuite_account"  # ASGI scope key set by the account's listener


@dataclass(frozen=True)
class SignedRequest:
    """What the verifier needs from an HTTP request, independent of the web framework."""

    method: str
    scheme: str
    host: str
    raw_path: str
    query_string: str
    authorization: str | None
    body: bytes = b""
    # The account whose host (port) the request reached, when the listener is bound to one.
    host_account: str | None = None


class TbaVerifier:
    """Checks TBA headers for a set of accounts and remembers nonces per account."""

    def __init__(
        self, accounts: Mapping[str, NetSuiteCredentials], window_s: int = TIMESTAMP_WINDOW_S
    ) -> None:
        self.accounts = {normalise_account(c.account_id): c for c in accounts.values()}
        self.window_s = window_s
        self._nonces: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self._lock = threading.Lock()
        self.failures: collections.deque[dict[str, object]] = collections.deque(maxlen=100)

    def reset(self) -> None:
        with self._lock:
            self._nonces.clear()
            self.failures.clear()

    def _fail(self, account: str | None, reason: str) -> NetSuiteApiError:
        self.failures.append({"account": account, "reason": reason, "t": time.time()})
        return NetSuiteApiError(401, "INVALID_LOGIN", INVALID_LOGIN_DETAIL)

    @staticmethod
    def parse_header(authorization: str | None) -> dict[str, str] | None:
        if not authorization or not authorization.lower().startswith("oauth "):
            return None
        try:
            pairs = oauth_utils.parse_authorization_header(authorization)
        except (ValueError, IndexError):
            return None
        return {k: oauth_utils.unescape(v) if k.startswith("oauth_") else v for k, v in pairs}

    def account_for(self, req: SignedRequest) -> str:
        """The account a request addresses: the host's first label if it is an account, else realm."""
        params = self.parse_header(req.authorization) or {}
        realm = normalise_account(params["realm"]) if params.get("realm") else None
        host_account = req.host_account or normalise_account(req.host.split(":")[0].split(".")[0])
        if host_account in self.accounts:
            if realm is not None and realm != host_account:
                raise self._fail(host_account, f"realm {realm} does not match host account {host_account}")
            return host_account
        if realm is None:
            raise self._fail(None, "no OAuth realm and the host names no account")
        if realm not in self.accounts:
            raise self._fail(realm, f"unknown account {realm}")
        return realm

    def verify(self, account: str, req: SignedRequest, now: float | None = None) -> None:
        """Raise a 401 ``NetSuiteApiError`` unless ``req`` carries a valid, fresh TBA signature."""
        creds = self.accounts[account]
        params = self.parse_header(req.authorization)
        if params is None:
            raise self._fail(account, "missing or non-OAuth Authorization header")
        required = ("oauth_consumer_key", "oauth_token", "oauth_signature_method", "oauth_timestamp",
                    "oauth_nonce", "oauth_signature")
        missing = [p for p in required if not params.get(p)]
        if missing:
            raise self._fail(account, f"missing OAuth parameters {missing}")
        if params["oauth_signature_method"] != "HMAC-SHA256":
            raise self._fail(account, f"unsupported signature method {params['oauth_signature_method']}")
        if params.get("oauth_version", "1.0") != "1.0":
            raise self._fail(account, "oauth_version must be 1.0")
        if not hmac.compare_digest(params["oauth_consumer_key"], creds.consumer_key):
            raise self._fail(account, "unknown consumer key")
        if not hmac.compare_digest(params["oauth_token"], creds.token_id):
            raise self._fail(account, "unknown token id")
        try:
            ts = int(params["oauth_timestamp"])
        except ValueError:
            raise self._fail(account, "timestamp is not an integer") from None
        now = time.time() if now is None else now
        if abs(now - ts) > self.window_s:
            raise self._fail(account, f"timestamp {ts} outside the {self.window_s}s window")

        uri = oauth_sig.base_string_uri(f"{req.scheme}://{req.host}{req.raw_path}")
        collected = oauth_sig.collect_parameters(
            uri_query=req.query_string,
            headers={"Authorization": req.authorization or ""},
            exclude_oauth_signature=True,
            with_realm=False,
        )
        normalized = oauth_sig.normalize_parameters(collected)
        base = oauth_sig.signature_base_string(req.method.upper(), uri, normalized)
        expected = oauth_sig.sign_hmac_sha256(base, creds.consumer_secret, creds.token_secret)
        if not hmac.compare_digest(expected, params["oauth_signature"]):
            raise self._fail(account, "signature mismatch")
        body_hash = params.get("oauth_body_hash")
        if body_hash is not None:
            digest = base64.b64encode(hashlib.sha1(req.body).digest()).decode()  # noqa: S324 - spec'd
            if not hmac.compare_digest(digest, body_hash):
                raise self._fail(account, "oauth_body_hash does not match the body")

        with self._lock:
            seen = self._nonces[account]
            # Nonces are kept in arrival order, so the expired ones are at the front: pruning stops at
            # the first one still fresh (a scan of every nonce per request made the emulator's cost
            # grow with the requests of the last ten minutes). A nonce kept longer only stays refused.
            while seen:
                oldest = next(iter(seen))
                if now - seen[oldest] <= 2 * self.window_s:
                    break
                del seen[oldest]
            if params["oauth_nonce"] in seen:
                raise self._fail(account, "nonce already used")
            seen[params["oauth_nonce"]] = now
