"""Plan-trigger evaluation at scale: ``python -m benchmarks.triggers [--accounts N] [--samples K]``.

Starts the m3ter emulator (documented rate limits on) and moto, bulk-seeds N accounts with prepaid
balances (1% of them already under the 100 threshold) through the emulator's ``bulk_seed`` admin
action, then measures with the real m3sh code:

* ``api_calls`` / ``seconds`` of one evaluation pass (cold: credit cache empty; warm: the steady
  state every 5 minutes), counted by the emulator's request stats;
* ``double_fires``: every firing applied by two concurrent "runs" (8 threads each, as a duplicate
  webhook racing a scheduled pass would), then counted as m3sh reset transactions per balance;
  the live phase's firings are counted the same way and added;
* ``webhook_to_action_*``: the live phase, in a running ``airflow standalone`` (SQLite,
  LocalExecutor; :mod:`benchmarks._airflow`) on the same sandbox: the N accounts, their 1% depleted
  firings already done in the ledger (a pass drops them through the final-key markers), plus K+1
  healthy prepaid accounts that are depleted one after another through the emulator (a usage
  draw-down from 1000 to 50). Each time m3ter's notification sends a signed delivery to the m3sh
  receiver served by the Airflow api-server plugin (``/m3sh/webhooks/m3ter``), which records an
  asset event; the scheduler queues ``m3sh_plan_triggers``, whose tasks evaluate the balance rules
  of the account the notification names (a webhook-started run) and apply the rule. A sample is
  the time from the draw-down until the firing's ledger entry in S3 is ``done`` (the balance reset
  and the custom field written in m3ter), polled every 0.2 s; the run then finishes before the
  next draw-down. The first sample (first delivery to the
  receiver, first task processes) is reported as ``webhook_to_action_warmup_s``, not in the
  percentiles. ``webhook_breakdown_p50_s`` splits the time by Airflow's own timestamps (run
  queued, ``evaluate`` start/end, first ``apply_firings`` start, ledger entry finished).

:data:`LIVE_AIRFLOW_SETTINGS` are the Airflow settings of the live phase (why: there).
``M3SH_BENCH_AIRFLOW_HOME`` keeps the Airflow home (and its logs) at a given path;
``--port-start`` (or ``M3SH_BENCH_PORT_START``) moves the sandbox, and Airflow at sandbox base + 80,
away from other work.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks._airflow import standalone
from benchmarks._common import PORT_START, admin, clear_stats, emit, median, nearest_rank, sandbox, stats

DAG_ID = "m3sh_plan_triggers"
RULE = "prepaid_depleted"
RULES_YAML = f"""
triggers:
  - name: {RULE}
    when: {{balance_below: {{amount: 100}}}}
    actions:
      - reset_balance_to: 0
      - set_custom_fields: {{lifecycle: depleted}}
"""
EMULATORS = ["m3ter", "moto", "platform"]
PORT_START_ENV = "M3SH_BENCH_PORT_START"  # also reaches this module through `python -m benchmarks`
LIVE_PREFIX = "live"
HEALTHY = 1000.0  # a sampled balance holds this much before its draw-down ...
DRAWDOWN = 950.0  # ... and this draw-down takes it under the rule's threshold of 100
SAMPLE_TIMEOUT_S = 90.0
POLL_S = 0.2
BREAKDOWN = ("run_queued", "evaluate_started", "evaluate_done", "apply_started", "action_done")
# Airflow settings of the live phase, on top of m3sh's shared local-Airflow environment
# (m3sh.airflow_env: 2 s scheduler heartbeat, 5 s DAG folder refresh, Execution API warmed at start).
# Asset-triggered runs are created, and each next task is scheduled, in the scheduler's loop, which
# sleeps up to scheduler_idle_sleep_time (default 1 s) whenever a loop found nothing to do; a
# webhook-triggered run passes through about five such waits (event -> run -> evaluate -> chunks_of
# -> apply_firings), so 0.25 s saves ~2-3 s per event for a few idle SQLite queries a second.
LIVE_AIRFLOW_SETTINGS: dict[str, str] = {"AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25"}


def _config(tmp: Path) -> Path:
    from m3sh.config import DEFAULT_CONFIG_PATH

    text = DEFAULT_CONFIG_PATH.read_text()
    head, rest = text.split("\ntriggers:\n", 1)
    text = head + "\n" + RULES_YAML + rest[rest.index("\nalerting:\n"):]
    text = text.replace("  prefix: m3sh/\n", f"  prefix: bench-{uuid.uuid4().hex[:8]}/\n", 1)
    path = tmp / "m3sh.yaml"
    path.write_text(text)
    return path


def run(n_accounts: int, samples: int, port_start: int = PORT_START) -> dict[str, Any]:
    with sandbox(EMULATORS, limits=True, start=port_start) as box:
        os.environ["M3SH_CONFIG"] = str(_config(Path(tempfile.mkdtemp(prefix="m3sh-bench-triggers-"))))
        result = _measure(box, Path(os.environ["M3SH_CONFIG"]), n_accounts)
        # The live phase runs on the same N accounts, its 1% depleted firings done in the ledger.
        live = _live_latency(box, Path(os.environ["M3SH_CONFIG"]), samples)
    result["double_fires"] += live.pop("double_fires")
    result.update(live)
    result["targets"] = {"api_calls": 120, "seconds": 10, "double_fires": 0, "webhook_to_action_p95_s": 10}
    return result


def _measure(box: Any, cfg_path: Path, n_accounts: int) -> dict[str, Any]:
    from m3sh.automation.actions import ActionRunner, apply_firing
    from m3sh.automation.evaluate import CreditsCache, Evaluator
    from m3sh.automation.ledger import Ledger
    from m3sh.config import load_config
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage

    seeded = admin(box, "m3ter", "bulk_seed", body={"accounts": n_accounts, "prefix": "bench",
                                                    "depleted_every": 100})
    cfg = load_config(cfg_path)
    storage = Storage.from_config(cfg.storage)
    hook = M3terHook(cfg.m3ter.conn_id)
    rules = [r for r in cfg.triggers if r.enabled]
    cache = CreditsCache(storage).load()
    lock = threading.Lock()  # one evaluation pass at a time (max_active_runs=1 in the DAG)

    def one_pass() -> tuple[Any, int, float]:
        with lock:
            clear_stats(box, "m3ter")
            start = time.perf_counter()
            result = Evaluator(hook, cache).run(rules)
            seconds = time.perf_counter() - start
            calls = int(stats(box, "m3ter").get("total", 0))
        return result, calls, seconds

    next(iter(hook.list_products(page_size=1)), None)  # warm the token (not part of a pass)
    _cold, cold_calls, cold_s = one_pass()
    warm, warm_calls, warm_s = one_pass()

    # exactly once under a race: two "runs" apply every firing concurrently
    runner = ActionRunner(cfg, hook)
    ledger = Ledger(storage)
    rule = {r.name: r for r in rules}

    def apply(args: tuple[Any, str]) -> dict[str, Any]:
        firing, run_id = args
        return apply_firing(firing, rule[firing.rule], runner, ledger, run_id)

    jobs = [(f, run_id) for f in warm.firings for run_id in ("scheduled", "webhook")]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(apply, jobs))
    apply_s = time.perf_counter() - start
    double = sum(_extra_resets(hook, f.entity_id) for f in warm.firings)
    after, after_calls, _after_s = one_pass()  # the next pass: same firings, all already in the ledger
    return {
        "accounts": n_accounts,
        "seeded_depleted": seeded["depleted"],
        "api_calls": warm_calls,
        "seconds": round(warm_s, 3),
        "api_calls_cold": cold_calls,
        "seconds_cold": round(cold_s, 3),
        "firings": len(warm.firings),
        "apply_seconds_two_racing_runs": round(apply_s, 3),
        "fired": sum(1 for o in outcomes if o["status"] == "fired"),
        "skipped_by_ledger": sum(1 for o in outcomes if o["status"] == "skipped"),
        "double_fires": double,
        "next_pass_api_calls": after_calls,
        "next_pass_firings_already_done": len(after.firings),
    }


def _extra_resets(hook: Any, balance_id: str) -> int:
    """Reset transactions m3sh wrote on a balance beyond the first (a firing acted on twice)."""
    txs = hook.list_balance_transactions(balance_id)
    applied = sum(1 for t in txs if str(t.get("description", "")).startswith("m3sh reset"))
    return max(0, applied - 1)


# ------------------------------------------------------------------------------ live Airflow phase
def _live_latency(box: Any, cfg_path: Path, samples: int) -> dict[str, Any]:
    from m3sh.automation.ledger import Ledger
    from m3sh.automation.notifications import sync_notifications
    from m3sh.config import load_config
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage

    # samples + 1 healthy prepaid accounts beside the N measured above, depleted one after another.
    admin(box, "m3ter", "bulk_seed", body={"accounts": samples + 1, "prefix": LIVE_PREFIX,
                                           "credit": HEALTHY, "depleted_every": 0})
    codes = [f"{LIVE_PREFIX}-{i:05d}" for i in range(samples + 1)]
    cfg = load_config(cfg_path)
    hook = M3terHook(cfg.m3ter.conn_id)
    ledger = Ledger(Storage.from_config(cfg.storage))
    accounts = sum(1 for _ in hook.list_accounts(page_size=100))
    t_start = time.monotonic()
    with standalone(box, cfg_path, [DAG_ID], extra=LIVE_AIRFLOW_SETTINGS) as stack:
        startup_s = time.monotonic() - t_start
        stack.api.unpause(DAG_ID)
        # m3ter's notifications now deliver to the receiver inside this Airflow's api-server.
        sync_notifications(str(cfg_path), webhook_url=f"{stack.url}/m3sh/webhooks/m3ter")
        measured = [_one_sample(box, ledger, stack, code) for code in codes]
    balances = [s["balance"] for s in measured if s.get("balance")]
    warmup, rest = measured[0], measured[1:]
    latencies = sorted(s["latency_s"] for s in rest if s.get("latency_s") is not None)
    return {
        "webhook_to_action_p95_s": nearest_rank(latencies, 0.95),
        "webhook_to_action_p50_s": median(latencies),
        "webhook_to_action_max_s": latencies[-1] if latencies else None,
        "webhook_samples": len(latencies),
        "webhook_timeouts": sum(1 for s in rest if s.get("latency_s") is None),
        "webhook_to_action_warmup_s": warmup.get("latency_s"),
        "webhook_breakdown_p50_s": {k: median(v) for k in BREAKDOWN
                                    if (v := [s["breakdown"][k] for s in rest if k in s.get("breakdown", {})])},
        "webhook_run_seconds_p50": median([s["run_s"] for s in rest if s.get("run_s") is not None]),
        "webhook_run_types": sorted({s["run_type"] for s in measured if s.get("run_type")}),
        "live_accounts": accounts,
        "live_balances_not_reset": [b for b in balances if float(hook.get_balance(b).get("amount") or 0) != 0],
        "double_fires": sum(_extra_resets(hook, b) for b in balances),
        "airflow_startup_s": round(startup_s, 1),
        "airflow_settings": LIVE_AIRFLOW_SETTINGS,
        "note": "webhook_to_action_*: live `airflow standalone` (SQLite, LocalExecutor) on the benchmark's sandbox "
                f"({accounts} accounts, the 1% depleted ones already done): m3ter emulator draw-down -> "
                "notification -> signed delivery to the receiver in the Airflow api-server -> asset event -> "
                f"asset-triggered {DAG_ID} run (evaluate the notified account's balances, apply) -> ledger entry "
                "done, one depletion "
                "at a time from an idle Airflow; percentiles over the samples after one warm-up. breakdown: "
                "seconds from the draw-down. m3ter rate limits on. api_calls, seconds: the same sandbox without "
                "Airflow; double_fires: its racing runs plus the live samples.",
    }


def _one_sample(box: Any, ledger: Any, stack: Any, code: str) -> dict[str, Any]:
    """Deplete one account's balance; time it until its firing is done in the ledger, then let the run end."""
    prefix = f"{ledger.prefix}{RULE}/"
    known = {o["Key"] for o in ledger.storage.list_keys(prefix)}
    t0_wall = time.time()
    t0 = time.perf_counter()
    admin(box, "m3ter", "drawdown", body={"accountCode": code, "amount": DRAWDOWN})
    entry: dict[str, Any] | None = None
    while entry is None and time.perf_counter() < t0 + SAMPLE_TIMEOUT_S:
        for obj in ledger.storage.list_keys(prefix):
            if obj["Key"] in known:
                continue
            found = ledger.storage.get_json(obj["Key"]) or {}
            if found.get("account_code") != code:
                known.add(obj["Key"])  # another firing's entry
            elif found.get("status") == "done":
                entry = found
        if entry is None:
            time.sleep(POLL_S)
    if entry is None:
        print(f"[triggers] {code}: no done ledger entry after {SAMPLE_TIMEOUT_S:g}s; airflow log tail:\n"
              f"{stack.tail(20)}", file=sys.stderr, flush=True)
        return {"account": code}
    latency = time.perf_counter() - t0
    run_id = str(entry.get("claimed_by"))
    # The next sample starts from an idle Airflow: this run's remaining tasks (summary) finish first.
    run = stack.api.wait_until(f"run {run_id} finished", lambda: (r := stack.api.run(DAG_ID, run_id))["state"]
                               in ("success", "failed") and r, SAMPLE_TIMEOUT_S, every_s=POLL_S, alive=stack.died)
    out = {"account": code, "balance": entry.get("entity_id"), "latency_s": round(latency, 3), "run_id": run_id,
           "run_type": run.get("run_type"), "run_s": run.get("duration"),
           "breakdown": _breakdown(stack, run, t0_wall, entry)}
    print(f"[triggers] {code}: action done {latency:.2f}s after the draw-down (run {run_id}, {run['state']})",
          file=sys.stderr, flush=True)
    return out


def _breakdown(stack: Any, run: dict[str, Any], t0_wall: float, entry: dict[str, Any]) -> dict[str, float]:
    """Where the time went, from Airflow's and the ledger's own timestamps: seconds from the draw-down."""

    def since(stamp: str | None) -> float | None:
        if not stamp:
            return None
        return round(dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - t0_wall, 3)

    tis = stack.api.task_instances(DAG_ID, run["dag_run_id"])
    evaluate: dict[str, Any] = next((t for t in tis if t["task_id"] == "evaluate"), {})
    applies = [t["start_date"] for t in tis if t["task_id"] == "apply_firings" and t.get("start_date")]
    points = {"run_queued": since(run.get("queued_at")), "evaluate_started": since(evaluate.get("start_date")),
              "evaluate_done": since(evaluate.get("end_date")), "apply_started": since(min(applies, default=None)),
              "action_done": since(entry.get("finished_at"))}
    return {k: v for k, v in points.items() if v is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=6,
                        help="webhook-to-action samples (plus one warm-up); each is a full DAG run")
    parser.add_argument("--port-start", type=int, default=int(os.environ.get(PORT_START_ENV) or PORT_START),
                        help=f"lowest sandbox port base to try (default: ${PORT_START_ENV} or {PORT_START})")
    args = parser.parse_args()
    logging.getLogger("m3sh").setLevel(logging.WARNING)  # per-firing info lines would drown the result
    emit(run(args.accounts, args.samples, args.port_start))


if __name__ == "__main__":
    main()
