"""One usage ingest run as plain steps: plan (list each feed's new objects, in chunks), ingest a
chunk (S3 objects one by one, or an HTTP feed's window), and the summary. The usage-feed operators
(:mod:`m3sh.operators.usage_feeds`) and so ``m3sh_usage_ingest`` call these; nothing here reads
``m3sh.yaml``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from m3sh.config import UsageFeed
from m3sh.runs import MAX_MAP, StepOutcome, chunked

log = logging.getLogger(__name__)

# batches_sent: Ingest API requests, or files uploaded on the bulk path; bulk_processed/bulk_failed:
# the rows m3ter's file upload jobs processed / reported failed.
COUNTED = ("rows_read", "accepted", "rejected", "batches_sent", "bulk_processed", "bulk_failed")


class TooManyChunks(ValueError):
    """More chunks than Airflow maps."""


def plan_chunks(feeds: Sequence[UsageFeed], *, only: Collection[str] = (), start: dt.datetime | None = None,
                end: dt.datetime | None = None, files_per_task: int = 20,
                event_keys: Mapping[str, Sequence[str] | None] | None = None) -> list[dict[str, Any]]:
    """``{"feed", "keys"}`` chunks of at most ``files_per_task`` objects, per enabled feed (only the
    ``only`` ones when given) modified in ``[start, end)`` (every object without a window; manifests
    skip finished ones). An HTTP feed is one chunk naming its endpoint. Raises TooManyChunks past
    :data:`MAX_MAP` chunks.

    ``event_keys`` (an event-started run, :func:`m3sh.usage.events.keys_from_asset_events`): only the
    feeds it names, each with the keys its events named, or listed as above where it holds None."""
    wanted = set(only)
    chunks: list[dict[str, Any]] = []
    for feed in feeds:
        if not feed.enabled or (wanted and feed.name not in wanted):
            why = "disabled in m3sh.yaml" if not feed.enabled else "not selected"
            log.info("usage feed %s skipped (%s)", feed.name, why)
            continue
        if event_keys is not None and feed.name not in event_keys:
            log.info("usage feed %s skipped (no event of this run names it)", feed.name)
            continue
        if feed.type == "http":
            chunks.append({"feed": feed.name, "keys": [feed.endpoint or ""]})
            continue
        named = event_keys.get(feed.name) if event_keys is not None else None
        if named is not None:
            log.info("feed %s: %d object(s) named by this run's S3 events", feed.name, len(named))
            chunks += [{"feed": feed.name, "keys": c} for c in chunked(list(named), files_per_task)]
            continue
        # Imported here: m3sh.usage.ingest brings the m3ter SDK (~1 s of CPU on a busy host), which an
        # event-started run's plan (the keys come with its events) does not need.
        from m3sh.storage import Storage
        from m3sh.usage.ingest import list_feed_objects

        keys = list_feed_objects(Storage(feed.conn_id, feed.bucket or ""), feed.prefix, start, end)
        log.info("feed %s: %d object(s) under s3://%s/%s in window %s..%s", feed.name, len(keys), feed.bucket,
                 feed.prefix, start, end)
        chunks += [{"feed": feed.name, "keys": c} for c in chunked(keys, files_per_task)]
    if len(chunks) > MAX_MAP:
        raise TooManyChunks(f"{len(chunks)} chunks exceed the {MAX_MAP} map limit; raise usage.files_per_task")
    return chunks


def ingest_chunk(feed: UsageFeed, keys: Sequence[str], *, m3ter: Any, state: Any, start: dt.datetime | None,
                 end: dt.datetime | None, dry_run: bool = False, progress_every: int = 50_000,
                 batch_size: int = 1000, max_in_flight: int = 4, await_jobs: bool = True,
                 poll_interval: float = 10.0, timeout_s: float = 6 * 3600.0) -> list[dict[str, Any]]:
    """Ingest one chunk: each S3 object in ``keys`` (a bad file fails only itself, in its result),
    or the HTTP feed's ``[start, end)`` window. One :class:`~m3sh.usage.ingest.FileResult` dict each.

    Objects sent through m3ter's file uploads (``feed.bulk_min_bytes``) come back ``awaiting`` their
    jobs unless ``await_jobs``: then this polls them (every ``poll_interval`` s, for at most
    ``timeout_s``) and finishes them (:func:`m3sh.usage.bulk.finish_all`); a deferring operator
    leaves that to its trigger instead."""
    from m3sh.storage import Storage
    from m3sh.usage.ingest import AccountLookup, ingest_s3_object

    lookup = AccountLookup(m3ter)
    if feed.type == "http":
        from m3sh.usage.http_feed import ingest_http_feed

        return [ingest_http_feed(feed=feed, m3ter=m3ter, state=state, account_exists=lookup, start=start, end=end,
                                 dry_run=dry_run).to_dict()]
    src = state.for_bucket(feed.conn_id, feed.bucket or "") if isinstance(state, Storage) else \
        Storage(feed.conn_id, feed.bucket or "")
    results = [ingest_s3_object(feed=feed, key=key, m3ter=m3ter, source_storage=src, state=state,
                                account_exists=lookup, progress_every=progress_every, batch_size=batch_size,
                                max_in_flight=max_in_flight, dry_run=dry_run).to_dict() for key in keys]
    from m3sh.usage.bulk import finish_all, pending_job_ids, wait_jobs

    job_ids = pending_job_ids(results)
    if not await_jobs or not job_ids:
        return results
    jobs, error = wait_jobs(m3ter, job_ids, poll_interval=poll_interval, timeout_s=timeout_s)
    return finish_all(results, jobs, state, error)


def summarize(planned: Sequence[dict[str, Any]], results: Sequence[list[dict[str, Any]] | None]) -> StepOutcome:
    """Totals over every chunk's results. A chunk without results (its task failed after its
    retries) or a failed file makes a failure naming the files: the next run resumes them."""
    done = [chunk for chunk in results if chunk is not None]
    flat = [r for chunk in done for r in chunk]
    totals: dict[str, Any] = {k: sum(int(r.get(k) or 0) for r in flat) for k in COUNTED}
    totals["files"] = len(flat)
    totals["skipped"] = sum(1 for r in flat if r["status"] == "skipped")
    failed = [r for r in flat if r["status"] == "failed"]
    totals["failed"] = len(failed)
    lost_chunks = len(planned) - len(done)
    totals["dead_letter_keys"] = [k for r in flat for k in (r.get("dead_letter_key"), r.get("m3ter_dead_letter_key"))
                                  if k]
    totals["bulk_files"] = sum(len(r.get("jobs") or []) for r in flat if r.get("mode") == "bulk")
    log.info("usage ingest summary: %s", totals)
    if lost_chunks > 0:
        reported = {(r["feed"], r["key"]) for r in flat}
        # An HTTP feed's result names its window ("<endpoint>?<start>..<end>"), not the planned endpoint.
        windows = {(r["feed"], str(r["key"]).split("?", 1)[0]) for r in flat}
        missing = [f"{c['feed']}:{k}" for c in planned for k in c["keys"]
                   if (c["feed"], k) not in reported and (c["feed"], k) not in windows]
        return StepOutcome(totals, f"{lost_chunks} ingest task(s) failed after their retries; their files/feeds "
                                     f"were not (fully) ingested and will be resumed by the next run: {missing[:20]}",
                             missing[:50])
    if failed:
        return StepOutcome(totals, f"{len(failed)} usage file(s) failed: "
                             + "; ".join(f"{r['key']}: {r['error']}" for r in failed), [r["key"] for r in failed])
    return StepOutcome(totals)
