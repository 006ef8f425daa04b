"""``m3sh_analytics_export``: one day of m3ter data -> Parquet tables in S3 for BI tools.

Daily, with real data intervals and catch-up, so a backfill exports any past day and a re-run of a
day replaces it. Graph: ``plan_day`` (the day and the tables) -> ``export_table`` (mapped, one per
table: extract, write to a staging prefix) -> ``commit_day`` (copy every staged file over its
partition, manifest last, then the day marker; staging deleted). A failed table fails the run and
leaves the committed partitions of that day as they were. Layout, schemas and the reader protocol:
docs/analytics.md.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import DAG, Param, task

from m3sh.compat import CronDataIntervalTimetable
from m3sh.config import ANALYTICS_TABLES, M3shConfig, get_config
from m3sh.dagkit.defaults import common_dag_args
from m3sh.dagkit.errors import RunFailed

log = logging.getLogger(__name__)
DAG_ID = "m3sh_analytics_export"


def _day(start: dt.datetime | None, end: dt.datetime | None) -> dt.date:
    """The UTC day a data interval covers (manual runs without an interval: yesterday)."""
    if start is None:
        return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    start = start.astimezone(dt.UTC)
    if end is not None and end.astimezone(dt.UTC) - start != dt.timedelta(days=1):
        raise RunFailed(f"data interval {start}..{end} is not one UTC day", records=[str(start)])
    return start.date()


def build_analytics_export_dag(cfg: M3shConfig | None = None) -> DAG:
    cfg = cfg or get_config()
    first = cfg.analytics.start_date
    with DAG(
        dag_id=DAG_ID,
        description="m3ter usage, bills, balances, plans + CRM/ERP ids -> daily Parquet partitions in S3",
        schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
        **common_dag_args(cfg, "analytics", "reporting", catchup=cfg.analytics.catchup,
                          start=dt.datetime.combine(first, dt.time(0), dt.UTC) if first else None,
                          max_active_runs=cfg.analytics.max_active_runs),
        params={
            "dry_run": Param(False, type="boolean", description="Extract and count, write nothing"),
            "tables": Param([], type="array", description=f"Only these tables (empty: analytics.tables); "
                                                          f"known: {', '.join(ANALYTICS_TABLES)}"),
        },
        doc_md=__doc__,
    ) as dag:

        @task
        def plan_day(params: dict[str, Any], data_interval_start: dt.datetime | None = None,
                     data_interval_end: dt.datetime | None = None) -> list[dict[str, str]]:
            conf = get_config()
            day = _day(data_interval_start, data_interval_end)
            wanted = list(params.get("tables") or conf.analytics.tables)
            unknown = sorted(set(wanted) - set(ANALYTICS_TABLES))
            if unknown:
                raise RunFailed(f"unknown analytics table(s) {unknown}; known: {list(ANALYTICS_TABLES)}",
                                records=unknown)
            log.info("analytics export of %s (source %s): %s", day, conf.analytics.source, ", ".join(wanted))
            return [{"table": t, "date": day.isoformat()} for t in dict.fromkeys(wanted)]

        @task(map_index_template="{{ task.op_kwargs['item']['table'] }}")
        def export_table(item: dict[str, str], params: dict[str, Any], run_id: str) -> dict[str, Any]:
            from m3sh.analytics.export import stage_table
            from m3sh.hooks.m3ter import M3terHook

            conf = get_config()
            return stage_table(conf, M3terHook(conf.m3ter.conn_id), item["table"],
                               dt.date.fromisoformat(item["date"]), run_id, dry_run=bool(params.get("dry_run")))

        @task(trigger_rule="all_done")
        def commit_day(planned: list[dict[str, str]], staged: list[dict[str, Any]], params: dict[str, Any],
                       run_id: str) -> dict[str, Any]:
            from m3sh.analytics.export import commit_day as commit
            from m3sh.analytics.partition import PartitionStore
            from m3sh.analytics.reader import analytics_storage

            conf = get_config()
            if not planned:
                raise RunFailed("plan_day produced no tables (it failed or nothing was selected)", records=[])
            day = dt.date.fromisoformat(planned[0]["date"])
            done = [s for s in (staged or []) if s]
            missing = sorted({p["table"] for p in planned} - {s["table"] for s in done})
            if params.get("dry_run"):
                log.info("dry run for %s: %s", day, {s["table"]: s["rows"] for s in done})
                if missing:
                    raise RunFailed(f"table(s) failed: {missing}", records=missing)
                return {"date": day.isoformat(), "dry_run": True, "rows": {s["table"]: s["rows"] for s in done}}
            if missing:
                # Nothing of this run is committed: the day keeps its previous, complete partitions.
                PartitionStore(analytics_storage(conf)).discard_staging(day)
                raise RunFailed(f"analytics export of {day}: table(s) {missing} failed; no partition of this run "
                                "was committed (the previous export of the day stays in place)", records=missing)
            result = commit(conf, done, day, run_id, DAG_ID)
            log.info("analytics export of %s committed: %s", day, result["rows"])
            return result

        planned = plan_day()  # type: ignore[call-arg,misc]
        staged = export_table.partial().expand(item=planned)
        commit_day(planned, staged)  # type: ignore[call-arg,misc,arg-type]
    return dag


def enabled_dag() -> DAG | None:
    """The DAG when ``analytics.enabled`` (the default), else None (the DAG file then defines none)."""
    cfg = get_config()
    if not cfg.analytics.enabled:
        log.info("analytics export is disabled in m3sh.yaml (analytics.enabled: false): no DAG")
        return None
    return build_analytics_export_dag(cfg)
