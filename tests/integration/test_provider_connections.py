"""Provider registration and the connection Test button, through the real ``airflow`` CLI.

``airflow connections test`` runs the same ``hook.test_connection()`` as the UI button, so a pass
here means the button works against the sandbox, and a clear failure with bad credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.sandbox
AIRFLOW = str(Path(sys.executable).parent / "airflow")


def _airflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AIRFLOW, *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "AIRFLOW__CORE__TEST_CONNECTION": "Enabled", **(env or {})})


def test_provider_is_registered_with_three_connection_types() -> None:
    out = _airflow("providers", "list", "-o", "json")
    assert out.returncode == 0, out.stderr[-500:]
    providers = {p["package_name"]: p for p in json.loads(out.stdout)}
    assert "m3sh" in providers
    hooks = _airflow("providers", "hooks", "-o", "json")
    by_type = {h["connection_type"]: h for h in json.loads(hooks.stdout)}
    assert by_type["m3ter"]["class"] == "m3sh.hooks.m3ter.M3terHook"
    assert by_type["hubspot"]["class"] == "m3sh.hooks.hubspot.HubSpotHook"
    assert by_type["netsuite"]["class"] == "m3sh.hooks.netsuite.NetSuiteHook"


@pytest.mark.parametrize("conn_id", ["m3ter_default", "hubspot_default", "netsuite_default", "netsuite_eu"])
def test_connection_test_succeeds_against_the_sandbox(sandbox: Any, conn_id: str) -> None:
    out = _airflow("connections", "test", conn_id)
    assert out.returncode == 0, out.stdout[-500:] + out.stderr[-500:]
    assert "Connection success!" in out.stdout


@pytest.mark.parametrize(("conn_id", "field"), [("m3ter_default", "password"), ("hubspot_default", "password"),
                                                 ("netsuite_default", "password")])
def test_bad_credentials_fail_clearly_without_leaking(sandbox: Any, conn_id: str, field: str) -> None:
    conn = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])
    wrong = "definitely-wrong-secret-123"
    conn[field] = wrong
    out = _airflow("connections", "test", conn_id, env={f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn)})
    text = out.stdout + out.stderr
    assert "Connection success!" not in text
    assert "failed" in text.lower() or "invalid" in text.lower() or "forbidden" in text.lower()
    assert wrong not in text
