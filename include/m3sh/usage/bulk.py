"""Bulk usage ingest through m3ter's measurement File Upload Service, exactly once.

For an object of a feed with ``bulk_min_bytes`` (:func:`m3sh.usage.ingest.ingest_s3_object` decides):
rows are read and validated exactly as on the request path (invalid rows dead-lettered with file,
line, field and reason), the valid measurements written streaming into JSON-array files on local
disk of at most ``bulk_part_bytes`` each (memory stays flat whatever the object's size), and each
file uploaded (``generateUploadUrl``, then ``PUT`` within the URL's minute). The jobs are then awaited
(synchronously here, or by :class:`~m3sh.triggers.m3ter_uploads.M3terUploadJobsTrigger` when the
operator defers) and :func:`finish_bulk` totals them, dead-letters what m3ter reports as failed and
marks the object's manifest complete.

File format: a JSON array of Ingest API measurements, as m3ter's guide "File Upload Service API"
shows (https://docs.m3ter.com/guides/billing-and-usage-data/submitting-usage-data/file-upload-service-api:
"the file should contain an array of measurements data").

Exactly once across retries and crashes:

* each file's ``fileName`` is deterministic: ``m3sh-<sha256(feed|key|etag)[:32]>-p<part>.json``. Before
  uploading a part, the jobs created since the object's first attempt are listed (m3ter filters jobs
  by creation date only, so names are matched here) and a ``running`` or ``succeeded`` job of the
  same name is re-used, not uploaded again; a ``notUploaded`` one (a worker killed mid-upload, or
  the URL's minute passed) or a ``failed`` one is uploaded again;
* every measurement keeps its deterministic ``uid``, which m3ter de-duplicates: a file sent twice
  (two workers at once) ingests nothing twice; its repeated rows come back as failed rows;
* the manifest records the jobs once every part is uploaded (``awaiting``), so a retry of the wait
  does not rebuild or re-upload anything.

Failed rows: m3ter's file upload API reports only counts (``failedRows``), no per-row reasons (each
failure is an ``ingest.validation.failure`` event in m3ter). The dead letter therefore names the
job, its file, the part's row count and the number of failed rows, and says so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from itertools import accumulate
from typing import IO, Any

from m3sh import layout
from m3sh.exceptions import RetryableError
from m3sh.hooks.m3ter import UPLOAD_JOB_TERMINAL, M3terHook, Measurement, encode_measurement
from m3sh.storage import Storage

log = logging.getLogger(__name__)
UPLOAD_ATTEMPTS = 3
# Jobs are looked up from a little before the object's first attempt (clock skew between us and m3ter).
JOB_LOOKBACK = dt.timedelta(minutes=10)
_RANK = {"succeeded": 3, "running": 2, "failed": 1, "notUploaded": 0}
_REUSABLE = ("running", "succeeded")


def upload_file_name(feed: str, key: str, etag: str, part: int) -> str:
    """The deterministic ``fileName`` (≤ 100 characters, as the spec allows) of one part of one object version."""
    digest = hashlib.sha256(f"{feed}|{key}|{etag}".encode()).hexdigest()[:32]
    return f"m3sh-{digest}-p{part:04d}.json"


def existing_jobs(m3ter: M3terHook, names_prefix: str, since: str) -> dict[str, dict[str, Any]]:
    """The most advanced job per ``fileName`` starting with ``names_prefix``, created since ``since``."""
    start = (dt.datetime.fromisoformat(since) - JOB_LOOKBACK).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    best: dict[str, dict[str, Any]] = {}
    for job in m3ter.list_upload_jobs(date_created_start=start):
        name = str(job.get("fileName") or "")
        if not name.startswith(names_prefix):
            continue
        held = best.get(name)
        if held is None or _RANK.get(str(job.get("status")), -1) > _RANK.get(str(held.get("status")), -1):
            best[name] = job
    return best


def upload_part(m3ter: M3terHook, name: str, fileobj: IO[bytes], size: int,
                existing: dict[str, dict[str, Any]]) -> str:
    """The job id of ``name``: a running/succeeded job of that name re-used, else a new upload
    (a new URL per attempt: an expired URL or a failed PUT is retried with a fresh one)."""
    job = existing.get(name)
    if job is not None and job.get("status") in _REUSABLE:
        log.info("file upload %s already sent (job %s, %s); not uploading it again", name, job["id"], job["status"])
        return str(job["id"])
    for attempt in range(1, UPLOAD_ATTEMPTS + 1):
        got = m3ter.generate_upload_url(name, size)
        fileobj.seek(0)
        try:
            m3ter.put_upload(str(got["url"]), dict(got.get("headers") or {}), fileobj, size)
        except RetryableError as exc:
            if attempt == UPLOAD_ATTEMPTS:
                raise
            log.warning("upload of %s (job %s) failed, attempt %d of %d: %s; retrying with a new URL", name,
                        got.get("jobId"), attempt, UPLOAD_ATTEMPTS, exc)
            time.sleep(min(2.0 ** attempt, 10.0))
            continue
        log.info("uploaded %s (%d bytes) as file upload job %s", name, size, got["jobId"])
        return str(got["jobId"])
    raise AssertionError("unreachable")  # pragma: no cover


class PartWriter:
    """Measurements into JSON-array files on local disk of at most ``part_bytes`` each; ``on_part``
    gets each finished file (open, at offset 0), its part number, size and row count. The writer
    closes the file after ``on_part`` returns unless ``close_parts`` is false: then ``on_part`` owns
    it (:func:`send_bulk` uploads it in the background while the next part is written)."""

    def __init__(self, part_bytes: int, on_part: Callable[[int, IO[bytes], int, int], None], *,
                 close_parts: bool = True) -> None:
        self.part_bytes, self.on_part, self.close_parts = part_bytes, on_part, close_parts
        self.part = 0
        self.file: IO[bytes] | None = None
        self.size = self.rows = 0

    def add(self, measurement: Measurement) -> None:
        self.add_block([measurement])

    def add_block(self, block: Sequence[Measurement]) -> None:
        """A block's measurements, written a part-sized run at a time: one ``join`` and one write per
        run instead of two writes per measurement (a block is ~8,000 rows from the columnar path)."""
        encoded = [encode_measurement(m) for m in block]
        # cum[k]: bytes of the first k items, each with its ",\n" separator
        cum = list(accumulate((len(e) + 2 for e in encoded), initial=0))
        i = 0
        while i < len(encoded):
            if self.file is None:
                self.file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _close or by on_part
                self.file.write(b"[")
                self.size, self.rows = 1, 0
            first = self.rows == 0  # the part's first item has no separator before it
            budget = self.part_bytes - 1 - self.size + (2 if first else 0)  # 1: the closing "]"
            # j: the most items from i that fit (none when the part is full, or holds one oversized item)
            j = max(i, bisect_right(cum, cum[i] + budget, lo=i) - 1)
            if j == i:
                if not first:
                    self._close()
                    continue
                j = i + 1  # one measurement larger than a part goes alone, as before
            if not first:
                self.file.write(b",\n")
            self.file.write(b",\n".join(encoded[i:j]))
            self.size += cum[j] - cum[i] - (2 if first else 0)
            self.rows += j - i
            i = j

    def finish(self) -> None:
        if self.file is not None:
            self._close()

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def _close(self) -> None:
        assert self.file is not None
        self.file.write(b"]")
        self.size += 1
        self.file.flush()
        self.file.seek(0)
        file, self.file = self.file, None
        try:
            self.on_part(self.part, file, self.size, self.rows)
        finally:
            if self.close_parts:
                file.close()
        self.part += 1


def send_bulk(blocks: Iterable[Sequence[Measurement]], *, m3ter: M3terHook, feed: str, key: str, etag: str,
              part_bytes: int, started_at: str, result: Any, checkpoint: Callable[[], object]) -> None:
    """Write, upload and record every part of one object (``result`` is its FileResult: ``jobs``,
    ``batches_sent`` = files, ``rows_sent`` = measurements uploaded); ``checkpoint`` after each part.

    A part is uploaded on one background thread while the next is written (on a WAN the PUT of a
    16 MiB part is seconds of waiting); at most one upload is in flight, and parts are recorded and
    checkpointed in order, each once its upload has returned."""
    prefix = upload_file_name(feed, key, etag, 0)[: -len("p0000.json")]
    found = existing_jobs(m3ter, prefix, started_at)
    result.jobs = []
    # (upload, its file, part number, file name, rows, bytes) of the part being uploaded, if any
    in_flight: list[tuple[Future[str], IO[bytes], int, str, int, int]] = []

    def settle() -> None:
        """Wait for the part in flight, then record and checkpoint it (its file closed either way)."""
        future, fileobj, part, name, rows, size = in_flight.pop()
        try:
            job_id = future.result()
        finally:
            fileobj.close()
        result.jobs.append({"part": part, "file_name": name, "job_id": job_id, "rows": rows, "bytes": size})
        result.batches_sent += 1
        result.rows_sent += rows
        checkpoint()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="m3sh-bulk-upload") as pool:

        def on_part(part: int, fileobj: IO[bytes], size: int, rows: int) -> None:
            try:
                if in_flight:
                    settle()
            except BaseException:
                fileobj.close()
                raise
            name = upload_file_name(feed, key, etag, part)
            future = pool.submit(upload_part, m3ter, name, fileobj, size, found)
            in_flight.append((future, fileobj, part, name, rows, size))

        writer = PartWriter(part_bytes, on_part, close_parts=False)
        try:
            for block in blocks:
                writer.add_block(block)
            writer.finish()
            if in_flight:
                settle()
        finally:
            writer.discard()
            if in_flight:  # something failed while a part was uploading: let it end, then close its file
                future, fileobj, *_ = in_flight.pop()
                wait([future])
                fileobj.close()


def pending_job_ids(results: Iterable[dict[str, Any]]) -> list[str]:
    return [j["job_id"] for r in results if r.get("status") == "awaiting" for j in r.get("jobs") or []]


def wait_jobs(m3ter: M3terHook, job_ids: Iterable[str], *, poll_interval: float,
              timeout_s: float) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Poll until every job is terminal (the trigger's status map): ``(finished jobs, error or None)``."""
    ids = list(dict.fromkeys(job_ids))
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for job_id in [j for j in ids if j not in done]:
            job = m3ter.get_upload_job(job_id)
            if job.get("status") in UPLOAD_JOB_TERMINAL:
                done[job_id] = job
        pending = [j for j in ids if j not in done]
        if not pending:
            return done, None
        if time.monotonic() >= deadline:
            return done, f"{len(pending)} file upload job(s) unfinished after {timeout_s:.0f}s: {pending[:10]}"
        time.sleep(poll_interval)


def finish_bulk(result: dict[str, Any], jobs: dict[str, dict[str, Any]], state: Storage,
                error: str | None = None) -> dict[str, Any]:
    """An ``awaiting`` result made final from its jobs: counts, failed rows dead-lettered, manifest
    complete (or the file failed, naming the jobs; the next run re-sends what did not arrive)."""
    from m3sh.usage.ingest import manifest_key

    out = dict(result)
    source = f"{out['key']}"
    processed = failed_rows = 0
    problems: list[str] = []
    dead: list[dict[str, Any]] = []
    for part in out.get("jobs") or []:
        job = jobs.get(part["job_id"])
        if job is None:
            problems.append(f"job {part['job_id']} ({part['file_name']}) unfinished")
            continue
        part["status"] = job.get("status")
        processed += int(job.get("processedRows") or 0)
        failed_rows += int(job.get("failedRows") or 0)
        if job.get("status") == "failed":
            problems.append(f"job {part['job_id']} ({part['file_name']}) failed after {job.get('processedRows')} "
                            f"of {part['rows']} row(s)")
        if job.get("failedRows"):
            dead.append({
                "file": source, "line": None, "field": None, "part": part["part"], "job_id": part["job_id"],
                "file_name": part["file_name"], "rows_in_file": part["rows"], "failed_rows": job.get("failedRows"),
                "reason": f"m3ter's file upload job reported {job.get('failedRows')} failed row(s) of "
                          f"{job.get('totalRows')}; its API gives no per-row reasons (m3ter records each as an "
                          "ingest.validation.failure event). Rows uploaded again after a retry fail as "
                          "duplicates of their uid, harmlessly"})
    out["bulk_processed"], out["bulk_failed"] = processed, failed_rows
    if dead:
        dl_key = layout.usage_dead_letter(state, out["feed"], out["key"] + ".m3ter-failed")
        state.put_bytes(dl_key, b"".join(json.dumps(d).encode() + b"\n" for d in dead), "application/x-ndjson")
        out["m3ter_dead_letter_key"] = dl_key
        log.warning("%s: m3ter reported %d failed row(s); recorded in %s", source, failed_rows, state.uri(dl_key))
    out["finished_at"] = dt.datetime.now(dt.UTC).isoformat()
    mkey = manifest_key(state, out["feed"], out["key"], out["etag"])
    if error or problems:
        out["status"], out["error"] = "failed", "; ".join([*([error] if error else []), *problems])
        # The next run starts the object again: succeeded/running jobs are re-used by file name.
        state.put_json(mkey, {**out, "status": "in_progress"})
    else:
        out["status"] = "complete"
        state.put_json(mkey, out)
    log.info("%s: bulk %s — %d file(s), %d row(s) uploaded, m3ter processed %d, failed %d", source, out["status"],
             len(out.get("jobs") or []), out.get("rows_sent", 0), processed, failed_rows)
    return out


def finish_all(results: list[dict[str, Any]], jobs: dict[str, dict[str, Any]], state: Storage,
               error: str | None = None) -> list[dict[str, Any]]:
    return [finish_bulk(r, jobs, state, error) if r.get("status") == "awaiting" else r for r in results]


