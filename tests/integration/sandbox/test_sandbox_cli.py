"""``m3sh sandbox up|status|reset|down`` as a user runs them, and the ``.sandbox/env`` they write."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.sandbox
PORT_BASE = 21250
M3SH = [sys.executable, "-m", "m3sh.cli"]


def _m3sh(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "M3SH_SANDBOX_EMULATORS"}
    return subprocess.run([*M3SH, "sandbox", *args, "--root", str(root), "--port-base", str(PORT_BASE)],
                          capture_output=True, text=True, timeout=120, env=env, check=False)


def _env_file(root: Path) -> dict[str, dict]:
    conns = {}
    for line in (root / ".sandbox" / "env").read_text().splitlines():
        assert line.startswith("export ")
        name, _, value = line.removeprefix("export ").partition("=")
        if name.startswith("AIRFLOW_CONN_"):
            conns[name] = json.loads(shlex.split(value)[0])
    return conns


def test_up_status_reset_down(tmp_path: Path) -> None:
    up = _m3sh(tmp_path, "up", "--detach", "--seed", "demo")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "sandbox healthy in" in up.stdout
        conns = _env_file(tmp_path)
        for name in ("AIRFLOW_CONN_M3TER_DEFAULT", "AIRFLOW_CONN_HUBSPOT_DEFAULT", "AIRFLOW_CONN_NETSUITE_DEFAULT",
                     "AIRFLOW_CONN_NETSUITE_EU", "AIRFLOW_CONN_SALESFORCE_DEFAULT", "AIRFLOW_CONN_AWS_DEFAULT"):
            assert {"conn_type"} <= set(conns[name]), name
        m3ter = conns["AIRFLOW_CONN_M3TER_DEFAULT"]
        assert m3ter["conn_type"] == "m3ter" and m3ter["extra"]["org_id"] and m3ter["login"] and m3ter["password"]
        assert conns["AIRFLOW_CONN_NETSUITE_EU"]["extra"]["account_id"] == "1234567_EU"

        status = _m3sh(tmp_path, "status")
        assert status.returncode == 0 and all(json.loads(status.stdout).values())
        state = requests.get(f"http://127.0.0.1:{PORT_BASE + 1}/_sandbox/state", timeout=10).json()
        assert len(state["entities"]["accounts"]) == 24

        assert _m3sh(tmp_path, "reset", "--seed", "empty").returncode == 0
        state = requests.get(f"http://127.0.0.1:{PORT_BASE + 1}/_sandbox/state", timeout=10).json()
        assert not state["entities"].get("accounts")
    finally:
        down = _m3sh(tmp_path, "down")
    assert down.returncode == 0
    assert _m3sh(tmp_path, "status").returncode == 1
