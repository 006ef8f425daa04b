"""Usage files in S3 -> m3ter measurements, exactly once, as an operator for users' own DAGs.

The ingest is m3sh's own (:func:`m3sh.usage.ingest.ingest_s3_object`): every measurement carries a
deterministic ``uid`` m3ter de-duplicates, and a manifest per file (object key + ETag) under
``state_prefix`` records what was confirmed, so a retry resumes and a re-run skips finished files.
Invalid rows never stop a file: each goes to ``<state_prefix>dead-letter/usage/<feed>/<key>.jsonl``
with its file, line, field and reason.

The mapping from rows to measurements is either inline (``meters=[{"code": ..., "measures": ...}]``
plus ``meter_field``/``id_field``/``format``) or a :class:`~m3sh.config.UsageFeed` object (``feed=``);
``m3sh.yaml`` is never read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk.exceptions import AirflowException
from pydantic import ValidationError

from m3sh.compat import AirflowFailException
from m3sh.config import MeterDefinition, UsageFeed
from m3sh.hooks.m3ter import M3terHook
from m3sh.operators._common import problems
from m3sh.operators.m3ter import M3terBaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

COUNTED = ("rows_read", "accepted", "rejected", "batches_sent")


class S3UsageToM3terOperator(M3terBaseOperator[M3terHook]):
    """Ingest usage files (CSV/TSV/JSONL, gzipped or not) from S3 into m3ter, exactly once.

    :param bucket: source bucket (default: the ``feed``'s). (templated)
    :param keys: object keys to ingest. (templated)
    :param prefix: ingest every object under this prefix (when ``keys`` is not given). (templated)
    :param meters: inline mapping, one per m3ter meter: ``{"code", "measures": {field: column},
        "dimensions", "account_field", "timestamp_field", "timestamp_format", "max_age_days"}``.
    :param feed: a :class:`~m3sh.config.UsageFeed` instead of the inline mapping arguments.
    :param feed_name: names the manifests and dead letters of this mapping (default: the task id).
    :param meter_field: row column naming the meter (inline mapping).
    :param id_field: row column used in the measurement's deterministic uid (inline mapping).
    :param file_format: ``auto`` (by extension), ``csv`` or ``jsonl`` (inline mapping).
    :param delimiter: CSV separator (inline mapping; default a comma, a tab for ``.tsv``).
    :param aws_conn_id: Airflow AWS connection for the source bucket and the state bucket.
    :param state_bucket: bucket of manifests and dead letters (default: the source bucket). (templated)
    :param state_prefix: key prefix of manifests and dead letters. (templated)
    :param batch_size: measurements per request (m3ter accepts up to 1000).
    :param max_in_flight: ingest requests in flight at once.
    :param fail_on_bad_file: fail the task when a file cannot be read at all (bad rows never fail it).

    Returns ``{"files", "skipped", "rows_read", "accepted", "rejected", "batches_sent", "failed",
    "dead_letter_uris", "files_detail", "feed"}``; the row counts cover files ingested by this run.
    """

    template_fields: Sequence[str] = (*M3terBaseOperator.template_fields, "bucket", "keys", "prefix",
                                      "state_bucket", "state_prefix")
    ui_color = "#e8fff0"

    def __init__(self, *, bucket: str | None = None, keys: Sequence[str] | str | None = None,
                 prefix: str | None = None, meters: Sequence[Mapping[str, Any] | MeterDefinition] | None = None,
                 feed: UsageFeed | None = None, feed_name: str | None = None, meter_field: str = "meter",
                 id_field: str | None = "event_id", file_format: Literal["auto", "csv", "jsonl"] = "auto",
                 delimiter: Literal[",", ";", "\t"] | None = None, aws_conn_id: str = "aws_default",
                 state_bucket: str | None = None, state_prefix: str = "m3sh/", batch_size: int = 1000,
                 max_in_flight: int = 4, fail_on_bad_file: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if (feed is None) == (meters is None):
            raise ValueError(f"{self.task_id}: give the inline mapping (meters=...) or a feed object (feed=...), "
                             "exactly one")
        if keys is None and prefix is None:
            raise ValueError(f"{self.task_id}: give keys=[...] or prefix=... (the objects to ingest)")
        if not 1 <= batch_size <= 1000:
            raise ValueError(f"{self.task_id}: batch_size must be 1..1000 (m3ter's limit), got {batch_size}")
        if max_in_flight < 1:
            raise ValueError(f"{self.task_id}: max_in_flight must be >= 1, got {max_in_flight}")
        if feed is not None and feed.type != "s3":
            raise ValueError(f"{self.task_id}: feed {feed.name!r} is of type {feed.type!r}; this operator reads S3")
        if feed is None:
            # Validated now, so a mapping mistake fails the DAG file's import, naming meter and field.
            self.meter_definitions = [self._meter(i, m) for i, m in enumerate(meters or [])]
            if not self.meter_definitions:
                raise ValueError(f"{self.task_id}: meters is empty; map at least one m3ter meter")
        self.feed = feed
        self.bucket = bucket
        self.keys = [keys] if isinstance(keys, str) else (list(keys) if keys is not None else None)
        self.prefix = prefix
        self.feed_name = feed_name or (feed.name if feed is not None else self.task_id)
        self.meter_field = meter_field
        self.id_field = id_field
        self.file_format = file_format
        self.delimiter = delimiter
        self.aws_conn_id = aws_conn_id
        self.state_bucket = state_bucket
        self.state_prefix = state_prefix
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.fail_on_bad_file = fail_on_bad_file

    def _meter(self, index: int, meter: Mapping[str, Any] | MeterDefinition) -> MeterDefinition:
        if isinstance(meter, MeterDefinition):
            return meter
        try:
            return MeterDefinition.model_validate(meter)
        except ValidationError as exc:
            raise ValueError(f"{self.task_id}: invalid meters[{index}] ({problems(exc)})") from None

    def _feed(self) -> UsageFeed:
        """The mapping with this run's rendered bucket/prefix (a feed object keeps its own otherwise)."""
        if self.feed is not None:
            changes = {k: v for k, v in (("bucket", self.bucket), ("prefix", self.prefix)) if v}
            return self.feed.model_copy(update=changes) if changes else self.feed
        try:
            return UsageFeed(name=self.feed_name, type="s3", conn_id=self.aws_conn_id, bucket=self.bucket,
                             prefix=self.prefix or "", format=self.file_format, delimiter=self.delimiter,
                             meter_field=self.meter_field, id_field=self.id_field, meters=self.meter_definitions)
        except ValidationError as exc:
            raise AirflowFailException(f"{self.task_id}: invalid usage mapping ({problems(exc)})") from None

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.storage import Storage
        from m3sh.usage.ingest import AccountLookup, ingest_s3_object, list_feed_objects

        feed = self._feed()
        if not feed.bucket:
            raise AirflowFailException(f"{self.task_id}: bucket is empty")
        state = Storage(self.aws_conn_id, self.state_bucket or feed.bucket, self.state_prefix or "")
        source = state.for_bucket(self.aws_conn_id if self.feed is None else feed.conn_id, feed.bucket)
        keys = self.keys if self.keys is not None else list_feed_objects(source, feed.prefix, None, None)
        self.log.info("%d object(s) to ingest from s3://%s (feed %s)", len(keys), feed.bucket, feed.name)
        lookup = AccountLookup(self.hook)
        results = [ingest_s3_object(feed=feed, key=key, m3ter=self.hook, source_storage=source, state=state,
                                    account_exists=lookup, batch_size=self.batch_size,
                                    max_in_flight=self.max_in_flight).to_dict() for key in keys]
        from m3sh.usage.bulk import finish_all, pending_job_ids, wait_jobs

        job_ids = pending_job_ids(results)
        if job_ids:  # a feed with bulk_min_bytes: m3ter's file upload jobs, awaited here (no deferral)
            jobs, error = wait_jobs(self.hook, job_ids, poll_interval=5.0, timeout_s=6 * 3600.0)
            results = finish_all(results, jobs, state, error)
        # Counts are this run's work: a file its manifest skips was counted by the run that ingested it.
        done_now = [r for r in results if r["status"] != "skipped"]
        summary: dict[str, Any] = {k: sum(int(r.get(k) or 0) for r in done_now) for k in COUNTED}
        summary.update(
            feed=feed.name, files=len(results), skipped=sum(1 for r in results if r["status"] == "skipped"),
            failed=[{"key": r["key"], "error": r["error"]} for r in results if r["status"] == "failed"],
            dead_letter_uris=[state.uri(r["dead_letter_key"]) for r in results if r.get("dead_letter_key")],
            files_detail=[{k: r.get(k) for k in ("key", "status", *COUNTED)} for r in results])
        self.log.info("usage ingest summary: %s", {k: v for k, v in summary.items() if k != "files_detail"})
        if summary["failed"] and self.fail_on_bad_file:
            raise AirflowException(f"{self.task_id}: {len(summary['failed'])} file(s) could not be read: "
                                   + "; ".join(f"{f['key']}: {f['error']}" for f in summary["failed"][:10]))
        return summary
