"""One analytics export day as plain steps: plan the day, stage a table (:func:`m3sh.analytics.export.stage_table`),
and finish the day (commit every staged table, or discard them all when one failed). The analytics
operators (:mod:`m3sh.operators.analytics`) and so ``m3sh_analytics_export`` call these; nothing here
reads ``m3sh.yaml``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from m3sh.config import ANALYTICS_TABLES, M3shConfig

log = logging.getLogger(__name__)


@dataclass
class DayOutcome:
    """What finishing a day produced: the result, or the failure and the tables it names."""

    result: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None
    records: list[str] = field(default_factory=list)


def export_day(start: dt.datetime | None, end: dt.datetime | None, now: dt.datetime | None = None) -> dt.date:
    """The UTC day a data interval covers (runs without an interval: yesterday). Raises ValueError
    when the interval is not exactly one UTC day."""
    if start is None:
        return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).date() - dt.timedelta(days=1)
    start = start.astimezone(dt.UTC)
    if end is not None and end.astimezone(dt.UTC) - start != dt.timedelta(days=1):
        raise ValueError(f"data interval {start}..{end} is not one UTC day")
    return start.date()


def unknown_tables(tables: Sequence[str]) -> list[str]:
    return sorted(set(tables) - set(ANALYTICS_TABLES))


def plan_day(day: dt.date, tables: Sequence[str]) -> list[dict[str, str]]:
    """One item per table (first mention wins), each ``{"table", "date"}``: what a staging task takes."""
    return [{"table": t, "date": day.isoformat()} for t in dict.fromkeys(tables)]


def finish_day(cfg: M3shConfig, planned: Sequence[dict[str, str]], staged: Sequence[dict[str, Any] | None], *,
               run_id: str, dag_id: str, dry_run: bool) -> DayOutcome:
    """Commit the day when every planned table was staged; otherwise discard this run's staging so
    the day keeps its previous, complete partitions. A dry run only reports the row counts."""
    from m3sh.analytics.export import commit_day
    from m3sh.analytics.partition import PartitionStore
    from m3sh.analytics.reader import analytics_storage

    if not planned:
        return DayOutcome(failure="plan_day produced no tables (it failed or nothing was selected)")
    day = dt.date.fromisoformat(planned[0]["date"])
    done = [s for s in staged if s]
    missing = sorted({p["table"] for p in planned} - {s["table"] for s in done})
    if dry_run:
        rows = {s["table"]: s["rows"] for s in done}
        log.info("dry run for %s: %s", day, rows)
        if missing:
            return DayOutcome(failure=f"table(s) failed: {missing}", records=missing)
        return DayOutcome({"date": day.isoformat(), "dry_run": True, "rows": rows})
    if missing:
        PartitionStore(analytics_storage(cfg)).discard_staging(day)
        return DayOutcome(failure=f"analytics export of {day}: table(s) {missing} failed; no partition of this run "
                                  "was committed (the previous export of the day stays in place)", records=missing)
    result = commit_day(cfg, done, day, run_id, dag_id)
    log.info("analytics export of %s committed: %s", day, result["rows"])
    return DayOutcome(result)
