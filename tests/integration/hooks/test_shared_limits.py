"""Four OS processes share one m3ter org against the emulator with its limits on (issue #17.1).

Per-org rate as documented (50 requests/s), per-IP window scaled down to 120 requests per rolling
4 s (the emulator's ``limit_windows`` knob; the connection extras say the same). With the limits
shared through Redis the emulator sends no 429 and the run takes about the time the limits
themselves need; with each process keeping its own limits (``limiter_url: memory``, the behaviour
before) the same run meets 429s, which proves the first assertion can fail.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.limits_shared import run_phase

pytestmark = pytest.mark.sandbox

# The client runs at 45 of the emulator's 50 requests/s: the margin absorbs the scheduling jitter between
# a slot's grant and the request's arrival on a 2-core machine several sessions share (load 10+), which
# at 49/s (the former default; one request of margin) tripped the org limit about one run in three. What is
# under test is that four processes keep *one* budget; per process they would send 4 x 45/s.
PHASE = {"processes": 4, "requests_per_process": 60, "ip_limit": 120, "ip_window_s": 4.0, "org_rate": 45.0}


@pytest.fixture
def m3ter_conn(fresh_sandbox: Any) -> tuple[str, dict[str, Any]]:
    import redis

    try:
        redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=5).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis on 127.0.0.1:6379 is needed: {exc}; start it with .ci/start-services.sh")
    return fresh_sandbox.url("m3ter"), fresh_sandbox.endpoints.connections()["m3ter_default"]


def test_four_processes_sharing_limits_through_redis_meet_no_429(m3ter_conn: tuple[str, dict[str, Any]]) -> None:
    url, conn = m3ter_conn
    shared = run_phase(url, conn, backend="redis", **PHASE)
    assert shared["status_429"] == 0, shared
    assert shared["failed"] == shared["lost"] == shared["duplicates"] == 0, shared
    assert shared["http_requests"] == shared["requests"] == 240, shared
    # Within the limits (no 429 above) and near them: the 240 requests took well under twice the time
    # the rules alone need (two 4-s windows of 120 at up to 45/s, about 6.8 s); a limiter that counted
    # each request twice, or made every process wait for the whole budget, would take twice as long.
    # (Measured 0.61-0.82 at load 10-13 on 2 cores; the benchmark reports the figure.)
    assert shared["fraction_of_limit"] >= 0.55, shared


def test_the_same_run_with_per_process_limits_meets_429s(m3ter_conn: tuple[str, dict[str, Any]]) -> None:
    url, conn = m3ter_conn
    local = run_phase(url, conn, backend="memory", **PHASE)
    assert local["status_429"] > 0, local
    assert local["http_requests"] > local["requests"], local  # the 429s were retried ...
    assert local["lost"] == local["duplicates"] == 0, local    # ... and every measurement landed once
