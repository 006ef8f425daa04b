"""One classifier from a request to the operation it performs, for both sides of the coverage check.

The wiring suite's recorded requests and the requests a full run of every DAG makes against the
sandbox are mapped by the same function, so "the DAGs use an operation the wiring suite does not
cover" is a set difference, with no hand-kept list of operations anywhere:

* m3ter and HubSpot: the OpenAPI documents' path templates (``contracts.spec_operations``); the
  most specific template wins (fewest path parameters: ``/crm/v3/objects/companies/search`` in
  companies.json over ``/crm/v3/objects/{objectType}/search`` in objects.json).
* NetSuite: SuiteTalk REST's documented forms, the record type kept (``PUT
  /services/rest/record/v1/customer/eid:{externalId}`` is the upsert of a customer).
* Salesforce: the REST API's resources under ``/services/data/v{version}/`` and the SOAP login,
  the sObject kept (``PATCH .../sobjects/Invoice__c/M3ter_Bill_Id__c/{value}`` is an upsert).
* AWS: botocore's own service models: the JSON protocol's ``X-Amz-Target``, the query protocol's
  ``Action``, and for REST services (S3) the operation whose ``requestUri``, query markers and
  required header/query members fit the request (PutObject vs CopyObject by ``x-amz-copy-source``).

A request none of these fits raises :class:`Unclassified`, which the suite reports as a failure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.wiring import contracts
from tests.wiring.contracts import Recorded, SpecOperation

SYSTEMS = ("m3ter", "hubspot", "netsuite", "salesforce", "aws")


class Unclassified(ValueError):
    """A request that maps to no documented operation (or to more than one)."""


@dataclass(frozen=True, order=True)
class Operation:
    system: str
    id: str  # "METHOD template" (m3ter, HubSpot, NetSuite, Salesforce) or "service:OperationName" (AWS)
    spec: SpecOperation | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.system}: {self.id}"


def system_of_host(host: str) -> str | None:
    """Which system a production host belongs to (None: not one m3sh talks to)."""
    host = host.lower()
    if host in (contracts.M3TER_CONFIG_HOST, contracts.M3TER_INGEST_HOST):
        return "m3ter"
    if host == contracts.HUBSPOT_HOST:
        return "hubspot"
    if host.endswith(".suitetalk.api.netsuite.com"):
        return "netsuite"
    if host == contracts.SALESFORCE_LOGIN_HOST or host.endswith(".my.salesforce.com"):
        return "salesforce"
    if host.endswith(".amazonaws.com"):
        return "aws"
    return None


def classify(system: str, method: str, path: str, *, host: str = "", query: str = "",
             headers: Mapping[str, str] | None = None, body: bytes = b"") -> Operation:
    method = method.upper()
    if system in ("m3ter", "hubspot"):
        return _by_spec(system, method, path)
    if system == "netsuite":
        return Operation(system, _netsuite(method, path))
    if system == "salesforce":
        return Operation(system, _salesforce(method, path))
    if system == "aws":
        return Operation(system, _aws(method, host, path, query, {k.lower(): v for k, v in (headers or {}).items()},
                                      body))
    raise Unclassified(f"unknown system {system!r}")


def classify_recorded(rec: Recorded) -> Operation:
    system = system_of_host(rec.host)
    if system is None:
        raise Unclassified(f"{rec}: {rec.host} is no host of m3ter, HubSpot, NetSuite, Salesforce or AWS")
    parts = urlsplit(rec.url)
    return classify(system, rec.method, parts.path, host=rec.host, query=parts.query, headers=rec.headers,
                    body=rec.body)


# ------------------------------------------------------------------------------- OpenAPI systems
@cache
def _spec_index(system: str) -> tuple[tuple[re.Pattern[str], SpecOperation], ...]:
    index = []
    for op in contracts.spec_operations(system):
        pattern = "".join("[^/]+" if part.startswith("{") else re.escape(part)
                          for part in re.split(r"(\{[^}]+\})", op.template))
        index.append((re.compile(pattern), op))
    return tuple(index)


def _by_spec(system: str, method: str, path: str) -> Operation:
    found = [op for pattern, op in _spec_index(system) if op.method == method and pattern.fullmatch(path)]
    if not found:
        raise Unclassified(f"{system}: {method} {path} matches no operation of its OpenAPI document(s)")
    fewest = min(op.params for op in found)
    best = {(op.template, op.document): op for op in found if op.params == fewest}
    if len(best) > 1:
        raise Unclassified(f"{system}: {method} {path} matches several operations: {sorted(best)}")
    op = next(iter(best.values()))
    return Operation(system, f"{method} {op.template}", op)


# ------------------------------------------------------------------------------------- NetSuite
_NS_RECORD = re.compile(r"/services/rest/record/v1/([A-Za-z][A-Za-z0-9_]*)(?:/([^/]+))?")


def _netsuite(method: str, path: str) -> str:
    if path == contracts.NETSUITE_SUITEQL_PATH and method == "POST":
        return f"POST {path}"
    m = _NS_RECORD.fullmatch(path)
    if not m:
        raise Unclassified(f"netsuite: {method} {path} is neither a record (/services/rest/record/v1/<type>"
                           "[/<id>]) nor SuiteQL")
    record_type, record_id = m.groups()
    base = f"/services/rest/record/v1/{record_type}"
    if record_id is None:
        if method in ("GET", "POST"):
            return f"{method} {base}"
        raise Unclassified(f"netsuite: {method} {path}: a record collection takes GET (list) or POST (create)")
    by_eid = unquote(record_id).startswith("eid:")
    if method == "PUT" and not by_eid:
        raise Unclassified(f"netsuite: PUT {path}: PUT is documented only as upsert by external id (eid:)")
    if method not in ("GET", "PATCH", "DELETE", "PUT"):
        raise Unclassified(f"netsuite: {method} {path}: not a record operation")
    return f"{method} {base}/{'eid:{externalId}' if by_eid else '{id}'}"


# ----------------------------------------------------------------------------------- Salesforce
_SF_SOAP = re.compile(r"/services/Soap/u/\d+\.\d")
_SF_REST = re.compile(r"/services/data/v\d+\.\d(/.*)?")
_SF_NAME = r"[A-Za-z][A-Za-z0-9_]*"


def _salesforce(method: str, path: str) -> str:
    if _SF_SOAP.fullmatch(path) and method == "POST":
        return "POST /services/Soap/u/{version}"
    m = _SF_REST.fullmatch(path)
    if not m:
        raise Unclassified(f"salesforce: {method} {path} is neither the SOAP login nor under "
                           "/services/data/v<version>/")
    rest = m.group(1) or "/"
    base = "/services/data/v{version}"
    rules: list[tuple[str, str, str]] = [
        (r"/?", "GET", "/"),
        (r"/limits/?", "GET", "/limits"),
        (r"/(query|queryAll)/?", "GET", "/{0}"),
        (r"/(query|queryAll)/[^/]+", "GET", "/{0}/{{queryLocator}}"),
        (r"/sobjects/?", "GET", "/sobjects"),
        (rf"/sobjects/({_SF_NAME})/describe/?", "GET", "/sobjects/{0}/describe"),
        (rf"/sobjects/({_SF_NAME})/?", "GET|POST", "/sobjects/{0}"),
        (rf"/sobjects/({_SF_NAME})/[A-Za-z0-9]{{15}}(?:[A-Za-z0-9]{{3}})?", "GET|PATCH|DELETE", "/sobjects/{0}/{{id}}"),
        (rf"/sobjects/({_SF_NAME})/({_SF_NAME})/[^/]+", "GET|PATCH|DELETE", "/sobjects/{0}/{1}/{{value}}"),
    ]
    for pattern, methods, template in rules:
        rm = re.fullmatch(pattern, rest)
        if rm and method in methods.split("|"):
            return f"{method} {base}{template.format(*rm.groups())}"
    raise Unclassified(f"salesforce: {method} {path} is no REST resource m3sh's rules know")


# ------------------------------------------------------------------------------------------ AWS
_CREDENTIAL = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_S3_VIRTUAL_HOST = re.compile(r"(?P<bucket>.+)\.s3[.-](?:[a-z0-9-]+\.)?amazonaws\.com")


@cache
def _service_model(service: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


def aws_service(headers: Mapping[str, str], host: str = "", query: str = "") -> str:
    """The service a SigV4 request is signed for: from its Authorization header, or from the
    ``X-Amz-Credential`` of a pre-signed URL's query (m3ter's upload URLs)."""
    m = _CREDENTIAL.search(headers.get("authorization", ""))
    if m:
        return m.group(1)
    credential = dict(parse_qsl(query)).get("X-Amz-Credential", "")
    m = _CREDENTIAL.search(f"Credential={credential}")
    if m:
        return m.group(1)
    raise Unclassified(f"aws: request to {host or '?'} carries no SigV4 credential scope naming its service")


def _aws(method: str, host: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> str:  # noqa: PLR0917
    service = aws_service(headers, host, query)
    model = _service_model(service)
    if model.protocol == "json":
        target = headers.get("x-amz-target", "")
        name = target.rpartition(".")[2]
        if name not in model.operation_names:
            raise Unclassified(f"aws: {service} request with X-Amz-Target {target!r}: no such operation")
        return f"{service}:{name}"
    if model.protocol == "query":
        params = dict(parse_qsl(query)) | dict(parse_qsl(body.decode("utf-8", "replace")))
        name = params.get("Action", "")
        if name not in model.operation_names:
            raise Unclassified(f"aws: {service} request with Action {name!r}: no such operation")
        return f"{service}:{name}"
    return f"{service}:{_rest_operation(model, method, host, path, query, headers)}"


@cache
def _rest_index(service: str) -> tuple[tuple[str, str, re.Pattern[str], frozenset[str], frozenset[str],
                                              frozenset[str]], ...]:
    """Per operation: method, name, path pattern, query markers of its requestUri (``?list-type=2``,
    ``?delete``; ``x-id`` is a routing hint botocore does not send) and its required header and
    query members."""
    model = _service_model(service)
    out = []
    for name in model.operation_names:
        op = model.operation_model(name)
        uri_path, _, uri_query = op.http["requestUri"].partition("?")
        pattern = "".join(
            ".+" if part.endswith("+}") else "[^/]+" if part.startswith("{")
            else re.escape(part) for part in re.split(r"(\{[^}]+\})", uri_path))
        markers = frozenset(q.split("=")[0] for q in uri_query.split("&") if q and not q.startswith("x-id"))
        shape = op.input_shape
        required = set(shape.required_members) if shape is not None else set()
        members = shape.members if shape is not None else {}
        req_headers = frozenset(members[m].serialization["name"].lower() for m in required
                                if members[m].serialization.get("location") == "header")
        req_query = frozenset(members[m].serialization["name"] for m in required
                              if members[m].serialization.get("location") == "querystring")
        out.append((op.http["method"], name, re.compile(pattern + "/?"), markers, req_headers, req_query))
    return tuple(out)


def _rest_operation(model: Any, method: str, host: str, path: str, query: str,  # noqa: PLR0917
                    headers: Mapping[str, str]) -> str:
    service = model.service_name
    vhost = _S3_VIRTUAL_HOST.fullmatch(host) if service == "s3" else None
    if vhost:  # virtual-hosted-style: the bucket is in the host, the model's URIs are path-style
        path = f"/{vhost.group('bucket')}{path}"
    keys = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
    scored = []
    for op_method, name, pattern, markers, req_headers, req_query in _rest_index(service):
        if op_method != method or not pattern.fullmatch(path) or not markers <= keys:
            continue
        if not req_headers <= set(headers) or not req_query <= keys:
            continue
        scored.append((len(markers) + len(req_headers) + len(req_query), name))
    if not scored:
        raise Unclassified(f"aws: {service} {method} {path}?{query} fits no operation of botocore's model")
    scored.sort(reverse=True)
    if len(scored) > 1 and scored[0][0] == scored[1][0]:
        raise Unclassified(f"aws: {service} {method} {path}?{query} fits several operations: "
                           f"{[n for s, n in scored if s == scored[0][0]]}")
    return scored[0][1]


# ------------------------------------------------------------------------------------- coverage
def uncovered(used: Iterable[Operation], covered: Iterable[Operation]) -> list[Operation]:
    """The operations in ``used`` that ``covered`` lacks, sorted (by system, then id)."""
    return sorted(set(used) - set(covered))


def summary(used: Iterable[Operation], covered: Iterable[Operation]) -> list[str]:
    used_s, covered_s = set(used), set(covered)
    lines = [f"{'system':<11} {'wiring covers':>13} {'DAGs use':>9} {'DAG ops covered':>16}"]
    for system in SYSTEMS:
        u = {o for o in used_s if o.system == system}
        c = {o for o in covered_s if o.system == system}
        lines.append(f"{system:<11} {len(c):>13} {len(u):>9} {len(u & c):>12}/{len(u):<3}")
    return lines


def dag_side_operations(paths: Mapping[str, Mapping[str, int]], moto_recording: str = ""
                        ) -> tuple[dict[Operation, int], list[str]]:
    """Classify what the sandbox saw: each emulator's ``GET /_sandbox/stats`` ``paths`` (system ->
    ``{"METHOD /path": count}``) and moto's request recording (one JSON object per line: method,
    url, headers, body). Returns the operations with their request counts, and every request that
    fits no documented operation."""
    import base64
    import json

    used: dict[Operation, int] = {}
    unclassified: list[str] = []
    for system, counts in paths.items():
        for key, n in counts.items():
            method, _, path = key.partition(" ")
            try:
                op = classify(system, method, path)
            except Unclassified as exc:
                unclassified.append(f"{system}: {key} ({n}x): {exc}")
                continue
            used[op] = used.get(op, 0) + n
    for line in moto_recording.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        body = entry.get("body") or ""
        raw = base64.b64decode(body) if entry.get("body_encoded") else str(body).encode()
        parts = urlsplit(entry["url"])
        try:
            op = classify("aws", entry["method"], parts.path, host=parts.hostname or "", query=parts.query,
                          headers=entry.get("headers") or {}, body=raw)
        except Unclassified as exc:
            unclassified.append(f"aws: {entry['method']} {entry['url']}: {exc}")
            continue
        used[op] = used.get(op, 0) + 1
    return used, unclassified


def coverage_problems(used: Iterable[Operation], unclassified: Iterable[str],
                      covered: Iterable[Operation]) -> list[str]:
    """Why the wiring suite does not cover what the DAGs do: each uncovered operation, and each
    request no rule classifies (an operation nobody can even name cannot have been checked)."""
    return ([f"a DAG uses {op}, which the production-wiring suite does not cover" for op in uncovered(used, covered)]
            + [f"a DAG request fits no documented operation: {u}" for u in unclassified])
