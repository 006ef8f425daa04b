"""Fixtures for browser tests: a real ``airflow standalone`` on a test port with the sandbox
connections, ``<repo>/dags`` and ``<repo>/plugins``, the demo config and a known admin password,
and a headless Debian Chromium driven by Playwright.

Everything started here is stopped at the end (the standalone process group; the sandbox by its
own session fixture). The Airflow home is wiped first so each session starts from a fresh
metadata DB.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from m3sh.airflow_env import (
    AirflowEnv,
    StandaloneStack,
    launch_standalone,
    stop_standalone,
    write_task_config,
)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
ADMIN_PASSWORD = "e2e-Admin-Pa55"  # a throw-away test login
AirflowStack = StandaloneStack  # the name the e2e tests use


def start_standalone(home: Path, port: int, endpoints: Any) -> AirflowStack:
    """``airflow standalone`` with m3sh's environment; waits until healthy and the DAGs are parsed."""
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    # The schedule starts in a year: the only runs are the ones the test triggers.
    cfg = write_task_config(home, start_date=dt.datetime.now(dt.UTC).date() + dt.timedelta(days=365),
                            ui_base_url=f"http://localhost:{port}")
    env = AirflowEnv(root=REPO, home=home, port=port, sandbox=endpoints, config_path=cfg, password=ADMIN_PASSWORD)
    return launch_standalone(env, ["m3sh_crm_sync"], progress=lambda m: print(f"[e2e] {m}", flush=True))


@pytest.fixture(scope="module")
def airflow_stack(sandbox: Any) -> Iterator[AirflowStack]:
    base = Path(os.environ["M3SH_TEST_STACK_ROOT"])  # per xdist worker (tests/conftest.py)
    stack = start_standalone(base / "e2e-standalone", sandbox.endpoints.port_base + 80,
                             sandbox.endpoints)
    try:
        yield stack
    finally:
        stop_standalone(stack.proc)


@pytest.fixture(scope="session")
def chromium() -> str:
    from m3sh.browser import BrowserUnavailable, ensure_chromium, ensure_playwright

    try:
        ensure_playwright()
        return ensure_chromium()
    except BrowserUnavailable as exc:
        pytest.skip(f"browser test skipped: {exc}")


@pytest.fixture
def browser_page(chromium: str, tmp_path: Path) -> Iterator[Any]:
    """A Playwright page in headless Debian Chromium (never a downloaded browser)."""
    from playwright.sync_api import expect, sync_playwright

    from m3sh.browser import LAUNCH_ARGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.set_default_timeout(60_000)
        # expect() keeps its own 5 s default, which a busy 2-core machine overruns while the
        # React UI is still loading: every assertion waits on its condition, generously.
        expect.set_options(timeout=60_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    path = ARTIFACTS / request.node.name
    shutil.rmtree(path, ignore_errors=True)  # screenshots of an earlier run must not pass for this one's
    path.mkdir(parents=True)
    return path
