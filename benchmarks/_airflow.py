"""A live ``airflow standalone`` for benchmarks that measure through Airflow itself.

Same environment as ``m3sh demo`` and the e2e tests (:class:`m3sh.airflow_env.AirflowEnv`: this
repository's ``dags/`` and ``plugins/``, the sandbox's connections, SQLite + LocalExecutor), on a
port next to the benchmark's sandbox, with a fresh metadata DB. The schedule of every DAG starts
in a year, so the only runs are the ones the benchmark causes (manual or asset-triggered).

``M3SH_BENCH_AIRFLOW_HOME`` names the Airflow home to use (wiped first, kept afterwards for its
logs); by default a temporary folder is used and removed at the end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from m3sh.airflow_env import STACK_PORT_OFFSETS
from m3sh.sandbox.runner import free_port_base

if TYPE_CHECKING:
    from m3sh.airflow_env import StandaloneStack
    from m3sh.sandbox.runner import Sandbox

REPO = Path(__file__).resolve().parents[1]
HOME_ENV = "M3SH_BENCH_AIRFLOW_HOME"
STARTUP_TIMEOUT_S = 600.0


def free_airflow_port(start: int, stop: int = 65_000, step: int = 10) -> int:
    """The first api-server port from ``start`` whose log-server ports are free as well."""
    return free_port_base((), start=start, stop=stop, step=step, extra_offsets=STACK_PORT_OFFSETS)


def _progress(msg: str) -> None:
    print(f"[airflow] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def standalone(box: Sandbox, base_config: Path, wait_dags: list[str],
               extra: dict[str, str] | None = None) -> Iterator[StandaloneStack]:
    """``airflow standalone`` against ``box`` with tasks reading ``base_config``; stopped on exit.

    ``extra`` adds Airflow settings (``AIRFLOW__...`` variables) on top of the shared environment.
    """
    from m3sh.airflow_env import AirflowEnv, launch_standalone, write_task_config

    given = os.environ.get(HOME_ENV)
    home = Path(given) if given else Path(tempfile.mkdtemp(prefix="m3sh-bench-airflow-"))
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    port = free_airflow_port(box.endpoints.port_base + 80)
    cfg = write_task_config(home, base_config, start_date=dt.datetime.now(dt.UTC).date() + dt.timedelta(days=365),
                            ui_base_url=f"http://localhost:{port}")
    env = AirflowEnv(root=REPO, home=home, port=port, sandbox=box.endpoints, config_path=cfg, extra=extra or {})
    _progress(f"starting airflow standalone on port {port} (AIRFLOW_HOME={home})")
    # A fresh SQLite metadata DB is migrated first: minutes when other work shares the cores.
    stack = launch_standalone(env, wait_dags, progress=_progress, healthy_timeout_s=STARTUP_TIMEOUT_S)
    try:
        yield stack
    finally:
        stack.stop()
        if not given:
            shutil.rmtree(home, ignore_errors=True)
