"""Stack evolution by configuration only: each test edits a copy of the demo m3sh.yaml, validates it
with ``m3sh.config.load_config`` (what ``m3sh config validate`` runs), rebuilds the DAG from it (what
the DAG processor does on its next parse) and runs it against the sandbox. No code changes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

FAST_RETRIES = {"retries": 1, "retry_delay_s": 0.1, "max_retry_delay_s": 1}


class Stack:
    """The demo config as data; :meth:`apply` writes, validates and activates an edited copy."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: Any) -> None:
        from m3sh.config import DEFAULT_CONFIG_PATH

        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        self.sandbox = sandbox
        self.data: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
        self.data["dag_defaults"] = FAST_RETRIES
        self.version = 0

    def edit(self, change: Callable[[dict[str, Any]], None]) -> Any:
        data = copy.deepcopy(self.data)
        change(data)
        return self.apply(data)

    def apply(self, data: dict[str, Any]) -> Any:
        """Write the config to a new file (a fresh mtime for the config cache), validate, activate."""
        from m3sh.config import load_config

        self.version += 1
        path = self.tmp_path / f"m3sh-v{self.version}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        cfg = load_config(path)  # raises ConfigError with file:line on any mistake
        self.monkeypatch.setenv("M3SH_CONFIG", str(path))
        self.data = data
        return cfg

    def source(self, name: str) -> dict[str, Any]:
        return next(s for s in self.data["crm"]["sources"] if s["name"] == name)


@pytest.fixture
def stack(fresh_sandbox: Any, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    s = Stack(tmp_path, monkeypatch, fresh_sandbox)
    s.apply(s.data)
    return s


def request_count(sandbox: Any, name: str) -> int:
    return sum(int(n) for n in sandbox.stats(name)["counts"].values())


def crm_sync(**conf: Any) -> Any:
    from m3sh.dagkit.crm_sync import build_crm_sync_dag

    return build_crm_sync_dag().test(run_conf={"full_resync": True, **conf})
