"""The spec guard itself (``m3sh.sandbox.specguard``): it refuses what the published documents do not
allow, records it, and agrees with openapi-core, the reference implementation, on what is valid.

The guard runs in-process here around real emulators (not the session's sandbox), recording into a
temporary folder, so the violations these tests provoke on purpose do not fail the session.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import m3ter
import pytest
from starlette.testclient import TestClient

from m3sh.sandbox import credentials as cred
from m3sh.sandbox import specguard
from m3sh.sandbox.common import build_asgi
from m3sh.sandbox.hubspot import HubSpotEmulator
from m3sh.sandbox.m3ter import M3terEmulator

SPECS = Path(__file__).resolve().parents[2] / "specs"
SHARED = (Path(__file__).resolve().parents[3] / ".." / "shared" / "specs").resolve()
ORG = f"/organizations/{cred.M3TER_ORG_ID}"
BASIC = "Basic " + base64.b64encode(f"{cred.M3TER_ACCESS_KEY}:{cred.M3TER_API_SECRET}".encode()).decode()


# -- the documents ---------------------------------------------------------------------------------
def test_vendored_documents_are_the_published_ones() -> None:
    """Every document the guard reads has a PROVENANCE row whose sha256 it matches; where
    ../shared/specs is beside the repo, the copies still equal it (a newer shared copy shows here)."""
    rows = re.findall(r"^\| `([^`]+\.json)` .*\| `([0-9a-f]{64})` \|$", (SPECS / "PROVENANCE.md").read_text(), re.M)
    listed = dict(rows)
    used = [rel for system in specguard.SYSTEMS.values() for rel in system.documents]
    assert sorted(listed) == sorted(used)
    for rel, digest in listed.items():
        assert hashlib.sha256((SPECS / rel).read_bytes()).hexdigest() == digest, f"{rel} differs from PROVENANCE.md"
    if SHARED.is_dir():
        pairs = {"m3ter/m3ter-openapi.json": SHARED / "m3ter-openapi.json",
                 **{f"hubspot/{p.name}": p for p in (SHARED / "hubspot").glob("*.json")}}
        for rel, shared in pairs.items():
            assert (SPECS / rel).read_bytes() == shared.read_bytes(), f"{rel}: ../shared/specs has another version"


# -- the guard around real emulators -----------------------------------------------------------------
class Guarded:
    def __init__(self, emulator: Any, servers: tuple[str, ...], records: Path) -> None:
        self.emulator = emulator
        self.app = build_asgi(emulator, spec_servers=servers)
        self.guard: specguard.SpecGuard = self.app.spec_guard  # type: ignore[attr-defined]
        assert self.guard is not None, "build_asgi did not put the spec guard in front of the emulator"
        self.client = TestClient(self.app)
        self.records = records

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for p in sorted(self.records.glob(f"{self.emulator.name}-*.jsonl"))
                for line in p.read_text().splitlines()]

    def last(self) -> dict[str, Any]:
        return self.entries()[-1]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("spec-records")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(specguard.ENABLE_ENV, "1")
        mp.setenv(specguard.COVERAGE_DIR_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def m3(records: Path) -> Guarded:
    emulator = M3terEmulator()
    emulator.reset("demo")
    emulator.limits_enabled = False
    # the Config API listener only (as after the ingest split): measurements do not belong here
    return Guarded(emulator, ("https://api.m3ter.com",), records)


@pytest.fixture(scope="module")
def m3_token(m3: Guarded) -> dict[str, str]:
    r = m3.client.post("/oauth/token", json={"grant_type": "client_credentials"}, headers={"Authorization": BASIC})
    assert r.status_code == 200, r.text
    assert m3.last()["outcome"] == "validated" and m3.last()["ops"] == ["m3ter-openapi:POST /oauth/token"]
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture(scope="module")
def hs(records: Path) -> Guarded:
    emulator = HubSpotEmulator()
    emulator.reset("demo")
    emulator.limits_enabled = False
    return Guarded(emulator, ("https://api.hubapi.com",), records)


HS_AUTH = {"Authorization": f"Bearer {cred.HUBSPOT_TOKEN}"}


def test_an_operation_the_document_lacks_is_refused_and_not_retried(m3: Guarded, m3_token: dict[str, str]) -> None:
    r = m3.client.get(f"{ORG}/nosuch", headers=m3_token)
    assert r.status_code == 501 and r.headers["x-should-retry"] == "false"
    assert "spec guard" in r.json()["message"] and f"GET {ORG}/nosuch is not an operation" in r.json()["message"]
    last = m3.last()
    assert last["outcome"] == "violation" and last["kind"] == "unknown-operation" and last["status"] == 501

    # The official SDK honours x-should-retry: one attempt, and the test that sent it sees the error.
    before = m3.emulator.stats.counts[f"GET {ORG}/nosuch".replace(cred.M3TER_ORG_ID, "{id}")]
    sdk = m3ter.M3ter(api_key="k", api_secret="s", org_id=cred.M3TER_ORG_ID, base_url="http://testserver",
                      token=m3_token["Authorization"][7:], token_expiry=dt.datetime(2999, 1, 1), max_retries=3,
                      http_client=m3.client)
    with pytest.raises(m3ter.InternalServerError, match="not an operation"):
        sdk.get(f"{ORG}/nosuch", cast_to=object)
    assert m3.emulator.stats.counts[f"GET {ORG}/nosuch".replace(cred.M3TER_ORG_ID, "{id}")] == before + 1


def test_an_operation_at_the_wrong_server_is_refused(m3: Guarded, m3_token: dict[str, str]) -> None:
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = m3.client.post(f"{ORG}/measurements", headers=m3_token, json={"measurements": [
        {"uid": "w-1", "account": "acme-media", "meter": "api_calls", "ts": ts, "measure": {"quantity": 1}}]})
    assert r.status_code == 501
    assert "served by https://ingest.m3ter.com, not by https://api.m3ter.com" in r.json()["message"]
    assert m3.last()["kind"] == "wrong-server"
    assert "w-1" not in m3.emulator.usage.uids  # refused before the emulator saw it


def test_invalid_requests_are_refused_before_the_emulator_sees_them(m3: Guarded, m3_token: dict[str, str]) -> None:
    accounts = len(m3.emulator.store.coll("accounts"))
    r = m3.client.post(f"{ORG}/accounts", headers=m3_token,
                       json={"code": "sg-1", "name": "SG", "emailAddress": "not-an-email"})
    assert r.status_code == 400 and r.headers["x-should-retry"] == "false"
    assert 'request body/emailAddress: "not-an-email" is not a "email"' in r.json()["message"]
    assert m3.last()["kind"] == "invalid-request"
    assert len(m3.emulator.store.coll("accounts")) == accounts

    r = m3.client.post(f"{ORG}/accounts", headers=m3_token,
                       json={"code": "sg-1", "name": "SG", "emailAddress": "sg@x.example", "nickname": "x"})
    assert r.status_code == 400 and "request body/nickname: property not declared" in r.json()["message"]

    r = m3.client.get(f"{ORG}/accounts", headers=m3_token, params={"pageSize": 2, "accountId": "x"})
    assert r.status_code == 400 and "query parameter 'accountId' is not a parameter" in r.json()["message"]
    r = m3.client.get(f"{ORG}/accounts", headers=m3_token, params={"pageSize": "two"})
    assert r.status_code == 400 and "'two' is not a integer" in r.json()["message"]


def test_a_broken_answer_is_replaced_by_a_501_naming_the_operation(m3: Guarded, m3_token: dict[str, str]) -> None:
    def tamper(operation: str, body: Any) -> Any:
        if operation == "GET /organizations/{orgId}/accounts":
            body["data"][0]["version"] = "one"
        return body

    m3.guard.tamper = tamper
    try:
        r = m3.client.get(f"{ORG}/accounts", headers=m3_token, params={"pageSize": 1})
    finally:
        m3.guard.tamper = None
    assert r.status_code == 501 and r.headers["x-should-retry"] == "false"
    message = r.json()["message"]
    assert "emulator answered 200" in message
    assert 'response body/data/0/version: "one" is not of type "integer"' in message
    assert m3.last()["kind"] == "invalid-response"
    assert m3.client.get(f"{ORG}/accounts", headers=m3_token, params={"pageSize": 1}).status_code == 200


def test_declared_invalid_requests_reach_the_emulator_which_must_refuse_them(m3: Guarded,
                                                                             m3_token: dict[str, str]) -> None:
    bad = {"code": "sg-2", "name": "SG", "emailAddress": ""}
    r = m3.client.post(f"{ORG}/accounts", json=bad, headers={**m3_token, **specguard.expect_invalid("empty email")})
    assert r.status_code == 400 and "spec guard" not in r.json()["message"]  # the emulator's own answer
    assert m3.last()["outcome"] == "expected-invalid"

    good = {"code": "sg-3", "name": "SG", "emailAddress": "sg3@x.example"}
    r = m3.client.post(f"{ORG}/accounts", json=good, headers={**m3_token, **specguard.expect_invalid("wrongly")})
    assert r.status_code == 501 and m3.last()["kind"] == "declared-invalid-but-valid"

    # the admin API declares the next request(s) for code that cannot add a header (m3sh's hooks)
    state = m3.client.post("/_sandbox/spec", json={"expect_invalid": {
        "path_regex": "/accounts$", "count": 1, "reason": "a hook test's malformed account"}}).json()
    assert state["expect_invalid"] == [["/accounts$", 1, "a hook test's malformed account"]]
    assert m3.client.post(f"{ORG}/accounts", json=bad, headers=m3_token).status_code == 400
    assert m3.last()["outcome"] == "expected-invalid"
    assert m3.client.get("/_sandbox/spec").json()["expect_invalid"] == []


def test_requests_without_auth_must_be_refused_by_the_emulator(m3: Guarded, hs: Guarded) -> None:
    assert m3.client.get(f"{ORG}/accounts").status_code == 403
    assert m3.last()["outcome"] == "unauthenticated"
    assert m3.client.post("/oauth/token", json={"grant_type": "client_credentials"},
                          headers={"Authorization": "Bearer nope"}).status_code == 403
    assert hs.client.get("/crm/v3/objects/companies").status_code == 401
    assert hs.last()["outcome"] == "unauthenticated"


def test_hubspot_operations_outside_the_documents_are_refused(hs: Guarded) -> None:
    # The emulator serves the owners API, but m3sh's documents do not include it.
    r = hs.client.get("/crm/v3/owners", headers=HS_AUTH)
    assert r.status_code == 501 and r.json()["category"] and "not an operation of" in r.json()["message"]
    r = hs.client.post("/crm/v3/properties/deals", headers=HS_AUTH, json={"name": "x_prop", "label": "X"})
    assert r.status_code == 400 and '"type" is a required property' in r.json()["message"]
    assert hs.client.get("/crm/v3/objects/companies", headers=HS_AUTH, params={"limit": 1}).status_code == 200
    assert hs.last()["outcome"] == "validated"
    assert hs.last()["ops"] == ["companies:GET /crm/v3/objects/companies", "objects:GET /crm/v3/objects/{objectType}"]


# -- a second opinion: openapi-core -----------------------------------------------------------------
class _Req:
    def __init__(self, host: str, path: str, method: str, body: bytes | None) -> None:
        from openapi_core.datatypes import RequestParameters
        from werkzeug.datastructures import Headers, ImmutableMultiDict

        self.host_url, self.path, self.method, self.body = host, path, method, body
        self.content_type = "application/json"
        self.parameters = RequestParameters(query=ImmutableMultiDict(), header=Headers({"Authorization": "Bearer x"}),
                                            cookie=ImmutableMultiDict(), path={})


class _Resp:
    def __init__(self, status: int, data: bytes) -> None:
        from werkzeug.datastructures import Headers

        self.status_code, self.data, self.content_type = status, data, "application/json"
        self.headers = Headers({"Content-Type": "application/json"})


ACCOUNT = {"id": "5b7c9a7e-9a83-4c2a-8f2e-0b1f2a3c4d5e", "version": 1, "code": "acme", "name": "Acme",
           "emailAddress": "ap@acme.example", "dtCreated": "2026-01-01T00:00:00Z", "currency": "USD"}
MEASUREMENT = {"uid": "u-1", "account": "acme", "meter": "api_calls", "ts": "2026-01-01T00:00:00Z",
               "measure": {"quantity": 1.5}}
COMPANY = {"id": "9000000001", "properties": {"name": "Acme", "domain": None},
           "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-02T00:00:00Z", "archived": False}

# (system, method, concrete path, status or None for a request body, body, valid?)
CASES = [
    ("m3ter", "get", f"{ORG}/accounts", 200, {"data": [ACCOUNT], "nextToken": "t"}, True),
    ("m3ter", "get", f"{ORG}/accounts", 200, {"data": [{**ACCOUNT, "version": "1"}]}, False),
    ("m3ter", "get", f"{ORG}/accounts", 200, {"data": [{**ACCOUNT, "dtCreated": "yesterday"}]}, False),
    ("m3ter", "get", f"{ORG}/accounts/{ACCOUNT['id']}", 200, {**ACCOUNT, "name": ["Acme"]}, False),
    ("m3ter", "get", f"{ORG}/accounts/{ACCOUNT['id']}", 404, {"message": "not found"}, True),
    ("m3ter", "post", f"{ORG}/measurements", None, {"measurements": [MEASUREMENT]}, True),
    ("m3ter", "post", f"{ORG}/measurements", None, {"measurements": [{**MEASUREMENT, "ts": "noon"}]}, False),
    ("m3ter", "post", f"{ORG}/measurements", None, {"measurements": [{"uid": "u", "meter": "m"}]}, False),
    ("m3ter", "post", f"{ORG}/measurements", None, {"measurements": [MEASUREMENT] * 1001}, False),
    ("m3ter", "post", f"{ORG}/measurements", None, {"measurements": [{**MEASUREMENT, "measure": {"q": "x"}}]}, False),
    ("m3ter", "post", f"{ORG}/accounts", None, {"code": "a", "name": "A", "emailAddress": "a@x.example"}, True),
    ("m3ter", "post", f"{ORG}/accounts", None, {"code": "a", "name": "A"}, False),
    ("hubspot", "get", "/crm/v3/objects/companies/9000000001", 200, COMPANY, True),
    ("hubspot", "get", "/crm/v3/objects/companies/9000000001", 200, {**COMPANY, "id": 9000000001}, False),
    ("hubspot", "get", "/crm/v3/objects/companies/9000000001", 200, {**COMPANY, "archived": "no"}, False),
    ("hubspot", "post", "/crm/v3/objects/companies/batch/read", None,
     {"inputs": [{"id": "1"}], "properties": ["name"], "propertiesWithHistory": []}, True),
    ("hubspot", "post", "/crm/v3/objects/companies/batch/read", None, {"inputs": [{"id": 1}]}, False),
]


@pytest.fixture(scope="module")
def judges() -> dict[str, tuple[specguard.SpecGuard, Any]]:
    from openapi_core import Config, OpenAPI

    out = {}
    for system, server in (("m3ter", "https://api.m3ter.com"), ("hubspot", "https://api.hubapi.com")):
        docs = specguard.load_documents(system, SPECS)
        guard = specguard.SpecGuard(system, (server, "https://ingest.m3ter.com"), error_body=lambda s, m: {},
                                    documents=docs)
        # openapi-core judges the same (patched) first document: companies.json for HubSpot cases.
        config = Config(spec_validator_cls=None,
                        extra_media_type_deserializers={"*/*": lambda raw, **_: json.loads(raw)})
        out[system] = (guard, OpenAPI.from_dict(json.loads(json.dumps(docs[0].raw)), config=config))
    return out


@pytest.mark.parametrize("case", CASES, ids=[
    f"{c[0]}-{c[1]}-{str(c[2]).rsplit('/', 1)[-1]}-{c[3]}-{'valid' if c[5] else 'invalid'}" for c in CASES])
def test_the_guard_agrees_with_openapi_core(judges: dict[str, tuple[specguard.SpecGuard, Any]],
                                            case: tuple[Any, ...]) -> None:
    system, method, path, status, body, valid = case
    guard, reference = judges[system]
    raw = json.dumps(body).encode()
    request_body = raw if status is None else (b"{}" if method == "post" else None)
    req = specguard.Request(method, path, [], {"authorization": "Bearer x", "content-type": "application/json"},
                            request_body or b"")
    verdict, served = guard.check_request(req)
    host = served[0][0].servers[0]
    if status is None:
        ours = verdict.problems
        theirs = _errors(lambda: reference.validate_request(_Req(host, path, method, raw)))
    else:
        assert not verdict.problems, verdict.problems
        ours = guard.check_response(served[0][0], status, {"content-type": "application/json"}, raw)
        theirs = _errors(lambda: reference.validate_response(_Req(host, path, method, request_body),
                                                             _Resp(status, raw)))
    assert (not ours) is valid, ours
    assert (not theirs) is valid, f"openapi-core disagrees with the case: {theirs}"


def _errors(call: Any) -> list[str]:
    try:
        call()
    except Exception as exc:
        return [repr(exc)]
    return []
