"""Unit tests of ``m3sh.airflow_env`` (fast; no processes): the settings every local Airflow gets."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest
import yaml

from m3sh.airflow_env import AirflowApi, AirflowEnv, existing_use_case_dags, write_task_config
from m3sh.config import load_config
from m3sh.sandbox.runner import SandboxEndpoints

REPO = Path(__file__).resolve().parents[2]


def test_env_points_every_component_at_one_home_port_and_secret(tmp_path: Path) -> None:
    env = AirflowEnv(root=REPO, home=tmp_path / "home", port=19999, sandbox=SandboxEndpoints(port_base=19950),
                     config_path=tmp_path / "m3sh.yaml")
    e = env.env({"PATH": "/usr/bin", "AIRFLOW__CORE__EXECUTOR": "KubernetesExecutor",
                 "AIRFLOW_CONN_STALE": "x", "AIRFLOW_CONFIG": "/elsewhere.cfg"})
    assert e["AIRFLOW_HOME"] == str(tmp_path / "home")
    assert e["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO / "dags")
    assert e["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"  # the shell's setting does not leak in
    assert "AIRFLOW_CONN_STALE" not in e and "AIRFLOW_CONFIG" not in e
    # the Execution API URL follows the port (else every task fails with "connection refused")
    assert e["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:19999/execution/"
    assert e["AIRFLOW__API__PORT"] == "19999"
    assert {e["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"], e["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"]} == {
        "20002", "20003"}
    assert e["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False" and e["AIRFLOW__CORE__TEST_CONNECTION"] == "Enabled"
    assert json.loads(e["AIRFLOW_CONN_M3TER_DEFAULT"])["host"] == "http://127.0.0.1:19951"
    assert e["M3SH_CONFIG"] == str(tmp_path / "m3sh.yaml")
    assert e["PATH"].split(":")[0].endswith("bin")


def test_default_port_keeps_airflows_default_log_ports(tmp_path: Path) -> None:
    e = AirflowEnv(root=REPO, home=tmp_path).env({})
    assert e["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == "8793"
    assert e["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] == "8794"


def test_secrets_and_login_are_created_once_and_reused(tmp_path: Path) -> None:
    first = AirflowEnv(root=REPO, home=tmp_path)
    second = AirflowEnv(root=REPO, home=tmp_path)
    assert first.secrets == second.secrets and first.password == second.password
    assert len(first.secrets["jwt_secret"]) >= 32
    assert json.loads(first.passwords_file.read_text()) == {"admin": first.password}
    assert oct(first.passwords_file.stat().st_mode)[-3:] == "600"
    e = first.env({})
    assert e["AIRFLOW__API_AUTH__JWT_SECRET"] == first.secrets["jwt_secret"]
    assert e["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(first.passwords_file)
    fixed = AirflowEnv(root=REPO, home=tmp_path, password="s3cret")
    assert json.loads(fixed.passwords_file.read_text()) == {"admin": "s3cret"}


def test_task_config_moves_the_schedule_and_stays_valid(tmp_path: Path) -> None:
    start = dt.date(2030, 1, 2)
    path = write_task_config(tmp_path, start_date=start, ui_base_url="http://localhost:19999",
                             dag_defaults={"retries": 1})
    cfg = load_config(path)
    assert cfg.dag_defaults.start_date == start and cfg.dag_defaults.retries == 1
    assert cfg.alerting.ui_base_url == "http://localhost:19999"


def test_task_config_rejects_an_invalid_base(tmp_path: Path) -> None:
    from m3sh.exceptions import ConfigError

    base = tmp_path / "bad.yaml"
    base.write_text(yaml.safe_dump({"version": 1, "dag_defaults": {"retries": -1}}))
    with pytest.raises(ConfigError):
        write_task_config(tmp_path, base)


def test_use_cases_follow_the_dag_files(tmp_path: Path) -> None:
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "m3sh_usage_ingest.py").write_text("")
    (tmp_path / "dags" / "m3sh_crm_sync.py").write_text("")
    assert existing_use_case_dags(tmp_path) == [("m3sh_crm_sync", {"full_resync": True}),
                                                ("m3sh_usage_ingest", {"scan_all": True})]


class _FakeApiServer(http.server.ThreadingHTTPServer):
    """Answers the two readiness paths like a healthy api-server and records every path asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.paths.append(self.path)
                health = {c: {"status": "healthy"} for c in ("metadatabase", "scheduler", "dag_processor")}
                body = json.dumps(health if self.path == "/api/v2/monitor/health" else {"status": "healthy"})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_healthy_means_the_execution_api_was_built_before_any_task_runs() -> None:
    server = _FakeApiServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        notes: list[str] = []
        AirflowApi(f"http://127.0.0.1:{server.server_port}", "admin", "pw", progress=notes.append).wait_healthy(10)
    finally:
        server.shutdown()
        server.server_close()
    assert server.paths == ["/api/v2/monitor/health", "/execution/health"]
    assert any(n.startswith("Execution API ready") for n in notes)


def test_a_failed_execution_api_warm_up_is_reported_not_raised() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notes: list[str] = []
    AirflowApi(f"http://127.0.0.1:{port}", "admin", "pw", progress=notes.append).warm_execution_api(timeout_s=2)
    assert notes == ["Execution API warm-up failed (ConnectionError); the first task may retry"]
