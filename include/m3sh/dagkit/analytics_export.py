"""``m3sh_analytics_export``: one day of m3ter data -> Parquet tables in S3 for BI tools.

Daily, with real data intervals and catch-up, so a backfill exports any past day and a re-run of a
day replaces it. Graph: ``plan_day`` (the day and the tables) -> ``export_table`` (mapped, one per
table: extract, write to a staging prefix) -> ``commit_day`` (copy every staged file over its
partition, manifest last, then the day marker; staging deleted). A failed table fails the run and
leaves the committed partitions of that day as they were. Layout, schemas and the reader protocol:
docs/analytics.md. The tasks are :mod:`m3sh.operators.analytics`' operators; this module only wires them.
"""

from __future__ import annotations

import datetime as dt
import logging

from airflow.sdk import DAG, Param

from m3sh.compat import CronDataIntervalTimetable
from m3sh.config import ANALYTICS_TABLES, M3shConfig, get_config
from m3sh.dagkit.defaults import FROM_PARAM, common_dag_args
from m3sh.operators.analytics import (
    M3terAnalyticsCommitOperator,
    M3terAnalyticsPlanOperator,
    M3terAnalyticsTableOperator,
)

log = logging.getLogger(__name__)
DAG_ID = "m3sh_analytics_export"


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
        planned = M3terAnalyticsPlanOperator(task_id="plan_day", config=cfg,
                                             tables=FROM_PARAM.format("tables")).output
        # A mapped task's arguments are serialized with the DAG: the config goes in its JSON form.
        staged = M3terAnalyticsTableOperator.partial(
            task_id="export_table", config=cfg.model_dump(mode="json", exclude_defaults=True),
            m3ter_conn_id=cfg.m3ter.conn_id, preview=FROM_PARAM.format("dry_run"),
            map_index_template="{{ task.item['table'] }}",
        ).expand(item=planned).output
        M3terAnalyticsCommitOperator(task_id="commit_day", planned=planned, staged=staged, config=cfg,
                                     preview=FROM_PARAM.format("dry_run"), trigger_rule="all_done")
    return dag


def enabled_dag() -> DAG | None:
    """The DAG when ``analytics.enabled`` (the default), else None (the DAG file then defines none)."""
    cfg = get_config()
    if not cfg.analytics.enabled:
        log.info("analytics export is disabled in m3sh.yaml (analytics.enabled: false): no DAG")
        return None
    return build_analytics_export_dag(cfg)
