"""SOAP ``login()`` (what simple-salesforce sends for username + password + security token), the
OAuth 2.0 refresh token flow (what published connectors log in with) and sessions.

The request is a small, fixed SOAP envelope, so the two elements needed are read with a regular
expression instead of an XML parser: the standard-library parsers are unsafe on untrusted input
and ``defusedxml`` is not a dependency. Responses mirror the partner WSDL's ``loginResponse`` and
``LoginFault`` closely enough for simple-salesforce's ``soap_login`` (which reads ``sessionId``,
``serverUrl``, ``sf:exceptionCode`` and ``sf:exceptionMessage`` by tag name).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, unescape

from m3sh.sandbox import credentials as cred

ORG_ID = "00D5g000004NWTHEA4"
USER_ID = "0055g00000A1b2CAAR"
INSTANCE_HOST = cred.SALESFORCE_INSTANCE_HOST


@dataclass(frozen=True)
class OrgLogin:
    """One org's integration user and where its login response sends the client."""

    name: str
    org_name: str
    org_id: str
    user_id: str
    username: str
    password: str
    security_token: str
    instance_host: str


ORGS: tuple[OrgLogin, ...] = (
    OrgLogin("default", "Northwind Cloud", ORG_ID, USER_ID, cred.SALESFORCE_USERNAME, cred.SALESFORCE_PASSWORD,
             cred.SALESFORCE_SECURITY_TOKEN, INSTANCE_HOST),
    OrgLogin("acme", "Acme Analytics", "00D8d000007ACMEEA2", "0058d00000B7x9QAAR", cred.SALESFORCE2_USERNAME,
             cred.SALESFORCE2_PASSWORD, cred.SALESFORCE2_SECURITY_TOKEN, cred.SALESFORCE2_INSTANCE_HOST),
)
DEFAULT_ORG = ORGS[0]
_ENTITIES = {"&quot;": '"', "&apos;": "'"}


def _element(body: str, name: str) -> str | None:
    m = re.search(rf"<(?:[\w-]+:)?{name}>(.*?)</(?:[\w-]+:)?{name}>", body, re.DOTALL)
    return unescape(m.group(1), _ENTITIES) if m else None


def check_login(body: str, org: OrgLogin = DEFAULT_ORG) -> bool:
    """True when the envelope carries ``org``'s user and ``password + security token``."""
    username = _element(body, "username")
    password = _element(body, "password")
    if username is None or password is None:
        return False
    want_user = org.username.lower().encode()
    ok_user = hmac.compare_digest(username.strip().lower().encode(), want_user)
    expected = org.password + org.security_token
    ok_password = hmac.compare_digest(password.encode(), expected.encode())
    return ok_user and ok_password


def new_session_id(org: OrgLogin = DEFAULT_ORG) -> str:
    return f"{org.org_id[:15]}!AQ4AQ{secrets.token_urlsafe(72)}"


def login_response(session_id: str, version: str, org: OrgLogin = DEFAULT_ORG) -> str:
    server = f"https://{org.instance_host}/services/Soap/u/{version}/{org.org_id[:15]}"
    meta = f"https://{org.instance_host}/services/Soap/m/{version}/{org.org_id[:15]}"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns="urn:partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<soapenv:Body><loginResponse><result>"
        f"<metadataServerUrl>{meta}</metadataServerUrl>"
        "<passwordExpired>false</passwordExpired><sandbox>false</sandbox>"
        f"<serverUrl>{server}</serverUrl>"
        f"<sessionId>{escape(session_id)}</sessionId>"
        f"<userId>{org.user_id}</userId>"
        "<userInfo>"
        "<currencySymbol>$</currencySymbol>"
        f"<organizationId>{org.org_id}</organizationId>"
        "<organizationMultiCurrency>true</organizationMultiCurrency>"
        f"<organizationName>{escape(org.org_name)}</organizationName>"
        "<sessionSecondsValid>7200</sessionSecondsValid>"
        f"<userEmail>{escape(org.username)}</userEmail>"
        "<userFullName>Integration User</userFullName>"
        f"<userId>{org.user_id}</userId>"
        f"<userName>{escape(org.username)}</userName>"
        "<userTimeZone>GMT</userTimeZone>"
        "</userInfo>"
        "</result></loginResponse></soapenv:Body></soapenv:Envelope>"
    )


def login_fault(code: str = "INVALID_LOGIN",
                message: str = "Invalid username, password, security token; or user locked out.") -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<soapenv:Body><soapenv:Fault>"
        f"<faultcode>sf:{code}</faultcode>"
        f"<faultstring>{code}: {escape(message)}</faultstring>"
        '<detail><sf:LoginFault xsi:type="sf:LoginFault">'
        f"<sf:exceptionCode>{code}</sf:exceptionCode>"
        f"<sf:exceptionMessage>{escape(message)}</sf:exceptionMessage>"
        "</sf:LoginFault></detail>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    )


# ------------------------------------------------------------------------ OAuth 2.0 refresh token flow
# REST API Developer Guide / Salesforce Help, "OAuth 2.0 Refresh Token Flow for Renewed Sessions":
# POST /services/oauth2/token (login host or My Domain), form-encoded ``grant_type=refresh_token``,
# ``refresh_token``, ``client_id``, ``client_secret`` (or HTTP Basic), optional ``format``; the
# answer is JSON with ``access_token``, ``signature``, ``scope``, ``instance_url``, ``id``,
# ``token_type``, ``issued_at``. Errors are OAuth's ``{"error", "error_description"}`` with status
# 400; the codes and descriptions below are those Salesforce's "OAuth 2.0 Endpoint Errors" table
# lists for this flow (``unsupported_grant_type``/"grant type not supported",
# ``invalid_client_id``/"client identifier invalid", ``invalid_client``/"invalid client
# credentials", ``invalid_grant``/"expired access/refresh token"). Only Salesforce's prose backs
# this: it publishes no machine-readable document of its OAuth endpoints.
OAUTH_PARAMS = frozenset({"grant_type", "refresh_token", "client_id", "client_secret", "format"})
OAUTH_SCOPE = "api refresh_token"


@dataclass(frozen=True)
class ConnectedApp:
    """A connected app's consumer key/secret and the refresh token one org's user granted it."""

    org: str
    client_id: str
    client_secret: str
    refresh_token: str


CONNECTED_APPS: tuple[ConnectedApp, ...] = (
    ConnectedApp("default", cred.SALESFORCE_CLIENT_ID, cred.SALESFORCE_CLIENT_SECRET, cred.SALESFORCE_REFRESH_TOKEN),
)


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.status = status
        self.body = {"error": error, "error_description": description}


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def refresh_token_grant(form: Mapping[str, list[str]], authorization: str = "") -> ConnectedApp:
    """The connected app (and so the org) a refresh token request is for, or an :class:`OAuthError`.

    Stricter than Salesforce on purpose: a parameter the flow does not define is refused
    (``invalid_request``, the emulator's wording), and ``format`` other than ``json`` (documented:
    ``urlencoded``, ``xml``) is refused as not implemented, never answered in another format."""
    unknown = sorted(set(form) - OAUTH_PARAMS)
    if unknown:
        raise OAuthError("invalid_request", f"parameter {unknown[0]!r} is not part of the refresh token flow "
                                            "implemented by the m3sh sandbox")
    repeated = sorted(k for k, v in form.items() if len(v) > 1)
    if repeated:
        raise OAuthError("invalid_request", f"duplicate parameter {repeated[0]!r}")
    value = {k: v[0] for k, v in form.items()}
    if value.get("format", "json") != "json":
        raise OAuthError("invalid_request", f"format {value['format']!r} is documented by Salesforce but not "
                                            "implemented by the m3sh sandbox (json only)")
    if value.get("grant_type") != "refresh_token":
        raise OAuthError("unsupported_grant_type", "grant type not supported")
    client_id, client_secret = value.get("client_id", ""), value.get("client_secret", "")
    if authorization.lower().startswith("basic "):
        try:
            client_id, _, client_secret = base64.b64decode(authorization[6:]).decode().partition(":")
        except ValueError:
            raise OAuthError("invalid_client", "invalid client credentials") from None
    app = next((a for a in CONNECTED_APPS if _same(a.client_id, client_id)), None)
    if app is None:
        raise OAuthError("invalid_client_id", "client identifier invalid")
    if not _same(app.client_secret, client_secret):
        raise OAuthError("invalid_client", "invalid client credentials")
    if not _same(app.refresh_token, value.get("refresh_token", "")):
        raise OAuthError("invalid_grant", "expired access/refresh token")
    return app


def token_response(access_token: str, app: ConnectedApp, org: OrgLogin) -> dict[str, Any]:
    """The refresh token flow's answer. No ``refresh_token``: Salesforce returns a new one only when
    the connected app rotates refresh tokens, which this one does not."""
    identity = f"https://{cred.SALESFORCE_LOGIN_HOST}/id/{org.org_id}/{org.user_id}"
    issued_at = str(int(time.time() * 1000))
    # "Base64-encoded HMAC-SHA256 signature signed with the client_secret containing the
    # concatenated ID and issued_at value" (the flow's response parameters).
    signature = base64.b64encode(hmac.new(app.client_secret.encode(), (identity + issued_at).encode(),
                                          hashlib.sha256).digest()).decode()
    return {"access_token": access_token, "signature": signature, "scope": OAUTH_SCOPE,
            "instance_url": f"https://{org.instance_host}", "id": identity, "token_type": "Bearer",
            "issued_at": issued_at}
