"""Several processes ingesting into one m3ter org, limits shared through Redis vs kept per process:
``python -m benchmarks.limits_shared``.

Starts only the m3ter emulator with its limits on: the per-org rate as documented (50 requests/s)
and the per-IP window scaled down (by default 120 requests per rolling 4 s instead of 5,000 per
300 s, so a few windows fit a short run; the client's connection extras say the same). Then N
spawned processes (4 by default, as many mapped tasks or Celery workers would be) each post
one-measurement requests through ``M3terHook`` twice: once with ``limiter_url`` on the machine's
Redis, once with ``memory`` (each process keeps its own limits, as before). Reported per backend:
requests, 429s the emulator sent (and which limit sent them), lost/duplicated measurements, achieved
req/s against the binding server-side limit, and ``fraction_of_limit`` = the time the client's own
rules need for the same requests (replayed on a fake clock) / the time taken. The last line printed is one JSON
object. :func:`run_phase` is also what ``tests/integration/hooks/test_shared_limits.py`` runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import time
import uuid
from typing import Any

import requests

LIMITER_URL = os.environ.get("M3SH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ORG_RATE = 49.0  # the client's per-org rate: the documented 50/s less 2 %
CONN_ID = "m3ter_limits"


def ideal_span_s(rate_per_s: float, window_limit: int, window_s: float, requests_n: int,
                 margin_s: float | None = None) -> float:
    """Seconds from the first to the last of ``requests_n`` requests sent as fast as the client's own
    rules allow (one limiter, a fake clock, no network): the best any number of processes can do."""
    from m3sh.hooks.limits import RateLimiter, Rules

    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    lim = RateLimiter(Rules(rate_per_s, window_limit, window_s, margin_s), rate_key="r", window_key="w", url=None,
                      clock=lambda: now[0], sleep=sleep)
    first = None
    for _ in range(requests_n):
        lim.acquire()
        first = now[0] if first is None else first
    return now[0] - (first or 0.0)


def _worker(conn_json: str, index: int, *, n: int, tag: str, accounts: list[str], barrier: Any, out: Any) -> None:
    """One process: its own hook (token, limiter, client), then ``n`` one-measurement requests."""
    os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = conn_json
    from m3sh.hooks.m3ter import M3terHook

    hook = M3terHook(CONN_ID)
    hook.get_conn()  # token and client before the start line, so only requests are timed
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    barrier.wait(timeout=300)
    done: list[float] = []
    failed = 0
    for i in range(n):
        m = {"uid": f"{tag}-{index}-{i}", "account": accounts[(index + i) % len(accounts)], "meter": "api_calls",
             "ts": ts, "measure": {"quantity": 1}}
        try:
            hook.submit_measurements([m])
            done.append(time.time())
        except Exception:  # counted, not raised: the phase reports every outcome
            failed += 1
    out.put({"index": index, "done": done, "failed": failed})


def run_phase(m3ter_url: str, conn: dict[str, Any], *, backend: str, processes: int, requests_per_process: int,
              ip_limit: int, ip_window_s: float, org_rate: float = ORG_RATE) -> dict[str, Any]:
    """One run: ``processes`` spawned processes share one org with limits on; figures from the emulator.
    ``org_rate``: the client's per-org rate (``ingest_rps``; the emulator's limit stays 50/s)."""
    from m3sh.sandbox import seed

    def admin(action: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
        r = requests.request(method, f"{m3ter_url}/_sandbox/{action}", json=body, timeout=60)
        r.raise_for_status()
        return r.json()

    admin("limits", "POST", {"enabled": True})
    admin("limit_windows", "POST", {"ingest_ip": {"limit": ip_limit, "window_s": ip_window_s}})
    prefix = f"m3sh-bench-{uuid.uuid4().hex[:10]}"
    extra = {**conn.get("extra", {}), "limiter_url": LIMITER_URL if backend == "redis" else "memory",
             "limiter_prefix": prefix, "ingest_rps": org_rate, "ingest_ip_limit": ip_limit,
             "ingest_ip_window_s": ip_window_s, "max_retries": 20}
    conn_json = json.dumps({**conn, "extra": extra})
    accounts = [c.key for c in seed.demo_company().customers if c.in_m3ter]
    tag = uuid.uuid4().hex[:8]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(conn_json, i), kwargs={
        "n": requests_per_process, "tag": tag, "accounts": accounts, "barrier": barrier, "out": out})
             for i in range(processes)]
    for p in procs:
        p.start()
    try:
        state0 = admin("state")
        usage0, limited0 = state0["usage"], state0["rate_limited"]
        admin("stats", "DELETE")  # before the start line: only token requests (never limited) can come first
        barrier.wait(timeout=300)  # every process has its hook and token: all start together
        t0 = time.time()
        results = [out.get(timeout=600) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():  # only our own children
                p.kill()
        if backend == "redis":
            delete_prefix(prefix)
    stats = admin("stats")
    state1 = admin("state")
    usage1 = state1["usage"]
    limited = {k: n - limited0.get(k, 0) for k, n in state1["rate_limited"].items() if n - limited0.get(k, 0)}
    admin("limit_windows", "POST", {})
    done = sorted(t for r in results for t in r["done"])
    sent = processes * requests_per_process
    seconds = (done[-1] - t0) if done else float("nan")
    ideal = ideal_span_s(org_rate, ip_limit, ip_window_s, sent)
    posts = sum(n for k, n in stats["counts"].items() if k.startswith("POST ") and k.endswith("/measurements"))
    accepted = usage1["uids"] - usage0["uids"]
    return {
        "backend": backend,
        "processes": processes,
        "requests": sent,
        "http_requests": posts,
        "status_429": int(stats.get("statuses", {}).get("429", 0)),
        "limited_by": limited,
        "failed": sum(r["failed"] for r in results),
        "lost": sent - accepted,
        "duplicates": usage1["duplicates"] - usage0["duplicates"],
        "seconds": round(seconds, 2),
        "achieved_rps": round(sent / seconds, 1) if done else 0.0,
        "ideal_seconds": round(ideal, 2),
        "fraction_of_limit": round(ideal / seconds, 3) if done else 0.0,
    }


def delete_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(LIMITER_URL, socket_connect_timeout=5)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def main() -> None:
    from benchmarks._common import emit, sandbox, sized

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--requests", type=int, default=sized(200, 100), help="requests per process")
    parser.add_argument("--ip-limit", type=int, default=120, help="scaled per-IP window: requests ...")
    parser.add_argument("--ip-window-s", type=float, default=4.0, help="... per this many seconds")
    parser.add_argument("--org-rate", type=float, default=ORG_RATE,
                        help="the client's per-org rate (connection extra ingest_rps; the limit is 50/s)")
    args = parser.parse_args()
    with sandbox(["m3ter"], limits=True) as box:
        url = box.endpoints.url("m3ter")
        conn = box.endpoints.connections()["m3ter_default"]
        kw = {"processes": args.processes, "requests_per_process": args.requests, "ip_limit": args.ip_limit,
              "ip_window_s": args.ip_window_s, "org_rate": args.org_rate}
        shared = run_phase(url, conn, backend="redis", **kw)
        print(json.dumps(shared), flush=True)
        local = run_phase(url, conn, backend="memory", **kw)
        print(json.dumps(local), flush=True)
    # What the emulator's (m3ter's) limits themselves allow for this many requests: 50/s per org and the
    # per-IP window, no client margin. A run shorter than one window is bound by the org rate.
    n = shared["requests"]
    binding = (n - 1) / ideal_span_s(50.0, args.ip_limit, args.ip_window_s, n, margin_s=0.0)
    emit({
        "processes": args.processes,
        "requests": shared["requests"],
        "org_limit_rps": 50,
        "ip_window": f"{args.ip_limit}/{args.ip_window_s:g}s (scaled from 5000/300s)",
        "client_org_rate_rps": args.org_rate,
        "binding_limit_rps": round(binding, 1),
        "redis_429s": shared["status_429"],
        "redis_achieved_rps": shared["achieved_rps"],
        "redis_fraction_of_limit": shared["fraction_of_limit"],
        "redis_vs_binding_limit": round(shared["achieved_rps"] / binding, 3),
        "redis_429_fraction": round(shared["status_429"] / max(1, shared["http_requests"]), 4),
        "redis_lost": shared["lost"],
        "redis_duplicates": shared["duplicates"],
        "in_process_429s": local["status_429"],
        "in_process_achieved_rps": local["achieved_rps"],
        "in_process_fraction_of_limit": local["fraction_of_limit"],
        "in_process_429_fraction": round(local["status_429"] / max(1, local["http_requests"]), 4),
        "in_process_lost": local["lost"],
        "in_process_http_requests": local["http_requests"],
        "load_avg_1m": round(os.getloadavg()[0], 2),
    })


if __name__ == "__main__":
    main()
