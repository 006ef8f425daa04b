"""Test set-up shared by every suite.

AIRFLOW_HOME must point at a throw-away folder before anything imports airflow (settings are read
at import time), so it is set here at module import, before pytest collects test modules.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

# Under pytest-xdist (``make test`` runs two workers, a file per worker at a time) each worker is a
# separate session: its own Airflow home (SQLite metadata DB), sandbox ports and standalone homes.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_WORKER_INDEX = int(_WORKER[2:]) if _WORKER.startswith("gw") and _WORKER[2:].isdigit() else 0
if os.environ.get("M3SH_TEST_AIRFLOW_HOME"):
    _AIRFLOW_HOME = Path(os.environ["M3SH_TEST_AIRFLOW_HOME"]) / (_WORKER or "main")
    _AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
else:
    _AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix=f"m3sh-airflow-{_WORKER or 'main'}-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
# Where the e2e suites put their ``airflow standalone`` homes: one folder per worker, never shared.
# (Set, not defaulted: xdist workers inherit the controller's environment.) Removed at session end.
_STACK_ROOT = tempfile.mkdtemp(prefix=f"m3sh-stacks-{_WORKER or 'main'}-")
os.environ["M3SH_TEST_STACK_ROOT"] = _STACK_ROOT
# The spec guard (m3sh.sandbox.specguard): every emulator this session starts (its sandbox, the
# e2e stacks' and the demo's) judges m3ter and HubSpot traffic against the published documents in
# tests/specs and records it. The controller makes one folder per session; each process (controller
# or xdist worker) records into its own subfolder, so a test can be failed for what happened during it.
os.environ.setdefault("M3SH_SANDBOX_SPEC_CHECK", "1")
os.environ.setdefault("M3SH_SPEC_DIR", str(Path(__file__).resolve().parent / "specs"))
if not _WORKER:
    os.environ["M3SH_SPEC_COVERAGE_SESSION"] = tempfile.mkdtemp(prefix="m3sh-spec-coverage-")
_SPEC_SESSION_DIR = Path(os.environ["M3SH_SPEC_COVERAGE_SESSION"])
_SPEC_RECORD_DIR = _SPEC_SESSION_DIR / (_WORKER or "main")
_SPEC_RECORD_DIR.mkdir(parents=True, exist_ok=True)
os.environ["M3SH_SPEC_COVERAGE_DIR"] = str(_SPEC_RECORD_DIR)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parents[1] / "dags"))
os.environ.setdefault("AIRFLOW__CORE__TEST_CONNECTION", "Enabled")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")

# `pip install -e .` leaves include/m3sh.egg-info beside the package, on sys.path: a second m3sh
# distribution whose airflow.plugins entry point makes Airflow register the m3sh plugin twice (and report
# "already registered" as a plugin import error). The editable install's own metadata is in site-packages.
for _stale in (Path(__file__).resolve().parents[1] / "include").glob("*.egg-info"):
    shutil.rmtree(_stale, ignore_errors=True)

import pytest  # noqa: E402

from m3sh.sandbox.runner import Sandbox, SandboxEndpoints  # noqa: E402
from m3sh.testing import environ  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# Each xdist worker's sandbox (and the standalones at its base + 80) 500 ports above the previous one.
TEST_PORT_BASE = int(os.environ.get("M3SH_TEST_PORT_BASE", "18710")) + 500 * _WORKER_INDEX


class SandboxHandle:
    """What tests get: the running sandbox's URLs, admin helpers (:class:`Sandbox`'s own, which users of
    ``m3sh.testing`` have too) and its Salesforce host map."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.endpoints = sandbox.endpoints
        self.url, self.admin, self.state, self.stats = sandbox.url, sandbox.admin, sandbox.state, sandbox.stats
        self.requests_to, self.faults = sandbox.requests_to, sandbox.faults

    def sf_hosts(self) -> dict[str, str]:
        """The Salesforce connection's host map (login host and instance, each on its own port)."""
        hosts: dict[str, str] = self.endpoints.connections()["salesforce_default"]["extra"]["sandbox_hosts"]
        return hosts

    def reset(self, seed: str = "demo", limits: bool = True) -> None:
        self.sandbox.reset(seed, limits=limits)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxHandle]:
    """The sandbox emulators, started once per test session on a test-only port range."""
    from m3sh.airflow_env import STACK_PORT_OFFSETS
    from m3sh.sandbox.runner import free_port_base

    root = tmp_path_factory.mktemp("sandbox")
    # Never adopt a sandbox that answers on the base already (another test session, e.g. CI beside
    # a developer's run, or a demo): `up` would reset it under that session's feet. The e2e stacks
    # run at base + 80 (with their log servers).
    base = free_port_base(start=TEST_PORT_BASE, stop=TEST_PORT_BASE + 450, step=50,
                          extra_offsets=[80 + off for off in STACK_PORT_OFFSETS])
    sb = Sandbox(root, SandboxEndpoints(port_base=base))
    sb.up(seed="demo")
    try:
        with environ(sb.endpoints.env()):
            yield SandboxHandle(sb)
    finally:
        sb.down(quiet=True)


@pytest.fixture
def fresh_sandbox(sandbox: SandboxHandle) -> SandboxHandle:
    """The sandbox reset to the demo seed, faults off, stats cleared, documented limits on."""
    sandbox.reset("demo")
    return sandbox


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB in the test AIRFLOW_HOME (needed by ``dag.test()``)."""
    import subprocess
    import sys

    marker = _AIRFLOW_HOME / ".migrated"
    if not marker.exists():
        subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                       env={**os.environ}, capture_output=True)
        marker.touch()
    return _AIRFLOW_HOME


def run_dag(dag: object, **conf: object) -> object:
    """Run a whole DAG with ``dag.test()`` and return the DagRun; conf becomes the run's params."""
    return dag.test(run_conf=conf or None)  # type: ignore[attr-defined]


@pytest.fixture
def no_m3sh_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[mock.Mock]:
    """A user's Airflow without m3sh.yaml: any attempt to find, read or load it fails the test.

    ``M3SH_CONFIG`` names a missing file (for other processes) and the config loaders are replaced
    by a guard. ``dag.test()`` re-parses its bundle's folder; a user's holds their DAGs, not m3sh's
    own (which read m3sh.yaml at import), so the DAG folder is an empty one of the user's.
    """
    import airflow.settings

    import m3sh.config

    monkeypatch.setenv("M3SH_CONFIG", str(tmp_path / "missing" / "m3sh.yaml"))
    (tmp_path / "user-dags").mkdir()
    monkeypatch.setattr(airflow.settings, "DAGS_FOLDER", str(tmp_path / "user-dags"))
    guard = mock.Mock(side_effect=AssertionError("m3sh.yaml must not be read"))
    for name in ("_config_path", "get_config", "load_config", "read_config_text"):
        monkeypatch.setattr(m3sh.config, name, guard)
    yield guard
    assert guard.call_count == 0


FAST_RETRIES = "\ndag_defaults: {retries: 1, retry_delay_s: 0.1, max_retry_delay_s: 1}\n"


@pytest.fixture
def m3sh_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Factory: write a copy of the demo config (with string replacements and extra YAML appended;
    fast retries by default), point ``M3SH_CONFIG`` at it and return its path."""
    from m3sh.config import DEFAULT_CONFIG_PATH

    def make(replace: dict[str, str] | None = None, extra: str = FAST_RETRIES) -> Path:
        text = DEFAULT_CONFIG_PATH.read_text()
        for old, new in (replace or {}).items():
            assert old in text, f"demo config has no {old!r}"
            text = text.replace(old, new)
        path = tmp_path / "m3sh.yaml"
        path.write_text(text + extra)
        monkeypatch.setenv("M3SH_CONFIG", str(path))
        return path

    return make


def _record_offsets() -> dict[Path, int]:
    return {p: p.stat().st_size for p in _SPEC_RECORD_DIR.glob("*.jsonl")}


@pytest.fixture(autouse=True)
def _spec_guard_verdicts(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test during which the spec guard recorded a violation, even if the test caught the
    error the guard answered with (a request m3sh should not send, or an emulator answer that breaks
    the published spec). Also notes which records each test made (tests run one at a time per
    process), so the coverage can tell m3sh's requests from the emulator tests' own."""
    before = _record_offsets()
    yield
    after = _record_offsets()
    spans = {p.name: [before.get(p, 0), size] for p, size in after.items() if size > before.get(p, 0)}
    if spans:
        with (_SPEC_RECORD_DIR / "tests.idx").open("a") as idx:
            idx.write(json.dumps({"test": request.node.nodeid, "spans": spans}) + "\n")
    new: list[str] = []
    for name, (start, _) in spans.items():
        if name.startswith("violations-"):
            with (_SPEC_RECORD_DIR / name).open("rb") as f:
                f.seek(start)
                new += [line.decode() for line in f.read().splitlines() if line.strip()]
    if new:
        from tests.spec_coverage import describe_violation

        shown = "\n".join(describe_violation(line) for line in new[:10])
        pytest.fail(f"the spec guard recorded {len(new)} violation(s) of the published OpenAPI documents "
                    f"during this test:\n{shown}", pytrace=False)


_SPEC_REPORT: list[str] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove this session's standalone homes (their logs matter only while a test is failing); in
    the controller, sum up the spec guard's records and fail the session on any violation."""
    import shutil

    shutil.rmtree(_STACK_ROOT, ignore_errors=True)
    if hasattr(session.config, "workerinput"):
        return
    from tests.spec_coverage import summarise

    report = summarise(_SPEC_SESSION_DIR)
    _SPEC_REPORT[:] = report.lines()
    if report.violations and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if not report.violations:
        shutil.rmtree(_SPEC_SESSION_DIR, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SPEC_REPORT:
        terminalreporter.section("spec coverage (m3sh.sandbox.specguard)")
        for line in _SPEC_REPORT:
            terminalreporter.write_line(line)
