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
from xml.sax.saxutils import escape, unescape

from m3sh.sandbox import credentials as cred

ORG_ID = "00D5g000004NWTHEA4"
USER_ID = "0055g00000A1b2CAAR"
INSTANCE_HOST = cred.SALESFORCE_INSTANCE_HOST
_ENTITIES = {"&quot;": '"', "&apos;": "'"}


def _element(body: str, name: str) -> str | None:
    m = re.search(rf"<(?:[\w-]+:)?{name}>(.*?)</(?:[\w-]+:)?{name}>", body, re.DOTALL)
    return unescape(m.group(1), _ENTITIES) if m else None


def check_login(body: str) -> bool:
    """True when the envelope carries the sandbox user and ``password + security token``."""
    username = _element(body, "username")
    password = _element(body, "password")
    if username is None or password is None:
        return False
    want_user = cred.SALESFORCE_USERNAME.lower().encode()
    ok_user = hmac.compare_digest(username.strip().lower().encode(), want_user)
    expected = cred.SALESFORCE_PASSWORD + cred.SALESFORCE_SECURITY_TOKEN
    ok_password = hmac.compare_digest(password.encode(), expected.encode())
    return ok_user and ok_password


def new_session_id() -> str:
    return f"{ORG_ID[:15]}!AQ4AQ{secrets.token_urlsafe(72)}"


def login_response(session_id: str, version: str) -> str:
    server = f"https://{INSTANCE_HOST}/services/Soap/u/{version}/{ORG_ID[:15]}"
    meta = f"https://{INSTANCE_HOST}/services/Soap/m/{version}/{ORG_ID[:15]}"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns="urn:partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<soapenv:Body><loginResponse><result>"
        f"<metadataServerUrl>{meta}</metadataServerUrl>"
        "<passwordExpired>false</passwordExpired><sandbox>false</sandbox>"
        f"<serverUrl>{server}</serverUrl>"
        f"<sessionId>{escape(session_id)}</sessionId>"
        f"<userId>{USER_ID}</userId>"
        "<userInfo>"
        "<currencySymbol>$</currencySymbol>"
        f"<organizationId>{ORG_ID}</organizationId>"
        "<organizationMultiCurrency>true</organizationMultiCurrency>"
        "<organizationName>Northwind Cloud</organizationName>"
        "<sessionSecondsValid>7200</sessionSecondsValid>"
        f"<userEmail>{escape(cred.SALESFORCE_USERNAME)}</userEmail>"
        "<userFullName>Integration User</userFullName>"
        f"<userId>{USER_ID}</userId>"
        f"<userName>{escape(cred.SALESFORCE_USERNAME)}</userName>"
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
