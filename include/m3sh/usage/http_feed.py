"""Exactly-once ingest of a paged HTTP usage feed (a customer platform's own usage API).

Pages are fetched through the official ``HttpHook`` (connection host + bearer token in the
connection password) for the data interval ``[since, until)``; rows go through the same validation
and deterministic uids as files. A manifest per (feed, window) makes a re-run of a finished window a
no-op; a partial window is simply re-sent, and m3ter drops the duplicate uids.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from m3sh import layout
from m3sh.config import UsageFeed
from m3sh.exceptions import InvalidRecord
from m3sh.hooks.m3ter import M3terHook, measurement_batches
from m3sh.storage import Storage
from m3sh.usage.ingest import FileResult
from m3sh.usage.measurements import MeasurementBuilder

log = logging.getLogger(__name__)


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def iter_feed_rows(feed: UsageFeed, start: dt.datetime | None, end: dt.datetime | None) -> Iterator[dict[str, Any]]:
    """Every row of the feed in the window, page by page (``next_field`` null ends it)."""
    from airflow.providers.http.hooks.http import HttpHook
    from airflow.sdk import BaseHook

    hook = HttpHook(method="GET", http_conn_id=feed.conn_id)
    token = BaseHook.get_connection(feed.conn_id).password
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params: dict[str, Any] = {"limit": feed.page_size}
    if start is not None:
        params[feed.since_param] = _iso(start)
    if end is not None:
        params[feed.until_param] = _iso(end)
    cursor: Any = None
    while True:
        page_params = {**params, **({feed.page_param: cursor} if cursor is not None else {})}
        response = hook.run(feed.endpoint, data=page_params, headers=headers)
        body = response.json()
        rows = body.get(feed.data_field)
        if not isinstance(rows, list):
            raise ValueError(f"usage feed {feed.name}: response has no list in {feed.data_field!r}")
        yield from rows
        cursor = body.get(feed.next_field)
        if cursor in (None, ""):
            return


def ingest_http_feed(
    *,
    feed: UsageFeed,
    m3ter: M3terHook,
    state: Storage,
    account_exists: Callable[[str], bool],
    start: dt.datetime | None,
    end: dt.datetime | None,
    dry_run: bool = False,
    rows: Iterator[dict[str, Any]] | None = None,
) -> FileResult:
    t0 = time.monotonic()
    window = f"{_iso(start) or 'begin'}..{_iso(end) or 'now'}"
    source = f"{feed.endpoint}?{window}"
    mkey = layout.usage_manifest(state, feed.name, hashlib.sha256(window.encode()).hexdigest()[:24])
    windowed = start is not None and end is not None
    previous = state.get_json(mkey) if windowed else None
    if previous and previous.get("status") == "complete":
        log.info("usage feed %s window %s already ingested (%s rows); skipping", feed.name, window,
                 previous.get("accepted"))
        return FileResult(**{**previous, "status": "skipped"})
    result = FileResult(feed=feed.name, key=source)
    builder = MeasurementBuilder(feed, account_exists)
    dead: list[dict[str, Any]] = []

    def measurements() -> Iterator[dict[str, Any]]:
        for line, row in enumerate(rows if rows is not None else iter_feed_rows(feed, start, end), start=1):
            result.rows_read += 1
            try:
                if not isinstance(row, dict):
                    raise InvalidRecord("a usage row must be a JSON object", source=source, line=line)
                m = builder.build({k: "" if v is None else str(v) for k, v in row.items()}, feed.name, line)
            except InvalidRecord as bad:
                result.rejected += 1
                dead.append({"file": source, "line": bad.line, "field": bad.field, "reason": bad.reason,
                             "row": row})
                continue
            result.accepted += 1
            yield m

    for batch in measurement_batches(measurements()):
        if not dry_run:
            m3ter.submit_measurements(batch)
        result.batches_sent += 1
        result.rows_sent += len(batch)
    result.status = "complete"
    result.seconds = round(time.monotonic() - t0, 3)
    result.finished_at = dt.datetime.now(dt.UTC).isoformat()
    if dead:
        result.dead_letter_key = layout.usage_dead_letter(state, feed.name,
                                                          hashlib.sha256(window.encode()).hexdigest()[:24])
        state.put_bytes(result.dead_letter_key, "".join(json.dumps(d, default=str) + "\n" for d in dead).encode(),
                        "application/x-ndjson")
    if windowed and not dry_run:
        state.put_json(mkey, result.to_dict())
    log.info("usage feed %s %s: read %d, accepted %d, rejected %d, %d batch(es) in %.1fs", feed.name, window,
             result.rows_read, result.accepted, result.rejected, result.batches_sent, result.seconds)
    return result
