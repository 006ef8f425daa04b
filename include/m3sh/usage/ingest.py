"""Exactly-once ingest of one usage file: stream -> validate -> batch -> m3ter, with a manifest.

Exactly-once comes from two layers:

1. every measurement carries a deterministic ``uid`` that m3ter de-duplicates, so a re-sent batch
   is harmless;
2. a manifest per file (keyed by object key + ETag) records rows sent so far, checkpointed after
   every few batches; a retry after a crash skips what was confirmed, a re-run of a finished file
   skips it entirely, and a changed file (new ETag) is processed again.

Invalid rows never stop a file: each goes to ``dead-letter/usage/<feed>/<key>.jsonl`` with file,
line, field and reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import hashlib
import logging
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import IO, Any, cast

from m3sh import layout
from m3sh.config import UsageFeed
from m3sh.exceptions import InvalidRecord
from m3sh.hooks.m3ter import M3terHook, Measurement, measurement_batches_of_blocks
from m3sh.storage import Storage
from m3sh.usage.columnar import Built, Rejected, iter_built
from m3sh.usage.measurements import MeasurementBuilder
from m3sh.usage.reader import BadFile, csv_delimiter, detect_format

log = logging.getLogger(__name__)
MANIFEST_VERSION = 1
CHECKPOINT_EVERY_BATCHES = 5
# After the first checkpoint, at most one manifest write per this many seconds: a write is an S3 PUT
# (a few ms of botocore CPU), and at full speed every 5 batches was ~10 % of the ingest's CPU. A
# retry re-sends at most this long's batches more (m3ter drops them by uid).
CHECKPOINT_MIN_INTERVAL_S = 1.0


@dataclass
class FileResult:
    feed: str
    key: str
    status: str = "pending"  # complete | skipped | failed
    rows_read: int = 0
    accepted: int = 0
    rejected: int = 0
    batches_sent: int = 0
    rows_sent: int = 0
    dead_letter_key: str | None = None
    error: str | None = None
    seconds: float = 0.0
    etag: str = ""
    manifest_version: int = MANIFEST_VERSION
    finished_at: str | None = None
    # bulk (m3ter file uploads, m3sh.usage.bulk): status "awaiting" until the jobs finish
    mode: str = "request"  # request | bulk
    jobs: list[dict[str, Any]] = field(default_factory=list)  # {part, file_name, job_id, rows, bytes[, status]}
    bulk_started_at: str | None = None
    bulk_processed: int = 0  # rows m3ter's jobs processed / reported failed
    bulk_failed: int = 0
    m3ter_dead_letter_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AccountLookup:
    """Cached "does this account code exist in m3ter?": one paged listing, then a set lookup.

    Unknown codes are re-checked individually once (an account created after the listing), then
    remembered as missing for the rest of the task.
    """

    def __init__(self, hook: M3terHook) -> None:
        self.hook = hook
        self._known: set[str] | None = None
        self._missing: set[str] = set()

    def __call__(self, code: str) -> bool:
        if self._known is None:
            self._known = {a["code"] for a in self.hook.list_accounts() if a.get("code")}
        if code in self._known:
            return True
        if code in self._missing:
            return False
        if self.hook.find_account(code) is not None:
            self._known.add(code)
            return True
        self._missing.add(code)
        return False


def manifest_key(storage: Storage, feed: str, key: str, etag: str) -> str:
    digest = hashlib.sha256(f"{key}|{etag}".encode()).hexdigest()[:24]
    return layout.usage_manifest(storage, feed, digest)


class _Progress:
    def __init__(self, source: str, total_bytes: int, every: int) -> None:
        self.source, self.total, self.every = source, total_bytes, every
        self.t0 = time.monotonic()
        self.next_at = every

    def maybe_log(self, rows: int, bytes_read: int) -> None:
        if rows < self.next_at:
            return
        self.next_at += self.every
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        rate = rows / elapsed
        eta = (elapsed / bytes_read * (self.total - bytes_read)) if bytes_read and self.total else float("nan")
        log.info("%s: %d rows done, %.0f rows/s, %.0f%% of bytes, ETA %.0fs", self.source, rows, rate,
                 100 * bytes_read / self.total if self.total else 0, eta)


class _CountingStream:
    """Wraps the S3 body to know how far we are (for the ETA) without buffering it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.raw.read(n)
        self.bytes_read += len(data)
        return data

    def readable(self) -> bool:
        return True

    # io.TextIOWrapper probes these on plain (not gzipped) CSV/JSONL bodies.
    def writable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    @property
    def closed(self) -> bool:
        return False

    def flush(self) -> None:
        return None


class _SteadySenders:
    """Let paced measurement requests *arrive* evenly, or m3ter's 50 req/s limit answers 429 (and its
    1 s Retry-After stalls the in-order window). Two things bunch them up, both because the parsing
    thread holds the GIL while the senders wait for it:

    * a task process already holds ~1M objects (Airflow, the SDKs), and millions of short-lived row
      dicts make the cyclic GC run a full collection over all of them every ~100 batches (~150 ms).
      Frozen, that heap is skipped (botocore's endpoint rules, ~50k objects loaded with the first
      S3 client, too: it is entered once the clients exist); unfrozen when the last file is done;
    * a sender woken by the pacer waits up to the 5 ms switch interval at each of its several GIL
      hand-offs before its bytes leave; 1 ms keeps that jitter well inside one pacing interval.

    Measured with m3ter's limits on (paced at 49/s): 6 429s per 300 requests before, none after in
    three runs; the usage_ingest benchmark went from 0.57 to 0.98 of the limit. Re-entrant across
    threads: the first file in sets both, the last one out restores them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved_switch_interval = sys.getswitchinterval()
        self._unfreeze = True

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._saved_switch_interval = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved_switch_interval, 0.001))
                # A process that froze its heap itself (e.g. forked by an executor) stays frozen.
                self._unfreeze = gc.get_freeze_count() == 0
            self._depth += 1
            gc.freeze()  # also freezes what an earlier file in this process left behind
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    sys.setswitchinterval(self._saved_switch_interval)
                    if self._unfreeze:
                        gc.unfreeze()


_steady_senders = _SteadySenders()


def ingest_s3_object(
    *,
    feed: UsageFeed,
    key: str,
    m3ter: M3terHook,
    source_storage: Storage,
    state: Storage,
    account_exists: Callable[[str], bool],
    progress_every: int = 50_000,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    batch_size: int = 1000,
    max_in_flight: int = 4,
) -> FileResult:
    """Ingest one object of ``feed``; never raises for bad rows, raises BadFile only via the result.

    An object of at least ``feed.bulk_min_bytes`` goes through m3ter's file uploads
    (:mod:`m3sh.usage.bulk`) and comes back ``awaiting`` its jobs (see :func:`m3sh.usage.bulk.finish_bulk`)."""
    t0 = time.monotonic()
    head = source_storage.client.head_object(Bucket=source_storage.bucket, Key=key)
    etag = str(head.get("ETag", "")).strip('"')
    mkey = manifest_key(state, feed.name, key, etag)
    source = f"s3://{source_storage.bucket}/{key}"
    previous = state.get_json(mkey) or {}
    result = _resume(previous, feed.name, key, etag, source)
    if result.status in ("skipped", "awaiting"):
        return result
    bulk = (not dry_run and feed.bulk_min_bytes is not None
            and int(head.get("ContentLength", 0)) >= feed.bulk_min_bytes)
    if bulk:
        # Every part is rebuilt (deterministically) and matched to m3ter's jobs by file name, so a
        # retry starts at row 0; the first attempt's time bounds the job listing.
        result.mode, result.rows_sent, result.batches_sent = "bulk", 0, 0
        result.bulk_started_at = previous.get("bulk_started_at") or dt.datetime.now(dt.UTC).isoformat()
        state.put_json(mkey, {**result.to_dict(), "status": "in_progress"})
    builder = MeasurementBuilder(feed, account_exists, now=now)
    body = _CountingStream(source_storage.client.get_object(Bucket=source_storage.bucket, Key=key)["Body"])
    progress = _Progress(source, int(head.get("ContentLength", 0)), progress_every)
    dead = tempfile.TemporaryFile()  # noqa: SIM115 - closed below; invalid rows spool to disk, memory stays flat

    blocks = _valid_blocks(_built(body, source, key, feed, builder), result, dead=dead,
                           tick=lambda: progress.maybe_log(result.rows_read, body.bytes_read),
                           resume_after=result.rows_sent)
    if bulk:
        _send_bulk(blocks, feed=feed, key=key, etag=etag, m3ter=m3ter, result=result,
                   checkpoint=lambda: state.put_json(mkey, {**result.to_dict(), "status": "in_progress"}))
        return _finish_file(result, t0, dead, state, source, body, mkey, dry_run)

    last_checkpoint: list[float] = []  # monotonic time of the last manifest write, once there was one

    def confirmed(size: int) -> None:
        result.batches_sent += 1
        result.rows_sent += size
        if dry_run or result.batches_sent % CHECKPOINT_EVERY_BATCHES:
            return
        now = time.monotonic()
        if last_checkpoint and now - last_checkpoint[0] < CHECKPOINT_MIN_INTERVAL_S:
            return
        state.put_json(mkey, {**result.to_dict(), "status": "in_progress"})
        last_checkpoint[:] = [now]

    # Both S3 clients exist by now (head_object, the manifest read): their objects are frozen too.
    with _steady_senders(), ThreadPoolExecutor(max_workers=max(1, max_in_flight),
                                               thread_name_prefix="m3sh-ingest") as pool:
        sender = _InOrderSender(pool, m3ter.submit_measurements, max(1, max_in_flight), confirmed)
        try:
            for batch in measurement_batches_of_blocks(blocks, max_items=batch_size):
                if dry_run:
                    confirmed(len(batch))
                    continue
                sender.send(batch)
            sender.confirm_all()
        except BadFile as exc:
            sender.confirm_all()
            result.status, result.error = "failed", str(exc)
            log.error("%s", exc)
        except BaseException:
            sender.cancel()
            raise
        else:
            result.status = "complete"
    return _finish_file(result, t0, dead, state, source, body, mkey, dry_run)


def _send_bulk(blocks: Iterator[list[Measurement]], *, feed: UsageFeed, key: str, etag: str, m3ter: M3terHook,
               result: FileResult, checkpoint: Callable[[], object]) -> None:
    from m3sh.usage.bulk import send_bulk

    try:
        send_bulk(blocks, m3ter=m3ter, feed=feed.name, key=key, etag=etag, part_bytes=feed.bulk_part_bytes,
                  started_at=str(result.bulk_started_at), result=result, checkpoint=checkpoint)
    except BadFile as exc:
        result.status, result.error = "failed", str(exc)
        log.error("%s", exc)
    else:
        result.status = "awaiting"


def _finish_file(result: FileResult, t0: float, dead: IO[bytes], state: Storage, source: str,  # noqa: PLR0917
                 body: _CountingStream, mkey: str, dry_run: bool) -> FileResult:
    result.seconds = round(time.monotonic() - t0, 3)
    _store_dead_letters(result, dead, state, source)
    result.finished_at = dt.datetime.now(dt.UTC).isoformat()
    if result.status in ("complete", "awaiting") and result.rows_read == 0:
        # A quiet hour is often exported as an empty file: nothing to send, and not a failure.
        log.info("%s: no rows (%s); not an error", source,
                 "0 bytes" if body.bytes_read == 0 else "only a header, a byte-order mark or blank lines")
    if not dry_run and result.status in ("complete", "awaiting"):
        state.put_json(mkey, result.to_dict())
    log.info("%s: %s — read %d, accepted %d, rejected %d, %d batch(es) in %.1fs", source, result.status,
             result.rows_read, result.accepted, result.rejected, result.batches_sent, result.seconds)
    return result


def _built(body: Any, source: str, key: str, feed: UsageFeed,
           builder: MeasurementBuilder) -> Iterator[list[Built]]:
    """The object's rows built into measurements, read when first asked for: a file m3sh cannot read
    raises BadFile inside the send loop, which records it as a failed file instead of failing the task."""
    fmt, gz = detect_format(key, feed.format)
    yield from iter_built(body, source, fmt, gz, csv_delimiter(key, feed.delimiter), builder=builder)


def _valid_blocks(built: Iterator[list[Built]], result: FileResult, *, dead: IO[bytes],
                  tick: Callable[[], None], resume_after: int) -> Iterator[list[Measurement]]:
    """Each block's measurements past the ``resume_after`` a previous attempt confirmed; invalid
    rows are counted and spooled to ``dead`` with file, line, field and reason. A block at a time,
    not a row at a time: the columnar path builds whole blocks, and a generator step per row would
    give back part of what it saves."""
    for block in built:
        result.rows_read += len(block)
        bad = [m for m in block if type(m) is Rejected]
        # the type check above is what narrows: Rejected never reaches good
        good = cast("list[Measurement]", [m for m in block if type(m) is not Rejected] if bad else block)
        for m in bad:
            rejected = cast("Rejected", m)
            _dead_letter(dead, rejected.error, rejected.row)
        result.rejected += len(bad)
        skip = max(0, min(len(good), resume_after - result.accepted))
        result.accepted += len(good)
        if skip < len(good):
            yield good[skip:] if skip else good
        tick()


def _resume(previous: dict[str, Any], feed: str, key: str, etag: str, source: str) -> FileResult:
    """Where an object's ingest starts: ``skipped`` when its manifest says complete, else after the
    measurements a previous attempt confirmed for the same content (ETag)."""
    if previous.get("status") == "complete":
        log.info("usage file %s already ingested (%s rows accepted); skipping", source, previous.get("accepted"))
        return FileResult(**{**previous, "status": "skipped"})
    if previous.get("status") == "awaiting" and previous.get("etag") == etag:
        # Every part is uploaded already (m3sh.usage.bulk): only the jobs remain to be awaited.
        log.info("usage file %s: %d file upload job(s) already sent; awaiting them", source,
                 len(previous.get("jobs") or []))
        return FileResult(**previous)
    resume_after = int(previous.get("rows_sent", 0)) if previous.get("etag") == etag else 0
    if resume_after:
        log.info("resuming %s after %d confirmed measurements", source, resume_after)
    return FileResult(feed=feed, key=key, etag=etag, rows_sent=resume_after)


class _InOrderSender:
    """Up to ``window`` requests in flight while the next batches are read and validated: the round
    trips overlap the CPU work and each other (with one in flight a 22 ms round trip caps a 50 req/s
    ingest limit at ~45/s). Batches are still *confirmed* strictly in order, so the manifest's
    rows_sent stays a confirmed prefix: after a failure the retry re-sends from the first
    unconfirmed batch, and any later batch that did land is dropped by m3ter's uid de-dup."""

    def __init__(self, pool: ThreadPoolExecutor, send: Callable[[list[Measurement]], Any], window: int,
                 confirmed: Callable[[int], None]) -> None:
        self.pool, self._send, self.window, self.confirmed = pool, send, window, confirmed
        self.in_flight: deque[tuple[Future[Any], int]] = deque()

    def send(self, batch: list[Measurement]) -> None:
        if len(self.in_flight) >= self.window:
            self.confirm_oldest()
        self.in_flight.append((self.pool.submit(self._send, batch), len(batch)))

    def confirm_oldest(self) -> None:
        future, size = self.in_flight.popleft()
        future.result()  # re-raises the submit's error in this thread
        self.confirmed(size)

    def confirm_all(self) -> None:
        while self.in_flight:
            self.confirm_oldest()

    def cancel(self) -> None:
        for future, _ in self.in_flight:  # not started yet: don't send after the task has failed
            future.cancel()


def _store_dead_letters(result: FileResult, dead: IO[bytes], state: Storage, source: str) -> None:
    """Write the spooled invalid rows (if any) to the feed's dead-letter object; close the spool."""
    if result.rejected:
        result.dead_letter_key = layout.usage_dead_letter(state, result.feed, result.key)
        dead.seek(0)
        state.put_bytes(result.dead_letter_key, dead.read(), "application/x-ndjson")
        log.warning("%s: %d invalid row(s) dead-lettered to %s", source, result.rejected,
                    state.uri(result.dead_letter_key))
    dead.close()


def _dead_letter(out: IO[bytes], bad: InvalidRecord, row: dict[str, Any] | None) -> None:
    import json

    entry = {"file": bad.source, "line": bad.line, "field": bad.field, "reason": bad.reason, "row": row}
    out.write(json.dumps(entry, default=str).encode() + b"\n")


@dataclass
class FeedFiles:
    feed: str
    keys: list[str] = field(default_factory=list)


def list_feed_objects(storage: Storage, prefix: str, start: dt.datetime | None, end: dt.datetime | None) -> list[str]:
    """Object keys under ``prefix`` last modified in ``[start, end)`` (all of them when no window)."""
    keys = []
    for obj in storage.list_keys(prefix):
        modified = obj["LastModified"]
        if start is not None and modified < start:
            continue
        if end is not None and modified >= end:
            continue
        if obj["Key"].endswith("/"):
            continue
        keys.append(obj["Key"])
    return sorted(keys)
