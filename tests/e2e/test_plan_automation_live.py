"""Plan automation in a running Airflow: sensors defer on the triggerer, webhooks start runs.

A real Airflow (``airflow db migrate``, then scheduler, dag-processor, triggerer and api-server as
separate processes, configured by :class:`m3sh.airflow_env.AirflowEnv` exactly like the demo) runs
``tests/e2e/dags/m3sh_example_balance_watch.py`` and the shipped ``dags/m3sh_plan_triggers.py``
(both copied into this stack's DAG folder), with the m3sh plugin (webhook receiver) in the api-server.

1. Sensors: while no prepaid balance is under the ``prepaid_depleted`` threshold the sensor must sit
   in ``deferred`` with a trigger row assigned to the running triggerer and no pool slot running;
   the triggerer must keep polling m3ter. A negative balance transaction (the public m3ter API, as
   a customer's usage draw-down would) must then let the trigger fire, the sensor resume on a
   worker (same try, no reschedule) and the downstream task run.
2. Webhooks: ``sync_notifications`` points m3ter's notification at the receiver in this api-server;
   a draw-down in the m3ter emulator makes m3ter send a signed delivery, the receiver records an
   asset event, the scheduler starts an asset-triggered ``m3sh_plan_triggers`` run and the rule's
   actions complete once. Forged, unsigned and replayed deliveries get 401, record no asset event
   and start no run. (How fast, end to end, is measured by ``python -m benchmarks.triggers``.)

Ports: sandbox base ``M3SH_TEST_PORT_BASE`` (per xdist worker), Airflow API on base + 80.
Everything started here is stopped at the end (each process group by its id).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from m3sh.airflow_env import AirflowApi, AirflowEnv, AirflowEnvError, venv_bin, write_task_config

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAG_FILE = Path(__file__).resolve().parent / "dags" / "m3sh_example_balance_watch.py"
DAG_ID = "m3sh_example_balance_watch"
PLAN_DAG_ID = "m3sh_plan_triggers"
RULE = "prepaid_depleted"
SENSOR = "wait_for_depleted_balance"
DOWNSTREAM = "act_on_firings"
TRIGGER_CLASSPATH = "m3sh.triggers.m3ter.M3terBalanceTrigger"
THRESHOLD = 100.0  # prepaid_depleted in include/m3sh.yaml: balance_below {amount: 100}
COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
WAIT_S = 90.0


@dataclass
class Stack:
    env: AirflowEnv
    api: AirflowApi
    procs: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.logs[name]
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def died(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return f"airflow {name} exited with {proc.returncode}:\n{self.tail(name)}"
        return None


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """TERM then KILL the process groups this test started (each its own session: pid == pgid).

    All groups are signalled together so the components shut down in parallel.
    """
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 3.0)):
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            alive = []
            for proc in procs:
                proc.poll()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 0)
                    alive.append(proc)
            if not alive:
                return
            time.sleep(0.2)


def _progress(msg: str) -> None:
    print(f"[automation-e2e] {msg}", flush=True)


@pytest.fixture(scope="module")
def stack(sandbox: Any) -> Iterator[Stack]:
    home = Path(os.environ["M3SH_TEST_STACK_ROOT"]) / "automation-airflow"  # per xdist worker
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    # The schedules start in a year: the only runs are the ones the tests cause (manual, asset-triggered).
    cfg = write_task_config(home, start_date=dt.datetime.now(dt.UTC).date() + dt.timedelta(days=365))
    dags = home / "dags"
    dags.mkdir()
    for dag_file in (EXAMPLE_DAG_FILE, REPO / "dags" / f"{PLAN_DAG_ID}.py"):
        shutil.copy(dag_file, dags / dag_file.name)
    env = AirflowEnv(root=REPO, home=home, port=sandbox.endpoints.port_base + 80, sandbox=sandbox.endpoints,
                     config_path=cfg, sql_alchemy_conn=f"sqlite:///{home / 'airflow.db'}",
                     extra={"AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2"})
    proc_env = env.env()
    t0 = time.monotonic()
    migrate = subprocess.run([str(venv_bin() / "airflow"), "db", "migrate"], check=False, env=proc_env,
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-2000:]
    _progress(f"db migrate: {time.monotonic() - t0:.1f}s")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, Path] = {}
    for name in COMPONENTS:
        logs[name] = home / f"{name}.log"
        with open(logs[name], "ab") as log:
            procs[name] = subprocess.Popen([str(venv_bin() / "airflow"), name], stdout=log,
                                           stderr=subprocess.STDOUT, env=proc_env, cwd=REPO,
                                           start_new_session=True)
    st = Stack(env, env.api(progress=_progress), procs, logs)
    try:
        st.api.wait_healthy(timeout_s=600, alive=st.died,
                            components=("metadatabase", "scheduler", "dag_processor", "triggerer"))
        st.api.wait_dags([DAG_ID, PLAN_DAG_ID], timeout_s=300, alive=st.died)
        _progress(f"stack up: {time.monotonic() - t0:.1f}s")
        yield st
    finally:
        t_stop = time.monotonic()
        _stop_all(list(procs.values()))
        _progress(f"stack stopped: {time.monotonic() - t_stop:.1f}s")


def _wait(api: AirflowApi, what: str, check: Callable[[], Any], stack: Stack, timeout_s: float = WAIT_S) -> Any:
    return api.wait_until(what, check, timeout_s, every_s=0.5, alive=stack.died)


def _balance_polls(sandbox: Any) -> int:
    return int(sandbox.requests_to("m3ter", "GET", "/balances"))


def test_balance_sensor_defers_then_resumes_on_depletion(stack: Stack, fresh_sandbox: Any) -> None:
    from sqlalchemy import create_engine, text

    from m3sh.hooks.m3ter import M3terHook

    api = stack.api
    hook = M3terHook()
    balances = list(hook.list_balances())
    assert balances, "the demo seed has prepaid balances"
    now = dt.datetime.now(dt.UTC).isoformat()
    live = [b for b in balances if b["startDate"] <= now < b["endDate"]]
    assert live and all(float(b["amount"]) >= THRESHOLD for b in live), \
        "precondition: no active balance is under the threshold yet"
    target = max(live, key=lambda b: b["endDate"])

    t0 = time.monotonic()
    api.unpause(DAG_ID)
    run_id = api.trigger(DAG_ID, note="e2e: sensors defer")
    ti_path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances"

    def sensor() -> dict[str, Any]:
        doc: dict[str, Any] = api.request("GET", f"{ti_path}/{SENSOR}")
        return doc

    seen: list[str | None] = []

    def deferred() -> dict[str, Any] | None:
        ti = sensor()
        if not seen or seen[-1] != ti["state"]:
            seen.append(ti["state"])
        return ti if ti["state"] == "deferred" else None

    try:
        ti = _wait(api, "sensor deferred", deferred, stack)
    except AirflowEnvError as exc:
        raise AssertionError(f"{SENSOR} never deferred; its states were {seen}: {exc}") from None
    t_deferred = time.monotonic() - t0
    # The REST view of the task instance names its trigger; the trigger row in the metadata DB
    # belongs to a live triggerer (assigned), so the wait is the triggerer's, not a worker's.
    assert ti["trigger"] and ti["trigger"]["classpath"] == TRIGGER_CLASSPATH, ti.get("trigger")
    trigger_id = ti["trigger"]["id"]
    engine = create_engine(stack.env.sql_alchemy_conn or "")
    try:
        with engine.connect() as db:
            deadline = time.monotonic() + WAIT_S
            while True:
                db.rollback()  # new snapshot each poll
                row = db.execute(text(
                    "SELECT t.classpath, t.triggerer_id, j.state, j.job_type FROM trigger t "
                    "LEFT JOIN job j ON j.id = t.triggerer_id WHERE t.id = :id"), {"id": trigger_id}).first()
                assert row is not None, f"no trigger row {trigger_id} for the deferred sensor"
                if row.triggerer_id is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            ti_rows = db.execute(text(
                "SELECT state, trigger_id, next_method FROM task_instance "
                "WHERE dag_id = :d AND run_id = :r AND task_id = :t"),
                {"d": DAG_ID, "r": run_id, "t": SENSOR}).all()
    finally:
        engine.dispose()
    assert row.classpath == TRIGGER_CLASSPATH
    assert row.triggerer_id is not None, "trigger never picked up by a triggerer"
    assert (row.job_type, row.state) == ("TriggererJob", "running"), row
    assert [tuple(r) for r in ti_rows] == [("deferred", trigger_id, "execute_complete")]
    pool = api.request("GET", "/pools/default_pool")
    assert pool["running_slots"] == 0 and pool["deferred_slots"] == 1, pool

    # Still deferred while the triggerer keeps polling m3ter (poll_interval 2 s: several passes).
    polls = _balance_polls(fresh_sandbox)
    _wait(api, "triggerer polling m3ter", lambda: _balance_polls(fresh_sandbox) >= polls + 2, stack, 30)
    assert sensor()["state"] == "deferred"

    # Deplete one prepaid balance through m3ter's public API: amount - X = THRESHOLD / 2.
    drawdown = round(float(target["amount"]) - THRESHOLD / 2, 2)
    t_drawdown = time.monotonic()
    hook.create_balance_transaction(target["id"], {"amount": -drawdown, "description": "test drawdown"})

    run = _wait(api, "run finished", lambda: (r := api.run(DAG_ID, run_id))["state"] in ("success", "failed")
                and r, stack)
    t_resumed = time.monotonic() - t_drawdown
    states = {t["task_id"]: t["state"] for t in api.task_instances(DAG_ID, run_id)}
    assert run["state"] == "success", (states, stack.tail("scheduler"))
    assert states == {SENSOR: "success", DOWNSTREAM: "success"}
    done = sensor()
    assert done["try_number"] == 1, "resumed from the trigger, not retried"
    assert done["trigger"] is None
    firings = api.xcom(DAG_ID, run_id, SENSOR)
    assert [(f["rule"], f["entity_id"]) for f in firings] == [("prepaid_depleted", target["id"])]
    assert firings[0]["detail"]["amount"] == pytest.approx(THRESHOLD / 2)
    summary = api.xcom(DAG_ID, run_id, DOWNSTREAM)
    assert summary["count"] == 1 and summary["balance_ids"] == [target["id"]]
    _progress(f"timings: deferred {t_deferred:.1f}s after trigger; success {t_resumed:.1f}s after draw-down")


def _asset_event_count(api: AirflowApi) -> int:
    """Asset events Airflow holds for the receiver's asset (what the scheduler turns into runs)."""
    from m3sh.web.receiver import ASSET_URI

    assets = api.request("GET", "/assets", params={"uri_pattern": ASSET_URI})["assets"]
    ids = [a["id"] for a in assets if a["uri"] == ASSET_URI]
    assert ids, f"{PLAN_DAG_ID} is scheduled on {ASSET_URI}, so Airflow knows that asset"
    return int(api.request("GET", "/assets/events", params={"asset_id": ids[0], "limit": 1})["total_entries"])


def _plan_run_ids(api: AirflowApi) -> set[str]:
    runs = api.request("GET", f"/dags/{PLAN_DAG_ID}/dagRuns", params={"limit": 100})["dag_runs"]
    return {str(r["dag_run_id"]) for r in runs}


def _delivery(event_id: str, account_id: str, secret: str | None, age_s: float = 0) -> tuple[bytes, dict[str, str]]:
    """A delivery shaped like m3ter's balance notification; ``secret=None`` leaves it unsigned."""
    from m3sh.web.receiver import WebhookScheme

    scheme = WebhookScheme()  # the sandbox's m3ter_webhook connection keeps the documented defaults
    body = json.dumps({"id": event_id, "eventName": "billing.balanceamount.updated",
                       "m3terEvent": {"eventData": {"newDto": {"accountId": account_id}}}}).encode()
    stamp = str(int(time.time() - age_s))
    headers = {"Content-Type": "application/json", scheme.timestamp_header: stamp, scheme.event_id_header: event_id}
    if secret is not None:
        headers[scheme.signature_header] = scheme.sign(secret, stamp, body)
    return body, headers


def test_signed_m3ter_webhook_starts_an_asset_triggered_run_that_acts_once_and_forgeries_start_nothing(
        stack: Stack, fresh_sandbox: Any) -> None:
    from m3sh.automation.ledger import Ledger
    from m3sh.automation.notifications import sync_notifications
    from m3sh.config import load_config
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.sandbox.credentials import WEBHOOK_SECRET
    from m3sh.storage import Storage

    api = stack.api
    assert stack.env.config_path is not None
    cfg = load_config(stack.env.config_path)
    hook = M3terHook(cfg.m3ter.conn_id)
    ledger = Ledger(Storage.from_config(cfg.storage))
    plans = {p["id"]: p["code"] for p in hook.list_plans()}
    receiver = f"{stack.env.base_url}/m3sh/webhooks/m3ter"

    # m3ter's notification now delivers to the receiver in this stack's api-server.
    api.unpause(PLAN_DAG_ID)
    synced = sync_notifications(str(stack.env.config_path), webhook_url=receiver)
    assert synced["webhook"]["action"] == "created"
    assert (f"m3sh_{RULE}", "created") in [(n["code"], n["action"]) for n in synced["notifications"]]

    horizon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    balance = sorted(hook.list_balances(end_date_start=horizon), key=lambda b: b["code"])[0]
    account = hook.get_account(balance["accountId"])
    assert float(balance["amount"]) >= THRESHOLD, "precondition: the demo seed's balance is healthy"
    runs_before, events_before = _plan_run_ids(api), _asset_event_count(api)

    # A usage draw-down in m3ter leaves 20 of the credit: m3ter notifies, signed, on its own.
    t0 = time.monotonic()
    fresh_sandbox.admin("m3ter", "drawdown", "POST", accountCode=account["code"],
                        amount=float(balance["amount"]) - 20)

    def done_entry() -> dict[str, Any] | None:
        return next((e for e in ledger.entries(rule=RULE)
                     if e.get("account_code") == account["code"] and e.get("status") == "done"), None)

    entry = _wait(api, "the firing done in the ledger", done_entry, stack)
    t_action = time.monotonic() - t0
    run_id = str(entry["claimed_by"])
    run = _wait(api, f"run {run_id} finished",
                lambda: (r := api.run(PLAN_DAG_ID, run_id))["state"] in ("success", "failed") and r, stack)
    assert run["state"] == "success", stack.tail("scheduler")
    assert run["run_type"] == "asset_triggered", run  # the webhook started it: no schedule, no manual run
    # ... and read only the notified account's balances (the asset event named it)
    evaluated = api.xcom(PLAN_DAG_ID, run_id, "evaluate")
    assert evaluated["scope"] == f"balance rules of the notified account(s) {[account['id']]}", evaluated
    assert _plan_run_ids(api) - runs_before == {run_id}
    assert _asset_event_count(api) == events_before + 1
    deliveries = fresh_sandbox.state("m3ter")["webhook_deliveries"]
    assert [(d["url"], d["status"]) for d in deliveries] == [(receiver, 202)]
    _progress(f"webhook: action done {t_action:.1f}s after the draw-down (run {run_id})")

    # The rule's actions, applied once, seen through m3ter's public API.
    assert [a["status"] for a in entry["actions"]] == ["done"] * len(entry["actions"])
    assert hook.get_balance(balance["id"])["amount"] == pytest.approx(0)
    assert hook.get_account(account["id"])["customFields"]["lifecycle"] == "converted_from_prepaid"
    current = [plans[ap["planId"]] for ap in hook.list_account_plans(account_id=account["id"],
                                                                      include_all=True) if not ap.get("endDate")
               or ap["endDate"] > dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")]
    assert "growth_usd" in current and "prepaid_usd" not in current, current
    txs = list(hook.list_balance_transactions(balance['id']))
    assert sum(1 for t in txs if str(t.get("description", "")).startswith("m3sh reset")) == 1

    # Forged, unsigned, stale and replayed deliveries: 401, no asset event, no run. The replay is
    # the delivered event re-sent with a valid signature and a fresh timestamp, so only the
    # receiver's event-id guard can stop it.
    events_after = _asset_event_count(api)
    forged = {
        "wrong secret": _delivery(f"forged-{uuid.uuid4().hex}", account["id"], "not-the-webhook-secret"),
        "unsigned": _delivery(f"unsigned-{uuid.uuid4().hex}", account["id"], None),
        "stale": _delivery(f"stale-{uuid.uuid4().hex}", account["id"], WEBHOOK_SECRET, age_s=3600),
        "replayed": _delivery(str(deliveries[0]["eventId"]), account["id"], WEBHOOK_SECRET),
    }
    answers = {case: requests.post(receiver, data=body, headers=headers, timeout=30).status_code
               for case, (body, headers) in forged.items()}
    assert answers == dict.fromkeys(forged, 401)
    assert _asset_event_count(api) == events_after  # recorded synchronously: nothing for the scheduler
    time.sleep(3 * 2.0)  # three scheduler heartbeats: an asset-triggered run would have been created
    assert _plan_run_ids(api) - runs_before == {run_id}
    assert ledger.get(entry["key"])["attempts"] == 1  # type: ignore[index]
