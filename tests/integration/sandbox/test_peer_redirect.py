"""The transport-level redirect ``make conformance`` starts published connectors with
(``benchmarks/_peer_redirect/sitecustomize.py``): their ``https://api.hubapi.com`` requests reach the
emulator unchanged but for scheme and host, every request is logged, any other host is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from m3sh.sandbox import credentials

pytestmark = pytest.mark.sandbox

REDIRECT_DIR = Path(__file__).resolve().parents[3] / "benchmarks" / "_peer_redirect"
# What a connector does: plain requests against the production URL, nothing sandbox-aware.
PEER = """
import requests, sys
token = sys.argv[1]
r = requests.get("https://api.hubapi.com/crm/v3/objects/companies", params={"limit": 2},
                 headers={"Authorization": "Bearer " + token}, timeout=30)
print(r.status_code, len(r.json()["results"]))
try:
    requests.get("https://example.com/", timeout=5)
except requests.exceptions.ConnectionError as exc:
    print("refused:", exc)
"""


def test_peer_requests_reach_the_emulator_and_other_hosts_are_refused(fresh_sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "requests.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REDIRECT_DIR), "M3SH_PEER_HUBSPOT_URL": fresh_sandbox.url("hubspot"),
           "M3SH_PEER_LOG": str(log)}
    out = subprocess.run([sys.executable, "-c", PEER, credentials.HUBSPOT_TOKEN], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.splitlines()
    assert out[0] == "200 2"
    assert out[1].startswith("refused:") and "https://example.com/ is not a sandboxed host" in out[1]
    [entry] = [json.loads(line) for line in log.read_text().splitlines()]
    assert entry["method"] == "GET" and entry["status"] == 200
    assert entry["url"].startswith("https://api.hubapi.com/crm/v3/objects/companies?")
    assert fresh_sandbox.requests_to("hubspot", "GET", "/crm/v3/objects/companies") == 1


# A Salesforce connector's login: the refresh token flow at login.salesforce.com, then REST calls to
# the instance_url the token response names (the org's My Domain host).
SF_PEER = """
import requests, sys
auth = requests.post("https://login.salesforce.com/services/oauth2/token", timeout=30, data={
    "grant_type": "refresh_token", "client_id": sys.argv[1], "client_secret": sys.argv[2],
    "refresh_token": sys.argv[3]}).json()
r = requests.get(auth["instance_url"] + "/services/data/v61.0/sobjects", timeout=30,
                 headers={"Authorization": "Bearer " + auth["access_token"]})
print(auth["instance_url"], r.status_code, len(r.json()["sobjects"]) > 0)
"""


def test_salesforce_login_and_instance_hosts_are_redirected(fresh_sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "requests.jsonl"
    hosts = {f"https://{credentials.SALESFORCE_LOGIN_HOST}": fresh_sandbox.url("salesforce"),
             f"https://{credentials.SALESFORCE_INSTANCE_HOST}": fresh_sandbox.url("salesforce_instance")}
    env = {**os.environ, "PYTHONPATH": str(REDIRECT_DIR), "M3SH_PEER_REDIRECTS": json.dumps(hosts),
           "M3SH_PEER_LOG": str(log)}
    out = subprocess.run([sys.executable, "-c", SF_PEER, credentials.SALESFORCE_CLIENT_ID,
                          credentials.SALESFORCE_CLIENT_SECRET, credentials.SALESFORCE_REFRESH_TOKEN], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out == [f"https://{credentials.SALESFORCE_INSTANCE_HOST}", "200", "True"]
    urls = [json.loads(line)["url"] for line in log.read_text().splitlines()]
    assert urls == [f"https://{credentials.SALESFORCE_LOGIN_HOST}/services/oauth2/token",
                    f"https://{credentials.SALESFORCE_INSTANCE_HOST}/services/data/v61.0/sobjects"]


# A NetSuite connector: TBA-signed (OAuth 1.0, HMAC-SHA256) requests to the account's production host.
NS_PEER = """
import requests, sys
from requests_oauthlib import OAuth1
auth = OAuth1(*sys.argv[2:6], realm=sys.argv[1], signature_method="HMAC-SHA256")
base = "https://" + sys.argv[1].lower().replace("_", "-") + ".suitetalk.api.netsuite.com/services/rest/record/v1"
r = requests.get(base + "/subsidiary", auth=auth, timeout=30)
print(r.status_code, r.json()["items"][0]["links"][0]["href"] if r.ok else "")
"""


@pytest.mark.parametrize("keep_host", [True, False])
def test_netsuite_signed_requests_keep_their_host(fresh_sandbox, tmp_path: Path, keep_host: bool) -> None:  # type: ignore[no-untyped-def]
    """The signature covers scheme, host and path: forwarded as by a TLS-terminating proxy (Host and
    X-Forwarded-Proto kept), the emulator verifies it and links records on the production host;
    with the URL rewritten alone it cannot (401, as NetSuite would answer a mis-signed request)."""
    ns = credentials.NETSUITE["default"]
    origin = "https://1234567.suitetalk.api.netsuite.com"
    env = {**os.environ, "PYTHONPATH": str(REDIRECT_DIR),
           "M3SH_PEER_REDIRECTS": json.dumps({origin: fresh_sandbox.url("netsuite")}),
           "M3SH_PEER_KEEP_HOST": json.dumps([origin] if keep_host else []), "M3SH_PEER_LOG": str(tmp_path / "log")}
    out = subprocess.run([sys.executable, "-c", NS_PEER, ns.account_id, ns.consumer_key, ns.consumer_secret,
                          ns.token_id, ns.token_secret], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    if keep_host:
        assert out == ["200", f"{origin}/services/rest/record/v1/subsidiary/1"]
    else:
        assert out == ["401"]
