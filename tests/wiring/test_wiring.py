"""Production wiring: every request m3sh's hooks send on production-style connections, checked
against the published contracts (not against m3sh's emulators). No sandbox, no network.

What is checked per system (see contracts.py for the sources):

* m3ter: each request is an operation of m3ter's OpenAPI document, on the host the operation's
  ``servers`` name (measurements: ``https://ingest.m3ter.com``; everything else, the token
  included: ``https://api.m3ter.com``), with valid path and query parameters and no undeclared
  ones, a body the operation's schema accepts, and ``Authorization: Bearer <token>`` where the token
  came from ``POST https://api.m3ter.com/oauth/token`` (HTTP Basic key:secret, client_credentials).
* HubSpot: the same against the CRM documents, ``Authorization: Bearer <private-app token>``.
* NetSuite: the account's SuiteTalk host, record/SuiteQL paths, ``Prefer: transient``, TBA with
  realm, HMAC-SHA256 and a signature re-computed by oauthlib.
* Salesforce: SOAP login on login.salesforce.com at the pinned version, REST on the instance host
  from the login answer under ``/services/data/v<pinned>/``.
* AWS: the endpoints botocore resolves for us-east-1 with no override, SigV4 for that region.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from m3sh.hooks.m3ter_ops import OPS
from tests.wiring import canned, contracts, scenarios
from tests.wiring.conftest import Wired
from tests.wiring.operations import SYSTEMS


def _report(problems: list[str], what: str) -> str:
    return f"{len(problems)} request(s) break {what}:\n  " + "\n  ".join(problems)


# ------------------------------------------------------------------------------- the run itself
def test_scenarios_ran_without_errors_or_network(wired: Wired) -> None:
    assert wired.run.errors == []
    assert wired.run.network_attempts == [], "a client bypassed the recording transports and tried the network"
    assert len(wired.run.records) > 100


def test_every_public_hook_method_was_exercised(wired: Wired) -> None:
    """Not a hand-kept list: a method added to a hook later fails here until a scenario calls it."""
    missing = [f"{cls.__name__}.{name}" for cls in scenarios.hook_classes() for name in scenarios.public_methods(cls)
               if not wired.run.calls[f"{cls.__name__}.{name}"]]
    assert missing == [], f"add these to tests/wiring/scenarios.py: {missing}"


def test_every_request_went_to_a_known_production_host_and_is_classified(wired: Wired, capsys: Any) -> None:
    requests = Counter(op.system for op in wired.ops.values())
    operations = Counter(op.system for op in wired.covered)
    with capsys.disabled():
        print(f"\nproduction wiring: {len(wired.run.records)} requests, {len(wired.covered)} operations, "
              f"{wired.seconds:.1f}s (imports included)")
        for system in SYSTEMS:
            print(f"  {system:<11} {operations[system]:>3} operations {requests[system]:>4} requests")
    assert wired.unclassified == []
    assert set(requests) == set(SYSTEMS)
    loopback = [str(r) for r in wired.run.records if r.host in ("localhost", "127.0.0.1", "::1")]
    assert loopback == []


# ------------------------------------------------------------------------------------------ m3ter
def test_m3ter_requests_meet_the_openapi_document(wired: Wired) -> None:
    problems = []
    for rec, op in wired.of("m3ter"):
        if op.id == "POST /oauth/token":
            found = contracts.m3ter_token_problems(rec, scenarios.M3TER_KEY, scenarios.M3TER_SECRET)
        else:
            found = contracts.openapi_problems("m3ter", rec, op.spec, token=canned.M3TER_TOKEN)  # type: ignore[arg-type]
        problems += [f"{rec}: {p}" for p in found]
    assert problems == [], _report(problems, "m3ter's OpenAPI document")


def test_m3ter_hosts_in_production(wired: Wired) -> None:
    """The issue's case: with an empty host, measurements go to the Ingest API, the token and every
    config call to the Config API."""
    m3ter = wired.of("m3ter")
    org = scenarios.M3TER_ORG
    measurements = [r for r, op in m3ter if op.id == "POST /organizations/{orgId}/measurements"]
    assert measurements and {r.url for r in measurements} == {f"https://ingest.m3ter.com/organizations/{org}/measurements"}
    tokens = [r for r, op in m3ter if op.id == "POST /oauth/token"]
    assert len(tokens) >= 2  # the sync hook's fetch and the async hook's own code path
    assert {r.url for r in tokens} == {"https://api.m3ter.com/oauth/token"}
    config = [r for r, op in m3ter if op.id not in ("POST /oauth/token", "POST /organizations/{orgId}/measurements")]
    assert len(config) > 50
    assert {r.url.split("/organizations/")[0] for r in config} == {"https://api.m3ter.com"}
    assert all(r.path.startswith(f"/organizations/{org}/") for r in config)


def test_every_operation_of_m3ter_ops_went_out_as_its_spec_operation(wired: Wired) -> None:
    """m3ter_ops.OPS is the table the hook builds requests from: each entry was sent, on its host,
    as the spec operation it names; and nothing m3ter-bound was sent that the table lacks."""
    sent = {(op.id, rec.host) for rec, op in wired.of("m3ter")}
    sent_ids = {op_id for op_id, _ in sent}
    hosts = {"config": contracts.M3TER_CONFIG_HOST, "ingest": contracts.M3TER_INGEST_HOST}
    for name, op in OPS.items():
        op_id = f"{op.method} /organizations/{{orgId}}/{op.path}"
        assert (op_id, hosts[op.host]) in sent, f"OPS[{name!r}] ({op_id} on {hosts[op.host]}) was never sent"
    table = {f"{op.method} /organizations/{{orgId}}/{op.path}" for op in OPS.values()}
    assert sent_ids - table == {"POST /oauth/token"}


# ---------------------------------------------------------------------------------------- HubSpot
def test_hubspot_requests_meet_the_openapi_documents(wired: Wired) -> None:
    problems = []
    for rec, op in wired.of("hubspot"):
        found = contracts.openapi_problems("hubspot", rec, op.spec, token=scenarios.HUBSPOT_TOKEN)  # type: ignore[arg-type]
        problems += [f"{rec}: {p}" for p in found]
    assert problems == [], _report(problems, "HubSpot's OpenAPI documents")
    assert {r.host for r, _ in wired.of("hubspot")} == {"api.hubapi.com"}


# --------------------------------------------------------------------------------------- NetSuite
def test_netsuite_requests_meet_suitetalk_rest(wired: Wired) -> None:
    by_host = {contracts.netsuite_host(ns["account_id"]): ns for ns in scenarios.NETSUITE.values()}
    problems = []
    for rec, _op in wired.of("netsuite"):
        ns = by_host.get(rec.host)
        if ns is None:
            problems.append(f"{rec}: {rec.host} is the host of no configured account")
            continue
        problems += [f"{rec}: {p}" for p in contracts.netsuite_problems(rec, **ns)]
    assert problems == [], _report(problems, "SuiteTalk REST")
    assert {f"https://{r.host}" for r, _ in wired.of("netsuite")} == {
        "https://1234567-sb1.suitetalk.api.netsuite.com", "https://7654321.suitetalk.api.netsuite.com"}
    realms = Counter(r.header("authorization").split('realm="')[1].split('"')[0]  # type: ignore[union-attr]
                     for r, _ in wired.of("netsuite"))
    assert set(realms) == {"1234567_SB1", "7654321"}


# ------------------------------------------------------------------------------------- Salesforce
def test_salesforce_requests_meet_the_rest_api_at_the_pinned_version(wired: Wired) -> None:
    from m3sh.hooks.salesforce import API_VERSION

    sf = wired.of("salesforce")
    problems = []
    for rec, _op in sf:
        problems += [f"{rec}: {p}" for p in contracts.salesforce_problems(
            rec, version=API_VERSION, instance_host=canned.SALESFORCE_INSTANCE, session_id=canned.SALESFORCE_SESSION)]
    assert problems == [], _report(problems, "the Salesforce REST/SOAP API")
    assert sf[0][0].url == f"https://login.salesforce.com/services/Soap/u/{API_VERSION}"
    rest = {r.url.split("?")[0].split("/services/data/")[0] for r, _ in sf[1:]}
    assert rest == {f"https://{canned.SALESFORCE_INSTANCE}"}


def test_the_salesforce_api_version_is_pinned_in_one_place() -> None:
    """A connection without ``version`` gets m3sh's pin (not simple-salesforce's moving default);
    one that names a version keeps it."""
    from simple_salesforce import api

    from m3sh.hooks.salesforce import API_VERSION, salesforce_hook

    with scenarios.production_environment():
        hook = salesforce_hook()
        assert hook._get_field({}, "version") == API_VERSION
        assert hook._get_field({"version": "62.0"}, "version") == "62.0"
        assert hook._get_field({"security_token": "t"}, "security_token") == "t"
    assert api.DEFAULT_API_VERSION  # what the pin stands in for; equal today, free to move


# -------------------------------------------------------------------------------------------- AWS
def test_aws_requests_go_to_the_endpoints_botocore_resolves_for_us_east_1(wired: Wired) -> None:
    from m3sh.config import get_config
    from tests.wiring.operations import aws_service

    buckets = {get_config().storage.bucket, *(f.bucket for f in get_config().usage.feeds if f.bucket)}
    problems = []
    presigned = [rec for rec, _op in wired.of("aws") if "X-Amz-Signature" in dict(rec.query)]
    # m3ter's upload URL: sent as given (query-string SigV4, no Authorization header of m3sh's own)
    assert {r.url for r in presigned} == {canned.M3TER_UPLOAD_URL}
    assert all(r.method == "PUT" and not r.header("authorization") for r in presigned)
    for rec, _op in wired.of("aws"):
        if rec in presigned:
            continue
        service = aws_service(rec.headers, rec.host)
        bucket = next((b for b in buckets if rec.host.startswith(f"{b}.")), None)
        problems += [f"{rec}: {p}" for p in contracts.aws_problems(rec, service=service, region=scenarios.AWS_REGION,
                                                                    bucket=bucket)]
    assert problems == [], _report(problems, "the AWS endpoints for us-east-1")
    hosts = {r.host for r, _ in wired.of("aws") if r not in presigned}
    assert {"m3sh-archive.s3.amazonaws.com", "m3sh-usage.s3.amazonaws.com", "sqs.us-east-1.amazonaws.com",
            "sns.us-east-1.amazonaws.com"} == hosts
