"""NetSuiteHook against the sandbox: governance, retries, idempotent writes, errors, secrets."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from m3sh.exceptions import ExternalApiError, RetryableError
from m3sh.hooks.netsuite import NetSuiteError, NetSuiteHook
from m3sh.sandbox.credentials import NETSUITE
from m3sh.sandbox.seed import NETSUITE_ITEMS

pytestmark = pytest.mark.sandbox

US, EU = NETSUITE["default"], NETSUITE["eu"]
FAST = {"backoff_base_s": 0.02, "backoff_max_s": 0.2, "timeout_s": 5}


@pytest.fixture
def conns(fresh_sandbox: Any) -> Iterator[Any]:
    """The sandbox's own NetSuite connections, with backoff shortened so retry tests stay fast."""
    saved = {}
    for conn_id in ("NETSUITE_DEFAULT", "NETSUITE_EU"):
        var = f"AIRFLOW_CONN_{conn_id}"
        saved[var] = os.environ[var]
        conn = json.loads(os.environ[var])
        conn["extra"].update(FAST)
        os.environ[var] = json.dumps(conn)
    try:
        yield fresh_sandbox
    finally:
        os.environ.update(saved)


@pytest.fixture
def hook(conns: Any) -> NetSuiteHook:
    return NetSuiteHook()


def customer(hook: NetSuiteHook, eid: str = "CUST-1") -> str:
    body = {"companyName": f"Customer {eid}", "email": "a@x.example"}
    return hook.upsert_by_external_id("customer", eid, body)


def invoice(customer_id: str, tran_date: str = "2030-01-31") -> dict[str, Any]:
    return {"entity": {"id": customer_id}, "tranDate": tran_date,
            "item": {"items": [{"item": {"id": NETSUITE_ITEMS["usage"]}, "quantity": 1000, "rate": 0.002}]}}


def test_connection_and_base_url(hook: NetSuiteHook, conns: Any) -> None:
    ok, msg = hook.test_connection()
    assert ok, msg
    assert "1234567" in msg
    assert hook.settings.base_url == conns.url("netsuite")


def test_default_host_is_derived_from_the_account(conns: Any) -> None:
    conn = json.loads(os.environ["AIRFLOW_CONN_NETSUITE_EU"])
    conn.pop("host")
    os.environ["AIRFLOW_CONN_NETSUITE_NOHOST"] = json.dumps(conn)
    try:
        hook = NetSuiteHook("netsuite_nohost")
        assert hook.settings.base_url == "https://1234567-eu.suitetalk.api.netsuite.com"
        assert hook.account_id == "1234567_EU"
    finally:
        del os.environ["AIRFLOW_CONN_NETSUITE_NOHOST"]


def test_record_round_trip(hook: NetSuiteHook) -> None:
    cid = hook.create_record("customer", {"companyName": "Direct", "externalId": "DIRECT-1"})
    assert hook.get_record("customer", cid)["externalId"] == "DIRECT-1"
    hook.patch_record("customer", cid, {"email": "direct@x.example"})
    assert hook.get_by_external_id("customer", "DIRECT-1")["email"] == "direct@x.example"  # type: ignore[index]
    assert hook.get_by_external_id("customer", "NOPE") is None
    iid = hook.upsert_by_external_id("invoice", "BILL/2030-01 #1", invoice(cid))  # URL-unsafe external id
    inv = hook.get_by_external_id("invoice", "BILL/2030-01 #1")
    assert inv is not None and inv["id"] == iid and inv["total"] == 2.0
    assert inv["item"]["count"] == 1


def test_upsert_twice_keeps_one_record_and_one_line_set(hook: NetSuiteHook) -> None:
    cid = customer(hook)
    first = hook.upsert_by_external_id("invoice", "m3ter-bill-1", invoice(cid))
    second = hook.upsert_by_external_id("invoice", "m3ter-bill-1", invoice(cid))
    assert first == second
    rows = list(hook.suiteql("SELECT COUNT(*) AS n FROM transaction WHERE externalid = 'm3ter-bill-1'"))
    assert rows == [{"n": "1"}]
    assert hook.get_record("invoice", first)["item"]["count"] == 1


def test_suiteql_pages_with_has_more(hook: NetSuiteHook, conns: Any) -> None:
    for i in range(7):
        customer(hook, f"C{i:02d}")
    conns.admin("netsuite", "stats", "DELETE")
    rows = list(hook.suiteql("SELECT id, externalid FROM customer ORDER BY externalid", page_size=3))
    assert [r["externalid"] for r in rows] == [f"C{i:02d}" for i in range(7)]
    assert all("links" not in r for r in rows)
    assert conns.stats("netsuite")["counts"]["POST /services/rest/query/v1/suiteql"] == 3
    with pytest.raises(ValueError):
        list(hook.suiteql("SELECT id FROM customer", page_size=1001))


def test_accounts_are_separate(conns: Any) -> None:
    us, eu = NetSuiteHook(), NetSuiteHook("netsuite_eu")
    customer(us, "SHARED")
    assert eu.get_by_external_id("customer", "SHARED") is None
    eu_id = customer(eu, "SHARED")
    assert eu.get_record("customer", eu_id)["currency"]["refName"] == "EUR"


def test_twenty_threads_respect_the_account_concurrency_limit(conns: Any) -> None:
    conns.admin("netsuite", "latency", "POST", account=US.account_id, ms=25)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        hook = NetSuiteHook()  # separate instances must still share the account's limiter
        try:
            for j in range(3):
                customer(hook, f"T{n}-{j}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    state = conns.state("netsuite")["accounts"]["1234567"]
    gov = state["governance"]
    assert gov["max_in_flight"] == 5  # saturated, never above
    assert gov["rejected_429"] == 0
    assert state["counts"]["customer"] == 60
    assert not any(r["status"] == 429 for r in conns.stats("netsuite")["recent"])


def test_429s_from_other_integrations_are_retried(hook: NetSuiteHook, conns: Any) -> None:
    cid = customer(hook)
    conns.faults("netsuite", burst_429=2, retry_after_s=0)
    assert hook.upsert_by_external_id("invoice", "B-429", invoice(cid))
    assert [r["status"] for r in conns.stats("netsuite")["recent"]][-3:] == [429, 429, 204]


def test_retries_injected_5xx(hook: NetSuiteHook, conns: Any) -> None:
    conns.faults("netsuite", fail_next=2, error_status=503)
    cid = customer(hook)
    assert hook.get_record("customer", cid)["id"] == cid
    assert [r["status"] for r in conns.stats("netsuite")["recent"]][:3] == [503, 503, 204]


def test_gives_up_after_max_attempts(hook: NetSuiteHook, conns: Any) -> None:
    conns.faults("netsuite", fail_next=50, error_status=500)
    with pytest.raises(NetSuiteError) as info:
        customer(hook, "NEVER")
    assert info.value.status == 500 and not info.value.is_action_needed
    assert len(conns.stats("netsuite")["recent"]) == hook.settings.max_attempts
    # One exception tree with the other systems: callers catch RetryableError / ExternalApiError.
    assert isinstance(info.value, RetryableError) and isinstance(info.value, ExternalApiError)
    assert info.value.system == "netsuite"


def test_user_errors_are_not_retried(hook: NetSuiteHook, conns: Any) -> None:
    with pytest.raises(NetSuiteError) as info:
        hook.upsert_by_external_id("invoice", "BAD-REF", invoice("999999"))
    err = info.value
    assert (err.status, err.code, err.error_path) == (400, "INVALID_KEY_OR_REF", "entity")
    assert err.is_action_needed and not err.is_closed_period
    assert isinstance(err, ExternalApiError) and not isinstance(err, RetryableError)
    assert conns.stats("netsuite")["counts"]["writes"] == 1


def test_closed_period_is_action_needed_with_netsuites_words(hook: NetSuiteHook, conns: Any) -> None:
    cid = customer(hook)
    conns.admin("netsuite", "close_period", "POST", account="1234567", before="2030-02-01")
    with pytest.raises(NetSuiteError) as info:
        hook.upsert_by_external_id("invoice", "m3ter-bill-jan", invoice(cid, "2030-01-31"))
    err = info.value
    detail = conns.state("netsuite")  # the emulator's message is NetSuite's; the hook must quote it exactly
    assert detail["accounts"]["1234567"]["closed_before"] == "2030-02-01"
    assert err.is_action_needed and err.is_closed_period
    assert err.code == "USER_ERROR" and err.detail.startswith("The accounting period is closed")
    assert "invoice" in str(err) and "'m3ter-bill-jan'" in str(err) and err.detail in str(err)
    assert err.external_id == "m3ter-bill-jan" and err.record_type == "invoice"


def test_lost_response_then_retry_leaves_one_record(hook: NetSuiteHook, conns: Any) -> None:
    cid = customer(hook)
    conns.faults("netsuite", drop_next=1, drop_after_processing=True, methods=["PUT"])
    iid = hook.upsert_by_external_id("invoice", "m3ter-bill-drop", invoice(cid))
    recent = conns.stats("netsuite")["recent"]
    assert [r["status"] for r in recent if r["method"] == "PUT"][-2:] == [-1, 204]
    rows = list(hook.suiteql("SELECT id FROM transaction WHERE externalid = 'm3ter-bill-drop'"))
    assert rows == [{"id": iid}]


def test_create_is_not_repeated_after_a_lost_response(hook: NetSuiteHook, conns: Any) -> None:
    conns.faults("netsuite", drop_next=1, drop_after_processing=True, methods=["POST"])
    with pytest.raises(NetSuiteError) as info:
        hook.create_record("customer", {"companyName": "Maybe", "externalId": "MAYBE"})
    # The client sees a lost response (a dropped socket, or the 500 uvicorn sends for it): either
    # way the write may have happened, so a POST must not be repeated.
    assert info.value.status in (0, 500) and not info.value.retryable
    assert conns.stats("netsuite")["counts"]["POST /services/rest/record/v1/customer"] == 1
    assert conns.state("netsuite")["accounts"]["1234567"]["counts"]["customer"] == 1


def test_secrets_never_logged_or_raised(conns: Any, caplog: pytest.LogCaptureFixture,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    hook = NetSuiteHook()
    cid = customer(hook)
    conns.faults("netsuite", fail_next=1, error_status=503)
    hook.get_record("customer", cid)
    conns.admin("netsuite", "close_period", "POST", account="1234567", before="2030-02-01")
    with pytest.raises(NetSuiteError) as info:
        hook.upsert_by_external_id("invoice", "X", invoice(cid))
    _, msg = hook.test_connection()
    out, err = capsys.readouterr()
    assert "retrying" in caplog.text  # the retry was logged...
    for secret in (US.consumer_secret, US.token_secret):
        for text in (caplog.text, out, err, str(info.value), repr(info.value), msg):
            assert secret not in text  # ...without the credentials
