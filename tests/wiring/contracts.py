"""The published contracts the production-wiring suite judges m3sh's requests by, in one module.

* m3ter and HubSpot: their OpenAPI documents, loaded once and validated with ``openapi-core``
  (operation ``servers``, method, path and query parameters, request body schema), plus what
  ``openapi-core`` leaves out: query parameters the operation does not declare (a real API
  silently ignores an unknown filter and answers the unfiltered page) and the auth header (m3ter's
  security scheme is OAuth2 client credentials, which ``openapi-core`` cannot check).
* NetSuite (SuiteTalk REST, TBA), Salesforce (REST + SOAP login) and AWS publish no OpenAPI document
  m3sh can load; their rules are written out below from the vendors' documentation (see each
  function), and the AWS rules come from botocore's own service models and endpoint rules.

Documents are read from ``tests/specs/`` when present (vendored, with a PROVENANCE file), else
from ``../shared/specs/`` (where CI clones the repository); a missing document fails the suite
rather than skipping it, because a contract check that silently does not run proves nothing.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_DIRS = (REPO_ROOT / "tests" / "specs", (REPO_ROOT / ".." / "shared" / "specs").resolve())

# document name -> relative paths tried in each of SPEC_DIRS (tests/specs keeps m3ter's in m3ter/)
DOCUMENTS: dict[str, tuple[str, ...]] = {
    "m3ter": ("m3ter/m3ter-openapi.json", "m3ter-openapi.json"),
    **{f"hubspot/{n}": (f"hubspot/{n}.json",) for n in (
        "companies", "deals", "lineItems", "products", "objects", "associations-v4", "properties",
        "private-apps")},
}
SYSTEM_DOCUMENTS = {"m3ter": ("m3ter",), "hubspot": tuple(d for d in DOCUMENTS if d.startswith("hubspot/"))}

# m3ter's document writes some patterns as Java regexes (\p{L}, \p{Cntrl}) that Python's re cannot
# compile; translated to equivalents (as tests/integration/sandbox/test_m3ter_openapi.py does),
# and the spec validator, which rejects them for the same reason, is switched off.
_CNTRL = r"[^\x00-\x1f\x7f\s]"
JAVA_PATTERNS = {
    r"^([^[\p{Cntrl}\s]])|([^[\p{Cntrl}\s]][[^[\p{Cntrl}\s]] ]*[^[\p{Cntrl}\s]])$":
        rf"^({_CNTRL})|({_CNTRL}[^\x00-\x1f\x7f]*{_CNTRL})$",
    r"^[\p{L}_$][\p{L}_$0-9]*$": r"^(?:[^\W\d]|\$)(?:\w|\$)*$",
}

M3TER_CONFIG_HOST = "api.m3ter.com"
M3TER_INGEST_HOST = "ingest.m3ter.com"
M3TER_TOKEN_URL = "https://api.m3ter.com/oauth/token"
HUBSPOT_HOST = "api.hubapi.com"
SALESFORCE_LOGIN_HOST = "login.salesforce.com"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


class ContractError(AssertionError):
    """A document the suite needs is missing or unreadable."""


def document_path(name: str) -> Path:
    for base in SPEC_DIRS:
        for rel in DOCUMENTS[name]:
            if (base / rel).is_file():
                return base / rel
    tried = [str(base / rel) for base in SPEC_DIRS for rel in DOCUMENTS[name]]
    raise ContractError(f"OpenAPI document {name!r} not found; looked in {tried}")


# Request fields HubSpot's documents list as required that HubSpot's docs and official client treat
# as optional (the same relaxations as the sandbox's spec guard, m3sh.sandbox.specguard): "include
# only an empty object in the request body" is a valid search (developers.hubspot.com/docs-beta/crm/
# search), and records are created from properties alone (the docs' create examples;
# hubspot-api-client 12 requires only ``properties``). Nothing else is relaxed.
HUBSPOT_OPTIONAL_FROM_DOCS = {
    "PublicObjectSearchRequest": ("after", "filterGroups", "limit", "properties", "sorts"),
    "SimplePublicObjectInputForCreate": ("associations",),
}


@cache
def document(name: str) -> dict[str, Any]:
    """The document as published, but for m3ter's Java patterns and :data:`HUBSPOT_OPTIONAL_FROM_DOCS`."""
    text = document_path(name).read_text()
    if name == "m3ter":
        for java, python in JAVA_PATTERNS.items():
            text = text.replace(json.dumps(java)[1:-1], json.dumps(python)[1:-1])
    doc: dict[str, Any] = json.loads(text)
    schemas = doc.get("components", {}).get("schemas", {})
    for schema_name, optional in HUBSPOT_OPTIONAL_FROM_DOCS.items() if name.startswith("hubspot/") else ():
        schema = schemas.get(schema_name)
        if schema and "required" in schema:
            schema["required"] = [r for r in schema["required"] if r not in optional] or None
            if schema["required"] is None:
                del schema["required"]
    return doc


@cache
def openapi(name: str) -> Any:
    from openapi_core import Config, OpenAPI

    return OpenAPI.from_dict(json.loads(json.dumps(document(name))), config=Config(spec_validator_cls=None))


def _resolve(doc: Mapping[str, Any], node: Any) -> Any:
    while isinstance(node, Mapping) and "$ref" in node:
        target: Any = doc
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


@dataclass(frozen=True)
class SpecOperation:
    """One operation of an OpenAPI document: where it is, which hosts serve it, what it declares."""

    document: str
    method: str  # upper case
    template: str
    servers: tuple[str, ...]
    query: frozenset[str] = field(default_factory=frozenset)
    params: int = 0  # path parameters in the template (fewer = more specific)

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(urlsplit(s).hostname or "" for s in self.servers)


@cache
def spec_operations(system: str) -> tuple[SpecOperation, ...]:
    """Every operation of the system's documents, with its effective servers (operation, path item
    or document level, as OpenAPI 3 defines) and declared query parameters."""
    out = []
    for name in SYSTEM_DOCUMENTS[system]:
        doc = document(name)
        top = tuple(s["url"] for s in doc.get("servers", []))
        for template, item in doc["paths"].items():
            path_params = [_resolve(doc, p) for p in item.get("parameters", [])]
            for method in HTTP_METHODS:
                if method not in item:
                    continue
                op = item[method]
                servers = tuple(s["url"] for s in op.get("servers") or item.get("servers") or []) or top
                params = path_params + [_resolve(doc, p) for p in op.get("parameters", [])]
                query = frozenset(p["name"] for p in params if p.get("in") == "query")
                out.append(SpecOperation(name, method.upper(), template, servers, query, template.count("{")))
    return tuple(out)


# ------------------------------------------------------------------------------ recorded requests
@dataclass
class Recorded:
    """One request as it left m3sh's process (or reached an emulator): what every check reads."""

    method: str
    url: str
    headers: dict[str, str]  # names lower-cased
    body: bytes = b""
    channel: str = ""  # which transport saw it (httpx, urllib3, requests, botocore)

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.url).query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def __str__(self) -> str:
        return f"{self.method} {self.url}"


# ------------------------------------------------------------------------------ OpenAPI systems
def _werkzeug_request(rec: Recorded) -> Any:
    from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    parts = urlsplit(rec.url)
    headers = {k: v for k, v in rec.headers.items() if k not in ("content-length", "host")}
    builder = EnvironBuilder(method=rec.method, base_url=f"{parts.scheme}://{parts.netloc}", path=unquote(parts.path),
                             query_string=parts.query, headers=headers, data=rec.body or None)
    return WerkzeugOpenAPIRequest(Request(builder.get_environ()))


def openapi_problems(system: str, rec: Recorded, op: SpecOperation, *, token: str | None = None) -> list[str]:
    """What the OpenAPI document and the vendor's auth rules have against one request."""
    problems: list[str] = []
    try:
        openapi(op.document).validate_request(_werkzeug_request(rec))
    except Exception as exc:  # openapi-core's errors carry the schema errors in __cause__
        message = f"{type(exc).__name__}: {exc}"
        cause = exc.__cause__
        if cause is not None and str(cause) not in message:
            message += f" ({cause})"
        problems.append(message)
    if rec.host not in op.hosts:
        problems.append(f"host {rec.host} does not serve {op.method} {op.template} (servers: {list(op.servers)})")
    undeclared = sorted({k for k, _ in rec.query} - op.query)
    if undeclared:
        problems.append(f"query parameter(s) {undeclared} not declared by {op.method} {op.template} "
                        f"(declared: {sorted(op.query)}); the API ignores them")
    problems += auth_problems(system, rec, op, token=token)
    return problems


def auth_problems(system: str, rec: Recorded, op: SpecOperation, *, token: str | None) -> list[str]:
    auth = rec.header("authorization") or ""
    if system == "m3ter" and op.template == "/oauth/token":
        return []  # judged by m3ter_token_problems
    if not auth.startswith("Bearer "):
        return [f"Authorization is not a Bearer token: {auth.split(' ')[0] or '(none)'}"]
    if token is not None and auth != f"Bearer {token}":
        return ["Authorization carries a different token than the one issued"]
    return []


def m3ter_token_problems(rec: Recorded, key: str, secret: str) -> list[str]:
    """m3ter's token request (api-notes m3ter.md 1.3; spec ``POST /oauth/token``, security scheme
    ``clientCredentials``): on the Config API host, HTTP Basic of access key and secret,
    ``grant_type=client_credentials`` as JSON or form body."""
    problems = []
    if rec.url != M3TER_TOKEN_URL or rec.method != "POST":
        problems.append(f"token request went to {rec.method} {rec.url}, not POST {M3TER_TOKEN_URL}")
    expected = "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()
    if rec.header("authorization") != expected:
        problems.append("token request is not HTTP Basic base64(access key:api secret)")
    ctype = rec.header("content-type") or ""
    body = rec.json() if "json" in ctype else dict(parse_qsl(rec.body.decode()))
    if not isinstance(body, dict) or body.get("grant_type") != "client_credentials":
        problems.append(f"token request body has no grant_type=client_credentials: {rec.body[:200]!r}")
    return problems


# ------------------------------------------------------------------------------------- NetSuite
def netsuite_host(account_id: str) -> str:
    """SuiteTalk REST's account-specific host: the account id lower-cased, ``_`` -> ``-``
    (NetSuite Help "Account-Specific Domains", e.g. ``1234567_SB1`` -> ``1234567-sb1``)."""
    return f"{account_id.lower().replace('_', '-')}.suitetalk.api.netsuite.com"


NETSUITE_RECORD_PREFIX = "/services/rest/record/v1/"
NETSUITE_SUITEQL_PATH = "/services/rest/query/v1/suiteql"
_OAUTH_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')
# Query parameters NetSuite Help documents for the record API, by (method, on one record):
# "Getting a Record" (expandSubResources, fields, simpleEnumFormat), "Updating a Record" and
# "Using the Upsert Operation" (replace, replaceSelectedFields), "Getting a List of Records" (q,
# limit, offset). Anything else would be ignored or refused.
NETSUITE_RECORD_QUERY: dict[tuple[str, bool], frozenset[str]] = {
    ("GET", True): frozenset({"expandSubResources", "fields", "simpleEnumFormat"}),
    ("GET", False): frozenset({"q", "limit", "offset"}),
    ("PATCH", True): frozenset({"replace", "replaceSelectedFields"}),
    ("PUT", True): frozenset({"replace", "replaceSelectedFields"}),
    ("POST", False): frozenset(),
    ("DELETE", True): frozenset(),
}


def netsuite_problems(rec: Recorded, *, account_id: str, consumer_key: str, consumer_secret: str,
                      token_id: str, token_secret: str) -> list[str]:
    """SuiteTalk REST with Token-Based Authentication (NetSuite Help "The REST Web Services
    Request Structure", "Executing SuiteQL Queries Through REST Web Services", "OAuth 1.0 TBA"):
    the account's host; record paths under ``/services/rest/record/v1/``; SuiteQL as ``POST
    /services/rest/query/v1/suiteql`` with ``Prefer: transient``, ``limit``/``offset`` only and a
    ``{"q": ...}`` body; ``Authorization: OAuth`` with ``realm`` = the account id as written
    (upper case, ``_``), HMAC-SHA256, and a signature that verifies over the request."""
    problems = []
    if urlsplit(rec.url).scheme != "https" or rec.host != netsuite_host(account_id):
        problems.append(f"host {rec.host} is not the account's {netsuite_host(account_id)} (https)")
    if rec.path == NETSUITE_SUITEQL_PATH:
        if rec.method != "POST":
            problems.append(f"SuiteQL must be POST, not {rec.method}")
        if (rec.header("prefer") or "").lower() != "transient":
            problems.append("SuiteQL without 'Prefer: transient'")
        extra = sorted({k for k, _ in rec.query} - {"limit", "offset"})
        if extra:
            problems.append(f"SuiteQL query parameters {extra} are not documented (limit, offset)")
        body = rec.json()
        if not isinstance(body, dict) or not isinstance(body.get("q"), str) or set(body) != {"q"}:
            problems.append(f"SuiteQL body must be {{'q': <query>}}: {rec.body[:200]!r}")
    elif not rec.path.startswith(NETSUITE_RECORD_PREFIX):
        problems.append(f"path {rec.path} is neither the record API nor SuiteQL")
    else:
        is_item = rec.path.count("/") > NETSUITE_RECORD_PREFIX.count("/")
        allowed = NETSUITE_RECORD_QUERY.get((rec.method, is_item), frozenset())
        extra = sorted({k for k, _ in rec.query} - allowed)
        if extra:
            problems.append(f"record API query parameters {extra} are not documented for {rec.method} "
                            f"({sorted(allowed)})")
    problems += oauth1_problems(rec, realm=account_id, consumer_key=consumer_key, consumer_secret=consumer_secret,
                                token_id=token_id, token_secret=token_secret)
    return problems


def oauth1_problems(rec: Recorded, *, realm: str, consumer_key: str, consumer_secret: str, token_id: str,
                    token_secret: str) -> list[str]:
    """Re-compute the OAuth 1.0a HMAC-SHA256 signature with oauthlib (RFC 5849 3.4: base string of
    method, base URI and normalised parameters, query included, realm excluded) and compare."""
    from oauthlib.oauth1.rfc5849 import signature as sig

    auth = rec.header("authorization") or ""
    if not auth.startswith("OAuth "):
        return [f"Authorization is not OAuth 1.0a: {auth.split(' ')[0] or '(none)'}"]
    params = {k: unquote(v) for k, v in _OAUTH_PARAM_RE.findall(auth)}
    problems = []
    expected = {"realm": realm, "oauth_signature_method": "HMAC-SHA256", "oauth_consumer_key": consumer_key,
                "oauth_token": token_id, "oauth_version": "1.0"}
    problems += [f"OAuth {k}={params.get(k)!r}, expected {v!r}" for k, v in expected.items() if params.get(k) != v]
    for needed in ("oauth_nonce", "oauth_timestamp", "oauth_signature"):
        if not params.get(needed):
            problems.append(f"OAuth header has no {needed}")
    if problems:
        return problems
    oauth_params = [(k, v) for k, v in params.items() if k.startswith("oauth_") and k != "oauth_signature"]
    collected = sig.collect_parameters(uri_query=urlsplit(rec.url).query, body=None, headers=None,
                                       exclude_oauth_signature=True, with_realm=False)
    normalized = sig.normalize_parameters(list(collected) + oauth_params)
    base = sig.signature_base_string(rec.method, sig.base_string_uri(rec.url), normalized)
    if sig.sign_hmac_sha256(base, consumer_secret, token_secret) != params["oauth_signature"]:
        problems.append(f"OAuth signature does not verify over the base string {base[:160]}...")
    return problems


# ----------------------------------------------------------------------------------- Salesforce
def salesforce_problems(rec: Recorded, *, version: str, instance_host: str, session_id: str) -> list[str]:
    """Salesforce (REST API Developer Guide "Resources by version", SOAP API ``login()``): the SOAP
    login on ``https://login.salesforce.com/services/Soap/u/<version>``; every REST call on the
    instance host the login answered (``serverUrl``), under ``/services/data/v<version>/``, with
    ``Authorization: Bearer <sessionId>``."""
    if rec.path.startswith("/services/Soap/u/"):
        problems = []
        if rec.host != SALESFORCE_LOGIN_HOST or urlsplit(rec.url).scheme != "https":
            problems.append(f"SOAP login went to {rec.host}, not https://{SALESFORCE_LOGIN_HOST}")
        if rec.path != f"/services/Soap/u/{version}":
            problems.append(f"SOAP login path {rec.path} is not /services/Soap/u/{version}")
        if rec.method != "POST" or rec.header("soapaction") is None:
            problems.append("SOAP login must be a POST with a SOAPAction header")
        return problems
    problems = []
    if rec.host != instance_host or urlsplit(rec.url).scheme != "https":
        problems.append(f"REST call went to {rec.host}, not the instance {instance_host} (https)")
    if not rec.path.startswith(f"/services/data/v{version}/"):
        problems.append(f"REST path {rec.path} is not under /services/data/v{version}/")
    if rec.header("authorization") != f"Bearer {session_id}":
        problems.append("REST call without 'Authorization: Bearer <sessionId from the login>'")
    rest = rec.path.split(f"/services/data/v{version}", 1)[-1]
    allowed = next((q for pattern, q in SALESFORCE_QUERY if re.fullmatch(pattern, rest)), frozenset())
    extra = sorted({k for k, _ in rec.query} - allowed)
    if extra:
        problems.append(f"query parameters {extra} are not documented for {rec.method} {rest} ({sorted(allowed)})")
    return problems


# Query parameters the REST API Developer Guide documents per resource: Query / QueryAll ``q``;
# sObject Rows (GET by id) ``fields``; everything else m3sh uses takes none.
SALESFORCE_QUERY: tuple[tuple[str, frozenset[str]], ...] = (
    (r"/(query|queryAll)/?", frozenset({"q"})),
    (r"/sobjects/[^/]+/[^/]+", frozenset({"fields"})),
)


# ------------------------------------------------------------------------------------------ AWS
@cache
def aws_endpoint_host(service: str, region: str) -> str:
    """The host botocore resolves for ``service`` in ``region`` with no endpoint override."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        service, region_name=region, aws_access_key_id="x", aws_secret_access_key="x")
    return urlsplit(client.meta.endpoint_url).hostname or ""


def aws_problems(rec: Recorded, *, service: str, region: str, bucket: str | None = None) -> list[str]:
    """AWS requests go to the endpoint botocore resolves for the region (no ``endpoint_url``):
    https, the service's regional (or, for S3 in us-east-1, global) host, S3 buckets as
    virtual-hosted ``<bucket>.<host>``, SigV4 signed for that region and service; never loopback."""
    host = aws_endpoint_host(service, region)
    allowed = {host} | ({f"{bucket}.{host}"} if bucket else set())
    problems = []
    if urlsplit(rec.url).scheme != "https" or rec.host not in allowed:
        problems.append(f"{service} request went to {rec.url.split('?')[0]}; expected https://{sorted(allowed)}")
    scope = f"/{region}/{service}/aws4_request"
    if scope not in (rec.header("authorization") or ""):
        problems.append(f"{service} request is not SigV4-signed for {scope}")
    return problems


def unknown_hosts(records: Iterable[Recorded], known: Iterable[str]) -> list[str]:
    allowed = set(known)
    return sorted({r.host for r in records if r.host not in allowed})
