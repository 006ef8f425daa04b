"""``m3sh demo --once`` end to end: sandbox + ``airflow standalone`` + one run of each use case.

This is the README's first command, run the way CI can run it: on non-default ports (sandbox
``M3SH_SANDBOX_PORT_BASE``, Airflow ``--port``) and in a throw-away root whose ``dags/`` and
``plugins/`` link to this checkout, so a developer's own ``.airflow``/``.sandbox`` stay untouched.
The demo exits 0 only if every triggered run succeeded with no failed task.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from m3sh.config import load_config
from m3sh.dagkit.pools import required_pools

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PORT_BASE = int(os.environ.get("M3SH_DEMO_TEST_PORT_BASE", "19800"))
AIRFLOW_PORT = PORT_BASE + 80


@pytest.fixture
def demo_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="af-demo-e2e-", dir="/tmp"))
    (root / "dags").symlink_to(REPO / "dags")
    (root / "plugins").symlink_to(REPO / "plugins")
    yield root
    # A demo cut short (pytest-timeout, a failed assertion mid-way) must not leave its sandbox or
    # Airflow running on the fixed demo ports for the next session.
    _stop_leftovers(root)
    shutil.rmtree(root, ignore_errors=True)


def _stop_leftovers(root: Path) -> None:
    import contextlib
    import json
    import signal

    pid_file = root / ".airflow" / "m3sh-demo.json"
    try:
        pgid = int(json.loads(pid_file.read_text()).get("standalone_pgid") or 0)
    except (OSError, ValueError):
        pgid = 0
    if pgid > 1:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    if (root / ".sandbox").exists():
        subprocess.run([str(Path(sys.executable).parent / "m3sh"), "sandbox", "down", "--root", str(root)],
                       capture_output=True, text=True, timeout=120, check=False)


def _run_demo(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "M3SH_"))}
    env.update({"M3SH_SANDBOX_PORT_BASE": str(PORT_BASE), "PATH": f"{bin_dir}:{env.get('PATH', '')}"})
    return subprocess.run([str(bin_dir / "m3sh"), "demo", "--root", str(root), "--port", str(AIRFLOW_PORT),
                           "--once", *extra], env=env, capture_output=True, text=True, timeout=1200, check=False)


# Two whole demos (sandbox, Airflow start-up, every use case): 5-10 min on an idle 2-core machine,
# over 10 under load; the bounds only catch a hang.
@pytest.mark.timeout(2700)
def test_demo_once_runs_every_use_case_to_success_stops_everything_and_runs_again(demo_root: Path) -> None:
    proc = _run_demo(demo_root)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    # every use-case DAG whose file exists was triggered and succeeded
    from m3sh.airflow_env import existing_use_case_dags

    dag_ids = [d for d, _ in existing_use_case_dags(REPO)]
    assert {"m3sh_crm_sync", "m3sh_usage_ingest"} <= set(dag_ids)
    for dag_id in dag_ids:
        assert re.search(rf"\s{dag_id}\s+success\s+run manual__", out), f"{dag_id} not successful:\n{out[-4000:]}"
    # results landed in the m3ter emulator: accounts from the CRMs, measurements from the usage files
    m = re.search(r"m3ter sandbox: (\d+) accounts, (\d+) distinct measurements", out)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, out[-3000:]
    assert "login admin / " in out and "demo succeeded" in out
    # The NetSuite pools the config names were created before the runs (Airflow never schedules a
    # task whose pool is missing), and the deliveries running in them landed invoices in both accounts.
    for pool in required_pools(load_config(REPO / "include" / "m3sh.yaml")):
        assert re.search(rf"pool {pool}: \d+ slot\(s\) \(created\)", out), out[-3000:]
    # m3ter's notifications point at the demo Airflow's receiver (what m3sh preflight checks)
    assert re.search(r"m3ter notifications: [1-9]\d* rule\(s\) -> http://127\.0\.0\.1:\d+/m3sh/webhooks/m3ter "
                     r"\(webhook created\)", out), out[-3000:]
    bills = re.search(r"m3ter sandbox bill run: (\d+) bill\(s\)", out)
    assert bills and int(bills.group(1)) > 0, out[-3000:]
    ns = re.search(r"netsuite sandbox: invoices per account \((.*)\)", out)
    assert ns and all(int(n) > 0 for n in re.findall(r": (\d+)", ns.group(1))), out[-3000:]
    # everything it started is stopped: pid file gone, sandbox state cleared, standalone exited cleanly
    assert not (demo_root / ".airflow" / "m3sh-demo.json").exists()
    assert not (demo_root / ".sandbox" / "state.json").exists()

    # Running it again works, even after a demo that was killed hard left a stale pid file behind
    # (just the CRM sync this time: the second start, not the use cases, is what is under test here).
    (demo_root / ".airflow" / "m3sh-demo.json").write_text('{"standalone_pgid": 999999}')
    again = _run_demo(demo_root, "--only", "m3sh_crm_sync")
    out2 = again.stdout + again.stderr
    assert again.returncode == 0, out2[-4000:]
    assert re.search(r"\sm3sh_crm_sync\s+success\s", out2)
    assert "triggered m3sh_usage_ingest" not in out2 and "unpaused: m3sh_crm_sync\n" in out2, out2[-3000:]
    # the sandbox was reset to the demo seed (no usage yet), so the sync re-creates the same accounts
    m2 = re.search(r"m3ter sandbox: (\d+) accounts, (\d+) distinct measurements", out2)
    assert m2 and m2.groups() == (m.group(1), "0"), (m.groups(), out2[-2000:])
    assert re.search(r"pool \S+: \d+ slot\(s\) \(unchanged\)", out2), out2[-3000:]
