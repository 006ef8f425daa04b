"""HubSpotHook against the sandbox HubSpot emulator (no mocks): paging, window splitting, batching,
partial failures, the client-side rate limiter, retries, test_connection and secret hygiene."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from m3sh.hooks.hubspot import BatchResult, HubSpotError, HubSpotHook, HubSpotRetryableError
from m3sh.sandbox import credentials
from m3sh.sandbox.seed import demo_company

pytestmark = pytest.mark.sandbox

HUBSPOT_CUSTOMERS = demo_company().by_crm("hubspot")
TOKEN = credentials.HUBSPOT_TOKEN


def _conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, url: str, token: str = TOKEN, **extra: object) -> str:
    """Register an extra connection through the same env mechanism the sandbox fixture uses."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                       json.dumps({"conn_type": "hubspot", "host": url, "password": token, "extra": extra}))
    return conn_id


def _requests(sandbox, key: str) -> int:  # type: ignore[no-untyped-def]
    return int(sandbox.stats("hubspot")["counts"].get(key, 0))


def _statuses(sandbox) -> list[int]:  # type: ignore[no-untyped-def]
    return [r["status"] for r in sandbox.stats("hubspot")["recent"]]


def test_iter_objects_follows_after_in_pages_of_100(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    records = list(HubSpotHook().iter_objects("companies", ["name", "billing_email"]))
    assert sorted(r["id"] for r in records) == sorted(c.hubspot_id for c in HUBSPOT_CUSTOMERS)
    assert all(r["properties"]["billing_email"].startswith("billing@") for r in records)
    assert _requests(fresh_sandbox, "GET /crm/v3/objects/companies") == -(-len(HUBSPOT_CUSTOMERS) // 100)


def test_search_modified_splits_windows_past_the_10k_cap(fresh_sandbox, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fresh_sandbox.admin("hubspot", "bulk_create", "POST", object_type="companies", count=10_050,
                        modified_from="2020-01-01T00:00:00Z", modified_to="2020-12-01T00:00:00Z")
    # Speed, not semantics: the emulator's search limit (5/s) would make 50+ pages take 10 s.
    fresh_sandbox.admin("hubspot", "limits", "POST", enabled=False)
    hook = HubSpotHook(_conn(monkeypatch, "hubspot_fast", fresh_sandbox.url("hubspot"),
                             search_rate_limit_per_s=1000, rate_limit_requests=1000))
    start, end = dt.datetime(2020, 1, 1, tzinfo=dt.UTC), dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
    got = list(hook.search_modified("companies", start, end, ["name"]))
    ids = [r["id"] for r in got]
    assert len(ids) == 10_050 == len(set(ids))
    stamps = [r["properties"]["hs_lastmodifieddate"] for r in got]
    assert stamps == sorted(stamps)  # halves are read oldest first
    assert 400 not in _statuses(fresh_sandbox)
    # the window must have been split: every request stays below 10,000 results
    assert _requests(fresh_sandbox, "POST /crm/v3/objects/companies/search") > 10_050 // 200
    # the demo companies (modified recently) are outside the window
    assert not set(ids) & {c.hubspot_id for c in HUBSPOT_CUSTOMERS}


def test_search_modified_uses_lastmodifieddate_for_contacts(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    times = sorted(c.modified_at for c in HUBSPOT_CUSTOMERS)
    got = list(HubSpotHook().search_modified("contacts", times[0], times[20], ["email"]))
    expected = {c.email for c in HUBSPOT_CUSTOMERS if times[0] <= c.modified_at < times[20]}
    assert {r["properties"]["email"] for r in got} == expected


def test_batch_upsert_chunks_to_100_and_is_idempotent(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    hook = HubSpotHook()
    inputs = [{"id": f"acc-{i}", "properties": {"name": f"Company {i}"}} for i in range(250)]
    first = hook.batch_upsert("companies", inputs, "m3ter_account_id")
    assert isinstance(first, BatchResult) and first.ok and len(first.succeeded) == 250
    assert all(r["new"] for r in first.succeeded)
    assert _requests(fresh_sandbox, "POST /crm/v3/objects/companies/batch/upsert") == 3
    again = hook.batch_upsert("companies", [{"m3ter_account_id": f"acc-{i}", "name": "Renamed"}
                                            for i in range(250)], "m3ter_account_id")
    assert again.ok and not any(r["new"] for r in again.succeeded)
    assert {r["id"] for r in again.succeeded} == {r["id"] for r in first.succeeded}


def test_batch_update_reports_207_failures_per_record(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    ids = [c.hubspot_id for c in HUBSPOT_CUSTOMERS[:120]]
    inputs = [{"id": i, "properties": {"m3ter_account_id": f"m3-{i}"}} for i in ids]
    inputs[5] = {"id": ids[5], "properties": {"not_a_property": "x"}}
    inputs[110] = {"id": "123456", "properties": {"name": "ghost"}}
    result = HubSpotHook().batch_update("companies", inputs)
    assert len(result.succeeded) == 118
    failed = {inp["id"]: reason for inp, reason in result.failed}
    assert set(failed) == {ids[5], "123456"}
    assert "PROPERTY_DOESNT_EXIST" in failed[ids[5]] and "OBJECT_NOT_FOUND" in failed["123456"]
    assert _requests(fresh_sandbox, "POST /crm/v3/objects/companies/batch/update") == 2
    state = {r["id"]: r for r in fresh_sandbox.state("hubspot")["objects"]["companies"]}
    assert state[ids[0]]["properties"]["m3ter_account_id"] == f"m3-{ids[0]}"


def test_get_associations_and_ensure_property(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    hook = HubSpotHook()
    ids = [c.hubspot_id for c in HUBSPOT_CUSTOMERS[:5]]
    deals = hook.get_associations("companies", [*ids, "31999999999"], "deals")
    assert all(len(deals[i]) == 1 for i in ids) and deals["31999999999"] == []
    items = hook.get_associations("deals", [d[0] for d in deals.values() if d], "line_items")
    assert all(len(v) == 1 for v in items.values())
    prop = hook.ensure_property("companies", "m3ter_plan_code", "m3ter plan code")
    assert prop["name"] == "m3ter_plan_code" and prop["group_name"] == "companyinformation"
    assert hook.ensure_property("companies", "m3ter_plan_code", "m3ter plan code")["name"] == "m3ter_plan_code"
    assert _requests(fresh_sandbox, "POST /crm/v3/properties/companies") == 1
    ok = hook.batch_update("companies", [{"id": ids[0], "properties": {"m3ter_plan_code": "growth_usd"}}])
    assert ok.ok


def test_rate_limiter_keeps_250_threaded_calls_under_the_limit(fresh_sandbox, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Same policy shape as HubSpot's 100/10 s, scaled to 50/1 s so the test takes seconds. The client
    # keeps 10 % under it: scaled down, a loaded machine's scheduling jitter (tens of ms) is a tenth of
    # the window, and two calls sent a window apart can arrive less than one apart.
    fresh_sandbox.admin("hubspot", "rate_limit", "POST", ten_secondly=50, window_s=1)
    hook = HubSpotHook(_conn(monkeypatch, "hubspot_scaled", fresh_sandbox.url("hubspot"),
                             rate_limit_requests=45, rate_limit_window_s=1))
    ids = [c.hubspot_id for c in HUBSPOT_CUSTOMERS]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda i: hook.get_object("companies", ids[i % len(ids)])["id"], range(250)))
    elapsed = time.monotonic() - started
    assert len(got) == 250
    statuses = _statuses(fresh_sandbox)
    assert len(statuses) == 250 and set(statuses) == {200}  # no 429, hence no retries
    assert elapsed >= 4.0  # 250 calls at <= 45 per second need at least five full windows


def test_retries_honour_retry_after_on_429_and_back_off_on_5xx(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    hook = HubSpotHook(backoff_base_s=0.05)
    customer = HUBSPOT_CUSTOMERS[0]
    fresh_sandbox.faults("hubspot", burst_429=2, retry_after_s=1)
    started = time.monotonic()
    assert hook.get_object("companies", customer.hubspot_id)["id"] == customer.hubspot_id
    assert time.monotonic() - started >= 2.0  # two Retry-After: 1 waits
    assert _statuses(fresh_sandbox) == [429, 429, 200]
    fresh_sandbox.admin("hubspot", "stats", "DELETE")
    fresh_sandbox.faults("hubspot", fail_next=2, error_status=503)
    result = hook.batch_upsert("companies", [{"id": "acc-r", "properties": {"name": "R"}}], "m3ter_account_id")
    assert result.ok and _statuses(fresh_sandbox) == [503, 503, 200]
    fresh_sandbox.faults("hubspot", fail_next=10, error_status=502)
    with pytest.raises(HubSpotRetryableError) as err:
        HubSpotHook(max_attempts=2, backoff_base_s=0.01).get_object("deals", "7000000001")
    assert err.value.status == 502 and "deals" in str(err.value) and "7000000001" in str(err.value)


def test_missing_record_error_names_type_and_id(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HubSpotError) as err:
        HubSpotHook().get_object("companies", "123")
    assert err.value.status == 404 and err.value.object_type == "companies" and "'123'" in str(err.value)


def test_test_connection_good_and_bad(fresh_sandbox, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ok, message = HubSpotHook().test_connection()
    assert ok and fresh_sandbox.url("hubspot") in message
    bad_token = "pat-na1-wrong-0000"
    bad = HubSpotHook(_conn(monkeypatch, "hubspot_bad", fresh_sandbox.url("hubspot"), token=bad_token))
    ok, message = bad.test_connection()
    assert not ok and "401" in message and "token" in message and bad_token not in message


def test_token_never_reaches_logs(fresh_sandbox, monkeypatch, caplog, capsys) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    hook = HubSpotHook(backoff_base_s=0.01)
    list(hook.iter_objects("companies", ["name"]))
    hook.batch_update("companies", [{"id": "1", "properties": {"name": "x"}}])
    fresh_sandbox.faults("hubspot", fail_next=1, error_status=500)
    hook.get_object("companies", HUBSPOT_CUSTOMERS[0].hubspot_id)
    bad = HubSpotHook(_conn(monkeypatch, "hubspot_bad2", fresh_sandbox.url("hubspot"), token="pat-bad-9"))
    with pytest.raises(HubSpotError):
        bad.get_object("companies", HUBSPOT_CUSTOMERS[0].hubspot_id)
    bad.test_connection()
    out, err = capsys.readouterr()
    assert caplog.records  # DEBUG logging really was captured
    for text in (caplog.text, out, err):
        assert TOKEN not in text and "pat-bad-9" not in text
