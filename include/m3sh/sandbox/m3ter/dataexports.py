"""Minimal m3ter data exports (Preview in m3ter): ad-hoc USAGE export jobs, job status, download URL.

Enough for ``m3sh_analytics_export`` with ``analytics.source: data_export``: ``POST /dataexports/adhoc``
with ``sourceType: USAGE`` runs the body as a usage query over the emulator's hourly aggregates and
completes at once (``SUCCEEDED``); ``GET /dataexports/jobs/{id}``; ``GET .../getdownloadurl`` returns
an unauthenticated, expiring URL (like m3ter's presigned S3 URL, valid 15 minutes). The file is CSV
(or JSONL with ``exportFileFormat: JSONL``) with one column per usage-query row field
(``accountId, accountCode, meterId, meterCode, timeGroup, <field>_<function>...``): an assumption,
since m3ter does not document the file layout. OPERATIONAL exports answer 400 here.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from m3sh.sandbox.m3ter import ingest
from m3sh.sandbox.m3ter.http import ORG, ok, read_json
from m3sh.sandbox.m3ter.schemas import ApiError
from m3sh.sandbox.m3ter.store import new_id
from m3sh.sandbox.m3ter.timeutil import now_iso

if TYPE_CHECKING:
    from m3sh.sandbox.m3ter.app import M3terEmulator

URL_TTL_S = 900
DOWNLOAD_PATH = "/_downloads/dataexports/"


def _jobs(emu: M3terEmulator) -> dict[str, dict[str, Any]]:
    jobs: dict[str, dict[str, Any]] | None = getattr(emu, "_data_export_jobs", None)
    if jobs is None or getattr(emu, "_data_export_store", None) is not emu.store:  # reset -> forget jobs
        jobs = {}
        emu._data_export_jobs = jobs  # type: ignore[attr-defined]
        emu._data_export_store = emu.store  # type: ignore[attr-defined]
    return jobs


def _render(rows: list[dict[str, Any]], fmt: str) -> bytes:
    if fmt == "JSONL":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def register(api: FastAPI, emu: M3terEmulator) -> None:
    @api.post(ORG + "/dataexports/adhoc")
    async def adhoc(request: Request) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict) or body.get("sourceType") not in ("USAGE", "OPERATIONAL"):
            raise ApiError(400, "sourceType: must be USAGE or OPERATIONAL")
        if body["sourceType"] != "USAGE":
            raise ApiError(400, "sourceType: the sandbox emulates USAGE data exports only")
        for field in ("startDate", "endDate"):
            if not body.get(field):
                raise ApiError(400, f"{field}: is required for a USAGE export")
        fmt = body.get("exportFileFormat", "CSV")
        if fmt not in ("CSV", "JSONL"):
            raise ApiError(400, "exportFileFormat: must be CSV or JSONL")
        query = {k: v for k, v in body.items() if k not in ("sourceType", "exportFileFormat")}
        query["limit"] = 20000
        with emu.lock:
            data = ingest.query_usage(emu.usage, query, emu.store.coll("meters"), emu.store.coll("accounts"))
            stamp = now_iso()
            job_id = new_id()
            job: dict[str, Any] = {"id": job_id, "sourceType": "USAGE", "status": "SUCCEEDED", "dateCreated": stamp,
                   "startedAt": stamp, "version": 1}
            _jobs(emu)[job_id] = {"job": job, "content": _render(data["data"], fmt), "tokens": {}}
        return ok({"jobId": job_id})

    @api.get(ORG + "/dataexports/jobs/{job_id}")
    async def job_get(job_id: str) -> Response:
        with emu.lock:
            entry = _jobs(emu).get(job_id)
            if entry is None:
                raise ApiError(404, f"DataExportJob with id {job_id} not found")
            return ok(entry["job"])

    @api.get(ORG + "/dataexports/jobs/{job_id}/getdownloadurl")
    async def job_url(request: Request, job_id: str) -> Response:
        with emu.lock:
            entry = _jobs(emu).get(job_id)
            if entry is None:
                raise ApiError(404, f"DataExportJob with id {job_id} not found")
            token = secrets.token_urlsafe(24)
            entry["tokens"][token] = time.time() + URL_TTL_S
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + URL_TTL_S))
        base = str(request.base_url).rstrip("/")
        return ok({"url": f"{base}{DOWNLOAD_PATH}{job_id}/{token}", "expirationTime": expires})

    @api.get(DOWNLOAD_PATH + "{job_id}/{token}")
    async def download(job_id: str, token: str) -> Response:
        with emu.lock:
            entry = _jobs(emu).get(job_id)
            expiry = entry["tokens"].get(token) if entry else None
            if entry is None or expiry is None or expiry < time.time():
                return Response(b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                                status_code=403, media_type="application/xml")
            return Response(entry["content"], media_type="application/octet-stream")
