"""The Salesforce emulator's OAuth 2.0 refresh token flow and Bulk API 2.0 query jobs (issue 20).

What the published connectors (tap-salesforce, airbyte-source-salesforce; ``make conformance``) log
in and read with, checked at the emulator's level against the shapes Salesforce's guides give: the
token endpoint's answer and OAuth errors; query jobs created, polled, read as CSV in sets chained by
``Sforce-Locator``, deleted; the strict refusals.
"""

# SOQL in these tests is built from fixed test values, not user input.
# ruff: noqa: S608

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
from typing import Any

import pytest
import requests

from m3sh.sandbox import credentials as cred

pytestmark = pytest.mark.sandbox

V = "v61.0"
TOKEN_FORM = {"grant_type": "refresh_token", "client_id": cred.SALESFORCE_CLIENT_ID,
              "client_secret": cred.SALESFORCE_CLIENT_SECRET, "refresh_token": cred.SALESFORCE_REFRESH_TOKEN}


def _token(sb: Any, form: dict[str, str] | None = None, **kw: Any) -> requests.Response:
    return requests.post(f"{sb.url('salesforce')}/services/oauth2/token", data=form or TOKEN_FORM, timeout=10, **kw)


@pytest.fixture(scope="module")
def fresh_sandbox(sandbox: Any) -> Any:
    """The Salesforce emulator reset to the demo seed once for this module (resetting every emulator
    before each test would cost ~2 s a test; these tests read, and the one write is theirs alone)."""
    r = requests.post(f"{sandbox.url('salesforce')}/_sandbox/reset", json={"seed": "demo", "limits": True},
                      timeout=60)
    assert r.status_code == 200, r.text
    return sandbox


@pytest.fixture(scope="module")
def api(fresh_sandbox: Any) -> Any:
    """(instance base URL, auth headers, sandbox) after the refresh token flow."""
    r = _token(fresh_sandbox)
    assert r.status_code == 200, r.text
    return f"{fresh_sandbox.url('salesforce_instance')}/services/data/{V}", \
        {"Authorization": f"Bearer {r.json()['access_token']}"}, fresh_sandbox


def test_refresh_token_flow_answers_like_the_token_endpoint(fresh_sandbox: Any) -> None:
    r = _token(fresh_sandbox)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"access_token", "signature", "scope", "instance_url", "id", "token_type", "issued_at"}
    assert body["instance_url"] == f"https://{cred.SALESFORCE_INSTANCE_HOST}" and body["token_type"] == "Bearer"
    assert body["id"].startswith(f"https://{cred.SALESFORCE_LOGIN_HOST}/id/00D")
    # The documented signature: HMAC-SHA256 of id + issued_at with the client secret, base64.
    mac = hmac.new(cred.SALESFORCE_CLIENT_SECRET.encode(), (body["id"] + body["issued_at"]).encode(), hashlib.sha256)
    assert body["signature"] == base64.b64encode(mac.digest()).decode()
    # The access token is a session on the instance; HTTP Basic client credentials work too.
    limits = requests.get(f"{fresh_sandbox.url('salesforce_instance')}/services/data/{V}/limits",
                          headers={"Authorization": f"Bearer {body['access_token']}"}, timeout=10)
    assert limits.status_code == 200
    basic = {k: v for k, v in TOKEN_FORM.items() if k not in ("client_id", "client_secret")}
    assert _token(fresh_sandbox, basic, auth=(cred.SALESFORCE_CLIENT_ID, cred.SALESFORCE_CLIENT_SECRET)).ok


@pytest.mark.parametrize(("change", "error", "description"), [
    ({"grant_type": "password"}, "unsupported_grant_type", "grant type not supported"),
    ({"client_id": "someone-else"}, "invalid_client_id", "client identifier invalid"),
    ({"client_secret": "wrong"}, "invalid_client", "invalid client credentials"),
    ({"refresh_token": "revoked"}, "invalid_grant", "expired access/refresh token"),
    ({"scope": "api"}, "invalid_request", None),  # not a parameter of this flow: refused, never ignored
    ({"format": "xml"}, "invalid_request", None),  # documented, not implemented: says so
])
def test_token_errors_are_oauth_errors(fresh_sandbox: Any, change: dict[str, str], error: str,
                                       description: str | None) -> None:
    r = _token(fresh_sandbox, {**TOKEN_FORM, **change})
    assert r.status_code == 400 and r.json()["error"] == error
    if description:
        assert r.json()["error_description"] == description
    if change.get("format"):
        assert "not implemented by the m3sh sandbox" in r.json()["error_description"]
    # No secret of the request is echoed back.
    assert cred.SALESFORCE_CLIENT_SECRET not in r.text and cred.SALESFORCE_REFRESH_TOKEN not in r.text


def _create(api: Any, query: str, **extra: Any) -> requests.Response:
    base, headers, _ = api
    return requests.post(f"{base}/jobs/query", json={"operation": "queryAll", "query": query, **extra},
                         headers=headers, timeout=10)


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_query_job_lifecycle_and_locator_paging(api: Any) -> None:
    base, headers, sb = api
    soql_ids = {r["Id"] for r in requests.get(f"{base}/query", params={"q": "SELECT Id FROM Account"},
                                              headers=headers, timeout=10).json()["records"]}
    # The published connector's shape: CSV, COMMA, LF, a SystemModstamp window.
    r = _create(api, "SELECT Id, Name, IsDeleted, SystemModstamp, ParentId FROM Account "
                     "WHERE SystemModstamp >= 2000-01-01T00:00:00.000+00:00 AND SystemModstamp < 2999-01-01T00:00:00Z",
                contentType="CSV", columnDelimiter="COMMA", lineEnding="LF")
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["id"].startswith("750") and job["state"] == "UploadComplete" and job["object"] == "Account"
    assert job["operation"] == "queryAll" and job["apiVersion"] == 61.0
    info = requests.get(f"{base}/jobs/query/{job['id']}", headers=headers, timeout=10).json()
    assert info["state"] == "JobComplete" and info["numberRecordsProcessed"] == len(soql_ids)

    got: list[dict[str, str]] = []
    params: dict[str, str] = {"maxRecords": "50"}
    sets = 0
    while True:
        page = requests.get(f"{base}/jobs/query/{job['id']}/results", params=params, headers=headers, timeout=10)
        assert page.status_code == 200 and "Content-Type: text/csv" in _raw_headers(page)
        rows = _rows(page.text)
        assert int(page.headers["Sforce-NumberOfRecords"]) == len(rows) <= 50
        assert page.text.splitlines()[0] == '"Id","Name","IsDeleted","SystemModstamp","ParentId"'
        got += rows
        sets += 1
        if page.headers["Sforce-Locator"] == "null":
            break
        params["locator"] = page.headers["Sforce-Locator"]
    assert sets == -(-len(soql_ids) // 50) and {r["Id"] for r in got} == soql_ids and len(got) == len(soql_ids)
    assert {r["IsDeleted"] for r in got} == {"false"} and all(r["SystemModstamp"].endswith(".000Z") for r in got)
    assert {r["ParentId"] for r in got} == {""}  # null is an empty value
    # A locator set can be read again while the job exists; deleting the job ends that.
    again = requests.get(f"{base}/jobs/query/{job['id']}/results", params=params, headers=headers, timeout=10)
    assert again.text == page.text
    assert requests.delete(f"{base}/jobs/query/{job['id']}", headers=headers, timeout=10).status_code == 204
    gone = requests.get(f"{base}/jobs/query/{job['id']}", headers=headers, timeout=10)
    assert gone.status_code == 404 and gone.json()[0]["errorCode"] == "NOT_FOUND"
    assert sb.state("salesforce")["api_usage"]["used"] >= 8  # every Bulk API 2.0 call counts


def test_query_and_query_all_parent_fields_and_delimiters(api: Any) -> None:
    base, headers, _ = api
    opp = requests.get(f"{base}/query", params={"q": "SELECT Id, Account.Name FROM Opportunity LIMIT 1"},
                       headers=headers, timeout=10).json()["records"][0]
    assert requests.delete(f"{base}/sobjects/Opportunity/{opp['Id']}", headers=headers, timeout=10).ok
    q = f"SELECT Id, Account.Name FROM Opportunity WHERE Id = '{opp['Id']}'"
    live = _create(api, q, operation="query").json()
    everything = _create(api, q, columnDelimiter="PIPE", lineEnding="CRLF").json()

    def text(job: dict[str, Any]) -> str:
        return str(requests.get(f"{base}/jobs/query/{job['id']}/results", headers=headers, timeout=10).text)

    assert text(live) == '"Id","Account.Name"\n'  # query: the deleted record is not there
    assert text(everything) == f'"Id"|"Account.Name"\r\n"{opp["Id"]}"|"{opp["Account"]["Name"]}"\r\n'


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"operation": "queryAll", "query": "SELECT Id FROM Account", "object": "Account"}, 400, "JSON_PARSER_ERROR"),
    ({"operation": "upsert", "query": "SELECT Id FROM Account"}, 400, "INVALIDJOB"),
    ({"operation": "query", "query": "SELECT COUNT() FROM Account"}, 400, "INVALIDJOB"),
    ({"operation": "query", "query": "SELECT Id FROM Account LIMIT 5 OFFSET 2"}, 400, "INVALIDJOB"),
    ({"operation": "query", "query": "SELECT Nope__c FROM Account"}, 400, "INVALID_FIELD"),
    ({"operation": "query", "query": "SELECT Id FROM Account", "contentType": "JSON"}, 400, "INVALIDJOB"),
])
def test_query_jobs_refuse_what_they_do_not_implement(api: Any, body: dict[str, Any], status: int,
                                                      code: str) -> None:
    base, headers, _ = api
    r = requests.post(f"{base}/jobs/query", json=body, headers=headers, timeout=10)
    assert r.status_code == status and r.json()[0]["errorCode"] == code, r.text


def test_results_refusals_and_unimplemented_job_resources(api: Any) -> None:
    base, headers, _ = api
    job = _create(api, "SELECT Id FROM Contract").json()
    results = f"{base}/jobs/query/{job['id']}/results"
    bad = requests.get(results, params={"locator": "bm9wZQ"}, headers=headers, timeout=10)
    assert bad.status_code == 400 and bad.json()[0]["fields"] == ["locator"]
    unknown = requests.get(results, params={"format": "json"}, headers=headers, timeout=10)
    assert unknown.status_code == 400 and unknown.json()[0]["errorCode"] == "INVALID_OPERATION"
    # Results are read with the API version the job was created with (the guide: else 409).
    other = requests.get(results.replace(V, "v60.0"), headers=headers, timeout=10)
    assert other.status_code == 409
    # A job not yet seen complete can be aborted (then has no results); a complete one cannot.
    abort = requests.patch(f"{base}/jobs/query/{job['id']}", json={"state": "Aborted"}, headers=headers, timeout=10)
    assert abort.status_code == 200 and abort.json()["state"] == "Aborted"
    assert requests.get(results, headers=headers, timeout=10).json()[0]["errorCode"] == "INVALIDJOB"
    done = _create(api, "SELECT Id FROM Contract").json()
    assert requests.get(f"{base}/jobs/query/{done['id']}", headers=headers, timeout=10).json()["state"] == "JobComplete"
    late = requests.patch(f"{base}/jobs/query/{done['id']}", json={"state": "Aborted"}, headers=headers, timeout=10)
    assert late.status_code == 400 and late.json()[0]["errorCode"] == "INVALIDJOB"
    # Ingest jobs and the job list are not implemented, and say so.
    for path in ("jobs/ingest", "jobs/query"):
        r = requests.get(f"{base}/{path}", headers=headers, timeout=10)
        assert r.status_code == 404 and "not implemented by the m3sh sandbox" in r.json()[0]["message"]


def _raw_headers(r: requests.Response) -> str:
    """The header lines as sent (names in their case): http.client keeps them in ``msg``."""
    return str(r.raw._original_response.msg)
