"""Freshness of the event-driven usage path: ``python -m benchmarks.freshness [--files N] [--rows R]``.

The demo's stack, as a user has it with ``make demo`` running: every emulator on the demo seed
(m3ter's documented limits on), ``airflow standalone`` with m3sh's shared local-Airflow environment
(:mod:`m3sh.airflow_env`, SQLite, LocalExecutor) and the demo's ``m3sh.yaml``, whose S3 feed has an
``event_queue``: ``m3sh_usage_ingest`` is scheduled hourly *or* by an asset fed by an AssetWatcher on
the bucket's S3 -> SQS notifications. First, as the demo does, one manual ``scan_all`` run ingests the
seeded month. Then N CSV files of R rows each are put into the watched prefix one at a time; a sample
is the time from ``put_object`` until every row of that file is in m3ter (the emulator's per-account
measurement count, read every 0.1 s; the rows use one account of their own), and the run is let
finish before the next put. The first file is reported as ``freshness_warmup_s`` (first trigger
event, first task processes), not in the percentiles.

``freshness_breakdown_p50_s`` splits a sample by Airflow's own timestamps, seconds from the put:
``asset_event`` (the triggerer recorded the SQS message as an asset event), ``run_queued`` and
``run_started`` (the scheduler created and started the asset-triggered run), ``plan_queued``,
``plan_started``, ``plan_done`` (``plan_files``), ``ingest_queued``, ``ingest_started``,
``ingest_done`` (the mapped ``ingest_files``), ``visible`` (the rows counted in m3ter).

The m3ter emulator counts a measurement the moment its ingest request is answered. m3ter validates
measurements after accepting the request (its API spec's "Ingest Validation Failure Events ... after
the initial submission"), and how soon its usage queries show them is not documented: ``visible`` is
when m3ter accepted every row, a lower bound of when a user sees them in m3ter's usage views.
``M3SH_BENCH_AIRFLOW_HOME`` keeps the Airflow home (and its logs); ``--port-start`` (or
``M3SH_BENCH_PORT_START``) moves the sandbox, and Airflow at sandbox base + 80, away from other work.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import logging
import os
import sys
import time
import uuid
from typing import Any

import requests

from benchmarks._airflow import standalone
from benchmarks._common import PORT_START, emit, median, nearest_rank, sized

DAG_ID = "m3sh_usage_ingest"
BUCKET = "m3sh-usage"
PREFIX = "usage/fresh/"  # under the feed's prefix (usage/) and the bucket notification's filter
ACCOUNT = "freshness-bench"  # the samples' rows use this m3ter account only, so their count is exact
PORT_START_ENV = "M3SH_BENCH_PORT_START"
SAMPLE_TIMEOUT_S = 120.0
POLL_S = 0.1
BREAKDOWN = ("asset_event", "run_queued", "run_started", "plan_queued", "plan_started", "plan_done",
             "ingest_queued", "ingest_started", "ingest_done", "visible")


def _csv(rows: int, tag: str) -> bytes:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    out = io.StringIO()
    out.write("event_id,account,meter,ts,quantity,region\n")
    for i in range(rows):
        stamp = (now - dt.timedelta(minutes=1 + i % 120)).strftime("%Y-%m-%dT%H:%M:%SZ")
        out.write(f"{tag}-{i},{ACCOUNT},api_calls,{stamp},{1 + i % 50},us-east-1\n")
    return out.getvalue().encode()


def _visible(m3ter_url: str) -> int:
    """Measurements of the benchmark's account in the m3ter emulator (its admin state, no rate limit)."""
    state = requests.get(f"{m3ter_url}/_sandbox/state", timeout=30).json()
    return sum(int(t["count"]) for t in state["usage"]["totals"] if t["account"] == ACCOUNT)


def run(files: int, rows: int, port_start: int = PORT_START) -> dict[str, Any]:
    from benchmarks._common import sandbox
    from m3sh.config import DEFAULT_CONFIG_PATH, load_config
    from m3sh.dagkit.pools import required_pools
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.sandbox.aws_seed import s3_client
    from m3sh.sandbox.serve import EMULATORS

    with sandbox([*EMULATORS, "moto"], limits=True, seed="demo", start=port_start) as box:
        os.environ["M3SH_CONFIG"] = str(DEFAULT_CONFIG_PATH)
        M3terHook().create_account({"code": ACCOUNT, "name": "Freshness benchmark",
                                    "emailAddress": "bench@example.com"})
        s3 = s3_client(box.endpoints.url("moto"))
        m3ter_url = box.endpoints.url("m3ter")
        t_start = time.monotonic()
        with standalone(box, DEFAULT_CONFIG_PATH, [DAG_ID]) as stack:
            startup_s = time.monotonic() - t_start
            api = stack.api
            for pool, (slots, description) in required_pools(load_config(DEFAULT_CONFIG_PATH)).items():
                api.ensure_pool(pool, slots, description)
            api.unpause(DAG_ID)
            # As the demo: one manual run ingests the seeded month (files put before the notifications).
            first = api.trigger(DAG_ID, {"scan_all": True}, note="freshness benchmark: the demo's first run")
            api.wait_runs({DAG_ID: first}, timeout_s=900)
            measured = [_one_sample(stack, s3, m3ter_url, i, rows) for i in range(files + 1)]
            settings = {k: v for k, v in stack.env.env().items() if k.startswith("AIRFLOW__SCHEDULER__")
                        or k.startswith("AIRFLOW__TRIGGERER__")}
    warmup, rest = measured[0], measured[1:]
    latencies = sorted(s["latency_s"] for s in rest if s.get("latency_s") is not None)
    return {
        "freshness_p95_s": nearest_rank(latencies, 0.95),
        "freshness_p50_s": median(latencies),
        "freshness_max_s": latencies[-1] if latencies else None,
        "freshness_samples": len(latencies),
        "freshness_timeouts": sum(1 for s in rest if s.get("latency_s") is None),
        "freshness_warmup_s": warmup.get("latency_s"),
        "freshness_breakdown_p50_s": {k: median(v) for k in BREAKDOWN
                                      if (v := [s["breakdown"][k] for s in rest if k in s.get("breakdown", {})])},
        "freshness_samples_s": [s.get("latency_s") for s in rest],
        "rows_per_file": rows,
        "mapped_ingest_tasks_p50": median([s["ingest_tasks"] for s in rest if "ingest_tasks" in s]),
        "run_types": sorted({s["run_type"] for s in measured if s.get("run_type")}),
        "airflow_startup_s": round(startup_s, 1),
        "airflow_settings": settings,
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
        "targets": {"freshness_p95_s": 10},
        "note": "live `airflow standalone` (SQLite, LocalExecutor) of the demo's stack and config, the seeded "
                "month already ingested: put_object of one CSV under the watched prefix -> S3 notification -> "
                "SQS -> AssetWatcher trigger -> asset event -> asset-triggered run (plan_files, ingest_files) -> "
                "every row counted in the m3ter emulator; one file at a time from an idle Airflow, percentiles "
                "over the samples after one warm-up; breakdown: seconds from the put. m3ter rate limits on.",
    }


def _one_sample(stack: Any, s3: Any, m3ter_url: str, i: int, rows: int) -> dict[str, Any]:
    before = _visible(m3ter_url)
    tag = f"fresh{i:03d}-{uuid.uuid4().hex[:6]}"
    key = f"{PREFIX}{tag}.csv"
    body = _csv(rows, tag)
    known_runs = {r["dag_run_id"] for r in _runs(stack)}
    t0_wall = time.time()
    t0 = time.perf_counter()
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    latency = None
    while time.perf_counter() < t0 + SAMPLE_TIMEOUT_S:
        if _visible(m3ter_url) >= before + rows:
            latency = time.perf_counter() - t0
            break
        time.sleep(POLL_S)
    if latency is None:
        print(f"[freshness] {key}: rows not all in m3ter after {SAMPLE_TIMEOUT_S:g}s; airflow log tail:\n"
              f"{stack.tail(20)}", file=sys.stderr, flush=True)
        return {"key": key}
    visible_wall = t0_wall + latency
    # The run that ingested it: the newest one created since the put. Let it finish (the next sample
    # starts from an idle Airflow, as a file landing now and then would).
    run = stack.api.wait_until(f"run for {key}", lambda: _new_run(stack, known_runs), SAMPLE_TIMEOUT_S,
                               every_s=0.5, alive=stack.died)
    run_id = run["dag_run_id"]
    run = stack.api.wait_until(f"run {run_id} finished", lambda: (r := stack.api.run(DAG_ID, run_id))["state"]
                               in ("success", "failed") and r, SAMPLE_TIMEOUT_S, every_s=0.5, alive=stack.died)
    breakdown, ingest_tasks = _breakdown(stack, run, t0_wall)
    breakdown["visible"] = round(visible_wall - t0_wall, 3)
    print(f"[freshness] {key}: {rows} rows in m3ter {latency:.2f}s after the put (run {run_id}, {run['state']}, "
          f"{run.get('run_type')}); {breakdown}", file=sys.stderr, flush=True)
    return {"key": key, "latency_s": round(latency, 3), "run_id": run_id, "run_type": run.get("run_type"),
            "breakdown": breakdown, "ingest_tasks": ingest_tasks}


def _runs(stack: Any) -> list[dict[str, Any]]:
    doc = stack.api.request("GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 100, "order_by": "-run_after"})
    return list(doc["dag_runs"])


def _new_run(stack: Any, known: set[str]) -> dict[str, Any] | None:
    new = [r for r in _runs(stack) if r["dag_run_id"] not in known]
    return new[0] if new else None


def _breakdown(stack: Any, run: dict[str, Any], t0_wall: float) -> tuple[dict[str, float], int]:
    """Seconds from the put to each of Airflow's own timestamps of the run that ingested the file."""

    def since(stamp: str | None) -> float | None:
        if not stamp:
            return None
        return round(dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - t0_wall, 3)

    run_id = run["dag_run_id"]
    events = stack.api.request("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/upstreamAssetEvents").get("asset_events", [])
    tis = stack.api.task_instances(DAG_ID, run_id)
    plan: dict[str, Any] = next((t for t in tis if t["task_id"] == "plan_files"), {})
    ingest = [t for t in tis if t["task_id"] == "ingest_files"]

    def first(field: str) -> str | None:
        return min((t[field] for t in ingest if t.get(field)), default=None)

    points = {
        "asset_event": since(min((e["timestamp"] for e in events), default=None)),
        "run_queued": since(run.get("queued_at")), "run_started": since(run.get("start_date")),
        "plan_queued": since(plan.get("queued_when")), "plan_started": since(plan.get("start_date")),
        "plan_done": since(plan.get("end_date")), "ingest_queued": since(first("queued_when")),
        "ingest_started": since(first("start_date")),
        "ingest_done": since(max((t["end_date"] for t in ingest if t.get("end_date")), default=None)),
    }
    return {k: v for k, v in points.items() if v is not None}, len(ingest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=sized(20, 6), help="measured files (plus one warm-up)")
    parser.add_argument("--rows", type=int, default=200, help="rows per file")
    parser.add_argument("--port-start", type=int, default=int(os.environ.get(PORT_START_ENV) or PORT_START),
                        help=f"lowest sandbox port base to try (default: ${PORT_START_ENV} or {PORT_START})")
    args = parser.parse_args()
    logging.getLogger("m3sh").setLevel(logging.WARNING)
    emit(run(args.files, args.rows, args.port_start))


if __name__ == "__main__":
    main()
