"""``M3terHook`` / ``M3terAsyncHook`` against the m3ter emulator (no mocks).

Token reuse is counted on the emulator's token endpoint; batching and retries through its request
stats and fault injection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

import pytest

from m3sh.exceptions import M3terApiError, RetryableError
from m3sh.hooks.m3ter import MAX_BATCH_BYTES, TOKEN_CACHE, M3terAsyncHook, M3terHook, merge_for_put

pytestmark = pytest.mark.sandbox
MEASURE_POSTS = "POST /organizations/{id}/measurements"


def _token_requests(sandbox: Any) -> int:
    return int(sandbox.state("m3ter")["token_requests"])


def _count(sandbox: Any, key: str) -> int:
    return int(sandbox.stats("m3ter")["counts"].get(key, 0))


def test_one_token_is_reused_across_pages_hooks_and_writes(m3: Any) -> None:
    before = _token_requests(m3)
    hook = M3terHook()
    codes = [a["code"] for a in hook.list_accounts(page_size=5)]  # several pages
    assert len(codes) == len(set(codes)) == 24
    assert len(list(M3terHook().list_plans(page_size=2))) == 7  # another hook instance
    created = hook.create_account({"code": "hook-test", "name": "Hook Test", "emailAddress": "a@b.example"})
    assert hook.get_account(created["id"])["code"] == "hook-test"
    assert _token_requests(m3) - before == 1


def test_find_by_code_where_the_spec_has_no_codes_filter(m3: Any) -> None:
    """GET /plans has no ``codes`` parameter in the published spec (m3ter would ignore it and answer
    every plan; the spec guard refuses it): the hook matches the code itself, on every page."""
    hook = M3terHook()
    plans = list(hook.list_plans(page_size=1))
    assert len(plans) > 1
    assert hook.find_plan(plans[-1]["code"])["id"] == plans[-1]["id"]  # not just the first plan
    assert hook.find_plan("no-such-plan") is None
    assert hook.find_account("acme-media")["code"] == "acme-media"  # accounts do filter by codes
    # Balances' amount is computed by m3ter: not sent back on a read-modify-write PUT.
    assert "amount" not in merge_for_put({"amount": 5.0, "code": "b", "version": 2}, {"name": "B"}, "update_balance")


def test_a_rejected_token_is_replaced_once(m3: Any) -> None:
    hook = M3terHook()
    assert hook.find_account("nope") is None
    before = _token_requests(m3)
    m3.admin("m3ter", "token_ttl", "POST", seconds=1)  # the cached token dies; a new one lives 1 s
    time.sleep(1.2)
    try:
        assert len(list(hook.list_products())) == 1
    finally:
        m3.admin("m3ter", "token_ttl", "POST", seconds=18000)
    assert _token_requests(m3) - before == 1


def _kill_cached_token(m3: Any) -> None:
    """The token the hooks cached (issued with a long TTL) stops being accepted by the emulator."""
    m3.admin("m3ter", "token_ttl", "POST", seconds=1)
    time.sleep(1.2)


def test_a_write_meeting_a_rejected_token_replaces_it_once(m3: Any) -> None:
    hook = M3terHook()
    account = next(iter(hook.list_accounts(page_size=1)))
    before = _token_requests(m3)
    _kill_cached_token(m3)
    try:
        updated = hook.update_account(account["id"], {"name": account["name"]}, current=account)
    finally:
        m3.admin("m3ter", "token_ttl", "POST", seconds=18000)
    assert updated["version"] == account["version"] + 1
    assert _token_requests(m3) - before == 1


def test_an_async_listing_meeting_a_rejected_token_replaces_it_once(m3: Any) -> None:
    expected = len(list(M3terHook().list_accounts()))
    before = _token_requests(m3)
    _kill_cached_token(m3)
    try:
        accounts = asyncio.run(M3terAsyncHook().alist_accounts(page_size=7))
    finally:
        m3.admin("m3ter", "token_ttl", "POST", seconds=18000)
    assert len(accounts) == expected
    assert _token_requests(m3) - before == 1


def test_measurements_are_batched_by_count_and_bytes(m3: Any) -> None:
    hook = M3terHook()
    small = [{"uid": f"b-{i}", "meter": "api_calls", "account": "acme-media", "ts": "2026-11-20T10:00:00Z",
              "measure": {"quantity": 1}} for i in range(2500)]
    result = hook.submit_measurements(small)
    assert (result.measurements, result.batches) == (2500, 3)
    assert _count(m3, MEASURE_POSTS) == 3
    big = [{**small[0], "uid": f"big-{i}", "metadata": {"note": "x" * 250}} for i in range(3000)]
    big_bytes = len(json.dumps({"measurements": big}).encode())
    result = hook.submit_measurements(big)
    assert result.measurements == 3000
    assert result.batches >= -(-big_bytes // MAX_BATCH_BYTES)  # the byte limit, not the count, binds
    assert _count(m3, MEASURE_POSTS) == 3 + result.batches  # every request accepted (none >= 512,000 B)


def test_an_invalid_item_fails_its_batch_naming_the_uids(m3: Any) -> None:
    hook = M3terHook()
    batch = [{"uid": f"p-{i}", "meter": "api_calls", "account": "acme-media", "ts": "2026-11-20T10:00:00Z",
              "measure": {"quantity": 1}} for i in range(5)]
    batch[3]["ts"] = "not a date"
    m3.admin("m3ter_ingest", "spec", "POST", expect_invalid={"path_regex": "/measurements$", "count": 1,
                                                             "reason": "ts is not a date-time"})
    with pytest.raises(M3terApiError) as exc:
        hook.submit_measurements(batch)
    assert "p-0..p-4" in str(exc.value) and exc.value.status == 400
    assert "ts" in str(exc.value)


def test_429_and_5xx_are_ridden_out_and_exhaustion_is_retryable(m3: Any) -> None:
    hook = M3terHook()
    m3.faults("m3ter", path_regex="/products", burst_429=2, retry_after_s=0)
    assert len(list(hook.list_products())) == 1
    m3.faults("m3ter", path_regex="/products", fail_next=2, error_status=503)
    assert len(list(hook.list_products())) == 1
    assert _count(m3, "GET /organizations/{id}/products") == 1 + 2 + 1 + 2
    m3.faults("m3ter", path_regex="/products", fail_next=50, error_status=502)
    with pytest.raises(RetryableError, match="transient"):
        list(hook.list_products())


def test_update_with_a_stale_version_rereads_and_applies(m3: Any) -> None:
    hook = M3terHook()
    acc = hook.find_account("acme-media")
    assert acc is not None
    hook.update_account(acc["id"], {"name": "First Writer"}, current=acc)  # version moves on
    updated = hook.update_account(acc["id"], {"purchaseOrderNumber": "PO-1"}, current=acc)  # stale copy
    assert updated["version"] == acc["version"] + 2
    assert (updated["name"], updated["purchaseOrderNumber"]) == ("First Writer", "PO-1")
    assert hook.upsert_account("acme-media", {"name": "First Writer"}).action == "unchanged"


def test_a_lost_create_response_does_not_duplicate(m3: Any) -> None:
    hook = M3terHook()
    m3.faults("m3ter", path_regex="/accounts$", methods=["POST"], drop_next=1, drop_after_processing=True)
    created = hook.create_account({"code": "lost-once", "name": "Lost Once", "emailAddress": "l@o.example"})
    assert created["code"] == "lost-once"
    assert [a["code"] for a in hook.list_accounts(codes=["lost-once"])] == ["lost-once"]


def test_async_hook_lists_with_the_shared_token(m3: Any) -> None:
    before = _token_requests(m3)
    accounts = asyncio.run(M3terAsyncHook().alist_accounts(page_size=7))
    assert len(accounts) == 24
    assert len(list(M3terHook().list_accounts())) == 24
    assert _token_requests(m3) - before == 1


def test_secrets_never_reach_logs(m3: Any, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    os.environ["M3TER_LOG"] = "debug"
    try:
        hook = M3terHook()
        list(hook.list_accounts(page_size=50))
        hook.submit_measurements([{"uid": "s-1", "meter": "api_calls", "account": "acme-media",
                                   "ts": "2026-11-20T10:00:00Z", "measure": {"quantity": 1}}])
        ok, _ = hook.test_connection()
        assert ok
    finally:
        os.environ.pop("M3TER_LOG", None)
    conn = json.loads(os.environ["AIRFLOW_CONN_M3TER_DEFAULT"])
    token = next(iter(TOKEN_CACHE._tokens.values())).access_token
    captured = caplog.text + "".join(capsys.readouterr())
    for secret in (conn["password"], token):
        assert secret not in captured
