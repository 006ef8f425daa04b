"""``m3sh_usage_ingest``: usage files in S3 -> validated, de-duplicated m3ter measurements.

Graph: ``plan_files`` (list new objects per feed, chunk them so no map exceeds Airflow's 1024 limit)
-> ``ingest_files`` (mapped, one chunk each; a bad file fails only itself) -> ``summarize`` (totals,
and fails the run naming every failed file so the alert carries them).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import DAG, Param, task

from m3sh.compat import AirflowFailException, CronDataIntervalTimetable
from m3sh.config import M3shConfig, get_config
from m3sh.dagkit.defaults import common_dag_args
from m3sh.dagkit.errors import RunFailed

log = logging.getLogger(__name__)
DAG_ID = "m3sh_usage_ingest"
MAP_LABEL = "{{ task.op_kwargs['chunk']['feed'] }}: {{ task.op_kwargs['chunk']['keys'] | length }} file(s)"


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


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
                                       wait_time_seconds=10, waiter_delay=5)
            assets.append(Asset(name=f"m3sh_usage_{feed.name}", uri=f"s3://{feed.bucket}/{feed.prefix}",
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

        @task
        def plan_files(params: dict[str, Any], data_interval_start: dt.datetime | None = None,
                       data_interval_end: dt.datetime | None = None, dag_run: Any = None) -> list[dict[str, Any]]:
            from m3sh.storage import Storage
            from m3sh.usage.ingest import list_feed_objects

            conf = get_config()
            wanted = set(params.get("feeds") or [])
            # An S3 event (asset-triggered run) means "new files, whenever they landed": consider every
            # object; manifests skip the finished ones, so this is exact and cheap.
            event_run = str(getattr(dag_run, "run_type", "")).endswith("asset_triggered")
            scan_all = bool(params.get("scan_all")) or event_run
            window = (None, None) if scan_all else (data_interval_start, data_interval_end)
            chunks: list[dict[str, Any]] = []
            for feed in conf.usage.feeds:
                if not feed.enabled or (wanted and feed.name not in wanted):
                    why = "disabled in m3sh.yaml" if not feed.enabled else "not selected"
                    log.info("usage feed %s skipped (%s)", feed.name, why)
                    continue
                if feed.type == "http":
                    chunks.append({"feed": feed.name, "keys": [feed.endpoint or ""]})
                    continue
                src = Storage(feed.conn_id, feed.bucket or "")
                keys = list_feed_objects(src, feed.prefix, *window)
                log.info("feed %s: %d object(s) under s3://%s/%s in window %s..%s", feed.name, len(keys),
                         feed.bucket, feed.prefix, window[0], window[1])
                chunks += [{"feed": feed.name, "keys": c} for c in _chunks(keys, conf.usage.files_per_task)]
            if len(chunks) > 1024:
                raise AirflowFailException(f"{len(chunks)} chunks exceed the 1024 map limit; raise "
                                           f"usage.files_per_task")
            return chunks

        @task(map_index_template=MAP_LABEL)
        def ingest_files(chunk: dict[str, Any], params: dict[str, Any],
                         data_interval_start: dt.datetime | None = None,
                         data_interval_end: dt.datetime | None = None) -> list[dict[str, Any]]:
            from m3sh.hooks.m3ter import M3terHook
            from m3sh.storage import Storage
            from m3sh.usage.ingest import AccountLookup, ingest_s3_object

            conf = get_config()
            feed = next(f for f in conf.usage.feeds if f.name == chunk["feed"])
            m3ter = M3terHook(conf.m3ter.conn_id)
            lookup = AccountLookup(m3ter)
            state = Storage.from_config(conf.storage)
            if feed.type == "http":
                from m3sh.usage.http_feed import ingest_http_feed

                start, end = (None, None) if params.get("scan_all") else (data_interval_start, data_interval_end)
                r = ingest_http_feed(feed=feed, m3ter=m3ter, state=state, account_exists=lookup, start=start,
                                     end=end, dry_run=bool(params.get("dry_run")))
                return [r.to_dict()]
            src = Storage(feed.conn_id, feed.bucket or "")
            results = []
            for key in chunk["keys"]:
                r = ingest_s3_object(feed=feed, key=key, m3ter=m3ter, source_storage=src, state=state,
                                     account_exists=lookup, progress_every=conf.usage.progress_every_rows,
                                     batch_size=conf.m3ter.ingest_batch_size,
                                     max_in_flight=conf.m3ter.ingest_requests_in_flight,
                                     dry_run=bool(params.get("dry_run")))
                results.append(r.to_dict())
            return results

        @task(trigger_rule="all_done")
        def summarize(planned: list[dict[str, Any]], results: list[list[dict[str, Any]] | None]) -> dict[str, Any]:
            done = [chunk for chunk in (results or []) if chunk is not None]
            flat = [r for chunk in done for r in chunk]
            counted = ("rows_read", "accepted", "rejected", "batches_sent")
            totals: dict[str, Any] = {k: sum(int(r.get(k) or 0) for r in flat) for k in counted}
            totals["files"] = len(flat)
            totals["skipped"] = sum(1 for r in flat if r["status"] == "skipped")
            failed = [r for r in flat if r["status"] == "failed"]
            totals["failed"] = len(failed)
            lost_chunks = len(planned or []) - len(done)
            totals["dead_letter_keys"] = [r["dead_letter_key"] for r in flat if r.get("dead_letter_key")]
            log.info("usage ingest summary: %s", totals)
            if lost_chunks > 0:
                reported = {(r["feed"], r["key"]) for r in flat}
                missing = [f"{c['feed']}:{k}" for c in planned for k in c["keys"]
                           if (c["feed"], k) not in reported and not (c["keys"] and k == c["keys"][0] and
                                                                      any(r["feed"] == c["feed"] for r in flat))]
                raise RunFailed(f"{lost_chunks} ingest task(s) failed after their retries; their files/feeds were "
                                f"not (fully) ingested and will be resumed by the next run: {missing[:20]}",
                                records=missing[:50])
            if failed:
                raise RunFailed(
                    f"{len(failed)} usage file(s) failed: " + "; ".join(f"{r['key']}: {r['error']}" for r in failed),
                    records=[r["key"] for r in failed])
            return totals

        planned = plan_files()  # type: ignore[call-arg,misc]
        ingested = ingest_files.partial().expand(chunk=planned)
        summarize(planned, ingested)  # type: ignore[arg-type]
    return dag
