"""The contract checks can fail: each one, fed a request that breaks its rule (a recorded one with a
single thing changed), names the problem. Without these, a check that passes everything would look
the same as a client that is right.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.wiring import canned, contracts, scenarios
from tests.wiring.conftest import Wired
from tests.wiring.contracts import Recorded
from tests.wiring.operations import Unclassified, classify, classify_recorded


def _first(wired: Wired, system: str, op_id: str) -> Recorded:
    rec = next((r for r, op in wired.of(system) if op.id == op_id), None)
    assert rec is not None, f"the scenarios sent no {system} {op_id}"
    return dataclasses.replace(rec, headers=dict(rec.headers))


def _with_url(rec: Recorded, *, host: str | None = None, path: str | None = None, query: str | None = None) -> Recorded:
    p = urlsplit(rec.url)
    url = urlunsplit((p.scheme, host or p.netloc, path or p.path, p.query if query is None else query, ""))
    return dataclasses.replace(rec, url=url, headers=dict(rec.headers))


def _m3ter_problems(rec: Recorded) -> list[str]:
    op = classify_recorded(rec) if rec.host in (contracts.M3TER_CONFIG_HOST, contracts.M3TER_INGEST_HOST) else \
        classify("m3ter", rec.method, rec.path)
    return contracts.openapi_problems("m3ter", rec, op.spec, token=canned.M3TER_TOKEN)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ m3ter
def test_measurements_on_the_config_host_fail(wired: Wired) -> None:
    """The issue's bug: the Ingest API's operation sent to api.m3ter.com."""
    rec = _first(wired, "m3ter", "POST /organizations/{orgId}/measurements")
    assert _m3ter_problems(rec) == []
    problems = _m3ter_problems(_with_url(rec, host="api.m3ter.com"))
    assert any("ServerNotFound" in p for p in problems)
    assert any("does not serve POST /organizations/{orgId}/measurements" in p for p in problems)


def test_a_config_call_on_the_ingest_host_fails(wired: Wired) -> None:
    rec = _first(wired, "m3ter", "GET /organizations/{orgId}/accounts")
    assert any("does not serve" in p for p in _m3ter_problems(_with_url(rec, host="ingest.m3ter.com")))


def test_an_undeclared_query_parameter_fails(wired: Wired) -> None:
    """GET /plans has no ``codes`` filter: the API would ignore it and answer the first page."""
    rec = _first(wired, "m3ter", "GET /organizations/{orgId}/plans")
    problems = _m3ter_problems(_with_url(rec, query="pageSize=100&codes=growth"))
    assert any("['codes'] not declared" in p for p in problems)


def test_a_missing_required_body_field_fails(wired: Wired) -> None:
    rec = _first(wired, "m3ter", "POST /organizations/{orgId}/accounts")
    body = {k: v for k, v in json.loads(rec.body).items() if k != "emailAddress"}
    problems = _m3ter_problems(dataclasses.replace(rec, body=json.dumps(body).encode()))
    assert any("'emailAddress' is a required property" in p for p in problems)


def test_a_query_parameter_outside_the_specs_bounds_fails(wired: Wired) -> None:
    rec = _first(wired, "m3ter", "GET /organizations/{orgId}/accounts")
    problems = _m3ter_problems(_with_url(rec, query="pageSize=500"))
    assert any("pageSize" in p and "greater than the maximum of 100" in p for p in problems)


def test_a_missing_or_foreign_bearer_token_fails(wired: Wired) -> None:
    rec = _first(wired, "m3ter", "GET /organizations/{orgId}/accounts")
    rec.headers.pop("authorization")
    assert any("not a Bearer token" in p for p in _m3ter_problems(rec))
    rec.headers["authorization"] = "Bearer someone-elses"
    assert any("different token" in p for p in _m3ter_problems(rec))


def test_a_wrong_token_request_fails(wired: Wired) -> None:
    rec = _first(wired, "m3ter", "POST /oauth/token")
    assert contracts.m3ter_token_problems(rec, scenarios.M3TER_KEY, scenarios.M3TER_SECRET) == []
    wrong_basic = dataclasses.replace(rec, headers={**rec.headers, "authorization": "Basic " + base64.b64encode(
        b"key:other-secret").decode()})
    assert any("HTTP Basic" in p for p in contracts.m3ter_token_problems(wrong_basic, scenarios.M3TER_KEY,
                                                                           scenarios.M3TER_SECRET))
    on_ingest = _with_url(rec, host="ingest.m3ter.com")
    assert any("not POST https://api.m3ter.com/oauth/token" in p
               for p in contracts.m3ter_token_problems(on_ingest, scenarios.M3TER_KEY, scenarios.M3TER_SECRET))
    no_grant = dataclasses.replace(rec, body=b'{"grant_type": "password"}')
    assert any("grant_type" in p for p in contracts.m3ter_token_problems(no_grant, scenarios.M3TER_KEY,
                                                                          scenarios.M3TER_SECRET))


# ---------------------------------------------------------------------------------------- HubSpot
def test_hubspot_checks_fail_on_a_broken_request(wired: Wired) -> None:
    rec = _first(wired, "hubspot", "POST /crm/v3/objects/companies/batch/read")
    op = classify_recorded(rec)

    def problems(r: Recorded) -> list[str]:
        return contracts.openapi_problems("hubspot", r, op.spec, token=scenarios.HUBSPOT_TOKEN)  # type: ignore[arg-type]

    assert problems(rec) == []
    body = {k: v for k, v in json.loads(rec.body).items() if k != "propertiesWithHistory"}
    assert any("propertiesWithHistory" in p for p in problems(dataclasses.replace(rec, body=json.dumps(body).encode())))
    assert any("not declared" in p for p in problems(_with_url(rec, query="hapikey=x")))
    assert any("does not serve" in p for p in problems(_with_url(rec, host="api.hubspot.com")))
    assert any("not a Bearer token" in p for p in problems(dataclasses.replace(
        rec, headers={**rec.headers, "authorization": "private-app x"})))


# --------------------------------------------------------------------------------------- NetSuite
def _ns(rec: Recorded) -> list[str]:
    return contracts.netsuite_problems(rec, **scenarios.NETSUITE["netsuite_default"])


def test_a_wrong_oauth_signature_base_fails(wired: Wired) -> None:
    rec = next(r for r, op in wired.of("netsuite") if r.host.startswith("1234567-sb1") and "replace=" in r.url)
    assert _ns(rec) == []
    # the same header over another request: a different base string, so the signature fails
    assert any("signature does not verify" in p for p in _ns(_with_url(rec, query="replace=other")))
    assert any("signature does not verify" in p for p in _ns(dataclasses.replace(rec, method="PATCH")))
    wrong_secret = {**scenarios.NETSUITE["netsuite_default"], "token_secret": "other"}
    assert any("signature does not verify" in p for p in contracts.netsuite_problems(rec, **wrong_secret))


def test_netsuite_realm_host_and_suiteql_rules_fail_when_broken(wired: Wired) -> None:
    rec = next(r for r, op in wired.of("netsuite") if r.host.startswith("1234567-sb1"))
    lower_realm = dataclasses.replace(rec, headers={
        **rec.headers, "authorization": rec.headers["authorization"].replace('realm="1234567_SB1"',
                                                                             'realm="1234567-sb1"')})
    assert any("realm" in p for p in _ns(lower_realm))
    sha1 = dataclasses.replace(rec, headers={**rec.headers, "authorization": rec.headers["authorization"].replace(
        "HMAC-SHA256", "HMAC-SHA1")})
    assert any("oauth_signature_method" in p for p in _ns(sha1))
    assert any("not the account's" in p for p in _ns(_with_url(rec, host="1234567_sb1.suitetalk.api.netsuite.com")))
    assert any("not the account's" in p for p in _ns(_with_url(rec, host="rest.netsuite.com")))
    suiteql = next(r for r, op in wired.of("netsuite") if op.id.endswith("/suiteql") and r.host.startswith("1234567"))
    assert _ns(suiteql) == []
    no_prefer = dataclasses.replace(suiteql, headers={k: v for k, v in suiteql.headers.items() if k != "prefer"})
    assert any("Prefer: transient" in p for p in _ns(no_prefer))
    assert any("not documented (limit, offset)" in p for p in _ns(_with_url(suiteql, query="limit=5&pageSize=5")))


def test_an_undocumented_netsuite_record_query_parameter_fails(wired: Wired) -> None:
    rec = next(r for r, op in wired.of("netsuite") if op.id == "GET /services/rest/record/v1/customer/{id}"
               and r.host.startswith("1234567"))
    assert _ns(rec) == []
    # a typo NetSuite would not apply (the signature fails too: the query is in the base string)
    problems = _ns(_with_url(rec, query="expandSubResource=true"))
    assert any("['expandSubResource'] are not documented" in p for p in problems)


# ------------------------------------------------------------------------------------- Salesforce
def test_salesforce_rules_fail_when_broken(wired: Wired) -> None:
    from m3sh.hooks.salesforce import API_VERSION

    sf = [r for r, _ in wired.of("salesforce")]

    def problems(r: Recorded, version: str = API_VERSION) -> list[str]:
        return contracts.salesforce_problems(r, version=version, instance_host=canned.SALESFORCE_INSTANCE,
                                             session_id=canned.SALESFORCE_SESSION)

    login, rest = sf[0], sf[1]
    assert problems(login) == problems(rest) == []
    assert any("not /services/Soap/u/61.0" in p for p in problems(login, version="61.0"))
    assert any("not under /services/data/v61.0/" in p for p in problems(rest, version="61.0"))
    assert any("not the instance" in p for p in problems(_with_url(rest, host="login.salesforce.com")))
    assert any("SOAP login went to" in p for p in problems(_with_url(login, host=canned.SALESFORCE_INSTANCE)))
    query = next(r for r, op in wired.of("salesforce") if op.id.endswith("/query"))
    assert problems(query) == []
    assert any("['batchSize'] are not documented" in p
               for p in problems(_with_url(query, query=urlsplit(query.url).query + "&batchSize=200")))


# -------------------------------------------------------------------------------------------- AWS
def test_aws_endpoint_override_and_wrong_region_fail(wired: Wired) -> None:
    rec = next(r for r, op in wired.of("aws") if op.id == "sqs:ReceiveMessage")
    assert contracts.aws_problems(rec, service="sqs", region="us-east-1") == []
    local = dataclasses.replace(rec, url="http://127.0.0.1:4566/")
    assert any("expected https://['sqs.us-east-1.amazonaws.com']" in p
               for p in contracts.aws_problems(local, service="sqs", region="us-east-1"))
    assert any("eu-west-1" in p for p in contracts.aws_problems(rec, service="sqs", region="eu-west-1"))


# -------------------------------------------------------------------------------------- classifier
@pytest.mark.parametrize(("system", "method", "path"), [
    ("m3ter", "GET", "/organizations/o/no-such-collection"),
    ("m3ter", "PATCH", "/organizations/o/accounts/a"),  # m3ter has no PATCH
    ("hubspot", "GET", "/crm/v2/companies"),
    ("netsuite", "PUT", "/services/rest/record/v1/customer/42"),  # PUT is upsert by eid: only
    ("netsuite", "GET", "/services/rest/platform/v1/metadata"),
    ("salesforce", "GET", "/services/data/v59.0/sobjects/Account/001/Contacts/x"),
    ("salesforce", "GET", "/services/apexrest/m3sh"),
])
def test_requests_outside_the_documented_operations_are_unclassified(system: str, method: str, path: str) -> None:
    with pytest.raises(Unclassified):
        classify(system, method, path)


def test_aws_operations_come_from_botocore_models() -> None:
    auth = {"authorization": "AWS4-HMAC-SHA256 Credential=AKIA/20261101/us-east-1/s3/aws4_request, ..."}
    s3: dict[str, Any] = {"host": "127.0.0.1:5000", "headers": auth}
    assert classify("aws", "PUT", "/b/k/x.json", **s3).id == "s3:PutObject"
    assert classify("aws", "PUT", "/b/k", **{**s3, "headers": {**auth, "x-amz-copy-source": "b/s"}}).id == \
        "s3:CopyObject"
    assert classify("aws", "GET", "/b", query="list-type=2&prefix=p", **s3).id == "s3:ListObjectsV2"
    assert classify("aws", "POST", "/b", query="delete", **s3).id == "s3:DeleteObjects"
    assert classify("aws", "GET", "/k/x", host="b.s3.amazonaws.com", headers=auth).id == "s3:GetObject"
    sqs = {"authorization": auth["authorization"].replace("/s3/", "/sqs/"), "x-amz-target": "AmazonSQS.SendMessage"}
    assert classify("aws", "POST", "/", headers=sqs).id == "sqs:SendMessage"
    sns = {"authorization": auth["authorization"].replace("/s3/", "/sns/")}
    assert classify("aws", "POST", "/", headers=sns, body=b"Action=Publish&TopicArn=x").id == "sns:Publish"
    with pytest.raises(Unclassified):
        classify("aws", "POST", "/", headers={})


# ------------------------------------------------------------------------------------ provenance
def test_vendored_hubspot_properties_document_is_the_published_one() -> None:
    path = Path(contracts.REPO_ROOT) / "tests" / "specs" / "hubspot" / "properties.json"
    provenance = (path.parents[1] / "PROVENANCE.md").read_text()
    assert hashlib.sha256(path.read_bytes()).hexdigest() in provenance
    assert contracts.document_path("hubspot/properties") == path
