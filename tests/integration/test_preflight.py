"""``m3sh preflight`` against the sandbox: all green on the demo, and each planted misconfiguration
named on its own ❌ line with its fix, while nothing is written anywhere.

The baseline is the fresh demo sandbox after the one documented go-live step that writes to m3ter,
``m3sh triggers sync-notifications`` (without it the notification checks fail, which is a case
below). Every run asserts that the emulators' data-write counters and the AWS calls stay read-only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from m3sh.sandbox import credentials as cred

pytestmark = pytest.mark.sandbox

EMULATORS = ("m3ter", "hubspot", "netsuite", "salesforce")
# Every AWS call preflight may make; anything else (a PutObject, a CreateQueue, ...) fails the test.
AWS_READS = {("s3", "HeadBucket"), ("s3", "ListObjectsV2"), ("s3", "GetBucketNotificationConfiguration"),
             ("sqs", "GetQueueAttributes"), ("sts", "GetCallerIdentity")}
WEBHOOK_URL = "https://airflow.example/m3sh/webhooks/m3ter"


@pytest.fixture
def aws_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every botocore API call made in this process: (service, operation)."""
    from botocore.client import BaseClient

    calls: list[tuple[str, str]] = []
    original = BaseClient._make_api_call

    def recording(self: Any, operation_name: str, api_params: Any) -> Any:
        calls.append((self.meta.service_model.service_name, operation_name))
        return original(self, operation_name, api_params)

    monkeypatch.setattr(BaseClient, "_make_api_call", recording)
    return calls


@pytest.fixture
def ready(fresh_sandbox: Any) -> Any:
    """The demo sandbox with m3ter's notifications synced from the demo config (the go-live step)."""
    from m3sh.automation.notifications import sync_notifications
    from m3sh.config import DEFAULT_CONFIG_PATH

    sync_notifications(str(DEFAULT_CONFIG_PATH), webhook_url=WEBHOOK_URL)
    return fresh_sandbox


def _writes(sandbox: Any) -> dict[str, int]:
    return {name: int(sandbox.stats(name)["counts"].get("writes", 0)) for name in EMULATORS}


def _aws_state() -> dict[str, Any]:
    """Buckets with every object's key and ETag, and the queues: what an S3/SQS write would change."""
    import boto3

    from m3sh.sandbox.aws_seed import s3_client

    endpoint = json.loads(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["endpoint_url"]
    s3 = s3_client(endpoint)
    state: dict[str, Any] = {}
    for b in s3.list_buckets()["Buckets"]:
        objs = [(o["Key"], o["ETag"]) for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"])
                for o in page.get("Contents", [])]
        state[b["Name"]] = sorted(objs)
    sqs = boto3.client("sqs", endpoint_url=endpoint, aws_access_key_id=cred.AWS_ACCESS_KEY,
                       aws_secret_access_key=cred.AWS_SECRET_KEY, region_name="us-east-1")
    state["queues"] = sorted(sqs.list_queues().get("QueueUrls", []))
    return state


def run_preflight(sandbox: Any, config: Path | None, aws_calls: list[tuple[str, str]],
                  capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``m3sh preflight --config <config>`` in this process; asserts it wrote nothing anywhere."""
    from m3sh.cli import main

    before, aws_before = _writes(sandbox), _aws_state()
    capsys.readouterr()
    first = len(aws_calls)
    rc = main(["preflight", *(["--config", str(config)] if config else [])])
    made = set(aws_calls[first:])
    out = capsys.readouterr().out
    assert _writes(sandbox) == before, "preflight wrote to an emulator"
    assert _aws_state() == aws_before, "preflight changed S3 or SQS"
    assert made and made <= AWS_READS, f"AWS calls beyond reads: {made - AWS_READS}"
    return rc, report_lines(out)


def report_lines(out: str) -> list[str]:
    """The report's lines. (In a test process Airflow's logger may still write to the captured stdout
    it found first; the real command sends it to stderr: test_cli_exit_codes_and_json.)"""
    return [line for line in out.splitlines()
            if line[:2] in ("✅ ", "❌ ") or re.fullmatch(r"\d+ passed, \d+ failed.*", line)]


def _failures(lines: list[str]) -> dict[str, str]:
    return {line[2:].split(":", 1)[0]: line for line in lines if line.startswith("❌")}


# ------------------------------------------------------------------------------- all green
def test_demo_sandbox_passes_every_check_and_writes_nothing(ready: Any, aws_calls: list[tuple[str, str]],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = run_preflight(ready, None, aws_calls, capsys)
    checks = lines[:-1]
    assert rc == 0, "\n".join(lines)
    assert all(line.startswith("✅ ") for line in checks), "\n".join(line for line in checks if line[0] != "✅")
    assert lines[-1] == f"{len(checks)} passed, 0 failed: ready for go-live"
    names = {line[2:].split(":", 1)[0] for line in checks}
    # one line per system the demo config names (spot checks: the full list is the config's)
    assert {"m3ter credentials (m3ter_default)", "m3ter organization (m3ter_default)", "m3ter meter api_calls",
            "m3ter meter storage_gb", "m3ter plans", "m3ter custom fields (account)",
            "m3ter custom fields (accountplan)", "m3ter notification m3sh_prepaid_depleted",
            "m3ter webhook destination", "HubSpot token (hubspot_default)", "HubSpot scopes (hubspot_default)",
            "HubSpot company properties (hubspot_default)", "Salesforce login (salesforce_default)",
            "Salesforce Invoice__c fields (salesforce_default)", "Salesforce Account fields (salesforce_default)",
            "NetSuite netsuite_us (netsuite_default) subsidiary", "NetSuite netsuite_eu (netsuite_eu) items",
            "AWS credentials (aws_default)", "S3 bucket m3sh-archive (aws_default)",
            "S3 bucket m3sh-usage (aws_default)", "SQS queue of usage feed platform_files (aws_default)",
            "S3 bucket m3sh-usage notifies m3sh-usage-events", "connection smtp_default"} <= names
    assert len(names) == len(checks), "check names must be unique"
    assert {svc for svc, _ in aws_calls} >= {"s3", "sqs", "sts"}


def test_cli_exit_codes_and_json(ready: Any, m3sh_config: Callable[..., Path]) -> None:
    """The installed command as an operator runs it: exit 0 when green, 1 on a ❌; --json for machines."""
    good = subprocess.run([sys.executable, "-m", "m3sh.cli", "preflight", "--json"], capture_output=True,
                          text=True, check=False)
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    report = json.loads(good.stdout)  # stdout is the report only: Airflow's logging goes to stderr
    assert report["ok"] is True and report["failed"] == 0 and report["passed"] == len(report["checks"]) > 30
    config = m3sh_config(replace={"default_plan: starter_usd": "default_plan: starter_gbp"})
    bad = subprocess.run([sys.executable, "-m", "m3sh.cli", "preflight", "--config", str(config)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    failures = _failures(bad.stdout.splitlines())
    assert list(failures) == ["m3ter plans"]
    assert bad.stdout.splitlines()[-1].endswith("passed, 1 failed")
    for secret in _all_secrets():
        assert secret not in good.stdout + good.stderr + bad.stdout + bad.stderr


def _all_secrets() -> list[str]:
    return [cred.M3TER_API_SECRET, cred.HUBSPOT_TOKEN, cred.SALESFORCE_PASSWORD, cred.SALESFORCE_SECURITY_TOKEN,
            cred.AWS_SECRET_KEY, cred.WEBHOOK_SECRET,
            *(c.consumer_secret for c in cred.NETSUITE.values()), *(c.token_secret for c in cred.NETSUITE.values())]


# ----------------------------------------------------------------- planted misconfigurations
def _set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    var = f"AIRFLOW_CONN_{conn_id.upper()}"
    conn = json.loads(os.environ[var])
    change(conn)
    monkeypatch.setenv(var, json.dumps(conn))


def _delete_usage_queue(sandbox: Any) -> None:
    import boto3

    sqs = boto3.client("sqs", endpoint_url=sandbox.url("moto"), aws_access_key_id=cred.AWS_ACCESS_KEY,
                       aws_secret_access_key=cred.AWS_SECRET_KEY, region_name="us-east-1")
    sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName="m3sh-usage-events")["QueueUrl"])


@dataclass(frozen=True)
class Plant:
    """One misconfiguration: how to plant it, and the exact ❌ line(s) preflight must print."""

    id: str
    expected: dict[str, str]  # check name -> the whole ❌ line
    replace: dict[str, str] | None = None  # edits of the demo config
    extra: str = ""  # YAML appended to the demo config
    act: Callable[[Any, pytest.MonkeyPatch], None] | None = None  # changes in a system or a connection
    also_failing: tuple[str, ...] = ()  # checks that cannot run (or fail) as a consequence


ORG = cred.M3TER_ORG_ID
M3TER_LATER = ("m3ter meter api_calls", "m3ter meter storage_gb", "m3ter plans", "m3ter custom fields (account)",
               "m3ter custom fields (accountplan)", "m3ter notification m3sh_prepaid_depleted",
               "m3ter webhook destination")
SF_FIX = ("in Salesforce Setup > Object Manager > {obj} > Fields & Relationships create or fix the field(s) named "
          "(API name, type), and give the integration user field-level access; or correct the name(s) in m3sh.yaml")

PLANTS = [
    Plant(
        "missing-salesforce-field",
        act=lambda sb, mp: sb.admin("salesforce", "drop_field", "POST", sobject="Invoice__c", field="Amount__c"),
        expected={"Salesforce Invoice__c fields (salesforce_default)":
                  "❌ Salesforce Invoice__c fields (salesforce_default): Amount__c missing "
                  "(invoicing.destinations[salesforce]) -> fix: " + SF_FIX.format(obj="Invoice__c")}),
    Plant(
        "salesforce-field-of-wrong-type",
        act=lambda sb, mp: sb.admin("salesforce", "field_type", "POST", sobject="Account",
                                    field="M3ter_Last_Invoice_Date__c", type="string"),
        expected={"Salesforce Account fields (salesforce_default)":
                  "❌ Salesforce Account fields (salesforce_default): M3ter_Last_Invoice_Date__c is string; m3sh "
                  "writes a date value (date) (invoicing.destinations[salesforce].account_fields.date) -> fix: "
                  + SF_FIX.format(obj="Account")}),
    Plant(
        "missing-hubspot-scope",
        act=lambda sb, mp: sb.admin("hubspot", "token_scopes", "POST", remove=["crm.objects.line_items.read"]),
        expected={"HubSpot scopes (hubspot_default)":
                  "❌ HubSpot scopes (hubspot_default): the private app lacks crm.objects.line_items.read "
                  "(crm.sources[hubspot]) -> fix: add the scope(s) to the private app in HubSpot (Development > "
                  "Legacy apps, or Settings > Integrations > Private Apps in older portals) > your app > Scopes, "
                  "commit the change, and put the token in the connection's password again if HubSpot shows a new "
                  "one"}),
    Plant(
        "unknown-netsuite-subsidiary",
        replace={'subsidiary_id: "1"          # its own': 'subsidiary_id: "7"          # its own'},
        expected={"NetSuite netsuite_eu (netsuite_eu) subsidiary":
                  "❌ NetSuite netsuite_eu (netsuite_eu) subsidiary: subsidiary '7' (invoicing.destinations"
                  "[netsuite_eu].subsidiary_id) not found in account 1234567_EU; visible: 1 Northwind Cloud EU BV "
                  "-> fix: set subsidiary_id to the internal id of the subsidiary new customers belong to (Setup > "
                  "Company > Subsidiaries, with internal ids shown), or give the token's role access to it"}),
    Plant(
        "unknown-netsuite-item",
        replace={'USAGE: "503"}\n      concurrency: 5\n      pool: m3sh_netsuite_us':
                 'USAGE: "599"}\n      concurrency: 5\n      pool: m3sh_netsuite_us'},
        expected={"NetSuite netsuite_us (netsuite_default) items":
                  "❌ NetSuite netsuite_us (netsuite_default) items: item 599 not found (invoicing.destinations"
                  "[netsuite_us].item_map.USAGE) -> fix: use the internal ids of active sale items (Lists > "
                  "Accounting > Items, internal ids shown) in item_map / default_item_id"}),
    Plant(
        "unknown-m3ter-plan",
        replace={"growth_eur: growth_eur": "growth_eur: growth_euro"},
        expected={"m3ter plans":
                  "❌ m3ter plans: not found in the organization: 'growth_euro' (crm.plan_map.growth_eur) -> fix: "
                  "create the plan(s) in m3ter (Pricing > Plans) or correct the code(s) at the config location(s) "
                  "named"}),
    Plant(
        "wrong-m3ter-org-id",
        act=lambda sb, mp: _set_conn(mp, "m3ter_default",
                                     lambda c: c["extra"].update(org_id="00000000-0000-4000-8000-000000000000")),
        expected={"m3ter organization (m3ter_default)":
                  "❌ m3ter organization (m3ter_default): organization '00000000-0000-4000-8000-000000000000' is not "
                  "readable with this key: m3ter products: Forbidden: no access to organization "
                  "00000000-0000-4000-8000-000000000000 (HTTP 403) -> fix: set extra.org_id of connection "
                  "'m3ter_default' to the Organization ID shown in the m3ter console (Settings > Organization), "
                  "for the org the service user belongs to"},
        also_failing=M3TER_LATER),
    Plant(
        "bad-m3ter-secret",
        act=lambda sb, mp: _set_conn(mp, "m3ter_default", lambda c: c.update(password="not-the-secret")),
        expected={"m3ter credentials (m3ter_default)":
                  "❌ m3ter credentials (m3ter_default): the API key was refused: m3ter: token request "
                  "rejected: Forbidden: invalid client credentials (HTTP 403) -> fix: set login (Access Key ID) and "
                  "password (API Secret) of connection 'm3ter_default' to a service user's API key (m3ter console > "
                  "Settings > Access > Service Users), and host to the API URL (empty for https://api.m3ter.com)"},
        also_failing=("m3ter organization (m3ter_default)", *M3TER_LATER)),
    Plant(
        "bad-netsuite-token-secret",
        act=lambda sb, mp: _set_conn(mp, "netsuite_eu", lambda c: c["extra"].update(token_secret="wrong-secret-1")),
        expected={"NetSuite netsuite_eu (netsuite_eu) login":
                  "❌ NetSuite netsuite_eu (netsuite_eu) login: {netsuite_error} -> fix: check connection "
                  "'netsuite_eu': login = consumer key, password = consumer secret, extras token_id / token_secret "
                  "of an access token for this integration and role, and account_id (Setup > Company > Company "
                  "Information > Account ID)"},
        also_failing=tuple(f"NetSuite netsuite_eu (netsuite_eu) {c}"
                           for c in ("subsidiary", "items", "currencies", "record access"))),
    Plant(
        "missing-m3ter-meter",
        replace={"        - code: storage_gb\n": "        - code: storage_gib\n"},
        expected={"m3ter meter storage_gib":
                  "❌ m3ter meter storage_gib: no meter with code 'storage_gib' in the organization (used by "
                  "usage.feeds[platform_files]) -> fix: create meter 'storage_gib' in m3ter (Metering > Meters) "
                  "with the fields the feed sends, or correct the code in usage.feeds[platform_files]"}),
    Plant(
        "missing-m3ter-notification",
        replace={"\ntriggers:\n": "\ntriggers:\n  - name: prepaid_low\n    when: {balance_below: {amount: 500}}\n"
                                  "    actions:\n      - notify: ops_slack\n"},
        expected={"m3ter notification m3sh_prepaid_low":
                  "❌ m3ter notification m3sh_prepaid_low: missing: trigger rule 'prepaid_low' expects it (m3ter "
                  "calls the m3sh webhook when a balance crosses the threshold) -> fix: run `m3sh triggers "
                  "sync-notifications --config {config} --webhook-url https://<your airflow>/m3sh/webhooks/m3ter`"}),
    Plant(
        "m3ter-key-may-not-read-notifications",
        act=lambda sb, mp: sb.faults("m3ter", path_regex="/notifications/configurations$", methods=["GET"],
                                     fail_next=1, error_status=403),
        expected={name: f"❌ {name}: could not be checked: m3ter notifications/configurations: Injected fault (HTTP "
                        "403) -> fix: let the service user of 'm3ter_default' read notification configurations and "
                        "webhook destinations in m3ter (its permission policy), or run preflight again if the error "
                        "was transient"
                  for name in ("m3ter notification m3sh_prepaid_depleted", "m3ter webhook destination")}),
    Plant(
        "missing-s3-bucket",
        replace={"bucket: m3sh-usage\n": "bucket: m3sh-usage-eu\n"},
        expected={"S3 bucket m3sh-usage-eu (aws_default)":
                  "❌ S3 bucket m3sh-usage-eu (aws_default): bucket does not exist (used by usage.feeds"
                  "[platform_files]) -> fix: create the bucket 'm3sh-usage-eu' (in the connection's region) or "
                  "correct the bucket name in usage.feeds[platform_files]"},
        also_failing=("S3 bucket m3sh-usage-eu notifies m3sh-usage-events",)),
    Plant(
        "missing-sqs-queue",
        act=lambda sb, mp: _delete_usage_queue(sb),
        expected={"SQS queue of usage feed platform_files (aws_default)":
                  "❌ SQS queue of usage feed platform_files (aws_default): queue https://sqs.us-east-1.amazonaws"
                  ".com/123456789012/m3sh-usage-events does not exist (usage.feeds[platform_files].event_queue) -> "
                  "fix: create the SQS queue 'm3sh-usage-events' and add an event notification on bucket "
                  "'m3sh-usage' (s3:ObjectCreated:*, prefix 'usage/') sending to it, or remove "
                  "usage.feeds[platform_files].event_queue (the hourly schedule still ingests)"}),
    Plant(
        "missing-hubspot-property",
        replace={"write_back_field: m3ter_account_id": "write_back_field: m3ter_id"},
        expected={"HubSpot company properties (hubspot_default)":
                  "❌ HubSpot company properties (hubspot_default): missing: 'm3ter_id' (crm.sources[hubspot]"
                  ".write_back_field) -> fix: create the company propert(ies) in HubSpot (Settings > Properties > "
                  "Company properties; internal name as given) or correct the name(s) in m3sh.yaml"}),
]


def _netsuite_login_error() -> str:
    """NetSuite's one generic answer to any TBA failure, as the hook words it."""
    from m3sh.sandbox.netsuite.errors import INVALID_LOGIN_DETAIL

    return f"NetSuite SuiteQL query of request failed: HTTP 401 INVALID_LOGIN: {INVALID_LOGIN_DETAIL}"


@pytest.mark.parametrize("plant", PLANTS, ids=[p.id for p in PLANTS])
def test_planted_misconfiguration_is_named_with_its_fix(
        plant: Plant, *, ready: Any, m3sh_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
        aws_calls: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    config = m3sh_config(replace=plant.replace, extra=plant.extra)
    if plant.act is not None:
        plant.act(ready, monkeypatch)
    rc, lines = run_preflight(ready, config, aws_calls, capsys)
    failures = _failures(lines)
    assert rc == 1
    for name, line in plant.expected.items():
        assert failures.get(name) == line.format(config=config, netsuite_error=_netsuite_login_error()), \
            "\n".join(lines)
    # the planted problem fails its own check (and those that depend on it), nothing else
    assert set(failures) == set(plant.expected) | set(plant.also_failing), "\n".join(failures.values())
    blocker = next(iter(plant.expected))
    for name in plant.also_failing:
        assert failures[name] == f"❌ {name}: not checked: needs '{blocker}' -> fix: fix '{blocker}' first"
    assert lines[-1] == f"{len(lines) - 1 - len(failures)} passed, {len(failures)} failed"


def test_fresh_demo_sandbox_without_synced_notifications_says_what_to_run(
        fresh_sandbox: Any, aws_calls: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = run_preflight(fresh_sandbox, None, aws_calls, capsys)
    failures = _failures(lines)
    assert rc == 1
    assert set(failures) == {"m3ter notification m3sh_prepaid_depleted", "m3ter webhook destination"}
    assert all(line.endswith("-> fix: run `m3sh triggers sync-notifications --webhook-url https://<your airflow>"
                             "/m3sh/webhooks/m3ter`") for line in failures.values())


def test_hubspot_emulator_enforces_the_scopes_its_token_reports(fresh_sandbox: Any) -> None:
    """The planted scope is not only reported: the emulator refuses calls that need it, as HubSpot does."""
    from m3sh.hooks.hubspot import HubSpotAuthError, HubSpotHook

    fresh_sandbox.admin("hubspot", "token_scopes", "POST", remove=["crm.objects.line_items.read"])
    hook = HubSpotHook(max_attempts=1)
    assert "crm.objects.line_items.read" not in hook.access_token_info()["scopes"]
    next(hook.iter_objects("companies", page_size=1))  # still granted
    with pytest.raises(HubSpotAuthError, match="MISSING_SCOPES") as err:
        next(hook.iter_objects("line_items", page_size=1))
    assert err.value.status == 403


def test_salesforce_emulator_forgets_a_dropped_field_everywhere(fresh_sandbox: Any) -> None:
    from m3sh.hooks.salesforce import SalesforceSync, SalesforceValidationError

    fresh_sandbox.admin("salesforce", "drop_field", "POST", sobject="Invoice__c", field="Amount__c")
    sf = SalesforceSync()
    assert "Amount__c" not in {f["name"] for f in sf.describe("Invoice__c")["fields"]}
    with pytest.raises(SalesforceValidationError, match="INVALID_FIELD"):
        list(sf.query("SELECT Id, Amount__c FROM Invoice__c"))
    fresh_sandbox.reset()
    assert "Amount__c" in {f["name"] for f in SalesforceSync().describe("Invoice__c")["fields"]}
