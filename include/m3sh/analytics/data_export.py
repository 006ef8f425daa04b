"""``analytics.source: data_export``: the day's usage from an m3ter ad-hoc data export job.

For orgs with m3ter data exports enabled, one export job replaces the usage query (and its
20,000-row pages): ``POST /dataexports/adhoc`` (``sourceType: USAGE``, the same groups and
aggregations as the API path, the day as ``startDate``/``endDate``) -> poll
``GET /dataexports/jobs/{id}`` until ``SUCCEEDED`` -> ``GET /dataexports/jobs/{id}/getdownloadurl``
-> download the file (a presigned URL: no m3ter credentials are sent to it) -> rows in the usage
query's shape, converted by :meth:`DayExtract.usage_rows_from` to the same ``usage_daily`` schema.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import requests

from m3sh.exceptions import RetryableError

if TYPE_CHECKING:
    from m3sh.analytics.extract import DayExtract
    from m3sh.hooks.m3ter import M3terHook

log = logging.getLogger(__name__)
_TEXT_COLUMNS = {"accountId", "accountCode", "meterId", "meterCode", "timeGroup"}


class DataExportFailed(RuntimeError):
    """The export job failed or did not finish in time (the task's retry starts a new job)."""


def parse_export(content: bytes, fmt: str = "CSV") -> list[dict[str, Any]]:
    """CSV or JSONL export file -> usage-query-shaped rows (aggregation columns as numbers)."""
    if fmt == "JSONL":
        return [json.loads(line) for line in content.decode().splitlines() if line.strip()]
    rows = []
    for raw in csv.DictReader(io.StringIO(content.decode("utf-8-sig"))):
        row: dict[str, Any] = {}
        for key, value in raw.items():
            if value in (None, ""):
                continue
            row[key] = value if key in _TEXT_COLUMNS else float(value)
        rows.append(row)
    return rows


def usage_via_data_export(hook: M3terHook, extract: DayExtract, *, timeout_s: float = 900,
                          poll_s: float = 5) -> list[dict[str, Any]]:
    body = {"sourceType": "USAGE", "exportFileFormat": "CSV", **extract.usage_query_body()}
    if not body["meterIds"]:
        return []
    job_id = hook.create_adhoc_data_export(body)["jobId"]
    log.info("m3ter data export job %s for usage on %s started", job_id, extract.day)
    deadline = time.monotonic() + timeout_s
    while True:
        job = hook.get_data_export_job(job_id)
        status = job.get("status")
        if status == "SUCCEEDED":
            break
        if status == "FAILED":
            raise DataExportFailed(f"m3ter data export job {job_id} (usage {extract.day}) FAILED; see the "
                                   "dataexport.job.failure event in m3ter")
        if time.monotonic() > deadline:
            raise DataExportFailed(f"m3ter data export job {job_id} (usage {extract.day}) still {status} after "
                                   f"{timeout_s:.0f}s (analytics.export_timeout_s)")
        time.sleep(poll_s)
    url = hook.get_data_export_download_url(job_id)
    resp = requests.get(url, timeout=120)  # presigned: never send the m3ter token along
    if resp.status_code >= 500:
        raise RetryableError(f"data export download for job {job_id}: HTTP {resp.status_code}")
    if resp.status_code != 200:
        raise DataExportFailed(f"data export download for job {job_id}: HTTP {resp.status_code} "
                               "(the URL is valid for 15 minutes after getdownloadurl)")
    rows = parse_export(resp.content)
    log.info("m3ter data export job %s: %d usage row(s), %d bytes", job_id, len(rows), len(resp.content))
    return rows
