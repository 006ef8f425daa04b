"""What the ``m3sh_analytics_export`` tasks call: extract + stage one table, commit a day.

Kept out of the DAG module so it is unit-testable and reusable from the CLI or a notebook.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

from m3sh.analytics.extract import DayExtract
from m3sh.analytics.partition import PartitionStore, to_table
from m3sh.analytics.reader import analytics_storage
from m3sh.analytics.schemas import SCHEMA_VERSION, spec

if TYPE_CHECKING:
    from m3sh.config import M3shConfig
    from m3sh.hooks.m3ter import M3terHook

log = logging.getLogger(__name__)


def table_rows(cfg: M3shConfig, hook: M3terHook, table: str, day: dt.date) -> list[dict[str, Any]]:
    """The rows of one table for one day, from the source the config chooses."""
    from m3sh.storage import Storage

    extract = DayExtract(hook, cfg, day, storage=Storage.from_config(cfg.storage))
    if table == "usage_daily" and cfg.analytics.source == "data_export":
        from m3sh.analytics.data_export import usage_via_data_export

        data = usage_via_data_export(hook, extract, timeout_s=cfg.analytics.export_timeout_s,
                                     poll_s=cfg.analytics.export_poll_s)
        return list(extract.usage_rows_from(data))
    return extract.rows(table)


def stage_table(cfg: M3shConfig, hook: M3terHook, table: str, day: dt.date, run_id: str, *,
                dry_run: bool = False) -> dict[str, Any]:
    """Extract one table for the day and write it to the run's staging prefix (nothing when dry)."""
    s = spec(table)
    arrow = to_table(s, table_rows(cfg, hook, table, day))
    if dry_run:
        log.info("%s date=%s: %d row(s) (dry run: nothing written)", table, day, arrow.num_rows)
        return {"table": table, "rows": arrow.num_rows, "dry_run": True}
    staged = PartitionStore(analytics_storage(cfg)).stage(s, day, run_id, arrow)
    log.info("%s date=%s: %d row(s), %d bytes staged at %s", table, day, arrow.num_rows, staged["bytes"],
             staged["staged_key"])
    return staged


def commit_day(cfg: M3shConfig, staged: list[dict[str, Any]], day: dt.date, run_id: str,
               dag_id: str) -> dict[str, Any]:
    """Swap every staged table into place (manifest last per table), then the day marker."""
    store = PartitionStore(analytics_storage(cfg))
    meta = {"source": cfg.analytics.source, "source_run_id": run_id, "dag_id": dag_id,
            "data_interval": [dt.datetime.combine(day, dt.time(0), dt.UTC).isoformat(),
                              dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), dt.UTC).isoformat()],
            "generated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    committed = []
    for item in sorted(staged, key=lambda s: s["table"]):
        committed.append(store.commit(item, day, meta))
        log.info("committed %s date=%s: %d row(s) -> %s", item["table"], day, item["rows"],
                 store.storage.uri(committed[-1]["key"]))
    marker = store.finish(day, committed, meta)
    return {"date": day.isoformat(), "schema_version": SCHEMA_VERSION, "marker": marker,
            "rows": {c["table"]: c["rows"] for c in committed}}
