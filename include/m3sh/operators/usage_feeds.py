"""Usage feeds (S3 files, paged HTTP endpoints) -> m3ter measurements, as operators for users' own DAGs.

* :class:`M3terUsageFeedsPlanOperator` lists each feed's objects modified in the run's data
  interval (every object with ``scan_all`` or in a run started by an S3 event: manifests skip the
  finished ones) and splits them into chunks, so no map exceeds Airflow's 1024 limit;
* :class:`M3terUsageFeedsIngestOperator` (mapped over the chunks) ingests one chunk exactly once:
  deterministic measurement uids plus a manifest per object; a bad file fails only itself;
* :class:`M3terUsageFeedsSummaryOperator` totals the run and fails naming every file or feed that
  was not ingested. Give it ``trigger_rule="all_done"``.

Feeds are :class:`~m3sh.config.UsageFeed` objects or their mappings (``feeds=[...]``), or a config's
``usage.feeds`` (``config=``, an :class:`~m3sh.config.M3shConfig` or its JSON form); ``m3sh.yaml``
is never read. The logic is :mod:`m3sh.usage.run`'s; ``m3sh_usage_ingest`` wires these same
operators. For one S3 prefix without feeds, :class:`~m3sh.operators.usage.S3UsageToM3terOperator`
is simpler. Templated ``only_feeds``, ``scan_all`` and ``preview`` (a dry run) accept their value
or its JSON text (``"{{ params.feeds | tojson }}"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from m3sh.compat import AirflowFailException
from m3sh.config import M3shConfig, M3terConfig, UsageConfig, UsageFeed
from m3sh.operators._common import ConfigArg, M3terLazyOperator, flag, models, names, native, settings, storage_settings

if TYPE_CHECKING:
    from airflow.sdk import Context

FeedArg = Sequence[UsageFeed | Mapping[str, Any]] | None


def _feeds_settings(task_id: str, config: ConfigArg, feeds: FeedArg, **inline: Any) -> M3shConfig:
    if (config is None) == (feeds is None):
        raise ValueError(f"{task_id}: give feeds=[...] (UsageFeed objects or mappings) or config=..., exactly one")
    storage = inline.pop("storage", None)

    def build() -> M3shConfig:
        # inline: the M3terConfig ingest settings (batch size, requests in flight)
        return M3shConfig(usage=UsageConfig(feeds=models(feeds)), m3ter=M3terConfig(**inline),
                          **({"storage": storage} if storage is not None else {}))

    if config is None and not feeds:
        raise ValueError(f"{task_id}: feeds is empty; give at least one usage feed")
    return settings(task_id, config, build)


class M3terUsageFeedsPlanOperator(BaseOperator):
    """Plan a usage run: the objects of each enabled feed in chunks for :class:`M3terUsageFeedsIngestOperator`.

    :param feeds: :class:`~m3sh.config.UsageFeed` objects or mappings.
    :param config: an :class:`~m3sh.config.M3shConfig` (or its JSON form) supplying ``usage.feeds``
        and ``usage.files_per_task`` instead.
    :param only_feeds: only these feed names (empty: every enabled feed). (templated)
    :param scan_all: every object, not only those modified in the data interval. (templated)
    :param files_per_task: objects per chunk (one mapped task each).

    Returns ``[{"feed", "keys"}]`` (an HTTP feed: one chunk naming its endpoint).
    """

    template_fields: Sequence[str] = ("only_feeds", "scan_all")
    ui_color = "#e8fff0"

    def __init__(self, *, feeds: FeedArg = None, config: ConfigArg = None,
                 only_feeds: Sequence[str] | str | None = None, scan_all: bool | str = False,
                 files_per_task: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = _feeds_settings(self.task_id, config, feeds)
        self.files_per_task = files_per_task or self.settings.usage.files_per_task
        if self.files_per_task < 1:
            raise ValueError(f"{self.task_id}: files_per_task must be >= 1, got {files_per_task}")
        self.only_feeds = only_feeds
        self.scan_all = scan_all

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from m3sh.usage.run import TooManyChunks, plan_chunks

        # An S3 event (asset-triggered run) means "new files, whenever they landed": the objects its
        # events name (m3sh.usage.events), else every object (manifests skip the finished ones).
        event_run = is_event_run(context)
        scan_all = flag(self.task_id, "scan_all", self.scan_all) or event_run
        start, end = (None, None) if scan_all else (context.get("data_interval_start"),
                                                    context.get("data_interval_end"))
        event_keys = _event_keys(context, self.settings.usage.feeds) if event_run else None
        try:
            return plan_chunks(self.settings.usage.feeds, only=names(self.task_id, "only_feeds", self.only_feeds),
                               start=start, end=end, files_per_task=self.files_per_task, event_keys=event_keys)
        except TooManyChunks as exc:
            raise AirflowFailException(str(exc)) from None


def is_event_run(context: Context | Mapping[str, Any]) -> bool:
    """Whether an asset event started this run. In a task, ``dag_run.run_type`` is the Task SDK's own
    ``DagRunType`` enum, whose ``str()`` is ``"DagRunType.ASSET_TRIGGERED"``: compare its value."""
    run_type = getattr(context.get("dag_run"), "run_type", None)
    return str(getattr(run_type, "value", run_type) or "") == "asset_triggered"


def _event_keys(context: Context, feeds: Sequence[UsageFeed]) -> dict[str, list[str] | None] | None:
    """Per feed, the keys the run's triggering asset events name (None: an asset-triggered run whose
    events belong to no feed's asset, e.g. a user's own: every feed is planned as before)."""
    from m3sh.usage.events import keys_from_asset_events

    accessor = context.get("triggering_asset_events") or {}
    pairs = [(str(getattr(getattr(e, "asset", None), "name", "")), getattr(e, "extra", None))
             for asset in list(accessor) for e in accessor[asset]]
    found = keys_from_asset_events(pairs, feeds)
    return found or None


class M3terUsageFeedsIngestOperator(M3terLazyOperator):
    """Ingest one planned chunk into m3ter, exactly once: each S3 object by its manifest (key + ETag)
    and deterministic measurement uids, or an HTTP feed's data-interval window (every row with
    ``scan_all``). Invalid rows go to ``<prefix>dead-letter/usage/<feed>/<key>.jsonl`` with file,
    line, field and reason; a file that cannot be read is reported ``failed`` in the result.

    :param chunk: ``{"feed", "keys"}``, one of :class:`M3terUsageFeedsPlanOperator`'s chunks. (templated)
    :param feeds: :class:`~m3sh.config.UsageFeed` objects or mappings (mapped tasks: mappings).
    :param config: an :class:`~m3sh.config.M3shConfig` (or its JSON form) instead of the arguments
        below (``usage.feeds``, ``m3ter.ingest_*``, ``usage.progress_every_rows``, ``storage``).
    :param preview: a dry run: validate and count, send nothing. (templated)
    :param scan_all: an HTTP feed's every row, not only the data interval's. (templated)
    :param bucket: S3 bucket of manifests and dead letters. :param prefix: key prefix there.
    :param aws_conn_id: Airflow AWS connection of that bucket.
    :param batch_size: measurements per request (m3ter accepts up to 1000).
    :param max_in_flight: ingest requests one file keeps in flight.
    :param deferrable: objects sent through m3ter's file uploads (a feed's ``bulk_min_bytes``) are
        awaited by :class:`~m3sh.triggers.m3ter_uploads.M3terUploadJobsTrigger` on the triggerer,
        freeing the worker slot; else polled here.

    Returns one result per object (or feed window): ``{"feed", "key", "status", "rows_read",
    "accepted", "rejected", "batches_sent", "dead_letter_key", "error", ...}`` (bulk objects also
    ``"jobs"``, ``"bulk_processed"``, ``"bulk_failed"``, ``"m3ter_dead_letter_key"``).
    """

    template_fields: Sequence[str] = (*M3terLazyOperator.template_fields, "chunk", "preview", "scan_all")
    ui_color = "#e8fff0"

    def __init__(self, *, chunk: Any, feeds: FeedArg = None, config: ConfigArg = None, preview: bool | str = False,
                 scan_all: bool | str = False, bucket: str | None = None, prefix: str = "m3sh/",
                 aws_conn_id: str = "aws_default", batch_size: int = 1000, max_in_flight: int = 4,
                 deferrable: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.deferrable = deferrable
        inline: dict[str, Any] = {"ingest_batch_size": batch_size, "ingest_requests_in_flight": max_in_flight}
        if config is None:
            inline["storage"] = storage_settings(self.task_id, bucket, prefix, aws_conn_id)
        elif bucket is not None:
            raise ValueError(f"{self.task_id}: give config=... or bucket=..., not both")
        self.settings = _feeds_settings(self.task_id, config, feeds, **inline)
        self.chunk = chunk
        self.preview = preview
        self.scan_all = scan_all

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from m3sh.storage import Storage
        from m3sh.usage.run import ingest_chunk

        chunk = native(self.task_id, "chunk", self.chunk, dict) or {}
        feed = next((f for f in self.settings.usage.feeds if f.name == chunk.get("feed")), None)
        if feed is None:
            raise AirflowFailException(f"{self.task_id}: chunk names feed {chunk.get('feed')!r}; known: "
                                       f"{[f.name for f in self.settings.usage.feeds]}")
        scan_all = flag(self.task_id, "scan_all", self.scan_all)
        start, end = (None, None) if scan_all else (context.get("data_interval_start"),
                                                    context.get("data_interval_end"))
        m3ter, usage = self.settings.m3ter, self.settings.usage
        results = ingest_chunk(feed, list(chunk.get("keys") or []), m3ter=self.hook,
                               state=Storage.from_config(self.settings.storage), start=start, end=end,
                               dry_run=flag(self.task_id, "preview", self.preview),
                               progress_every=usage.progress_every_rows, batch_size=m3ter.ingest_batch_size,
                               max_in_flight=m3ter.ingest_requests_in_flight, await_jobs=not self.deferrable,
                               poll_interval=usage.bulk_poll_interval_s, timeout_s=usage.bulk_timeout_s)
        from m3sh.usage.bulk import pending_job_ids

        job_ids = pending_job_ids(results)
        if not job_ids:
            return results
        from m3sh.triggers.m3ter_uploads import M3terUploadJobsTrigger

        self.log.info("%d file upload job(s) sent to m3ter; deferring until they finish", len(job_ids))
        # The results travel with the trigger and come back in its event (small dicts); the
        # manifests say "awaiting" meanwhile, so a retry of this task only waits again.
        self.defer(trigger=M3terUploadJobsTrigger(job_ids=job_ids, m3ter_conn_id=self.m3ter_conn_id,
                                                  poll_interval=usage.bulk_poll_interval_s,
                                                  timeout_s=usage.bulk_timeout_s, carry=results),
                   method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The chunk's results with every awaited file upload job finished (or the files failed,
        naming the jobs: the next run re-uses finished jobs and re-sends the rest)."""
        from m3sh.storage import Storage
        from m3sh.usage.bulk import finish_all

        event = event or {}
        results = event.get("carry")
        if not isinstance(results, list):
            raise AirflowFailException(f"{self.task_id}: the file upload trigger returned no results: {event}")
        error = None if event.get("status") == "success" else str(event.get("message") or "no trigger event")
        self.log.info("file upload jobs: %s", event.get("message"))
        return finish_all(results, dict(event.get("jobs") or {}),
                          Storage.from_config(self.settings.storage), error)


class M3terUsageFeedsSummaryOperator(BaseOperator):
    """Total a usage run and fail naming every file that failed and every chunk whose task failed
    after its retries (the next run resumes them). Give it ``trigger_rule="all_done"``.

    :param planned: what :class:`M3terUsageFeedsPlanOperator` returned. (templated)
    :param results: what the :class:`M3terUsageFeedsIngestOperator` tasks returned. (templated)

    Returns ``{"rows_read", "accepted", "rejected", "batches_sent", "bulk_processed", "bulk_failed",
    "bulk_files", "files", "skipped", "failed",
    "dead_letter_keys"}``.
    """

    template_fields: Sequence[str] = ("planned", "results")
    ui_color = "#f3e8ff"

    def __init__(self, *, planned: Any, results: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned
        self.results = results

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.dagkit.errors import RunFailed
        from m3sh.usage.run import summarize

        planned = native(self.task_id, "planned", self.planned, (list, tuple)) or []
        results = native(self.task_id, "results", self.results, list) if isinstance(self.results, str) \
            else list(self.results or [])
        out = summarize(planned, results or [])
        if out.failure:
            raise RunFailed(out.failure, records=out.records)
        return out.totals
