"""SOAP ``login()`` (what simple-salesforce sends for username + password + security token) and sessions.

The request is a small, fixed SOAP envelope, so the two elements needed are read with a regular
expression instead of an XML parser: the standard-library parsers are unsafe on untrusted input
and ``defusedxml`` is not a dependency. Responses mirror the partner WSDL's ``loginResponse`` and
``LoginFault`` closely enough for simple-salesforce's ``soap_login`` (which reads ``sessionId``,
``serverUrl``, ``sf:exceptionCode`` and ``sf:exceptionMessage`` by tag name).
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
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
