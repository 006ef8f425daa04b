"""Defaults every m3sh DAG shares: owner, retries with exponential backoff, alert callbacks, tags."""

from __future__ import annotations

import datetime as dt
from typing import Any

from m3sh.config import M3shConfig

DEFAULT_START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def default_args(cfg: M3shConfig) -> dict[str, Any]:
    from m3sh.notifiers.alerts import failure_callbacks, retry_callbacks

    args: dict[str, Any] = {
        "owner": cfg.owner,
        "retries": 3,
        "retry_delay": dt.timedelta(seconds=20),
        # Airflow 3: a float multiplier; 20s, 40s, 80s ... capped below.
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": dt.timedelta(minutes=10),
        "on_failure_callback": failure_callbacks(cfg),
    }
    retry = retry_callbacks(cfg)
    if retry:
        args["on_retry_callback"] = retry
    return args


def dag_tags(*extra: str) -> list[str]:
    return ["m3sh", *extra]
