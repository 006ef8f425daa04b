"""The production-wiring scenarios: every hook operation m3sh uses, on production-style connections.

Connections are what a new user would create (``AIRFLOW_CONN_*``): m3ter with no host, HubSpot with
no host, NetSuite accounts ``1234567_SB1`` and ``7654321`` with no host, Salesforce with username,
password and security token only, AWS with keys and region ``us-east-1`` and no ``endpoint_url``.
Every request goes through the recording transports (``transports.py``) and is answered from
``canned.py``; nothing leaves the process. :func:`run` returns what was recorded and which hook
methods ran, so the tests can check each request against the published contracts and that every
public hook method was exercised.

Where m3sh has a code path of its own around a client (``m3sh.storage``, the automation ledger,
the analytics partition store and reader, the usage ingest of one S3 object, the SNS alert channel,
the SQS asset watcher's trigger as the usage DAG builds it) the scenario goes through it, so the
recorded requests are m3sh's own; elsewhere the hooks' methods are called with sample arguments.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import wraps
from typing import Any
from unittest import mock

from m3sh.config import DEFAULT_CONFIG_PATH
from tests.wiring import canned
from tests.wiring.contracts import Recorded
from tests.wiring.transports import Recorder

# ------------------------------------------------------------------------ production connections
M3TER_KEY, M3TER_SECRET = "wired-access-key-id", "wired-api-secret"
M3TER_ORG = "4b2f9b7e-5d0e-4c1e-9c52-2c1f3b9d7a10"
HUBSPOT_TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
NETSUITE = {
    "netsuite_default": {"account_id": "1234567_SB1", "consumer_key": "ck-sb1", "consumer_secret": "cs-sb1",
                         "token_id": "tk-sb1", "token_secret": "ts-sb1"},
    "netsuite_eu": {"account_id": "7654321", "consumer_key": "ck-eu", "consumer_secret": "cs-eu",
                    "token_id": "tk-eu", "token_secret": "ts-eu"},
}
SALESFORCE_USER, SALESFORCE_PASSWORD, SALESFORCE_TOKEN = "ops@acme.example", "wired-password", "wired-sec-token"
AWS_KEY, AWS_SECRET, AWS_REGION = "AKIAWIREDWIREDWIRED1", "wired/aws/secret", "us-east-1"
USAGE_QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/m3sh-usage-events"
ALERT_TOPIC = "arn:aws:sns:us-east-1:123456789012:m3sh-alerts"


def connections() -> dict[str, dict[str, Any]]:
    conns: dict[str, dict[str, Any]] = {
        "m3ter_default": {"conn_type": "m3ter", "login": M3TER_KEY, "password": M3TER_SECRET,
                          "extra": {"org_id": M3TER_ORG}},
        "hubspot_default": {"conn_type": "hubspot", "password": HUBSPOT_TOKEN},
        "salesforce_default": {"conn_type": "salesforce", "login": SALESFORCE_USER, "password": SALESFORCE_PASSWORD,
                               "extra": {"security_token": SALESFORCE_TOKEN}},
        "aws_default": {"conn_type": "aws", "login": AWS_KEY, "password": AWS_SECRET,
                        "extra": {"region_name": AWS_REGION}},
    }
    for conn_id, ns in NETSUITE.items():
        conns[conn_id] = {"conn_type": "netsuite", "login": ns["consumer_key"], "password": ns["consumer_secret"],
                          "extra": {"account_id": ns["account_id"], "token_id": ns["token_id"],
                                    "token_secret": ns["token_secret"]}}
    return conns


@contextmanager
def production_environment() -> Iterator[None]:
    """The connections above as ``AIRFLOW_CONN_*`` and the shipped config, and nothing that could
    redirect a client: no sandbox connections, no AWS endpoint/config variables, no ~/.aws files."""
    with mock.patch.dict(os.environ):
        for name in [k for k in os.environ if k.startswith(("AIRFLOW_CONN_", "AWS_", "M3SH_SANDBOX"))]:
            del os.environ[name]
        os.environ.update({f"AIRFLOW_CONN_{k.upper()}": json.dumps(v) for k, v in connections().items()})
        os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        os.environ["M3SH_CONFIG"] = str(DEFAULT_CONFIG_PATH)  # the shipped config, whatever a test set before
        yield


# ----------------------------------------------------------------------------------- the run
@dataclass
class WiringRun:
    records: list[Recorded]
    network_attempts: list[str]
    calls: Counter[str] = field(default_factory=Counter)  # "Class.method" -> calls
    errors: list[str] = field(default_factory=list)  # scenario steps that raised


def hook_classes() -> list[type]:
    from m3sh.hooks.hubspot import HubSpotHook
    from m3sh.hooks.m3ter import M3terAsyncHook, M3terHook
    from m3sh.hooks.netsuite import NetSuiteHook
    from m3sh.hooks.salesforce import SalesforceSync

    return [M3terHook, M3terAsyncHook, HubSpotHook, NetSuiteHook, SalesforceSync]


def public_methods(cls: type) -> list[str]:
    """The class's own public methods (not BaseHook's): what m3sh added and must be wired right."""
    from airflow.sdk import BaseHook

    inherited = set(dir(BaseHook))
    return sorted(n for n, v in vars(cls).items() if not n.startswith("_") and callable(v) and n not in inherited)


@contextmanager
def _counting(calls: Counter[str]) -> Iterator[None]:
    with ExitStack() as stack:
        for cls in hook_classes():
            for name in public_methods(cls):
                original = vars(cls)[name]

                def make(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
                    if asyncio.iscoroutinefunction(fn):
                        @wraps(fn)
                        async def acounted(*a: Any, **kw: Any) -> Any:
                            calls[key] += 1
                            return await fn(*a, **kw)
                        return acounted

                    @wraps(fn)
                    def counted(*a: Any, **kw: Any) -> Any:
                        calls[key] += 1
                        return fn(*a, **kw)
                    return counted

                stack.enter_context(mock.patch.object(cls, name, make(original, f"{cls.__name__}.{name}")))
        yield


def run() -> WiringRun:
    """Run every scenario once (a few seconds) and return what they sent."""
    from m3sh.hooks.m3ter import TOKEN_CACHE

    recorder = Recorder(canned.respond)
    result = WiringRun(recorder.records, recorder.network_attempts)
    with production_environment(), recorder.installed(), _counting(result.calls):
        TOKEN_CACHE.clear()
        try:
            for scenario in SCENARIOS:
                try:
                    scenario()
                except Exception as exc:  # reported by the tests, with every other scenario still run
                    result.errors.append(f"{scenario.__name__}: {type(exc).__name__}: {exc}")
        finally:
            TOKEN_CACHE.clear()  # never leave a canned token where a sandbox test would find it
    return result


# ----------------------------------------------------------------------------------- m3ter
def _id(name: str) -> str:
    """A sample m3ter id (m3ter ids are UUIDs; the spec's id fields are 36 characters)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"m3sh-wiring/{name}"))


def _stale(code: str | None, **fields: Any) -> dict[str, Any]:
    """An entity as read before another writer changed it (version 1; m3ter is at 2 already)."""
    named = {"code": code, "name": code} if code else {}
    return {"id": _id(code or str(fields)), **named, "version": 1, **fields}


def m3ter_sync() -> None:
    from m3sh.hooks.m3ter import M3terHook

    h = M3terHook()
    acc = h.find_account("acme")
    assert acc is not None
    list(h.list_accounts(ids=[_id("a-1"), _id("a-2")], page_size=10))
    h.get_account(acc["id"])
    h.create_account({"code": "globex", "name": "Globex", "emailAddress": "ap@globex.example", "currency": "USD"})
    h.upsert_account("acme", {"name": "Acme Corp"})  # differs from the listed one: read-modify-write PUT
    h.upsert_account("missing-initech", {"name": "Initech", "emailAddress": "ap@initech.example"})
    h.update_account(acc["id"], {"customFields": {"lifecycle": "converted"}})

    list(h.list_plans())
    h.find_plan("wired")
    list(h.list_products(codes=["wired"]))
    h.find_product("wired")
    h.upsert_product("missing-addons", {"name": "Add-ons"})
    h.upsert_product("wired", {"name": "Wired renamed"})
    list(h.list_meters(codes=["api_calls"]))
    h.find_meter("api_calls")
    list(h.list_transaction_types())
    h.find_transaction_type("credit")

    list(h.list_contracts(account_id=acc["id"]))
    contract = h.get_contract(_id("c-1"))
    h.upsert_contract("missing-acme-2026", {"name": "Acme 2026", "accountId": acc["id"], "startDate": "2026-01-01",
                                            "endDate": "2027-01-01"})
    h.upsert_contract("wired", {"name": "Acme renewed"})
    h.update_contract(contract["id"], {"endDate": "2028-01-01"})
    list(h.list_account_plans(account_id=acc["id"], include_all=True))
    h.create_account_plan({"accountId": acc["id"], "planId": _id("p-1"), "startDate": "2026-11-01T00:00:00Z",
                           "code": "acme-growth"})
    h.update_account_plan(_id("ap-1"), {"endDate": "2026-12-01T00:00:00Z"}, current={
        "id": _id("ap-1"), "version": 2, "accountId": acc["id"], "planId": _id("p-1"),
        "startDate": "2026-01-01T00:00:00Z"})

    list(h.list_balances(account_id=acc["id"], end_date_start="2026-11-01T00:00:00Z"))
    bal = h.get_balance(_id("b-1"))
    h.update_balance(bal["id"], {"amount": 0.0})
    h.create_balance({"accountId": acc["id"], "code": "acme-prepaid", "name": "Prepaid", "currency": "USD",
                      "startDate": "2026-11-01T00:00:00Z", "endDate": "2027-11-01T00:00:00Z"})
    list(h.list_balance_transactions(bal["id"]))
    h.balance_transaction_summary(bal["id"])
    h.create_balance_transaction(bal["id"], {"amount": 100.0, "description": "m3sh top-up rule|a-1|b-1"})

    list(h.list_external_mappings())
    list(h.list_external_mappings_of("Account", acc["id"]))
    h.find_external_mapping("Salesforce", "Account", "001000000000001AAA")
    h.create_external_mapping({"externalSystem": "HubSpot", "externalTable": "Company", "externalId": "1001",
                               "m3terEntity": "Account", "m3terId": acc["id"]})
    h.update_external_mapping(_id("em-1"), {"externalId": "1002"}, current={
        "id": _id("em-1"), "version": 1, "externalSystem": "HubSpot", "externalTable": "Company", "externalId": "1001",
        "m3terEntity": "Account", "m3terId": acc["id"]})

    list(h.list_notification_configurations())
    h.find_notification_configuration("wired")
    h.upsert_notification_configuration("missing-m3sh-balance-low", {
        "name": "m3sh balance low", "description": "balance below threshold", "eventName": "billing.balance.updated",
        "calculation": "new.amount < 100", "active": True, "alwaysFireEvent": False})
    h.upsert_notification_configuration("wired", {"calculation": "new.amount < 50"})
    h.find_webhook_destination("wired")
    h.upsert_webhook_destination("missing-m3sh", {
        "name": "m3sh", "description": "m3sh webhook receiver", "url": "https://airflow.acme.example/m3sh/webhook",
        "credentials": {"type": "M3TER_SIGNED_REQUEST", "apiKey": "k", "secret": "s"}, "active": True})
    h.upsert_webhook_destination("wired", {"url": "https://airflow2.acme.example/m3sh/webhook"})
    list(h.list_webhook_destinations())
    # sync-notifications links each notification to the webhook destination (integration configs)
    links = list(h.list_integration_configs(destination_id=_id("wh-1")))
    link = h.create_integration_config({"name": "m3sh: wired -> m3sh_receiver", "entityType": "Notification",
                                        "entityId": _id("n-1"), "destination": "WEBHOOK",
                                        "destinationId": _id("wh-1")}, lambda: None)
    h.enable_integration_config(str(link["id"]))
    assert links is not None
    h.get_custom_fields()  # preflight: the organization's custom field definitions

    list(h.list_bills(status="APPROVED", bill_date="2026-11-01", exclude_line_items=True))
    bill = h.get_bill(_id("bill-1"))
    list(h.list_bill_line_items(bill["id"]))
    h.approve_bills([bill["id"]])
    h.recalculate_bills([bill["id"]])
    h.update_bill_status(bill["id"], "APPROVED")
    h.lock_bill(bill["id"])

    job = h.create_adhoc_data_export({"sourceType": "USAGE", "operation": "INSERT", "meterIds": [_id("m-1")],
                                      "timePeriod": "YESTERDAY"})
    h.get_data_export_job(job["id"])
    h.get_data_export_download_url(job["id"])

    # A stale version: the hook re-reads (each collection's GET by id) and writes again.
    h.upsert_product("conflict-api", {"name": "API"}, existing=_stale("conflict-api"))
    h.upsert_notification_configuration("conflict-n", {"calculation": "new.amount < 10"},
                                        existing=_stale("conflict-n", description="d", eventName="e"))
    h.upsert_webhook_destination("conflict-w", {"url": "https://airflow3.acme.example/m3sh/webhook"},
                                 existing=_stale("conflict-w", description="d", url="https://x.example",
                                                 credentials={"type": "M3TER_SIGNED_REQUEST", "apiKey": "k",
                                                              "secret": "s"}))
    h.update_external_mapping(_id("em-2"), {"externalTable": "Customer"}, current=_stale(
        None, id=_id("em-2"), externalSystem="NetSuite", externalTable="customer", externalId="conflict-1001",
        m3terEntity="Account", m3terId=acc["id"]))
    h.update_account_plan(_id("ap-2"), {"endDate": "2026-12-01T00:00:00Z"}, current=_stale(
        "conflict-ap", id=_id("ap-2"), accountId=acc["id"], planId=_id("p-1"), startDate="2026-01-01T00:00:00Z"))

    # Measurement file uploads: generateUploadUrl answers a pre-signed S3 URL of m3ter's own bucket
    # (canned.M3TER_UPLOAD_URL), which the hook PUTs to as given, with the headers that came with it.
    upload = h.generate_upload_url("m3sh-wired-p0000.json", 2)
    h.put_upload(upload["url"], upload["headers"], io.BytesIO(b"[]"), 2)
    list(h.list_upload_jobs(date_created_start="2026-11-01T00:00:00Z"))
    h.get_upload_job(upload["jobId"])
    h.get_upload_job_original_url(upload["jobId"])

    h.submit_measurements([{"uid": "wired-1", "meter": "api_calls", "account": "acme", "ts": "2026-11-01T10:00:00Z",
                            "measure": {"quantity": 5.0}, "where": {"region": "us-east-1"}}])
    h.query_usage({"startDate": "2026-11-01T00:00:00Z", "endDate": "2026-11-02T00:00:00Z", "meterIds": [_id("m-1")],
                   "groups": [{"groupType": "ACCOUNT"}], "aggregations": [
                       {"meterId": _id("m-1"), "fieldCode": "quantity", "fieldType": "MEASURE", "function": "SUM"}]})
    ok, message = h.test_connection()
    assert ok, message


def m3ter_async() -> None:
    """The async hook as the triggers use it (one event loop, one client)."""
    from m3sh.hooks.m3ter import M3terAsyncHook

    async def main() -> None:
        h = M3terAsyncHook()
        try:
            await h.aget_settings()
            await h.aget_conn()
            await h.alist_accounts(ids=[_id("a-1")])
            await h.alist_balances()
            await h.alist_products(codes=["wired"])
            await h.alist_meters(codes=["api_calls"])
            await h.alist_contracts()
            await h.abalance_transaction_summary(_id("b-1"))
            await h.aget_upload_job(_id("upload-1"))
            await h.aquery_usage({"startDate": "2026-11-01T00:00:00Z", "endDate": "2026-11-02T00:00:00Z",
                                  "meterIds": [_id("m-1")], "groups": [{"groupType": "ACCOUNT"}], "aggregations": [
                                      {"meterId": _id("m-1"), "fieldCode": "quantity", "fieldType": "MEASURE",
                                       "function": "SUM"}]})
        finally:
            await h.aclose()

    from m3sh.hooks.m3ter import TOKEN_CACHE

    TOKEN_CACHE.clear()  # so the async token fetch (its own code path) is recorded too
    asyncio.run(main())


# ----------------------------------------------------------------------------------- HubSpot
def hubspot() -> None:
    from m3sh.hooks.hubspot import HubSpotHook

    h = HubSpotHook()
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    for object_type in ("companies", "deals", "line_items"):
        list(h.search_modified(object_type, start, start + dt.timedelta(hours=1), properties=["name"]))
    h.batch_read("companies", ["1001", "1002"], properties=["name", "domain"])
    h.batch_read("deals", ["2001"], properties=["po_number", "dealstage", "closedate"])
    h.batch_read("line_items", ["3001"], properties=["hs_sku", "hs_product_id", "name"])
    h.get_object("companies", "1001", properties=["name", "m3ter_account_id"])
    list(h.iter_objects("companies", properties=["name", "domain"]))
    h.get_associations("companies", ["1001"], "deals")
    h.get_associations("deals", ["2001"], "line_items")
    h.get_associations("deals", ["2001"], "companies")
    h.get_associations("line_items", ["3001"], "deals")
    h.batch_upsert("companies", [{"id": "acme.example", "properties": {"name": "Acme", "domain": "acme.example"}}],
                   id_property="domain")
    h.batch_update("companies", [{"id": "1001", "properties": {"m3ter_account_id": "a-1", "m3ter_synced": True}}])
    h.batch_update("deals", [{"id": "2001", "properties": {"m3ter_latest_invoice_amount": 120.5}}])
    h.ensure_property("companies", "m3ter_account_id", "m3ter account id")
    h.ensure_property("deals", "missing_m3ter_invoice_number", "m3ter invoice number")
    h.property_names("companies")  # preflight: the properties the config reads and writes
    assert "scopes" in h.access_token_info()  # preflight: the private app token's scopes
    ok, message = h.test_connection()
    assert ok, message


# ----------------------------------------------------------------------------------- NetSuite
def netsuite() -> None:
    from m3sh.hooks.netsuite import NetSuiteHook

    for conn_id in NETSUITE:
        h = NetSuiteHook(conn_id)
        list(h.suiteql("SELECT id, symbol FROM currency ORDER BY id"))
        h.upsert_by_external_id("customer", "a-1", {"companyName": "Acme", "subsidiary": {"id": "1"},
                                                     "currency": {"id": "1"}})
        h.upsert_by_external_id("invoice", "bill-1", {"entity": {"id": "4242"}, "subsidiary": {"id": "1"},
                                                       "tranDate": "2026-11-01", "item": {"items": [
                                                           {"item": {"id": "7"}, "quantity": 1, "amount": 100.0}]}})
        h.upsert_by_external_id("creditmemo", "bill-1:cm:abc", {"entity": {"id": "4242"}, "item": {"items": []}})
        h.get_by_external_id("invoice", "bill-1", expand_sub_resources=False)
        list(h.suiteql("SELECT id, externalid, foreigntotal FROM transaction WHERE externalid = 'bill-1' "
                       "ORDER BY id", page_size=500))
        list(h.invoice_payment_rows(modified_from=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                                    modified_until=dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
                                    due_from=dt.date(2026, 10, 31), due_until=dt.date(2026, 11, 2)))
        h.get_record("customer", "4242", fields=["companyName"])
        h.create_record("customer", {"externalId": "a-2", "companyName": "Globex"})
        h.patch_record("invoice", "eid:bill-1", {"memo": "m3ter bill 1"})
        h.delete_record("customer", "4243")
        ok, message = h.test_connection()
        assert ok, message


# --------------------------------------------------------------------------------- Salesforce
def salesforce() -> None:
    from m3sh.hooks.salesforce import SalesforceSync

    sf = SalesforceSync()
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    list(sf.query_modified("Account", ["Name", "Website"], start, start + dt.timedelta(hours=1)))
    list(sf.query_modified("Opportunity", ["AccountId", "StageName"], start, start + dt.timedelta(hours=1),
                           include_deleted=True))
    list(sf.query("SELECT Id FROM Invoice__c WHERE M3ter_Bill_Id__c != null"))
    sf.get_record("Account", "001000000000001AAA", fields=["Name"])
    sf.update_record("Account", "001000000000001AAA", {"M3ter_Account_Id__c": "a-1"})
    # the latest invoice shown on the customer's won Opportunity (invoicing/salesforce.py)
    sf.get_record("Opportunity", "006000000000001AAA", fields=["Id", "Latest_Invoice_Number__c"])
    sf.update_record("Opportunity", "006000000000001AAA", {"Latest_Invoice_Number__c": "INV-1"})
    sf.create_record("Task", {"Subject": "m3sh", "WhatId": "001000000000001AAA"})
    sf.upsert_by_external_id("Invoice__c", "M3ter_Bill_Id__c", "bill-1", {"Amount__c": 100.0,
                                                                          "Account__c": "001000000000001AAA"})
    assert sf.describe("Invoice__c")["fields"]  # preflight: objects and fields m3sh writes


# ---------------------------------------------------------------------------------------- AWS
def aws_storage() -> None:
    """S3 through m3sh's own code: Storage, the automation ledger, the analytics partition store
    and reader, and the ingest of one usage file (HEAD + GET, measurements to m3ter)."""
    from m3sh.automation.ledger import Ledger
    from m3sh.automation.rules import Firing
    from m3sh.config import get_config
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage
    from m3sh.usage.ingest import ingest_s3_object, list_feed_objects

    cfg = get_config()
    state = Storage.from_config(cfg.storage)
    state.put_json(state.key("wired", "state.json"), {"ok": True})
    state.put_jsonl(state.key("wired", "rows.jsonl"), [{"uid": "u-1"}])
    state.put_bytes(state.key("wired", "blob.bin"), b"x", "application/octet-stream")
    assert state.get_json(state.key("wired", "state.json")) is not None
    assert state.get_json(state.key("missing", "state.json")) is None
    list(state.iter_jsonl(state.key("wired", "rows.jsonl")))
    list(state.list_keys(state.key("wired/")))
    state.delete(state.key("wired", "blob.bin"))

    ledger = Ledger(state)
    firing = Firing(rule="prepaid_depleted", kind="balance_below", account_id="a-1", entity="balance",
                    entity_id="b-1", crossing="2026-11-01", event_time="2026-11-01T00:00:00Z")
    claim = ledger.claim(firing, "manual__wired")
    ledger.finish(claim, "succeeded")

    feed = next(f for f in cfg.usage.feeds if f.type == "s3")
    source = Storage(feed.conn_id, feed.bucket or "", "")
    keys = list_feed_objects(source, feed.prefix or "", None, None)
    ingest_s3_object(feed=feed, key=keys[0], m3ter=M3terHook(), source_storage=source, state=state,
                     account_exists=lambda _code: True, now=dt.datetime(2026, 11, 2, tzinfo=dt.UTC))


def aws_analytics() -> None:
    import pyarrow as pa

    from m3sh.analytics.partition import PartitionStore
    from m3sh.analytics.reader import AnalyticsReader
    from m3sh.analytics.schemas import TABLES
    from m3sh.config import get_config
    from m3sh.storage import Storage

    storage = Storage.from_config(get_config().storage)
    store = PartitionStore(storage)
    day = dt.date(2026, 11, 1)
    spec = next(iter(TABLES.values())) if isinstance(TABLES, dict) else TABLES[0]
    staged = store.stage(spec, day, "manual__wired", pa.table({"x": [1]}))
    store.commit(staged, day, {"run_id": "manual__wired"})
    store.finish(day, [{"table": spec.name, "rows": 1, "manifest": store.manifest_key(spec.name, day)}], {})
    AnalyticsReader(storage).partition(spec.name, day, attempts=1)


def aws_alerts_and_events() -> None:
    """The SNS alert channel, and the SQS trigger of the usage DAG's asset watcher as built from the
    config (its ``run()`` receives the S3 notification and deletes it)."""
    from m3sh.config import get_config
    from m3sh.dagkit.usage_ingest import usage_schedule
    from m3sh.notifiers.alerts import send

    send({"type": "sns", "conn_id": "aws_default", "target": ALERT_TOPIC, "name": "ops_sns"},
         {"dag_id": "m3sh_usage_ingest", "task_id": "ingest_files", "event": "failure"}, "m3sh: ingest failed")

    schedule = usage_schedule(get_config())
    assets = schedule.asset_condition.objects if hasattr(schedule, "asset_condition") else []
    triggers = [w.trigger for a in assets for w in (getattr(a, "watchers", None) or [])]
    assert triggers, "the demo config's S3 feed has an event_queue: the usage DAG must watch it"

    async def first_event(trigger: Any) -> Any:
        async for event in trigger.run():
            return event
        return None

    for trigger in triggers:
        assert asyncio.run(first_event(trigger)) is not None


SCENARIOS: list[Callable[[], None]] = [m3ter_sync, m3ter_async, hubspot, netsuite, salesforce, aws_storage,
                                       aws_analytics, aws_alerts_and_events]
