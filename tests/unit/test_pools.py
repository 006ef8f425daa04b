"""Airflow pools from the config: the usage ingest pool (the fallback when workers cannot share the
m3ter limiter through Redis) and the NetSuite per-account pools, as the DAGs use them and
``m3sh pools sync`` creates them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from m3sh.config import DEFAULT_CONFIG_PATH, load_config
from m3sh.dagkit.pools import INGEST_POOL_DESCRIPTION, NETSUITE_POOL_DESCRIPTION, required_pools
from m3sh.dagkit.usage_ingest import build_usage_ingest_dag


def _config_with_ingest_pool(tmp_path: Path, slots: int | None = None) -> Path:
    raw = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    raw.setdefault("m3ter", {})["ingest_pool"] = "m3ter_ingest"
    if slots is not None:
        raw["m3ter"]["ingest_pool_slots"] = slots
    path = tmp_path / "m3sh.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_ingest_tasks_run_in_the_configured_pool(tmp_path: Path) -> None:
    cfg = load_config(_config_with_ingest_pool(tmp_path))
    assert build_usage_ingest_dag(cfg).get_task("ingest_files").pool == "m3ter_ingest"
    pools = required_pools(cfg)
    assert pools["m3ter_ingest"] == (1, INGEST_POOL_DESCRIPTION)  # one slot by default: one sender at a time
    assert {desc for _, desc in pools.values()} >= {NETSUITE_POOL_DESCRIPTION}


def test_without_an_ingest_pool_the_tasks_use_the_default_pool() -> None:
    cfg = load_config(DEFAULT_CONFIG_PATH)
    assert cfg.m3ter.ingest_pool is None
    assert build_usage_ingest_dag(cfg).get_task("ingest_files").pool == "default_pool"
    assert INGEST_POOL_DESCRIPTION not in {desc for _, desc in required_pools(cfg).values()}


def test_pools_sync_dry_run_lists_the_ingest_pool(tmp_path: Path) -> None:
    path = _config_with_ingest_pool(tmp_path, slots=3)
    out = subprocess.run([sys.executable, "-m", "m3sh.cli", "pools", "sync", "--dry-run", "--config", str(path)],
                         capture_output=True, text=True, check=False, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"pool m3ter_ingest: 3 slot(s) ({INGEST_POOL_DESCRIPTION})" in out.stdout
