"""Defaults every m3sh DAG shares: owner, retries with exponential backoff, alert callbacks, tags."""

from __future__ import annotations

import datetime as dt
from typing import Any

from m3sh.compat import AIRFLOW_3_2_PLUS
from m3sh.config import M3shConfig

# A param rendered as JSON, which the m3sh operators read back as its value (lists, booleans).
FROM_PARAM = "{{{{ params.{} | tojson }}}}"


def start_date(cfg: M3shConfig) -> dt.datetime:
    return dt.datetime.combine(cfg.dag_defaults.start_date, dt.time(0), dt.UTC)


def default_args(cfg: M3shConfig) -> dict[str, Any]:
    from m3sh.notifiers.alerts import failure_callbacks, retry_callbacks, success_callbacks

    args: dict[str, Any] = {
        "owner": cfg.owner,
        "retries": cfg.dag_defaults.retries,
        "retry_delay": dt.timedelta(seconds=cfg.dag_defaults.retry_delay_s),
        # 20s, 40s, 80s ... capped below. Airflow >= 3.2 takes the multiplier (a float); 3.1 takes a bool,
        # whose True is the same doubling.
        "retry_exponential_backoff": 2.0 if AIRFLOW_3_2_PLUS else True,
        "max_retry_delay": dt.timedelta(seconds=cfg.dag_defaults.max_retry_delay_s),
        "on_failure_callback": failure_callbacks(cfg),
    }
    resolved = success_callbacks(cfg)
    if resolved:
        args["on_success_callback"] = resolved
    retry = retry_callbacks(cfg)
    if retry:
        args["on_retry_callback"] = retry
    return args


def dag_tags(*extra: str) -> list[str]:
    return ["m3sh", *extra]


def common_dag_args(cfg: M3shConfig, *tags: str, catchup: bool = False, start: dt.datetime | None = None,
                    max_active_runs: int = 1) -> dict[str, Any]:
    """What every m3sh DAG shares: start date, catch-up, one run at a time, retries and alerting
    (``default_args``) and the ``m3sh`` tag. Builders add id, schedule, params and docs."""
    return {
        "start_date": start or start_date(cfg),
        "catchup": catchup,
        "max_active_runs": max_active_runs,
        "default_args": default_args(cfg),
        "tags": dag_tags(*tags),
    }
