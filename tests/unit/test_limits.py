"""The shared limiter (m3sh.hooks.limits): its rules on a fake clock, for the in-process backend and the
Redis Lua script alike, plus the Redis fallback and the leased NetSuite slots.

Redis runs at 127.0.0.1:6379 (``make services``); each test uses its own key prefix and deletes it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from m3sh.hooks import limits
from m3sh.hooks.limits import RateLimiter, Rules, Slots, resolve_limiter_url

REDIS_URL = "redis://127.0.0.1:6379/0"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def prefix() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis on 127.0.0.1:6379 is needed: {exc}; start it with .ci/start-services.sh")
    name = f"m3sh-test-{uuid.uuid4().hex[:12]}"
    yield name
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def _limiter(rules: Rules, backend: str, prefix: str, clock: FakeClock) -> RateLimiter:
    return RateLimiter(rules, rate_key=f"{prefix}:{{h}}:rate", window_key=f"{prefix}:{{h}}:window",
                       url=REDIS_URL if backend == "redis" else None, clock=clock, sleep=clock.sleep,
                       server_time=False)


def _max_in_window(times: list[float], window: float) -> int:
    """The most grants in any half-open span of ``window`` seconds (the emulator's and m3ter's count)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


BACKENDS = ["in-process", "redis"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rate_rule_spaces_requests_evenly(backend: str, prefix: str) -> None:
    clock = FakeClock()
    lim = _limiter(Rules(rate_per_s=10), backend, prefix, clock)
    # Each call books the next slot: the second may go half an interval early (the tolerance), then
    # one every 0.1 s; a caller told to wait has its slot (no retry, no thundering herd).
    assert [lim.reserve() for _ in range(4)] == pytest.approx([0.0, 0.05, 0.15, 0.25])
    clock.now += 0.30
    grants = []
    for _ in range(200):
        lim.acquire()
        grants.append(clock())
    assert _max_in_window(grants, 1.0) <= 11  # rate + 1 in any second
    assert (grants[-1] - grants[0]) / 199 == pytest.approx(0.1, rel=0.01)
    assert lim.backend == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_rule_holds_a_rolling_count(backend: str, prefix: str) -> None:
    clock = FakeClock()
    rules = Rules(window_limit=5, window_s=10.0)
    lim = _limiter(rules, backend, prefix, clock)
    w = rules.effective_window_s  # 10 s plus the 2 % margin
    assert [lim.reserve() for _ in range(11)] == pytest.approx([0.0] * 5 + [w] * 5 + [2 * w])
    clock.now += 2 * w
    grants = []
    for _ in range(40):
        lim.acquire()
        grants.append(clock())
    assert _max_in_window(grants, 10.0) <= 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_rules_bind_and_later_callers_queue(backend: str, prefix: str) -> None:
    """Per-org rate 50/s and a per-IP window scaled down to 120 per 4 s: the rate binds in a burst,
    the window over time."""
    clock = FakeClock()
    rules = Rules(rate_per_s=50, window_limit=120, window_s=4.0)
    lim = _limiter(rules, backend, prefix, clock)
    grants = []
    for _ in range(600):
        lim.acquire()
        grants.append(clock())
    assert _max_in_window(grants, 1.0) <= 51
    assert _max_in_window(grants, 4.0) <= 120
    # The window binds: 600 requests take about 600 / 120 windows of 4.08 s, not 600 / 50 s.
    span = grants[-1] - grants[0]
    assert 4 * rules.effective_window_s <= span <= 5 * rules.effective_window_s
    # Bookings past the window keep the rate's spacing: later callers queue, one slot each.
    waits = [lim.reserve() for _ in range(3)]
    assert 0 < waits[0] < waits[1] < waits[2] and waits[2] - waits[1] == pytest.approx(0.02)


def test_redis_and_in_process_agree_step_by_step(prefix: str) -> None:
    rules = Rules(rate_per_s=7, window_limit=9, window_s=3.0)
    a_clock, b_clock = FakeClock(), FakeClock()
    local = _limiter(rules, "in-process", prefix, a_clock)
    shared = _limiter(rules, "redis", prefix, b_clock)
    for step in range(120):
        dt = (step * 37 % 11) / 40  # an irregular but repeatable arrival pattern
        a_clock.now += dt
        b_clock.now += dt
        assert shared.reserve() == pytest.approx(local.reserve(), abs=1e-6), step


def test_two_limiters_on_one_key_share_the_budget(prefix: str) -> None:
    """Two processes' limiters are two objects on the same Redis keys: the budget is one."""
    clock = FakeClock()
    rules = Rules(window_limit=10, window_s=60.0)
    first, second = (_limiter(rules, "redis", prefix, clock) for _ in range(2))
    granted = sum(lim.reserve() == 0.0 for _ in range(10) for lim in (first, second))
    assert granted == 10


def test_unreachable_redis_warns_once_and_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    url = "redis://:s3cret-pw@127.0.0.1:1/0"  # nothing listens on port 1: refused at once
    limits._WARNED.discard(limits.redact_url(url))
    clock = FakeClock()
    lims = [RateLimiter(Rules(window_limit=2, window_s=60.0), rate_key=f"k{i}:rate", window_key=f"k{i}:window",
                        url=url, clock=clock, sleep=clock.sleep) for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="m3sh.hooks.limits"):
        assert [lims[0].reserve() for _ in range(3)][:2] == [0.0, 0.0]
        assert lims[0].reserve() > 0  # the in-process rules still hold
        assert lims[1].reserve() == 0.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "127.0.0.1:1" in warnings[0].getMessage() and "s3cret" not in warnings[0].getMessage()
    assert lims[0].backend == lims[1].backend == "in-process"


def test_slots_cap_concurrency_across_holders(prefix: str) -> None:
    key = f"{prefix}:{{netsuite}}:slots"
    a = Slots(key, 2, url=REDIS_URL, lease_s=30)
    b = Slots(key, 2, url=REDIS_URL, lease_s=30)  # another process's view of the same account
    peak, inside, lock = 0, 0, threading.Lock()

    def work(slots: Slots) -> None:
        nonlocal peak, inside
        with slots.slot():
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.05)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work, args=(a if i % 2 else b,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert peak == 2
    assert a.holders() == 0 and a.backend == "redis"


def test_a_killed_holders_slot_frees_when_its_lease_ends(prefix: str) -> None:
    key = f"{prefix}:{{netsuite}}:slots"
    dead = Slots(key, 1, url=REDIS_URL, lease_s=0.5)
    # A worker killed while holding its slot: acquired, never released.
    assert dead._try_redis(REDIS_URL, "killed-worker") == 0.0
    assert dead.holders() == 1
    alive = Slots(key, 1, url=REDIS_URL, lease_s=30)
    t0 = time.monotonic()
    with alive.slot():
        waited = time.monotonic() - t0
        assert alive.holders() == 1
    assert 0.2 <= waited < 30  # waited for the lease, not forever
    assert alive.holders() == 0


def test_limiter_url_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(limits.LIMITER_URL_ENV, raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", "redis://broker:6379/0")
    assert resolve_limiter_url(None) is None  # a broker URL without the CeleryExecutor: no Celery in use
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    assert resolve_limiter_url(None) == "redis://broker:6379/0"
    monkeypatch.setenv("AIRFLOW__CELERY__BROKER_URL", "amqp://rabbit/")
    assert resolve_limiter_url(None) is None
    monkeypatch.setenv(limits.LIMITER_URL_ENV, "redis://env:6379/2")
    assert resolve_limiter_url(None) == "redis://env:6379/2"
    assert resolve_limiter_url("redis://extra:6379/3") == "redis://extra:6379/3"
    assert resolve_limiter_url("memory") is None


def test_m3ter_settings_read_the_limits_from_the_connection() -> None:
    from airflow.sdk import Connection

    from m3sh.hooks.m3ter import M3terSettings, api_limiters

    conn: Any = Connection(conn_id="m3", conn_type="m3ter", login="k", password="s", extra=json.dumps({
        "org_id": "org-1", "ingest_ip_limit": 120, "ingest_ip_window_s": 4, "limiter_url": "memory",
        "limiter_prefix": "p"}))
    s = M3terSettings.from_connection(conn)
    ingest, config = api_limiters(s)
    assert ingest.rules == Rules(48.0, 120, 4.0) and ingest.backend == "in-process"
    assert config.rules == Rules(48.0, 20_000, 300.0)
    assert ingest.rate_key == "p:{ingest.m3ter.com}:org:org-1:ingest:rate"
    assert ingest.window_key == "p:{ingest.m3ter.com}:ip:default:ingest:window"
    assert "limiter_url" not in repr(s)


def test_a_zero_rate_turns_that_apis_client_limits_off() -> None:
    from airflow.sdk import Connection

    from m3sh.hooks.m3ter import M3terSettings, config_rules, ingest_rules

    conn: Any = Connection(conn_id="m3", conn_type="m3ter", login="k", password="s",
                           extra=json.dumps({"org_id": "org-1", "ingest_rps": 0, "config_ip_limit": 0}))
    s = M3terSettings.from_connection(conn)
    assert not ingest_rules(s).active  # a sandbox with limits off: neither the rate nor the window
    assert config_rules(s) == Rules(48.0, 0, 300.0) and config_rules(s).active  # only the window off


def test_hubspot_and_netsuite_limits_are_shared_when_a_limiter_url_is_given(prefix: str) -> None:
    from m3sh.hooks.hubspot import _shared_limiter
    from m3sh.hooks.netsuite import account_slots

    extra = {"limiter_url": REDIS_URL, "limiter_prefix": prefix}
    burst = _shared_limiter("https://api.hubapi.com", "pat-secret", "burst", 100, 10.0, extra=extra)
    assert burst.backend == "redis" and burst.rules == Rules(window_limit=100, window_s=10.0, margin_s=0.5)
    assert "pat-secret" not in burst.window_key  # the token is hashed into the key, never kept
    # Every process asking for the same portal and token gets the same Redis keys: one budget per app.
    again = _shared_limiter("https://api.hubapi.com", "pat-secret", "burst", 100, 10.0, extra=dict(extra))
    assert again.window_key == burst.window_key
    assert [burst.reserve() for _ in range(100)] == [0.0] * 100
    assert again.reserve() > 9.0  # the 101st in 10 s waits, whichever hook instance asks
    slots = account_slots("1234567-sb1", 3, limiter_url=REDIS_URL, limiter_prefix=prefix, lease_s=5)
    assert slots.backend == "redis" and slots.key.endswith("account:1234567_SB1:requests:slots")
    with slots.slot():
        assert slots.holders() == 1
    local = account_slots("1234567-sb1", 3, limiter_url="memory", limiter_prefix=prefix)
    assert local.backend == "in-process"
