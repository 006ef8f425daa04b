"""One day of m3ter data -> Parquet tables in S3, as operators for users' own DAGs.

* :class:`M3terAnalyticsPlanOperator` names the day (the run's data interval) and the tables;
* :class:`M3terAnalyticsTableOperator` (mapped over the plan) extracts one table and stages it;
* :class:`M3terAnalyticsCommitOperator` swaps every staged table into its partition (manifest last,
  then the day marker), or, when a table failed, discards the run's staging so the day keeps its
  previous complete export. Give it ``trigger_rule="all_done"``.

Each is usable without ``m3sh.yaml``: inline ``bucket``/``prefix``/``aws_conn_id``/``source``, or
``config=`` (an :class:`~m3sh.config.M3shConfig` or its JSON form). The logic is
:mod:`m3sh.analytics.run`'s; ``m3sh_analytics_export`` wires these same operators. Templated
``tables`` and ``preview`` (a dry run) accept their value or its JSON text (``"{{ params.tables | tojson }}"``).
Layout, schemas and the reader protocol: docs/analytics.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator

from m3sh.compat import AirflowFailException
from m3sh.config import ANALYTICS_TABLES, AnalyticsConfig, CrmSource, CrmSyncConfig, M3shConfig, StorageConfig
from m3sh.operators._common import ConfigArg, M3terLazyOperator, flag, models, names, native, settings

if TYPE_CHECKING:
    from airflow.sdk import Context

Source = Literal["api", "data_export"]


class _AnalyticsSettings:
    """Where the tables go: ``config`` (object or JSON form), or the inline arguments."""

    task_id: str

    def _init_settings(self, config: ConfigArg, *, bucket: str | None, prefix: str, aws_conn_id: str,
                       source: Source, crm_sources: Sequence[CrmSource | Mapping[str, Any]] | None) -> None:
        if config is not None and (bucket is not None or crm_sources is not None):
            raise ValueError(f"{self.task_id}: give config=... or bucket=... (and crm_sources), not both")
        if config is None and not bucket:
            raise ValueError(f"{self.task_id}: give bucket=... (where the Parquet tables go) or config=...")

        def inline() -> M3shConfig:
            return M3shConfig(storage=StorageConfig(conn_id=aws_conn_id, bucket=str(bucket)),
                              analytics=AnalyticsConfig(conn_id=aws_conn_id, bucket=bucket, prefix=prefix,
                                                        source=source),
                              crm=CrmSyncConfig(sources=models(crm_sources)))

        self.settings = settings(self.task_id, config, inline)


class M3terAnalyticsPlanOperator(BaseOperator):
    """The day this run exports (its data interval, which must be one UTC day; yesterday without
    one) and the tables, one item each for :class:`M3terAnalyticsTableOperator`.

    :param tables: only these tables (empty: ``config.analytics.tables``, else every table). (templated)
    :param config: an :class:`~m3sh.config.M3shConfig` (or its JSON form) giving the default tables.

    Returns ``[{"table", "date"}]``.
    """

    template_fields: Sequence[str] = ("tables",)
    ui_color = "#e0f4ff"

    def __init__(self, *, tables: Sequence[str] | str | None = None, config: ConfigArg = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tables = tables
        self.settings = settings(self.task_id, config, M3shConfig) if config is not None else None

    def execute(self, context: Context) -> list[dict[str, str]]:
        from m3sh.analytics.run import export_day, plan_day, unknown_tables
        from m3sh.dagkit.errors import RunFailed

        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        try:
            day = export_day(start, end)
        except ValueError as exc:
            raise RunFailed(str(exc), records=[str(start)]) from None
        default = self.settings.analytics.tables if self.settings is not None else list(ANALYTICS_TABLES)
        wanted = names(self.task_id, "tables", self.tables) or list(default)
        unknown = unknown_tables(wanted)
        if unknown:
            raise RunFailed(f"unknown analytics table(s) {unknown}; known: {list(ANALYTICS_TABLES)}", records=unknown)
        source = self.settings.analytics.source if self.settings is not None else "api"
        self.log.info("analytics export of %s (source %s): %s", day, source, ", ".join(wanted))
        return plan_day(day, wanted)


class M3terAnalyticsTableOperator(_AnalyticsSettings, M3terLazyOperator):
    """Extract one table for one day from m3ter and stage it as Parquet under the day's staging
    prefix (nothing is visible to readers until :class:`M3terAnalyticsCommitOperator`).

    :param item: ``{"table", "date"}``, one of :class:`M3terAnalyticsPlanOperator`'s items. (templated)
    :param preview: a dry run: extract and count, write nothing. (templated)
    :param config: an :class:`~m3sh.config.M3shConfig` (or its JSON form: mapped tasks need one).
    :param bucket: S3 bucket of the tables. :param prefix: their key prefix (default ``analytics/``).
    :param aws_conn_id: Airflow AWS connection of the bucket.
    :param source: ``api`` or ``data_export`` (m3ter data export jobs, for ``usage_daily``).
    :param crm_sources: CRM sources, to name the CRM of each account (``accounts``, ``account_links``).

    Returns ``{"table", "rows", "bytes", "staged_key", ...}`` (``{"table", "rows", "dry_run"}`` when previewing).
    """

    template_fields: Sequence[str] = (*M3terLazyOperator.template_fields, "item", "preview")
    ui_color = "#e0f4ff"

    def __init__(self, *, item: Any, preview: bool | str = False, config: ConfigArg = None,
                 bucket: str | None = None, prefix: str = "analytics/", aws_conn_id: str = "aws_default",
                 source: Source = "api", crm_sources: Sequence[CrmSource | Mapping[str, Any]] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_settings(config, bucket=bucket, prefix=prefix, aws_conn_id=aws_conn_id, source=source,
                            crm_sources=crm_sources)
        self.item = item
        self.preview = preview

    def execute(self, context: Context) -> dict[str, Any]:
        import datetime as dt

        from m3sh.analytics.export import stage_table

        item = native(self.task_id, "item", self.item, dict) or {}
        if item.get("table") not in ANALYTICS_TABLES or not item.get("date"):
            raise AirflowFailException(f"{self.task_id}: item must be {{'table': one of {list(ANALYTICS_TABLES)}, "
                                       f"'date': 'YYYY-MM-DD'}}, got {item!r}")
        return stage_table(self.settings, self.hook, item["table"], dt.date.fromisoformat(item["date"]),
                           context["run_id"], dry_run=flag(self.task_id, "preview", self.preview))


class M3terAnalyticsCommitOperator(_AnalyticsSettings, BaseOperator):
    """Commit the day: every staged table over its partition (manifest last), then the day marker,
    staging deleted. When a planned table was not staged nothing is committed and the staging is
    discarded, so readers keep the day's previous complete export; the task then fails naming the
    tables. Give it ``trigger_rule="all_done"``.

    :param planned: what :class:`M3terAnalyticsPlanOperator` returned. (templated)
    :param staged: what the :class:`M3terAnalyticsTableOperator` tasks returned. (templated)
    :param preview: a dry run: report the row counts, commit nothing. (templated)

    Other arguments (``config`` or ``bucket``, ...) as :class:`M3terAnalyticsTableOperator`.
    Returns ``{"date", "schema_version", "marker", "rows"}`` (``{"date", "dry_run", "rows"}`` when previewing).
    """

    template_fields: Sequence[str] = ("planned", "staged", "preview")
    ui_color = "#f3e8ff"

    def __init__(self, *, planned: Any, staged: Any, preview: bool | str = False, config: ConfigArg = None,
                 bucket: str | None = None, prefix: str = "analytics/", aws_conn_id: str = "aws_default",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_settings(config, bucket=bucket, prefix=prefix, aws_conn_id=aws_conn_id, source="api",
                            crm_sources=None)
        self.planned = planned
        self.staged = staged
        self.preview = preview

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.analytics.run import finish_day
        from m3sh.dagkit.errors import RunFailed

        planned = native(self.task_id, "planned", self.planned, (list, tuple)) or []
        staged = list(self.staged or []) if not isinstance(self.staged, str) else \
            native(self.task_id, "staged", self.staged, list) or []
        out = finish_day(self.settings, planned, staged, run_id=context["run_id"], dag_id=self.dag_id,
                         dry_run=flag(self.task_id, "preview", self.preview))
        if out.failure:
            raise RunFailed(out.failure, records=out.records)
        return out.result
