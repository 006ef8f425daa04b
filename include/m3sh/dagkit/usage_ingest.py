"""``m3sh_usage_ingest``: usage files in S3 -> validated, de-duplicated m3ter measurements.

Graph: ``plan_files`` (list new objects per feed, chunk them so no map exceeds Airflow's 1024 limit)
-> ``ingest_files`` (mapped, one chunk each; a bad file fails only itself) -> ``summarize`` (totals,
and fails the run naming every failed file so the alert carries them). The tasks are
:mod:`m3sh.operators.usage_feeds`' operators; this module only wires them.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param

from m3sh.compat import CronDataIntervalTimetable
from m3sh.config import M3shConfig, get_config
from m3sh.dagkit.defaults import FROM_PARAM, common_dag_args
from m3sh.operators.usage_feeds import (
    M3terUsageFeedsIngestOperator,
    M3terUsageFeedsPlanOperator,
    M3terUsageFeedsSummaryOperator,
)
from m3sh.usage.events import feed_asset_name

DAG_ID = "m3sh_usage_ingest"
# The S3 event watcher long-polls its queue continuously: each ReceiveMessage waits up to SQS's
# maximum of 20 s and returns as soon as a message arrives, and the next one starts at once (no
# pause between polls; the provider's default pause is 60 s, m3sh had 5 s). A pause is the one place
# a message waits, so it went. Idle cost: 3 requests a minute per feed, ~130,000 a month, inside
# SQS's free tier (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/
# sqs-short-and-long-polling.html).
SQS_WAIT_S, SQS_PAUSE_S = 20, 0
MAP_LABEL = "{{ task.chunk['feed'] }}: {{ task.chunk['keys'] | length }} file(s)"


def usage_schedule(cfg: M3shConfig) -> Any:
    """Hourly data intervals; plus, for feeds with an ``event_queue``, an asset fed by an AssetWatcher
    on the Amazon provider's ``SqsSensorTrigger`` (S3 -> SQS notifications), so new files start a run
    within seconds. Constructing the trigger does no I/O, so parsing stays cheap."""
    hourly = CronDataIntervalTimetable("0 * * * *", timezone="UTC")
    assets = []
    for feed in cfg.usage.feeds:
        if feed.enabled and feed.type == "s3" and feed.event_queue:
            from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger
            from airflow.sdk import Asset, AssetWatcher

            trigger = SqsSensorTrigger(sqs_queue=feed.event_queue, aws_conn_id=feed.conn_id, max_messages=10,
                                       wait_time_seconds=SQS_WAIT_S, waiter_delay=SQS_PAUSE_S)
            assets.append(Asset(name=feed_asset_name(feed.name), uri=f"s3://{feed.bucket}/{feed.prefix}",
                                watchers=[AssetWatcher(name=f"m3sh_usage_{feed.name}_events", trigger=trigger)]))
    if not assets:
        return hourly
    from m3sh.compat import AssetOrTimeSchedule

    return AssetOrTimeSchedule(timetable=hourly, assets=assets)


def build_usage_ingest_dag(cfg: M3shConfig | None = None) -> DAG:
    cfg = cfg or get_config()
    with DAG(
        dag_id=DAG_ID,
        description="Usage files (S3: CSV/JSONL, gzip) -> m3ter measurements, exactly once",
        schedule=usage_schedule(cfg),
        **common_dag_args(cfg, "usage", "unified-billing"),
        params={
            "dry_run": Param(False, type="boolean", description="Validate and count, send nothing"),
            "scan_all": Param(False, type="boolean",
                              description="Consider every object, not only those modified in the data interval "
                                          "(finished files are still skipped by their manifest)"),
            "feeds": Param([], type="array", description="Only these feed names (empty: all)"),
        },
        doc_md=__doc__,
    ) as dag:
        planned = M3terUsageFeedsPlanOperator(task_id="plan_files", config=cfg, only_feeds=FROM_PARAM.format("feeds"),
                                              scan_all=FROM_PARAM.format("scan_all")).output
        # A mapped task's arguments are serialized with the DAG: the config goes in its JSON form.
        ingested = M3terUsageFeedsIngestOperator.partial(
            task_id="ingest_files", config=cfg.model_dump(mode="json", exclude_defaults=True),
            m3ter_conn_id=cfg.m3ter.conn_id, preview=FROM_PARAM.format("dry_run"),
            scan_all=FROM_PARAM.format("scan_all"), map_index_template=MAP_LABEL,
            **({"pool": cfg.m3ter.ingest_pool} if cfg.m3ter.ingest_pool else {}),
        ).expand(chunk=planned).output
        M3terUsageFeedsSummaryOperator(task_id="summarize", planned=planned, results=ingested, trigger_rule="all_done")
    return dag
