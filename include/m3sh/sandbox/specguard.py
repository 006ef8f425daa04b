"""The spec guard: every request to and every answer from the m3ter and HubSpot emulators is judged
by the vendors' published OpenAPI documents, not by the emulators (issue #15, part 3).

m3sh's clients and the emulators are written by the same hands, so a shared wrong assumption passes
every test; the published documents are the outside judge. With ``M3SH_SANDBOX_SPEC_CHECK=1``
(``tests/conftest.py`` sets it for every test session; the demo and the benchmarks leave it off) the
m3ter and HubSpot emulators wrap their app in :class:`SpecGuard`, which for each request but the
``/_sandbox`` admin API:

* finds the operation (method + path template) in the documents and checks that the listener it
  arrived at stands in for a server the document lists for it (the m3ter document serves
  ``POST /organizations/{orgId}/measurements`` from ``https://ingest.m3ter.com`` only);
* checks the request: authorization scheme, path and query parameters (an undocumented query
  parameter is refused: the real API would ignore it, silently), the body's media type, schema and
  properties the schema does not declare;
* checks the emulator's answer: status documented, media type, body schema, undocumented
  properties (an emulator that invents a field lets m3sh depend on it), required headers.

What happens then:

==========================================  ========================================================
an operation the documents lack, or one     refused **501** ``x-should-retry: false`` (no SDK
at a listener whose server it is not on     retries), body in the system's error shape naming it
an invalid request                          refused **400** (as the real API would), same header
an emulator answer that breaks the spec     replaced by **501** ``x-should-retry: false`` naming
                                            the operation and the schema error
a request without the right auth scheme     passed on: the emulator must refuse it (>= 400)
a test's deliberately invalid request       passed on when it carries ``x-m3sh-spec-expect-invalid``:
                                            it must be invalid, and the emulator must refuse it
==========================================  ========================================================

Each request is recorded (operation, who sent it, outcome, problems) as a JSON line in
``$M3SH_SPEC_COVERAGE_DIR/<system>-<pid>.jsonl``, violations also in ``violations-<system>-<pid>.jsonl``;
``tests/conftest.py`` fails the test during which a violation was recorded, prints the coverage
and fails the session if any violation was recorded.

Why not openapi-core (which ``tests/integration/sandbox/test_spec_guard.py`` uses as a second
opinion on this module's verdicts): measured on this machine it takes 15-25 ms per small request
and ~480 ms for one 1000-measurement batch, which would add most of an hour to the suite. Here the
documents' schemas are converted once to JSON Schema (OpenAPI 3.0's ``nullable`` is the only
keyword whose meaning differs) and compiled with ``jsonschema-rs``: ~1.3 ms per 1000-measurement
batch, so every item of every request is validated, none sampled. Parameters (form style, the only
style these documents use) are checked by hand below for the same reason.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, quote

import orjson

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ENABLE_ENV = "M3SH_SANDBOX_SPEC_CHECK"
COVERAGE_DIR_ENV = "M3SH_SPEC_COVERAGE_DIR"
SPEC_DIR_ENV = "M3SH_SPEC_DIR"
# Sent only by tests that send an invalid request on purpose to see the emulator refuse it.
EXPECT_INVALID_HEADER = "x-m3sh-spec-expect-invalid"
REFUSED_STATUS = 501
INVALID_REQUEST_STATUS = 400
MAX_PROBLEMS = 8
METHODS = ("get", "put", "post", "delete", "patch")


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def spec_dir() -> Path:
    """Where the vendored documents are: ``$M3SH_SPEC_DIR``, else ``<repo>/tests/specs``."""
    configured = os.environ.get(SPEC_DIR_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parents[3] / "tests" / "specs"


# ------------------------------------------------------------------------------ the documents
# The m3ter document's patterns are Java regexes (\p{L}, \p{Cntrl}, nested classes) that neither
# Python's re nor jsonschema-rs compile; each is replaced by its equivalent (the alternation's odd
# precedence in the first one is the document's own and kept).
_CNTRL = r"[^\x00-\x1f\x7f\s]"
JAVA_PATTERNS = {
    r"^([^[\p{Cntrl}\s]])|([^[\p{Cntrl}\s]][[^[\p{Cntrl}\s]] ]*[^[\p{Cntrl}\s]])$":
        rf"^({_CNTRL})|({_CNTRL}[^\x00-\x1f\x7f]*{_CNTRL})$",
    r"^[\p{L}_$][\p{L}_$0-9]*$": r"^(?:[^\W\d]|\$)(?:\w|\$)*$",
}


def _translate_java_patterns(node: Any) -> None:
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern in JAVA_PATTERNS:
            node["pattern"] = JAVA_PATTERNS[pattern]
        for value in node.values():
            _translate_java_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _translate_java_patterns(value)


# Fields HubSpot's own docs show in error bodies that the documents' ``Error`` schema omits: every
# error carries "status": "error" (developers.hubspot.com, API error handling); 429s also carry
# errorType, policyName and requestId (usage guidelines). See ../shared/api-notes/crm-erp.md A.9-A.10.
HUBSPOT_ERROR_FIELDS_FROM_DOCS = ("status", "errorType", "policyName", "requestId")
# Request fields the documents list as required that HubSpot's docs and official client treat as
# optional: "include only an empty object in the request body" is a valid search
# (developers.hubspot.com/docs-beta/crm/search), and records are created from properties alone
# (the docs' create examples; hubspot-api-client 12 requires only ``properties``).
HUBSPOT_OPTIONAL_FROM_DOCS = {
    "PublicObjectSearchRequest": ("after", "filterGroups", "limit", "properties", "sorts"),
    "SimplePublicObjectInputForCreate": ("associations",),
}


def _patch_hubspot(doc: dict[str, Any]) -> None:
    """Loosen the places where HubSpot's documents are at odds with the API as its docs show it.

    * Property maps are typed ``{string: string}``, but HubSpot answers a requested property that
      has no value with ``null`` (``"domain": null``); only ``null`` is allowed in addition.
    * ``StandardError.subCategory`` is typed as an empty object (a code-generator artefact for
      ``Object``), while the same documents type ``Error.subCategory`` and
      ``ErrorDetail.subCategory`` as strings, and HubSpot sends strings such as
      ``crm.associations.NO_ASSOCIATIONS_FOUND``.

    * The ``Error`` schema lacks the fields of :data:`HUBSPOT_ERROR_FIELDS_FROM_DOCS`; they are
      added as optional strings.
    * :data:`HUBSPOT_OPTIONAL_FROM_DOCS` are taken out of their schemas' ``required`` lists.

    Nothing else is changed: every other field, format and enum is judged as published.
    """
    for name, optional in HUBSPOT_OPTIONAL_FROM_DOCS.items():
        schema = doc.get("components", {}).get("schemas", {}).get(name)
        if schema and "required" in schema:
            schema["required"] = [r for r in schema["required"] if r not in optional]
            if not schema["required"]:
                del schema["required"]
    error = doc.get("components", {}).get("schemas", {}).get("Error")
    if error:
        for name in HUBSPOT_ERROR_FIELDS_FROM_DOCS:
            error.setdefault("properties", {}).setdefault(name, {"type": "string"})
    for schema in doc.get("components", {}).get("schemas", {}).values():
        props = schema.get("properties") or {}
        values = (props.get("properties") or {}).get("additionalProperties")
        if isinstance(values, dict) and values.get("type") == "string":
            values["nullable"] = True
    search = doc.get("components", {}).get("schemas", {}).get("PublicObjectSearchRequest")
    if search:
        _widen_search_request(search)
    flt = doc.get("components", {}).get("schemas", {}).get("Filter")
    if flt:
        # A filter value as a JSON number (epoch ms, ids): Jackson's number -> string coercion, as
        # for ``after`` below; airbyte-source-hubspot 5.7.0's incremental searches send them so.
        number_or_string = {"oneOf": [{"type": "string"}, {"type": "number"}]}
        for key in ("value", "highValue"):
            if (flt.get("properties", {}).get(key) or {}).get("type") == "string":
                flt["properties"][key] = dict(number_or_string)
        values = flt.get("properties", {}).get("values") or {}
        if (values.get("items") or {}).get("type") == "string":
            values["items"] = dict(number_or_string)
    std = doc.get("components", {}).get("schemas", {}).get("StandardError")
    if std and (std["properties"].get("subCategory") or {}).get("type") == "object":
        std["properties"]["subCategory"] = {"type": "string"}


def _widen_search_request(schema: dict[str, Any]) -> None:
    """What HubSpot's search accepts beyond ``PublicObjectSearchRequest`` as published (issue 20):

    * ``filters`` at the top level instead of ``filterGroups``, all ANDed: reported by users against
      the live API in HubSpot/hubspot-api-nodejs#491 ("we can make requests ... WITHOUT using
      filterGroups supplying filters directly in the body ... treated with an 'AND' condition"),
      and what airbyte-source-hubspot 5.7.0's incremental searches send;
    * ``sorts`` as ``{"propertyName", "direction"}`` objects: the form HubSpot's search guide shows
      (developers.hubspot.com/docs/guides/api/crm/search, "Sort search results"); the document
      types the items as strings;
    * ``after`` as a JSON number: HubSpot's services bind with Jackson (their "Invalid input JSON on
      line 1, column N" errors), which coerces a number to a string field, and a body with
      ``"after": 0`` was answered only about its filters in HubSpot/hubspot-api-nodejs#226.
    """
    props = schema.setdefault("properties", {})
    groups = props.get("filterGroups") or {}
    group_ref = (groups.get("items") or {}).get("$ref", "")
    if group_ref.endswith("/FilterGroup"):
        props.setdefault("filters", {"type": "array", "items": {"$ref": group_ref.replace("/FilterGroup", "/Filter")}})
    sort_item = (props.get("sorts") or {}).get("items")
    if isinstance(sort_item, dict) and sort_item.get("type") == "string":
        props["sorts"]["items"] = {"oneOf": [{"type": "string"}, {
            "type": "object", "required": ["propertyName"], "additionalProperties": False,
            "properties": {"propertyName": {"type": "string"},
                           "direction": {"type": "string", "enum": ["ASCENDING", "DESCENDING"]}}}]}
    after = props.get("after")
    if isinstance(after, dict) and after.get("type") == "string":
        props["after"] = {"oneOf": [{"type": "string"}, {"type": "integer"}]}


def _to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema objects -> JSON Schema (draft 4, which 3.0 schemas are based on).

    ``nullable: true`` is the one keyword whose meaning differs: it adds ``null`` to the allowed
    values. The OpenAPI-only keywords (``discriminator``, ``readOnly``, ``example``, ...) are
    annotations to a JSON Schema validator and are left in place.
    """
    if isinstance(node, list):
        return [_to_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v) for k, v in node.items()}
    if out.get("nullable") is True:
        del out["nullable"]
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if isinstance(out.get("enum"), list) and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        else:  # a $ref or a composition: null, or whatever the schema allows
            return {"anyOf": [{"type": "null"}, out]}
    return out


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass
class Operation:
    doc: Document
    method: str
    template: str
    node: dict[str, Any]
    pointer: str  # JSON pointer of the operation object in its document
    servers: tuple[str, ...]
    parameters: dict[tuple[str, str], tuple[dict[str, Any], str]]  # (in, name) -> (param, schema pointer)
    regex: re.Pattern[str] = field(init=False)
    n_params: int = field(init=False)

    def __post_init__(self) -> None:
        self.regex = re.compile(re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(self.template)) + "$")
        self.n_params = self.template.count("{")

    @property
    def key(self) -> str:
        return f"{self.method.upper()} {self.template}"

    @property
    def path_param_names(self) -> list[str]:
        return re.findall(r"\{([^}]+)\}", self.template)


class Document:
    """One OpenAPI document: its operations, and its schemas compiled on first use."""

    def __init__(self, name: str, raw: dict[str, Any]) -> None:
        self.name = name
        self.raw = raw
        import jsonschema_rs  # a dev dependency: only tests switch the guard on

        self._jsonschema_rs = jsonschema_rs
        self.uri = f"urn:m3sh-spec:{name}"
        converted = _to_json_schema(raw)
        converted["$schema"] = "http://json-schema.org/draft-04/schema#"  # OpenAPI 3.0 schemas are draft 4's
        self.registry = jsonschema_rs.Registry([(self.uri, converted)])
        self._validators: dict[str, Any] = {}
        self._shapes: dict[int, Shape] = {}
        self.operations: list[Operation] = []
        top_servers = tuple(s["url"].rstrip("/") for s in raw.get("servers") or [{"url": "/"}])
        for template, item in raw.get("paths", {}).items():
            item_servers = tuple(s["url"].rstrip("/") for s in item.get("servers") or [])
            for method in METHODS:
                op = item.get(method)
                if op is None:
                    continue
                servers = tuple(s["url"].rstrip("/") for s in op.get("servers") or []) or item_servers or top_servers
                pointer = _pointer("paths", template, method)
                params: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
                # Path-item parameters first; the operation's own override them (same name and place).
                for base, plist in ((_pointer("paths", template), item.get("parameters") or []),
                                    (pointer, op.get("parameters") or [])):
                    for i, declared in enumerate(plist):
                        p_pointer = f"{base}/parameters/{i}"
                        if "$ref" in declared:
                            p_pointer = declared["$ref"][1:]
                        p = self.resolve(declared)
                        params[(p["in"], p["name"])] = (p, p_pointer + "/schema")
                self.operations.append(Operation(self, method, template, op, pointer, servers, params))

    def resolve(self, node: Any) -> Any:
        """Follow local ``$ref`` chains."""
        while isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
            target: Any = self.raw
            for part in node["$ref"][2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def validator(self, pointer: str) -> Any:
        v = self._validators.get(pointer)
        if v is None:
            ref = f"{self.uri}#{quote(pointer, safe='/~')}"
            v = self._validators[pointer] = self._jsonschema_rs.Draft4Validator(
                {"$ref": ref}, registry=self.registry, validate_formats=True)
        return v

    def schema_errors(self, pointer: str, value: Any, where: str) -> list[str]:
        errors = []
        for err in self.validator(pointer).iter_errors(value):
            path = "/".join(str(p) for p in err.instance_path)
            message = err.message
            if len(message) > 200:  # the message repeats the instance: name the rule instead
                message = f"{err.kind.name} {json.dumps(err.kind.as_dict(), default=str)[:150]}"
            errors.append(f"{where}{'/' + path if path else ''}: {_clip(message)}")
            if len(errors) >= MAX_PROBLEMS:
                break
        return errors

    # -- properties a schema does not declare ------------------------------------------------
    def shape(self, schema: Any) -> Shape:
        """The compiled :class:`Shape` of a schema (memoised; recursive schemas are fine)."""
        schema = self.resolve(schema)
        found = self._shapes.get(id(schema))
        if found is not None:
            return found
        shape = self._shapes[id(schema)] = Shape()
        if not isinstance(schema, dict) or "anyOf" in schema or "oneOf" in schema:
            return shape  # which branch applies cannot be told: nothing is flagged below it
        props: dict[str, Any] = dict(schema.get("properties") or {})
        extra: Any = schema.get("additionalProperties")
        known = "properties" in schema
        items = schema.get("items")
        for ref in schema.get("allOf") or []:
            member = self.resolve(ref)
            if not isinstance(member, dict) or not (member.keys() - {"description", "type"}):
                continue  # a description-only member (the m3ter document has many)
            if "anyOf" in member or "oneOf" in member:
                known, extra = False, True
                continue
            if "properties" in member or "allOf" in member:
                known = True
                sub = self.shape(member)
                if sub.props is None:
                    known, extra = False, True
                    continue
                props.update({k: None for k in sub.props if k not in props})
                for k, v in sub.nested:
                    props.setdefault(k, None)
                    shape.nested.append((k, v))
                if sub.extra is not None:
                    extra = True if sub.extra is True else extra
            items = items or member.get("items")
        if known and extra in (None, False):
            shape.props = frozenset(props)
        elif known and isinstance(extra, dict) and extra:
            shape.props = frozenset(props)
            shape.extra = self.shape(extra)
        for k, sub_schema in (schema.get("properties") or {}).items():
            sub = self.shape(sub_schema)
            if sub.props is not None or sub.items is not None or sub.subtypes:
                shape.nested.append((k, sub))
        if items is not None:
            sub = self.shape(items)
            shape.items = sub if (sub.props is not None or sub.items is not None or sub.subtypes) else None
        disc = schema.get("discriminator")
        if isinstance(disc, dict) and disc.get("propertyName"):
            # A polymorphic base (m3ter's DataExplorerGroup): the object's own type, named by the
            # discriminator property, declares its properties. Mapped types don't inherit this.
            mapping = disc.get("mapping") or {}
            shape.discriminator = disc["propertyName"]
            for value, ref in mapping.items():
                shape.subtypes[value] = self.shape({"$ref": ref})
        return shape

    def undocumented(self, schema: Any, value: Any, where: str, out: list[str]) -> None:
        """Append the JSON paths of properties in ``value`` that ``schema`` does not declare."""
        _walk(self.shape(schema), value, where, out)


class Shape:
    """What a schema says about object keys: the declared ones (``props``; None = can't tell), a
    shape for undeclared ones (``extra``; None = undeclared keys are flagged), the sub-shapes worth
    walking into, and the items' shape. Compiled once so a 1000-item batch is walked in ~2 ms."""

    __slots__ = ("discriminator", "extra", "items", "nested", "props", "subtypes")

    def __init__(self) -> None:
        self.props: frozenset[str] | None = None
        self.extra: Shape | None = None
        self.nested: list[tuple[str, Shape]] = []
        self.items: Shape | None = None
        self.discriminator: str | None = None
        self.subtypes: dict[str, Shape] = {}


def _walk(shape: Shape, value: Any, where: str, out: list[str]) -> None:
    if len(out) >= MAX_PROBLEMS:
        return
    if type(value) is dict:
        if shape.discriminator is not None:
            subtype = shape.subtypes.get(str(value.get(shape.discriminator)))
            if subtype is not None and subtype is not shape:
                _walk(subtype, value, where, out)
                return
        if shape.props is not None and not value.keys() <= shape.props:
            for k in value.keys() - shape.props:
                if shape.extra is not None:
                    _walk(shape.extra, value[k], f"{where}/{k}", out)
                elif len(out) < MAX_PROBLEMS:
                    out.append(f"{where}/{k}: property not declared by the schema")
        for k, sub in shape.nested:
            v = value.get(k)
            if v is not None:
                _walk(sub, v, f"{where}/{k}", out)
    elif type(value) is list and shape.items is not None:
        items = shape.items
        if items.props is not None and not items.nested and items.extra is None and items.discriminator is None:
            # Flat items (a measurement batch): only the key sets need comparing.
            props = items.props
            for i, v in enumerate(value):
                if type(v) is dict and not v.keys() <= props:
                    _walk(items, v, f"{where}/{i}", out)
            return
        for i, v in enumerate(value):
            _walk(items, v, f"{where}/{i}", out)


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------- the systems
def _m3ter_auth(path: str, authorization: str) -> str | None:
    # The document declares OAuth2 client credentials for everything, the token endpoint included;
    # m3ter's docs and SDK send Basic <key:secret> to /oauth/token and Bearer <token> elsewhere.
    if path == "/oauth/token":
        return None if authorization.startswith("Basic ") and len(authorization) > 6 else "no Basic credentials"
    return None if authorization.startswith("Bearer ") and authorization[7:].strip() else "no Bearer token"


def _hubspot_auth(path: str, authorization: str) -> str | None:
    # Private apps send Authorization: Bearer <token> (the documents' private_apps scheme).
    return None if authorization.startswith("Bearer ") and authorization[7:].strip() else "no Bearer token"


def _m3ter_client(user_agent: str, path: str) -> bool:
    # The official SDK (M3ter / AsyncM3ter), and M3terHook's own token fetch through plain httpx
    # (no test talks to the emulators through httpx; they use requests).
    return user_agent.startswith(("M3ter/Python", "AsyncM3ter/Python")) or (
        path == "/oauth/token" and user_agent.startswith("python-httpx/"))


def _hubspot_client(user_agent: str, path: str) -> bool:
    return user_agent.startswith("hubspot-api-client-python")


@dataclass(frozen=True)
class SystemSpec:
    name: str
    documents: tuple[str, ...]
    auth: Callable[[str, str], str | None]
    is_m3sh_client: Callable[[str, str], bool]
    patch: Callable[[dict[str, Any]], None] | None = None
    # Paths an emulator serves that stand in for another system, not for this API: passed through.
    not_api: tuple[str, ...] = ()
    # (documented prefix, the document's prefix): a path the vendor's docs use for an operation its
    # document lists under another prefix, judged as that operation.
    aliases: tuple[tuple[str, str], ...] = ()


SYSTEMS = {
    "m3ter": SystemSpec("m3ter", ("m3ter/m3ter-openapi.json",), _m3ter_auth, _m3ter_client,
                        # the S3 pre-signed URL that GET .../dataexports/jobs/{jobId}/getdownloadurl
                        # hands out (m3sh.sandbox.m3ter.dataexports.DOWNLOAD_PATH), and the S3
                        # pre-signed upload/download URLs of the file upload service (fileuploads.UPLOAD_PATH)
                        not_api=("/_downloads/", "/_uploads/")),
    "hubspot": SystemSpec(
        "hubspot",
        tuple(f"hubspot/{n}.json" for n in
              ("companies", "deals", "lineItems", "products", "objects", "associations-v4", "properties",
               "schemas",
               # written by m3sh from HubSpot's docs pages (tests/specs/PROVENANCE.md): no published one
               "private-apps", "legacy-crm")),
        _hubspot_auth, _hubspot_client, _patch_hubspot,
        # CRM/Schemas publishes the custom object schemas under /crm-object-schemas/v3/schemas; HubSpot's
        # docs (developers.hubspot.com/docs/api/crm/crm-custom-objects) and the published connectors
        # call /crm/v3/schemas.
        aliases=(("/crm/v3/schemas", "/crm-object-schemas/v3/schemas"),)),
}


def load_documents(system: str, root: Path | None = None) -> list[Document]:
    spec = SYSTEMS[system]
    root = root or spec_dir()
    docs = []
    for rel in spec.documents:
        path = root / rel
        if not path.exists():
            raise FileNotFoundError(f"spec guard: {system} OpenAPI document {path} not found "
                                    f"(set {SPEC_DIR_ENV} or restore tests/specs)")
        raw = json.loads(path.read_text())
        _translate_java_patterns(raw)
        if spec.patch:
            spec.patch(raw)
        docs.append(Document(Path(rel).stem, raw))
    return docs


# ------------------------------------------------------------------------------------ verdicts
@dataclass
class Request:
    method: str  # lower case
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @classmethod
    def from_scope(cls, scope: Scope, body: bytes) -> Request:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        return cls(scope["method"].lower(), scope["path"], query, headers, body)


@dataclass
class Verdict:
    operations: list[Operation] = field(default_factory=list)
    kind: str | None = None  # violation kind, when the request itself is refused or is invalid
    problems: list[str] = field(default_factory=list)
    unauthenticated: str | None = None
    expect_invalid: bool = False

    @property
    def keys(self) -> list[str]:
        return [f"{op.doc.name}:{op.key}" for op in self.operations]


def _media_match(content_type: str, content: dict[str, Any]) -> str | None:
    """The key of ``content`` a media type is served under (exact, then ``type/*``, then ``*/*``)."""
    if content_type in content:
        return content_type
    wildcard = content_type.split("/", maxsplit=1)[0] + "/*"
    if wildcard in content:
        return wildcard
    return "*/*" if "*/*" in content else None


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


_INT = re.compile(r"-?\d+")
_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _param_type(doc: Document, schema: Any) -> str | None:
    schema = doc.resolve(schema)
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("type"), str):
        return str(schema["type"])
    for member in schema.get("allOf") or []:
        t = _param_type(doc, member)
        if t:
            return t
    return None


def _cast(doc: Document, schema: Any, raw: str) -> tuple[bool, Any]:
    """A query/path string as the value its schema types it (form/simple style), or (False, raw)."""
    kind = _param_type(doc, schema)
    if kind == "integer":
        return (True, int(raw)) if _INT.fullmatch(raw) else (False, raw)
    if kind == "number":
        return (True, float(raw)) if _NUMBER.fullmatch(raw) else (False, raw)
    if kind == "boolean":
        # Case-insensitive: the official hubspot-api-client sends Python's str(True), "True".
        return (True, raw.lower() == "true") if raw.lower() in ("true", "false") else (False, raw)
    return True, raw


def check_parameters(op: Operation, req: Request, path_values: Sequence[str]) -> list[str]:
    problems = []
    given: dict[str, list[str]] = {}
    for name, value in req.query:
        given.setdefault(name, []).append(value)
    for name in given:
        if ("query", name) not in op.parameters:
            problems.append(f"query parameter {name!r} is not a parameter of {op.key} "
                            f"(the real API ignores it); documented: "
                            f"{sorted(n for w, n in op.parameters if w == 'query') or 'none'}")
    for name, value in zip(op.path_param_names, path_values, strict=True):
        problems += _check_value(op, ("path", name), [value])
    for (where, name), (param, _) in op.parameters.items():
        if where == "query":
            if name in given:
                problems += _check_value(op, (where, name), given[name])
            elif param.get("required"):
                problems.append(f"required query parameter {name!r} is missing")
        elif where == "header" and param.get("required") and name.lower() not in req.headers:
            problems.append(f"required header {name!r} is missing")
    return problems


def _check_value(op: Operation, key: tuple[str, str], values: list[str]) -> list[str]:
    found = op.parameters.get(key)
    if found is None:
        return [f"{key[0]} parameter {key[1]!r} is not declared by {op.key}"]
    param, schema_pointer = found
    doc = op.doc
    schema = doc.resolve(param.get("schema"))
    if schema is None:
        return []
    where = f"{key[0]} parameter {key[1]!r}"
    if _param_type(doc, schema) == "array":
        if param.get("explode", True) is False or key[0] == "path":
            values = [v for raw in values for v in raw.split(",")]
        items = schema.get("items", {})
        cast = [_cast(doc, items, v) for v in values]
        bad = [raw for (ok, _), raw in zip(cast, values, strict=True) if not ok]
        if bad:
            return [f"{where}: {bad[0]!r} is not a {_param_type(doc, items)}"]
        value: Any = [v for _, v in cast]
    else:
        if len(values) > 1:
            return [f"{where} given {len(values)} times"]
        ok, value = _cast(doc, schema, values[0])
        if not ok:
            return [f"{where}: {values[0]!r} is not a {_param_type(doc, schema)}"]
    return doc.schema_errors(schema_pointer, value, where)


def check_body(doc: Document, content: dict[str, Any], pointer: str, *, media_type: str, raw: bytes,
               where: str) -> tuple[list[str], Any]:
    """Problems of a body against an operation's ``content`` map (at JSON ``pointer``)."""
    key = _media_match(media_type, content)
    if key is None:
        return [f"{where}: media type {media_type or '(none)'!r} is not one of {sorted(content)}"], None
    media = content[key]
    if "schema" not in media or not _is_json(media_type):
        # Form bodies (m3ter's token endpoint types its form body as a bare "string") and other
        # non-JSON media: the media type is all the documents say that can be checked.
        return [], None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return [f"{where}: not valid JSON ({exc})"], None
    schema_pointer = f"{pointer}/{_pointer(key)[1:]}/schema"
    problems = doc.schema_errors(schema_pointer, value, where)
    doc.undocumented(media["schema"], value, where, problems)
    return problems, value


class SpecGuard:
    """Judges one emulator listener's traffic; ``servers`` are the production URLs it stands in for."""

    def __init__(self, system: str, servers: Iterable[str], *, error_body: Callable[[int, str], Any],
                 record_dir: Path | None = None, documents: list[Document] | None = None) -> None:
        self.system = SYSTEMS[system]
        self.servers = tuple(s.rstrip("/") for s in servers)
        self.documents = documents if documents is not None else load_documents(system)
        self.error_body = error_body
        self.recorder = Recorder(record_dir, system) if record_dir else None
        # Test-only: a function that may rewrite an emulator's JSON answer before it is judged
        # (tests prove a broken answer is refused; see test_spec_guard.py). Never set otherwise.
        self.tamper: Callable[[str, Any], Any] | None = None
        # Set through the admin API (POST /_sandbox/spec): the next ``count`` requests whose path
        # matches are a test's deliberately invalid ones, sent through m3sh code that cannot add
        # the header (e.g. a hook test feeding a malformed measurement).
        self.expected_invalid: list[list[Any]] = []  # [path regex, count left, reason]

    def admin(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        if method == "POST" and "expect_invalid" in body:
            want = body["expect_invalid"]
            if not isinstance(want, dict) or not want.get("reason"):
                raise ValueError("expect_invalid needs {'path_regex': ..., 'count': n, 'reason': ...}")
            self.expected_invalid.append([re.compile(str(want.get("path_regex", ""))),
                                          int(want.get("count", 1)), str(want["reason"])])
        elif method == "DELETE":
            self.expected_invalid.clear()
        return {"enabled": True, "servers": list(self.servers),
                "expect_invalid": [[r.pattern, n, why] for r, n, why in self.expected_invalid]}

    def _declared_invalid(self, req: Request) -> bool:
        if EXPECT_INVALID_HEADER in req.headers:
            return True
        for entry in self.expected_invalid:
            if entry[1] > 0 and entry[0].search(req.path):
                entry[1] -= 1
                if entry[1] == 0:
                    self.expected_invalid.remove(entry)
                return True
        return False

    # -- request side ------------------------------------------------------------------------------
    def route(self, method: str, path: str) -> list[tuple[Operation, tuple[str, ...]]]:
        """Per document, the most specific operation matching ``method path`` (servers aside),
        with its path parameter values."""
        found: list[tuple[Operation, tuple[str, ...]]] = []
        for documented, published in self.system.aliases:
            if path == documented or path.startswith(documented + "/"):
                path = published + path[len(documented):]
        for doc in self.documents:
            best: tuple[Operation, tuple[str, ...]] | None = None
            for op in doc.operations:
                if op.method != method:
                    continue
                m = op.regex.match(path)
                if m and (best is None or _more_specific(op, best[0])):
                    best = (op, m.groups())
            if best:
                found.append(best)
        return found

    def check_request(self, req: Request) -> tuple[Verdict, list[tuple[Operation, tuple[str, ...]]]]:
        verdict = Verdict(expect_invalid=self._declared_invalid(req))
        matches = self.route(req.method, req.path)
        if not matches:
            verdict.kind = "unknown-operation"
            verdict.problems.append(f"{req.method.upper()} {req.path} is not an operation of "
                                    f"{', '.join(d.name for d in self.documents)}")
            return verdict, []
        served = [(op, vals) for op, vals in matches if set(op.servers) & set(self.servers)]
        if not served:
            op = matches[0][0]
            verdict.operations = [op]
            verdict.kind = "wrong-server"
            verdict.problems.append(f"{op.key} is served by {', '.join(op.servers)}, not by "
                                    f"{', '.join(self.servers)} (this listener)")
            return verdict, []
        verdict.operations = [op for op, _ in served]
        verdict.unauthenticated = self.system.auth(req.path, req.headers.get("authorization", ""))
        for op, values in served:
            problems = check_parameters(op, req, values)
            body_spec = op.doc.resolve(op.node.get("requestBody"))
            has_body = bool(req.body.strip()) and req.body.strip() != b"{}"
            if body_spec:
                if not req.body.strip():
                    if body_spec.get("required"):
                        problems.append("request body is required")
                else:
                    pointer = (op.node["requestBody"]["$ref"][1:] if "$ref" in op.node["requestBody"]
                               else f"{op.pointer}/requestBody") + "/content"
                    problems += check_body(op.doc, body_spec.get("content", {}), pointer, media_type=req.content_type,
                                       raw=req.body, where="request body")[0]
            elif has_body:
                problems.append(f"{op.key} takes no request body")
            verdict.problems += [f"{op.doc.name}: {p}" if len(served) > 1 else p for p in problems]
        if verdict.problems:
            verdict.kind = "invalid-request"
        return verdict, served

    # -- response side -----------------------------------------------------------------------------
    def check_response(self, op: Operation, status: int, headers: dict[str, str], body: bytes) -> list[str]:
        responses = op.node.get("responses", {})
        key = str(status) if str(status) in responses else f"{str(status)[0]}XX"
        if key not in responses:
            key = "default"
        if key not in responses:
            return [f"status {status} is not documented for {op.key} (documented: {sorted(responses)})"]
        pointer = f"{op.pointer}/responses/{key}"
        if "$ref" in responses[key]:
            pointer = responses[key]["$ref"][1:]
        spec = op.doc.resolve(responses[key])
        problems = []
        for name, header in (spec.get("headers") or {}).items():
            if op.doc.resolve(header).get("required") and name.lower() not in headers:
                problems.append(f"response header {name!r} is required")
        content = spec.get("content") or {}
        if not content:
            if body.strip():
                problems.append(f"status {status} of {op.key} has no body in the spec, but one was sent")
            return problems
        if not body.strip():
            return [*problems, f"status {status} of {op.key} must have a body ({sorted(content)})"]
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        found, _ = check_body(op.doc, content, f"{pointer}/content", media_type=media, raw=body,
                              where="response body")
        return problems + found

    # -- ASGI --------------------------------------------------------------------------------------
    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"].startswith(self.system.not_api):
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            body = await _read_body(receive)
            req = Request.from_scope(scope, body)
            try:
                verdict, served = self.check_request(req)
            except Exception as exc:  # a bug here must show, not pass the request unjudged
                verdict, served = Verdict(kind="guard-error", problems=[f"{type(exc).__name__}: {exc}"]), []
            spent = time.perf_counter() - started  # the guard's own time, without the emulator's
            if verdict.kind in ("unknown-operation", "wrong-server", "guard-error") and not verdict.expect_invalid:
                await self._refuse(send, REFUSED_STATUS, verdict.problems)
                self._record(req, verdict, REFUSED_STATUS, spent)
                return
            if verdict.kind == "invalid-request" and not verdict.expect_invalid:
                await self._refuse(send, INVALID_REQUEST_STATUS, verdict.problems)
                self._record(req, verdict, INVALID_REQUEST_STATUS, spent)
                return

            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            messages: list[Message] = []

            async def capture(message: Message) -> None:
                messages.append(message)

            try:
                await app(scope, replay, capture)
            except BaseException:
                # A dropped connection (injected fault) or a crash: pass on what was started so the
                # client sees exactly that; there is no answer to judge.
                for message in messages:
                    await send(message)
                self._record(req, verdict, -1, spent, note="no answer (connection dropped)")
                raise
            judged = time.perf_counter()
            status, resp_headers, resp_body = _assemble(messages)
            if self.tamper is not None and served and resp_body:
                resp_body = orjson.dumps(self.tamper(served[0][0].key, orjson.loads(resp_body)))
                messages = [{"type": "http.response.start", "status": status, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(resp_body)).encode())]},
                    {"type": "http.response.body", "body": resp_body}]
            try:
                problems = self._judge(verdict, served, status=status, headers=resp_headers, body=resp_body)
            except Exception as exc:  # as above: never pass an answer unjudged
                verdict.kind, problems = "guard-error", [f"{type(exc).__name__}: {exc}"]
            spent += time.perf_counter() - judged
            if problems:
                verdict.kind = verdict.kind or "invalid-response"
                verdict.problems = problems
                await self._refuse(send, REFUSED_STATUS, [f"emulator answered {status}: {p}" for p in problems])
                self._record(req, verdict, status, spent)
                return
            for message in messages:
                await send(message)
            self._record(req, verdict, status, spent)

        return guarded

    def _judge(self, verdict: Verdict, served: list[tuple[Operation, tuple[str, ...]]], *,
               status: int, headers: dict[str, str], body: bytes) -> list[str]:
        """Problems of the emulator's answer; also settles the expected-invalid and no-auth cases."""
        if verdict.expect_invalid:
            if verdict.kind is None:
                verdict.kind = "declared-invalid-but-valid"
                return [f"the request carries {EXPECT_INVALID_HEADER} but the spec finds nothing wrong with it"]
            if not 400 <= status < 500:
                verdict.kind = "accepted-invalid"
                return [f"the emulator answered {status} to a request the spec forbids: {'; '.join(verdict.problems)}"]
            verdict.kind = None  # refused as it should be
            verdict.problems = []
        elif verdict.unauthenticated and status < 400:
            verdict.kind = "accepted-unauthenticated"
            return [f"the emulator answered {status} to a request with {verdict.unauthenticated}"]
        problems = []
        for op, _ in served:
            found = self.check_response(op, status, headers, body)
            problems += [f"{op.doc.name}: {p}" if len(served) > 1 else p for p in found]
        return problems

    async def _refuse(self, send: Send, status: int, problems: list[str]) -> None:
        message = f"m3sh spec guard ({self.system.name} OpenAPI): " + "; ".join(problems)
        raw = json.dumps(self.error_body(status, message)).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
            (b"x-should-retry", b"false")]})
        await send({"type": "http.response.body", "body": raw})

    def _record(self, req: Request, verdict: Verdict, status: int, spent: float, note: str | None = None) -> None:
        if self.recorder is None:
            return
        user_agent = req.headers.get("user-agent", "")
        entry: dict[str, Any] = {
            "system": self.system.name,
            "listener": list(self.servers),
            "ops": verdict.keys,
            "client": "m3sh" if self.system.is_m3sh_client(user_agent, req.path) else "test",
            "ua": user_agent.split(" ")[0][:60],
            "status": status,
            "outcome": ("violation" if verdict.kind else "expected-invalid" if verdict.expect_invalid
                        else "unauthenticated" if verdict.unauthenticated else "validated"),
            "ms": round(spent * 1000, 2),  # the guard's own time
        }
        if verdict.kind:
            entry["kind"] = verdict.kind
            entry["request"] = f"{req.method.upper()} {req.path}"
            entry["problems"] = verdict.problems[:MAX_PROBLEMS]
        if note:
            entry["note"] = note
        self.recorder.write(entry)


def _more_specific(a: Operation, b: Operation) -> bool:
    """Literal segments beat parameters, earliest difference first (as routers do)."""
    sa, sb = a.template.split("/"), b.template.split("/")
    for x, y in zip(sa, sb, strict=False):
        px, py = x.startswith("{"), y.startswith("{")
        if px != py:
            return py
    return a.n_params < b.n_params


def _assemble(messages: list[Message]) -> tuple[int, dict[str, str], bytes]:
    status, headers, chunks = 0, {}, []
    for m in messages:
        if m["type"] == "http.response.start":
            status = m["status"]
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in m.get("headers", [])}
        elif m["type"] == "http.response.body":
            chunks.append(m.get("body", b""))
    return status, headers, b"".join(chunks)


async def _read_body(receive: Receive) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


class Recorder:
    """Appends one JSON line per request (violations also to their own file, for per-test checks)."""

    def __init__(self, directory: Path, system: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        self.all_path = directory / f"{system}-{pid}.jsonl"
        self.violations_path = directory / f"violations-{system}-{pid}.jsonl"
        self._all: TextIO = open(self.all_path, "a", buffering=1)  # noqa: SIM115 - kept for the process
        self._violations: TextIO | None = None

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        self._all.write(line)
        if entry["outcome"] == "violation":
            if self._violations is None:
                self._violations = open(self.violations_path, "a", buffering=1)  # noqa: SIM115
            self._violations.write(line)


def guard_for(system: str, servers: Iterable[str], error_body: Callable[[int, str], Any]) -> SpecGuard:
    """The guard of one listener, recording into ``$M3SH_SPEC_COVERAGE_DIR`` when it is set."""
    record = os.environ.get(COVERAGE_DIR_ENV)
    return SpecGuard(system, servers, error_body=error_body, record_dir=Path(record) if record else None)


def expect_invalid(reason: str) -> dict[str, str]:
    """Headers for a test's deliberately invalid request: the guard passes it on to the emulator,
    checks that the spec does find it invalid and that the emulator refuses it (4xx)."""
    return {EXPECT_INVALID_HEADER: reason}
