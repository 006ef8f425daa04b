"""The distributed engine for real, without Docker: CeleryExecutor + Postgres + Redis as processes.

The topology of ``docker-compose.yaml`` runs on this machine's PostgreSQL (127.0.0.1:5432, user
postgres, trust auth) and Redis (127.0.0.1:6379): a fresh metadata database ``m3sh_ci_<random>``
(dropped at the end), a test-private Redis database number (flushed before and after), then
``airflow scheduler``, ``dag-processor``, ``triggerer``, ``api-server`` (non-default port, with the
Execution API URL to match) and two ``airflow celery worker`` processes, plus the sandbox on its
own port base. ``.ci/start-services.sh`` starts Postgres and Redis where they are not running.

1. Every m3sh DAG is unpaused and triggered through the REST API and runs to success; task
   instances ran on both workers (their ``hostname`` comes from ``worker_identity.py``); the m3ter
   emulator holds the accounts from the CRM sync and every valid usage row of the seed, once.
2. The sandbox is reset, and while ``m3sh_usage_ingest`` is ingesting (latency injected into
   m3ter's measurements endpoint keeps it in flight) one worker is killed with SIGKILL, its whole
   process group, like a lost machine. The scheduler notices the missing heartbeat, the task is
   retried on the surviving worker, and m3ter ends with exactly the measurements of 1 (same count
   and sums per account and meter): nothing lost, nothing doubled.

Run: ``.venv/bin/pytest -m distributed tests/distributed -q`` (about 3-4 minutes on 2 cores).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(540)]

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PORT_BASE = int(os.environ.get("M3SH_DISTRIBUTED_PORT_BASE", "19820"))
API_PORT = PORT_BASE + 70  # 19890; its log servers move along (+3/+4)
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379"
WORKERS = ("worker-a", "worker-b")


def _pg_admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)  # type: ignore[arg-type]
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh metadata database, dropped (with any leftover connections) at the end."""
    name = f"m3sh_ci_{secrets.token_hex(4)}"
    try:
        _pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # the message says how to start the service
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 (user postgres) is needed: {exc}; "
                    "start it with .ci/start-services.sh")
    try:
        yield name
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def redis_db() -> Iterator[int]:
    """A Redis database number nobody else uses in this test run, flushed before and after."""
    import redis

    db = 1 + secrets.randbelow(15)
    client = redis.Redis.from_url(f"{REDIS_URL}/{db}", socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        pytest.fail(f"Redis on 127.0.0.1:6379 is needed: {exc}; start it with .ci/start-services.sh")
    try:
        yield db
    finally:
        client.flushdb()
        client.close()


@dataclass
class Stack:
    """The Airflow processes of one distributed installation, each in its own process group."""

    env: Any  # m3sh.airflow_env.AirflowEnv
    home: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        self.procs[name] = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), *args], stdout=log, stderr=subprocess.STDOUT,
            env={**self.env.env(), **(extra_env or {})}, cwd=self.home, start_new_session=True)

    def dead(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None and not name.endswith("(killed)"):
                return f"{name} exited with {proc.returncode}; log tail:\n{self.tail(name)}"
        return None

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.home / f"{name.replace(' (killed)', '')}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def kill9(self, name: str) -> None:
        """SIGKILL the worker's whole process group: main process, pool, task supervisors, tasks."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.procs[f"{name} (killed)"] = proc

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):  # what is left of the group (pool, tasks)
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def stack(pg_database: str, redis_db: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import datetime as dt

    from m3sh.airflow_env import AirflowEnv, write_task_config
    from m3sh.sandbox.runner import Sandbox, SandboxEndpoints

    home = tmp_path_factory.mktemp("af-demo-distributed")
    endpoints = SandboxEndpoints(port_base=PORT_BASE)
    sandbox = Sandbox(home, endpoints)
    # Scheduled runs start next year: only the test's manual runs exist. Fast retries.
    cfg = write_task_config(home, start_date=dt.date.today() + dt.timedelta(days=365),
                            dag_defaults={"retries": 3, "retry_delay_s": 1, "max_retry_delay_s": 5})
    db_url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{pg_database}"
    env = AirflowEnv(root=REPO, home=home / "airflow", port=API_PORT, sandbox=endpoints, config_path=cfg,
                     executor="CeleryExecutor", sql_alchemy_conn=db_url, extra={
                         "AIRFLOW__CELERY__BROKER_URL": f"{REDIS_URL}/{redis_db}",
                         "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://postgres@127.0.0.1:5432/{pg_database}",
                         "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
                         "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                         # a SIGKILLed worker's task is failed (then retried) ~20 s after its last heartbeat
                         "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                         "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
                         "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "3",
                     })
    t0 = time.monotonic()
    sandbox.up(seed="demo")
    migrate = subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env.env(),
                             capture_output=True, text=True, timeout=300, check=False)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    t_migrate = time.monotonic() - t0
    st = Stack(env=env, home=env.home)
    try:
        st.start("scheduler", ["scheduler"])
        st.start("dag-processor", ["dag-processor"])
        st.start("triggerer", ["triggerer"])
        st.start("api-server", ["api-server", "--port", str(API_PORT)])
        for name in WORKERS:
            st.start(name, ["celery", "worker", "--celery-hostname", f"{name}@m3sh", "--concurrency", "2",
                            "--skip-serve-logs"],
                     extra_env={"M3SH_WORKER_HOSTNAME": name, "PYTHONPATH": str(HERE),
                                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "worker_identity.worker_hostname"})
        api = env.api(progress=lambda m: print(f"[distributed] {m}", flush=True))
        api.wait_healthy(timeout_s=600, alive=st.dead,
                         components=("metadatabase", "scheduler", "dag_processor", "triggerer"))
        _wait_workers(redis_db, pg_database, st)
        print(f"[distributed] migrate {t_migrate:.0f}s, stack up {time.monotonic() - t0:.0f}s", flush=True)
        yield {"api": api, "stack": st, "sandbox": sandbox, "endpoints": endpoints, "home": env.home}
    finally:
        st.stop()
        sandbox.down(quiet=True)


def _wait_workers(redis_db: int, pg_database: str, st: Stack, timeout_s: float = 90) -> None:
    """Both Celery workers answer a ping (they are consuming the queue)."""
    from celery import Celery

    app = Celery(broker=f"{REDIS_URL}/{redis_db}")
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline:
        if why := st.dead():
            pytest.fail(why)
        replies = app.control.ping(timeout=2) or []
        seen = {name.split("@")[0] for reply in replies for name in reply}
        if set(WORKERS) <= seen:
            return
        time.sleep(1)
    pytest.fail(f"celery workers not up after {timeout_s:.0f}s (seen {sorted(seen)}):\n"
                + "\n".join(st.tail(w) for w in WORKERS))


# -- helpers -------------------------------------------------------------------------------------
def _m3ter_state(endpoints: Any) -> dict[str, Any]:
    state: dict[str, Any] = requests.get(f"{endpoints.url('m3ter')}/_sandbox/state", timeout=30).json()
    return state


def _usage_totals(state: dict[str, Any]) -> dict[str, tuple[int, dict[str, float]]]:
    return {f"{r['account']}/{r['meter']}": (r["count"], {k: round(v, 6) for k, v in r["sums"].items()})
            for r in state["usage"]["totals"]}


def _expected_valid_usage_rows() -> int:
    """Valid rows in the demo seed's S3 usage files, computed from the seed itself (not from Airflow)."""
    import datetime as dt

    from m3sh.sandbox.aws_seed import usage_rows
    from m3sh.sandbox.seed import demo_company

    company = demo_company()
    day, n = company.anchor, 0
    while day.month == company.anchor.month:
        n += sum(1 for r in usage_rows(company, day) if "-bad-" not in r["event_id"])
        day += dt.timedelta(days=1)
    return n


def _hostnames(api: Any, runs: dict[str, str]) -> dict[str, set[str]]:
    """worker hostname -> the task ids it ran (every try of every task instance)."""
    out: dict[str, set[str]] = {}
    for dag_id, run_id in runs.items():
        for t in api.task_tries(dag_id, run_id):
            if t.get("hostname"):
                out.setdefault(t["hostname"], set()).add(f"{dag_id}.{t['task_id']}")
    return out


# -- the tests -----------------------------------------------------------------------------------
def test_every_m3sh_dag_runs_to_success_across_both_workers(stack: dict[str, Any]) -> None:
    from m3sh.airflow_env import existing_use_case_dags

    api, st = stack["api"], stack["stack"]
    use_cases = existing_use_case_dags(REPO)
    api.wait_dags([d for d, _ in use_cases], timeout_s=300, alive=st.dead)
    t0 = time.monotonic()
    (first, first_conf), *rest = use_cases
    # The accounts first; the rest stay paused till then, so no asset-triggered ingest run (the seeded
    # usage files' S3 notifications) reads usage for accounts that do not exist yet.
    api.unpause(first)
    runs = {first: api.trigger(first, first_conf, note="distributed test")}
    states = api.wait_runs(dict(runs), timeout_s=600)
    for dag_id, _ in rest:  # only these: another DAG's catch-up must not crowd the two workers
        api.unpause(dag_id)
    for dag_id, conf in rest:
        runs[dag_id] = api.trigger(dag_id, conf, note="distributed test")
    states.update(api.wait_runs({d: runs[d] for d, _ in rest}, timeout_s=300))
    print(f"[distributed] {len(runs)} DAG runs finished in {time.monotonic() - t0:.0f}s: {states}", flush=True)
    assert states == dict.fromkeys(runs, "success"), "\n".join(st.tail(w) for w in WORKERS)
    failed = [(d, t["task_id"]) for d, r in runs.items() for t in api.task_instances(d, r)
              if t["state"] not in ("success", "skipped")]
    assert not failed

    hosts = _hostnames(api, runs)
    assert set(WORKERS) <= set(hosts), f"tasks ran only on {sorted(hosts)}: {hosts}"

    state = _m3ter_state(stack["endpoints"])
    assert len(state["entities"]["accounts"]) > 0
    # every valid row of the seeded usage files landed (HTTP feeds may add more), each exactly once
    assert state["usage"]["uids"] >= _expected_valid_usage_rows()
    assert sum(r["count"] for r in state["usage"]["totals"]) == state["usage"]["uids"]
    stack["baseline"] = _usage_totals(state)


def test_killing_a_worker_mid_ingest_still_lands_every_measurement_once(stack: dict[str, Any]) -> None:
    if "baseline" not in stack:
        pytest.skip("needs the baseline of the first test")
    api, st, sandbox, endpoints = stack["api"], stack["stack"], stack["sandbox"], stack["endpoints"]
    # The reset re-seeds the usage files, whose S3 notifications start an asset-triggered ingest run.
    # Run before the CRM sync has re-created the accounts, it would (rightly) dead-letter every row of
    # an unknown account and finish those files; paused, no such run is queued until the accounts exist.
    api.pause("m3sh_usage_ingest")
    api.wait_until("no m3sh_usage_ingest run in flight", lambda: not api.active_runs("m3sh_usage_ingest"),
                   timeout_s=600)
    sandbox.reset("demo")
    crm = api.trigger("m3sh_crm_sync", {"full_resync": True}, note="distributed test: before the kill")
    assert api.wait_runs({"m3sh_crm_sync": crm}, timeout_s=600) == {"m3sh_crm_sync": "success"}
    api.unpause("m3sh_usage_ingest")

    # Every measurements request takes 1.5 s: each ingest task stays in flight for several seconds.
    requests.post(f"{endpoints.url('m3ter')}/_sandbox/faults", timeout=10,
                  json={"path_regex": "/measurements$", "methods": ["POST"], "latency_ms": 1500}).raise_for_status()
    run_id = api.trigger("m3sh_usage_ingest", {"scan_all": True}, note="distributed test: worker killed")

    # Kill once measurements are landing and an ingest task is still running on a worker: mid-run.
    victim, victim_ti, sent_before_kill = None, None, 0
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        sent_before_kill = _m3ter_state(endpoints)["usage"]["uids"]
        running = [ti for ti in api.task_instances("m3sh_usage_ingest", run_id)
                   if ti["task_id"] == "ingest_files" and ti["state"] == "running" and ti.get("hostname") in WORKERS]
        if sent_before_kill > 0 and running:
            victim, victim_ti = running[0]["hostname"], running[0]
        else:
            time.sleep(0.5)
    assert victim is not None and victim_ti is not None, "no ingest task was running while measurements landed"
    st.kill9(victim)
    print(f"[distributed] killed {victim} (pid group) while it ran ingest_files[{victim_ti['map_index']}]; "
          f"{sent_before_kill} measurements had landed", flush=True)
    requests.delete(f"{endpoints.url('m3ter')}/_sandbox/faults", timeout=10).raise_for_status()

    t0 = time.monotonic()
    states = api.wait_runs({"m3sh_usage_ingest": run_id}, timeout_s=600)
    print(f"[distributed] run finished {time.monotonic() - t0:.0f}s after the kill: {states}", flush=True)
    assert states == {"m3sh_usage_ingest": "success"}
    tis = api.task_instances("m3sh_usage_ingest", run_id)
    assert all(t["state"] == "success" for t in tis), [(t["task_id"], t["map_index"], t["state"]) for t in tis]

    # the killed try failed by heartbeat timeout and a later try of the same task ran on the survivor
    survivor = next(w for w in WORKERS if w != victim)
    tries = [t for t in api.task_tries("m3sh_usage_ingest", run_id)
             if t["task_id"] == "ingest_files" and t["map_index"] == victim_ti["map_index"]]
    assert len(tries) >= 2, tries
    assert tries[-1]["hostname"] == survivor and tries[-1]["state"] == "success", tries

    # right results, no duplicates: exactly the baseline of the undisturbed run
    state = _m3ter_state(endpoints)
    assert 0 < sent_before_kill < state["usage"]["uids"]
    assert sum(r["count"] for r in state["usage"]["totals"]) == state["usage"]["uids"]
    assert _usage_totals(state) == stack["baseline"]
