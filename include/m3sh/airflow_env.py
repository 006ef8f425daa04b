"""Build the environment of a local Airflow (demo, distributed test) and talk to its REST API.

Both ``m3sh demo`` (``airflow standalone`` on SQLite) and the distributed engine test (scheduler,
dag-processor, triggerer, api-server and Celery workers on Postgres + Redis) need the same things:
a project-local ``AIRFLOW_HOME``, this repository's ``dags/`` and ``plugins/``, the sandbox's
connections as ``AIRFLOW_CONN_*`` variables, an ``m3sh.yaml`` for the tasks (``M3SH_CONFIG``), one
JWT secret shared by every component, a known login for the REST API, and the Execution API URL
matching the api-server port (otherwise every task fails with "connection refused"). Keeping that
in one place means the demo and the distributed test cannot drift apart. :func:`launch_standalone`
and :func:`stop_standalone` start and stop an ``airflow standalone`` with that environment (the
e2e tests and the trigger benchmark's live phase).

Everything here is cheap and import-safe: no Airflow import (the CLI must start fast).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from m3sh.sandbox.runner import SandboxEndpoints

ADMIN_USER = "admin"
SECRETS_FILE = "m3sh-secrets.json"
PASSWORDS_FILE = "m3sh-passwords.json"
TERMINAL_RUN_STATES = {"success", "failed"}
# Beside a non-default api-server port, the worker and triggerer log servers sit at port + 3 / + 4;
# whoever picks a free port for a stack must keep these free too.
WORKER_LOG_OFFSET, TRIGGER_LOG_OFFSET = 3, 4
STACK_PORT_OFFSETS = (0, WORKER_LOG_OFFSET, TRIGGER_LOG_OFFSET)
# The use-case DAGs, in the order the demo triggers them, with the params of a first full run.
USE_CASE_RUNS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("m3sh_crm_sync", {"full_resync": True}),
    ("m3sh_usage_ingest", {"scan_all": True}),
    ("m3sh_invoice_sync", {}),
    ("m3sh_plan_triggers", {}),
    ("m3sh_reconcile", {}),
)


class AirflowEnvError(RuntimeError):
    """The local Airflow could not be configured, reached or driven; the message says what and why."""


def venv_bin() -> Path:
    """The folder of the running interpreter's scripts (``airflow``, ``m3sh``, ``celery``).

    ``airflow standalone`` spawns ``airflow`` by name, so this folder must be first on PATH.
    """
    return Path(sys.executable).parent


def _load_or_create_secrets(home: Path) -> dict[str, str]:
    """JWT secret and Fernet key, generated once per AIRFLOW_HOME and reused on every start.

    Every component must sign and verify task tokens with the same secret; keeping it in the home
    folder also means a restart does not invalidate tokens of tasks that are still running.
    """
    path = home / SECRETS_FILE
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text())
        if data.get("jwt_secret") and data.get("fernet_key"):
            return data
    from cryptography.fernet import Fernet

    data = {"jwt_secret": secrets.token_urlsafe(32), "fernet_key": Fernet.generate_key().decode()}
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return data


def _load_or_create_password(home: Path, password: str | None) -> tuple[Path, str]:
    """SimpleAuthManager's passwords file with a known admin password (random unless given).

    Pre-writing the file (``[core] simple_auth_manager_passwords_file``) is what lets the demo print
    the login and the tests call the REST API, instead of scraping a generated password from logs.
    """
    path = home / PASSWORDS_FILE
    current: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    wanted = password or current.get(ADMIN_USER) or secrets.token_urlsafe(9)
    if current.get(ADMIN_USER) != wanted:
        path.write_text(json.dumps({ADMIN_USER: wanted}) + "\n")
        path.chmod(0o600)
    return path, wanted


def write_task_config(
    home: Path,
    base: Path | None = None,
    *,
    start_date: dt.date | None = None,
    ui_base_url: str | None = None,
    dag_defaults: dict[str, Any] | None = None,
) -> Path:
    """Write the ``m3sh.yaml`` the tasks read (``M3SH_CONFIG``), derived from ``base``.

    ``start_date`` matters: ``m3sh_crm_sync`` catches up hourly from ``dag_defaults.start_date``,
    and the shipped default lies weeks back, so unpausing it in a fresh demo would queue hundreds of
    runs. The demo starts the schedule today; the tests put it in the future so only their own
    manual runs exist. The result is validated with the same parser the DAGs use.
    """
    from m3sh.config import DEFAULT_CONFIG_PATH, parse_config

    src = base or DEFAULT_CONFIG_PATH
    data: dict[str, Any] = yaml.safe_load(src.read_text()) or {}
    defaults = dict(data.get("dag_defaults") or {})
    if start_date is not None:
        defaults["start_date"] = start_date.isoformat()
    defaults.update(dag_defaults or {})
    if defaults:
        data["dag_defaults"] = defaults
    if ui_base_url:
        data.setdefault("alerting", {})["ui_base_url"] = ui_base_url
    text = f"# generated by m3sh from {src}; edit that file instead\n" + yaml.safe_dump(data, sort_keys=False)
    parse_config(text, source=str(src))
    out = home / "m3sh.yaml"
    out.write_text(text)
    return out


@dataclass
class AirflowEnv:
    """The environment variables of every Airflow process of one local installation."""

    root: Path
    home: Path
    port: int = 8080
    sandbox: SandboxEndpoints = field(default_factory=SandboxEndpoints)
    config_path: Path | None = None
    password: str | None = None
    executor: str = "LocalExecutor"
    sql_alchemy_conn: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.secrets = _load_or_create_secrets(self.home)
        self.passwords_file, self.password = _load_or_create_password(self.home, self.password)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://localhost:{self.port}"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) plus everything Airflow and m3sh need."""
        env = dict(os.environ if base is None else base)
        # Settings from the developer's shell must not leak in (another AIRFLOW_HOME's DB, executor...).
        for key in [k for k in env if k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_"))]:
            del env[key]
        env.pop("AIRFLOW_CONFIG", None)
        bin_dir = str(venv_bin())
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        env.update(self.sandbox.env())
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
            "AIRFLOW__CORE__EXECUTOR": self.executor,
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__CORE__FERNET_KEY": self.secrets["fernet_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": self.secrets["jwt_secret"],
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            # Workers reach the Execution API here; it must follow the port (see api-notes 3.5).
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            # Log servers: Airflow's defaults beside the default port, else right after the API port,
            # so a test stack (e.g. 19880 -> 19883/19884) stays inside its own port range.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(
                8793 if self.port == 8080 else self.port + WORKER_LOG_OFFSET),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(
                8794 if self.port == 8080 else self.port + TRIGGER_LOG_OFFSET),
            # New and changed DAG files show up within seconds instead of minutes.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            # The scheduler creates event-started runs and queues each next task in its loop, which
            # sleeps this long (default 1 s) after a pass that found nothing to do; an S3 event or an
            # m3ter webhook passes through 3-5 such waits before its work is done (benchmarks.freshness,
            # benchmarks.triggers). 0.25 s costs a few idle SQLite queries a second.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
            # 2-core dev machines: 32 idle LocalExecutor workers (the default) only cost memory.
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "PYTHONUNBUFFERED": "1",
        })
        # SQLite (the standalone default) makes a writer wait 5 s for the lock, then fail: on a busy
        # 2-core machine a CLI command beside the scheduler (``airflow backfill create``) hit that.
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = (self.sql_alchemy_conn
                                                      or f"sqlite:///{self.home.resolve()}/airflow.db?timeout=60")
        if self.config_path:
            env["M3SH_CONFIG"] = str(self.config_path)
        env.update(self.extra)
        return env

    def api(self, progress: Callable[[str], None] | None = None) -> AirflowApi:
        return AirflowApi(self.base_url, ADMIN_USER, self.password or "", progress=progress)


def existing_use_case_dags(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """The use-case DAGs whose file exists in ``dags/`` (file stem == dag id), in demo order."""
    return [(dag_id, conf) for dag_id, conf in USE_CASE_RUNS if (root / "dags" / f"{dag_id}.py").exists()]


class AirflowApi:
    """A small client of Airflow's REST API v2: token, unpause, trigger, wait, read task instances."""

    def __init__(self, base_url: str, username: str, password: str,
                 progress: Callable[[str], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self._password = password
        self._token: str | None = None
        self.session = requests.Session()
        self.progress = progress or (lambda _msg: None)

    # -- plumbing -------------------------------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        if self._token is None:
            try:
                r = self.session.post(f"{self.base_url}/auth/token", timeout=60,
                                      json={"username": self.username, "password": self._password})
            except requests.RequestException as exc:
                raise AirflowEnvError(f"login to {self.base_url} failed: {exc.__class__.__name__}") from None
            if r.status_code != 201:
                raise AirflowEnvError(f"login to {self.base_url} as {self.username!r} failed: HTTP {r.status_code}")
            self._token = r.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; reads are retried on timeouts (a busy SQLite-backed api-server can stall), and any
        call Airflow refused with 503 "Database is locked" (SQLite under concurrent writers: it refuses
        before writing, e.g. ``POST /backfills``) is retried."""
        attempts = 3 if method == "GET" else 1
        locked = 6
        for attempt in range(1, max(attempts, locked) + 1):
            try:
                r = self.session.request(method, f"{self.base_url}/api/v2{path}", headers=self._auth(),
                                         timeout=60, **kwargs)
                if r.status_code == 401:  # token expired: log in again once
                    self._token = None
                    r = self.session.request(method, f"{self.base_url}/api/v2{path}", headers=self._auth(),
                                             timeout=60, **kwargs)
            except requests.RequestException as exc:
                if attempt < attempts:
                    self.progress(f"{method} {path}: {exc.__class__.__name__}, retrying")
                    time.sleep(2 * attempt)
                    continue
                raise AirflowEnvError(f"{method} {path}: {exc.__class__.__name__}: {exc}") from None
            if r.status_code == 503 and "Database is locked" in r.text and attempt < locked:
                self.progress(f"{method} {path}: the database is locked, retrying")
                time.sleep(2 * attempt)
                continue
            if r.status_code >= 400:
                raise AirflowEnvError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
            return r.json() if r.content else None
        raise AssertionError("unreachable")

    # -- readiness ------------------------------------------------------------------------------
    def healthy(self) -> dict[str, Any] | None:
        """The monitor/health document, or None while the api-server is not answering."""
        try:
            r = self.session.get(f"{self.base_url}/api/v2/monitor/health", timeout=10)
        except requests.RequestException:
            return None
        return r.json() if r.status_code == 200 else None

    def wait_until(self, what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 1.0,
                   alive: Callable[[], str | None] | None = None) -> Any:
        """Poll ``check`` until truthy; a progress line at least every 5 s; ``alive`` explains deaths."""
        t0 = time.monotonic()
        last_note = t0
        while True:
            result = check()
            if result:
                self.progress(f"{what}: ok ({time.monotonic() - t0:.0f}s)")
                return result
            if alive is not None and (why := alive()):
                raise AirflowEnvError(f"{what}: {why}")
            now = time.monotonic()
            if now - t0 > timeout_s:
                raise AirflowEnvError(f"{what}: not ready after {timeout_s:.0f}s")
            if now - last_note >= 5:
                self.progress(f"{what}: waiting ({now - t0:.0f}s)")
                last_note = now
            time.sleep(every_s)

    def wait_healthy(self, timeout_s: float = 600, alive: Callable[[], str | None] | None = None,
                     components: Iterable[str] = ("metadatabase", "scheduler", "dag_processor")) -> None:
        wanted = list(components)

        def ok() -> bool:
            doc = self.healthy()
            return bool(doc) and all((doc or {}).get(c, {}).get("status") == "healthy" for c in wanted)

        self.wait_until(f"Airflow at {self.base_url} healthy ({', '.join(wanted)})", ok, timeout_s, alive=alive)
        self.warm_execution_api(timeout_s)

    def warm_execution_api(self, timeout_s: float = 180) -> None:
        """Make the api-server build its Execution API now rather than on the first task's start call.

        Airflow 3.3's Execution API (a Cadwyn app) generates its versioned routes on its first request,
        on the api-server's event loop: 30-60 s on a busy 2-core machine, during which the api-server
        answers nothing. The first task's start call then times out, the task fails and waits for its
        retry delay. One request here pays that cost before any task runs. A failure is only reported:
        tasks would then pay it as before.
        """
        t0 = time.monotonic()
        try:
            self.session.get(f"{self.base_url}/execution/health", timeout=timeout_s)
        except requests.RequestException as exc:
            self.progress(f"Execution API warm-up failed ({exc.__class__.__name__}); the first task may retry")
            return
        self.progress(f"Execution API ready ({time.monotonic() - t0:.0f}s)")

    def dag_ids(self) -> set[str]:
        doc = self.request("GET", "/dags", params={"limit": 100, "dag_id_pattern": "m3sh"})
        return {d["dag_id"] for d in doc["dags"]}

    def import_errors(self) -> list[str]:
        doc = self.request("GET", "/importErrors", params={"limit": 50})
        return [f"{e['filename']}: {e['stack_trace'].strip().splitlines()[-1]}" for e in doc["import_errors"]]

    def wait_dags(self, dag_ids: Iterable[str], timeout_s: float = 300,
                  alive: Callable[[], str | None] | None = None) -> None:
        """Wait until the dag-processor has serialized every DAG; import errors fail fast and say why."""
        wanted = set(dag_ids)

        def ok() -> bool:
            missing = wanted - self.dag_ids()
            if missing and (errors := self.import_errors()):
                raise AirflowEnvError(f"DAG import errors: {errors}")
            return not missing

        self.wait_until(f"DAGs parsed ({len(wanted)})", ok, timeout_s, every_s=1.5, alive=alive)

    # -- actions --------------------------------------------------------------------------------
    def ensure_pool(self, name: str, slots: int, description: str) -> str:
        """Create the pool, or resize it when its slots differ; returns what it did.

        Airflow never schedules a task whose pool does not exist (it stays "scheduled", with only a
        scheduler log line saying why), so m3sh creates the pools its config names before any run.
        """
        try:
            pool: dict[str, Any] = self.request("GET", f"/pools/{name}")
        except AirflowEnvError as exc:
            if "HTTP 404" not in str(exc):
                raise
            self.request("POST", "/pools", json={"name": name, "slots": slots, "description": description,
                                                  "include_deferred": False})
            return "created"
        if int(pool.get("slots", -1)) == slots:
            return "unchanged"
        self.request("PATCH", f"/pools/{name}", json={"slots": slots})
        return "resized"

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def pause(self, dag_id: str) -> None:
        """Pause a DAG: no new scheduled or asset-triggered runs are queued for it (running ones go on)."""
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": True})

    def active_runs(self, dag_id: str) -> list[str]:
        """Run ids of the DAG's runs that are still running (queued runs of a paused DAG stay queued)."""
        doc = self.request("GET", f"/dags/{dag_id}/dagRuns", params={"state": "running", "limit": 100})
        return [str(r["dag_run_id"]) for r in doc["dag_runs"]]

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, note: str | None = None) -> str:
        body: dict[str, Any] = {"logical_date": None, "conf": conf or {}}
        if note:
            body["note"] = note
        run: dict[str, Any] = self.request("POST", f"/dags/{dag_id}/dagRuns", json=body)
        return str(run["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        return doc

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        doc = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        items: list[dict[str, Any]] = doc["task_instances"]
        return items

    def task_tries(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every try of every task instance of a run (hostname per try: who ran what)."""
        out: list[dict[str, Any]] = []
        for ti in self.task_instances(dag_id, run_id):
            path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}"
            if ti.get("map_index", -1) >= 0:
                path += f"/{ti['map_index']}"
            out += self.request("GET", path + "/tries")["task_instances"]
        return out

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        doc = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")
        value = doc.get("value")
        if isinstance(value, str):  # stored as JSON text
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    def wait_runs(self, runs: dict[str, str], timeout_s: float = 600) -> dict[str, str]:
        """Wait for every ``{dag_id: run_id}`` to finish; progress names each run's task states."""
        t0 = time.monotonic()
        last_note = 0.0
        states: dict[str, str] = {}
        while True:
            states = {dag_id: self.run(dag_id, run_id)["state"] for dag_id, run_id in runs.items()}
            if all(s in TERMINAL_RUN_STATES for s in states.values()):
                return states
            now = time.monotonic()
            if now - t0 > timeout_s:
                raise AirflowEnvError(f"runs not finished after {timeout_s:.0f}s: {states}")
            if now - last_note >= 5:
                parts = []
                for dag_id, run_id in runs.items():
                    counts: dict[str, int] = {}
                    for ti in self.task_instances(dag_id, run_id):
                        st = ti.get("state") or "none"
                        counts[st] = counts.get(st, 0) + 1
                    tis = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                    parts.append(f"{dag_id} {states[dag_id]} [{tis}]")
                self.progress(f"runs ({now - t0:.0f}s): " + "; ".join(parts))
                last_note = now
            time.sleep(1.0)


# ------------------------------------------------------------------------------ airflow standalone
@dataclass
class StandaloneStack:
    """A running ``airflow standalone`` (its own process group) and a REST client for it."""

    env: AirflowEnv
    api: AirflowApi
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return self.env.base_url

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def died(self) -> str | None:
        """Why the standalone is gone (exit code and last log lines), or None while it runs."""
        if self.proc.poll() is not None:
            return f"airflow standalone exited with {self.proc.returncode}:\n{self.tail()}"
        return None

    def stop(self) -> None:
        stop_standalone(self.proc)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (signal 0 probes without signalling)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_standalone(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGINT to the standalone parent (it stops its components in order), then TERM/KILL its group.

    SIGINT to the whole group would hit the LocalExecutor workers directly and leave the scheduler
    waiting for them until SIGKILL; only the group this process started is signalled.
    """
    pgid = proc.pid
    for send, wait_s in ((lambda: os.kill(pgid, signal.SIGINT), grace_s),
                         (lambda: os.killpg(pgid, signal.SIGTERM), 5.0),
                         (lambda: os.killpg(pgid, signal.SIGKILL), 2.0)):
        with contextlib.suppress(ProcessLookupError):
            send()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap our child so a zombie does not count as alive
            if not group_alive(pgid):
                return
            time.sleep(0.2)


def launch_standalone(env: AirflowEnv, wait_dags: Iterable[str], *, cwd: Path | None = None,
                      progress: Callable[[str], None] | None = None, healthy_timeout_s: float = 600,
                      dags_timeout_s: float = 300) -> StandaloneStack:
    """Start ``airflow standalone`` with ``env`` (log in ``<home>/standalone.log``) and wait until it is
    healthy and ``wait_dags`` are parsed; on any failure it is stopped again before the error propagates.
    The bounds are generous on purpose: every wait is on a condition and fails at once if a process
    dies, and a cold start on a busy 2-core machine has taken over 3 minutes.
    """
    log_path = env.home / "standalone.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([str(venv_bin() / "airflow"), "standalone"], stdout=log, stderr=subprocess.STDOUT,
                                env=env.env(), cwd=cwd or env.root, start_new_session=True)
    stack = StandaloneStack(env, env.api(progress=progress), proc, log_path)
    try:
        stack.api.wait_healthy(timeout_s=healthy_timeout_s, alive=stack.died)
        stack.api.wait_dags(wait_dags, timeout_s=dags_timeout_s, alive=stack.died)
    except BaseException:
        stop_standalone(proc)
        raise
    return stack
