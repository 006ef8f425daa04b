"""``m3sh demo``: the sandbox + ``airflow standalone`` + one run of each use case, in one command.

What it starts, it stops: Ctrl-C (or SIGTERM) ends the standalone process group and the sandbox
(unless the sandbox was already running before the demo, e.g. from ``m3sh sandbox up``). Running
it again works: a previous demo's Airflow that was left behind (its pid is in
``.airflow/m3sh-demo.json``) is stopped first, the sandbox is reset to the demo seed, and the SQLite
metadata DB is reused.

``--once`` is the non-interactive form for CI and tests: it waits for the triggered runs, prints
each run's state and a result summary, stops everything and exits 0 only if every run succeeded.
``--only DAG_ID`` (repeatable) runs just those use cases, still in data-flow order.

Each DAG is unpaused only when its stage comes: the seeded usage files' S3 notifications would
otherwise start an asset-triggered ingest run before the CRM sync has created the accounts, and
every row would be dead-lettered as "unknown account".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests

from m3sh.airflow_env import (
    ADMIN_USER,
    AirflowApi,
    AirflowEnv,
    AirflowEnvError,
    existing_use_case_dags,
    group_alive,
    venv_bin,
    write_task_config,
)
from m3sh.config import load_config
from m3sh.dagkit.pools import required_pools
from m3sh.sandbox.runner import DEFAULT_PORT_BASE, Sandbox, SandboxEndpoints, SandboxError

PID_FILE = "m3sh-demo.json"
T = TypeVar("T")


class _Stop(Exception):
    """SIGTERM turned into an exception so the same clean-up runs as for Ctrl-C."""


def _say(msg: str) -> None:
    print(f"[m3sh demo] {msg}", flush=True)


def _with_progress(label: str, fn: Callable[[], T], every_s: float = 5.0) -> T:
    """Run ``fn`` in a thread and print a line every few seconds, so no wait is silent."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    t0 = time.monotonic()
    th = threading.Thread(target=target, daemon=True)
    th.start()
    while th.is_alive():
        th.join(every_s)
        if th.is_alive():
            _say(f"{label}: still working ({time.monotonic() - t0:.0f}s)")
    if "error" in result:
        raise result["error"]
    _say(f"{label}: done ({time.monotonic() - t0:.1f}s)")
    return result["value"]  # type: ignore[no-any-return]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _stop_group(pgid: int, proc: subprocess.Popen[bytes] | None = None, grace_s: float = 20.0) -> None:
    """Stop the standalone process group the way Ctrl-C in its terminal would, then harder.

    SIGINT goes to the standalone parent only: it then terminates each component, and the
    scheduler shuts its LocalExecutor workers down in order (about 3 s). SIGINT to the whole group
    would hit those workers directly and leave the scheduler waiting for them until SIGKILL.
    """
    steps: list[tuple[Callable[[], None], float]] = [
        (lambda: os.kill(pgid, signal.SIGINT), grace_s),
        (lambda: os.killpg(pgid, signal.SIGTERM), 5.0),
        (lambda: os.killpg(pgid, signal.SIGKILL), 2.0),
    ]
    for send, wait_s in steps:
        with contextlib.suppress(ProcessLookupError):
            send()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()  # reap our child so a zombie does not count as alive
            if not group_alive(pgid):
                return
            time.sleep(0.2)


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop_previous(home: Path) -> None:
    """Stop an Airflow left behind by an earlier demo (killed terminal, kill -9); drop a stale pid file."""
    path = home / PID_FILE
    if not path.exists():
        return
    try:
        pgid = int(json.loads(path.read_text()).get("standalone_pgid", 0))
    except (ValueError, OSError):
        pgid = 0
    if pgid and _alive(pgid) and _is_airflow(pgid):
        _say(f"stopping the Airflow of a previous demo (process group {pgid})")
        _stop_group(pgid)
    path.unlink(missing_ok=True)


def _is_airflow(pid: int) -> bool:
    """A recycled pid of an unrelated program must never be killed because of a stale pid file."""
    try:
        return b"airflow" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _summary(api: AirflowApi, runs: dict[str, str], endpoints: SandboxEndpoints) -> list[str]:
    """A few lines of results: what each run reported and what landed in the m3ter emulator."""
    lines: list[str] = []
    xcom_tasks = {"m3sh_crm_sync": "sync_to_m3ter", "m3sh_usage_ingest": "summarize"}
    for dag_id, run_id in runs.items():
        task_id = xcom_tasks.get(dag_id)
        if not task_id:
            continue
        try:
            value = api.xcom(dag_id, run_id, task_id)
        except AirflowEnvError:
            continue
        if isinstance(value, dict):
            shown = value.get("counts", value)
            if isinstance(shown, dict):
                shown = {k: v for k, v in shown.items() if not isinstance(v, list | dict)}
            lines.append(f"{dag_id}: {shown}")
    try:
        state = requests.get(f"{endpoints.url('m3ter')}/_sandbox/state", timeout=30).json()
        usage = state.get("usage", {})
        lines.append(f"m3ter sandbox: {len(state['entities'].get('accounts', []))} accounts, "
                     f"{usage.get('uids', 0)} distinct measurements ({usage.get('duplicates', 0)} duplicate "
                     f"re-sends de-duplicated by uid)")
    except (requests.RequestException, KeyError, ValueError):
        lines.append("m3ter sandbox: state not readable")
    try:
        ns = requests.get(f"{endpoints.url('netsuite')}/_sandbox/state", timeout=30).json()
        per_account = ", ".join(f"{acct}: {info['counts'].get('invoice', 0)}"
                                for acct, info in sorted(ns["accounts"].items()))
        lines.append(f"netsuite sandbox: invoices per account ({per_account})")
    except (requests.RequestException, KeyError, ValueError, AttributeError):
        lines.append("netsuite sandbox: state not readable")
    return lines


DEMO_STAGES: tuple[frozenset[str], ...] = (
    frozenset({"m3sh_crm_sync"}),  # accounts first: everything else needs them
    frozenset({"m3sh_usage_ingest"}),
    frozenset({"m3sh_invoice_sync", "m3sh_plan_triggers"}),
    frozenset({"m3sh_reconcile"}),
)
BILL_RUN_BEFORE_STAGE = 2


def _bill_run(endpoints: SandboxEndpoints) -> str:
    """What m3ter's scheduler and a billing admin do at month end, done on the m3ter emulator:
    last month's bills for every account with a plan, approved, so the invoicing DAG has bills."""
    try:
        r = requests.post(f"{endpoints.url('m3ter')}/_sandbox/run_billing", json={"approve": True}, timeout=120)
        r.raise_for_status()
        n = len(r.json().get("billIds", []))
    except (requests.RequestException, ValueError) as exc:
        return f"m3ter sandbox bill run failed ({exc.__class__.__name__}); m3sh_invoice_sync will find no bills"
    return f"m3ter sandbox bill run: {n} bill(s) for last month, approved (m3sh_invoice_sync exports them next)"


def _sync_notifications(env: AirflowEnv, cfg_path: Path, port: int) -> str:
    """Point m3ter's notifications at this Airflow's webhook receiver, as a user does once before go-live
    (so ``m3sh preflight`` passes against the demo and balance alerts start plan-trigger runs)."""
    url = f"http://127.0.0.1:{port}/m3sh/webhooks/m3ter"
    cmd = [str(venv_bin() / "m3sh"), "triggers", "sync-notifications", "--config", str(cfg_path), "--webhook-url", url]
    r = subprocess.run(cmd, env=env.env(), capture_output=True, text=True, timeout=300, check=False)
    if r.returncode != 0:
        return (f"m3ter notifications not synced (the rules still run every 5 minutes): "
                f"{(r.stderr.strip().splitlines() or ['no output'])[-1][:300]}")
    result = json.loads(r.stdout)
    rules, action = len(result["notifications"]), result["webhook"]["action"]
    return f"m3ter notifications: {rules} rule(s) -> {url} (webhook {action})"


def _guide(env: AirflowEnv, sandbox_dir: Path) -> list[str]:
    return [
        f"Airflow UI: {env.ui_url}   login: {ADMIN_USER} / {env.password}",
        "What to look at:",
        f"  * {env.ui_url}/dags?tags=m3sh - the m3sh DAGs; open a run's Graph and the task logs",
        f"  * {env.ui_url}/dags/m3sh_usage_ingest - mapped ingest tasks, one per chunk of files",
        "  * Trigger a DAG with params (play button -> 'Trigger with config'), e.g. dry_run",
        f"  * sandbox connections and emulator logs: {sandbox_dir} (source env for the shell)",
        f"  * Airflow logs: {env.home / 'standalone.log'}",
    ]


def _cannot_start(root: Path, only: list[str] | None) -> str | None:
    """Why the demo cannot start from ``root`` (exit code 2), or None."""
    if not (root / "dags").is_dir():
        return f"no dags/ folder in {root}: run from the m3sh checkout or pass --root"
    known = [d for d, _ in existing_use_case_dags(root)]
    if unknown := sorted(set(only or []) - set(known)):
        return f"--only {', '.join(unknown)}: not a use-case DAG here (choose from {', '.join(known)})"
    if not (venv_bin() / "airflow").exists():
        return f"airflow is not installed next to {venv_bin()}: run `make demo` (it bootstraps .venv)"
    return None


def _run_stages(api: Any, use_cases: list[tuple[str, dict[str, Any]]],
                endpoints: SandboxEndpoints) -> tuple[dict[str, str], dict[str, str]]:
    """Trigger the use cases stage by stage; ``(run ids, final states)`` by DAG id.

    In the order the data flows: accounts from the CRMs, then usage against them, then m3ter's bill
    run (emulated), then what reads bills and balances side by side, then reconciliation (run beside
    the invoice export it would report every bill still in flight as missing).
    """
    runs: dict[str, str] = {}
    states: dict[str, str] = {}
    for i, dag_ids in enumerate(DEMO_STAGES):
        stage = [u for u in use_cases if u[0] in dag_ids]
        if i == BILL_RUN_BEFORE_STAGE and stage:
            _say(_bill_run(endpoints))
        for dag_id, _ in stage:  # unpaused only now: see the module docstring
            api.unpause(dag_id)
        for dag_id, conf in stage:
            runs[dag_id] = api.trigger(dag_id, conf, note="m3sh demo")
            _say(f"triggered {dag_id} {conf}")
        if stage:
            states.update(api.wait_runs({d: runs[d] for d, _ in stage}, timeout_s=900))
    for dag_id, conf in (u for u in use_cases if u[0] not in runs):  # a use case no stage names
        api.unpause(dag_id)
        runs[dag_id] = api.trigger(dag_id, conf, note="m3sh demo")
        states.update(api.wait_runs({dag_id: runs[dag_id]}, timeout_s=900))
    return runs, states


def _report(api: Any, runs: dict[str, str], states: dict[str, str], endpoints: SandboxEndpoints) -> bool:
    """Print each run's result, the summary and failed tasks; True when everything succeeded."""
    _say("results:")
    for dag_id, state in states.items():
        _say(f"  {dag_id:<22} {state:<8} run {runs[dag_id]}")
    for line in _summary(api, runs, endpoints):
        _say(f"  {line}")
    failed_tis = {d: [f"{t['task_id']}[{t['map_index']}]" if t.get("map_index", -1) >= 0 else t["task_id"]
                      for t in api.task_instances(d, r) if t.get("state") in ("failed", "upstream_failed")]
                  for d, r in runs.items()}
    for dag_id, tis in failed_tis.items():
        if tis:
            _say(f"  {dag_id}: failed task(s) {', '.join(tis)} (see their logs in the UI)")
    return all(s == "success" for s in states.values()) and not any(failed_tis.values())


class _Standalone:
    """``airflow standalone`` for the demo: started with the demo's config, pools and notification
    channel; ``proc`` is set as soon as the process exists, so the caller can always stop it."""

    def __init__(self, root: Path, home: Path, port: int, endpoints: SandboxEndpoints) -> None:
        self.root, self.home, self.port, self.endpoints = root, home, port, endpoints
        self.log_path = home / "standalone.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def died(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"airflow standalone exited with {self.proc.returncode}; last log lines:\n{_tail(self.log_path)}"
        return None

    def wait_exit(self, guide: list[str]) -> int:
        """Interactive: print the guide, wait until standalone exits (Ctrl-C raises out of here); its
        exit code, never 0."""
        for line in guide:
            _say(line)
        _say("Ctrl-C stops Airflow and the sandbox.")
        while self.proc is not None and self.proc.poll() is None:
            time.sleep(1)
        _say(self.died() or "airflow standalone exited")
        return (self.proc.returncode if self.proc is not None else 0) or 1

    def start(self, once: bool, dag_ids: list[str]) -> tuple[AirflowEnv, Any]:
        """Start it and wait until it is healthy with ``dag_ids`` parsed (all paused); ``(env, api)``."""
        today = dt.datetime.now(dt.UTC).date()
        # --once: no scheduled runs at all (only ours); interactive: the hourly schedule starts today.
        start = today + dt.timedelta(days=365) if once else today
        cfg_path = write_task_config(self.home, Path(os.environ["M3SH_CONFIG"]) if os.environ.get("M3SH_CONFIG")
                                     else None, start_date=start, ui_base_url=f"http://localhost:{self.port}")
        env = AirflowEnv(root=self.root, home=self.home, port=self.port, sandbox=self.endpoints,
                         config_path=cfg_path)
        _say(f"starting Airflow standalone (AIRFLOW_HOME={self.home}, SQLite, LocalExecutor); log: {self.log_path}")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(venv_bin() / "airflow"), "standalone"], stdout=log,
                                         stderr=subprocess.STDOUT, env=env.env(), cwd=self.root,
                                         start_new_session=True)
        (self.home / PID_FILE).write_text(json.dumps({
            "standalone_pgid": self.proc.pid, "demo_pid": os.getpid(), "port": self.port,
            "sandbox_port_base": self.endpoints.port_base}))
        api = env.api(progress=_say)
        api.wait_healthy(timeout_s=600, alive=self.died)
        _say(f"Airflow UI is up: {env.ui_url}  (login {ADMIN_USER} / {env.password})")
        api.wait_dags(dag_ids, timeout_s=300, alive=self.died)
        for dag_id in sorted(api.dag_ids()):  # an earlier interactive demo left them unpaused (same DB)
            api.pause(dag_id)
        for pool, (slots, description) in required_pools(load_config(cfg_path)).items():
            done = api.ensure_pool(pool, slots, description)
            _say(f"pool {pool}: {slots} slot(s) ({done})")
        _say(_sync_notifications(env, cfg_path, self.port))
        return env, api


def run_demo(root: Path, port: int = 8080, once: bool = False, only: list[str] | None = None) -> int:
    """Start the demo; return the process exit code (see the module docstring)."""
    t_start = time.monotonic()
    root = root.resolve()
    if problem := _cannot_start(root, only):
        _say(problem)
        return 2
    home = Path(os.environ.get("M3SH_DEMO_AIRFLOW_HOME") or root / ".airflow").resolve()
    home.mkdir(parents=True, exist_ok=True)
    port_base = int(os.environ.get("M3SH_SANDBOX_PORT_BASE") or DEFAULT_PORT_BASE)
    endpoints = SandboxEndpoints(port_base=port_base)

    _stop_previous(home)
    if _port_in_use(port):
        _say(f"port {port} is already in use (another Airflow?); stop it or pass --port")
        return 2

    def on_term(_sig: int, _frame: Any) -> None:
        raise _Stop

    previous_handler = signal.signal(signal.SIGTERM, on_term)
    sandbox = Sandbox(root, endpoints)
    started_sandbox = False
    stack = _Standalone(root, home, port, endpoints)
    rc = 1
    try:
        started_sandbox = not sandbox.healthy()
        _say(f"starting the sandbox (demo seed) on ports {port_base + 1}-{port_base + 7}"
             if started_sandbox else "sandbox already running: resetting it to the demo seed")
        _with_progress("sandbox", lambda: sandbox.up(seed="demo"))
        use_cases = [u for u in existing_use_case_dags(root) if not only or u[0] in only]
        env, api = stack.start(once, [d for d, _ in use_cases])
        runs, states = _run_stages(api, use_cases, endpoints)
        # Interactive: from now on every m3sh DAG runs on its schedule. --once: only the DAGs it
        # triggered were ever unpaused, so no catch-up crowds the executor and the result is deterministic.
        if not once:
            for dag_id in sorted(api.dag_ids()):
                api.unpause(dag_id)
        _say(f"unpaused: {', '.join(sorted(runs)) if once else 'every m3sh DAG (on their schedules now)'}")
        ok = _report(api, runs, states, endpoints)
        if once:
            _say(f"demo {'succeeded' if ok else 'FAILED'} in {time.monotonic() - t_start:.0f}s; stopping")
            return 0 if ok else 1
        rc = stack.wait_exit(guide=_guide(env, sandbox.dir))
    except (KeyboardInterrupt, _Stop):
        _say("stopping ...")
        rc = 0 if not once else 130
    except (AirflowEnvError, SandboxError) as exc:
        _say(f"failed: {exc}")
        rc = 1
    finally:
        if stack.proc is not None:
            pgid, child = stack.proc.pid, stack.proc
            _with_progress("stopping Airflow", lambda: _stop_group(pgid, child))
        (home / PID_FILE).unlink(missing_ok=True)
        if started_sandbox:
            sandbox.down(quiet=True)
            _say("sandbox stopped")
        signal.signal(signal.SIGTERM, previous_handler)
    return rc
