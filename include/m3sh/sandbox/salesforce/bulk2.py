"""Bulk API 2.0 query jobs: create, get information, get results (CSV, ``Sforce-Locator`` paging),
abort, delete — what ``airbyte-source-salesforce`` reads Salesforce with (issue 20).

Follows "Bulk API 2.0 and Bulk API Developer Guide", section "Bulk API 2.0 Query"
(https://developer.salesforce.com/docs/atlas.en-us.api_asynch.meta/api_asynch/query_create_job.htm
and its sibling pages "Get Information About a Query Job", "Get Results for a Query Job", "Abort a
Query Job", "Delete a Query Job"). Salesforce publishes no machine-readable spec of Bulk API 2.0:
everything here rests on that prose and its examples, and m3sh's only judge of it is the published
connector (``make conformance``). In particular:

* a job runs when it is created (the emulator's records are in memory): the create answer says
  ``UploadComplete`` as the guide's example does, every later read says ``JobComplete``;
* results are CSV with every value quoted, a header of the query's field names (``Account.Name``
  for a parent field), ``true``/``false``, datetimes as ``2024-01-31T09:30:00.000Z`` and an empty
  value for null — the guide's examples show quoted values; the null and datetime renderings rest
  on no published example;
* ``locator`` is opaque to clients; like Salesforce's it encodes the offset of the next set, and
  ``Sforce-Locator: null`` ends the results; without ``maxRecords`` a set holds up to
  ``DEFAULT_MAX_RECORDS`` rows (Salesforce sizes sets by bytes; the guide gives no row count);
* the SOQL the guide says Bulk API 2.0 refuses (aggregate functions, OFFSET; GROUP BY and TYPEOF
  never parse here) is refused at create time with 400 ``INVALIDJOB``, an error code the Bulk API
  uses for invalid jobs; the wording is the emulator's.

Strict like the REST routes (``strict.py``): unknown request-body fields and query parameters are
refused, and documented options the emulator does not implement say so.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import secrets
from dataclasses import dataclass, field
from typing import Any

from m3sh.sandbox.salesforce import soql
from m3sh.sandbox.salesforce.store import ApiError, Store

DEFAULT_MAX_RECORDS = 50_000
CREATE_FIELDS = frozenset({"operation", "query", "contentType", "columnDelimiter", "lineEnding"})
OPERATIONS = frozenset({"query", "queryAll"})
DELIMITERS = {"BACKQUOTE": "`", "CARET": "^", "COMMA": ",", "PIPE": "|", "SEMICOLON": ";", "TAB": "\t"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
RESULTS_PARAMS = frozenset({"locator", "maxRecords"})
JOB_ID_PREFIX = "750"  # AsyncApexJob, the key prefix of Bulk API job ids


def _invalid_job(message: str) -> ApiError:
    return ApiError(400, "INVALIDJOB", message)


@dataclass
class QueryJob:
    id: str
    operation: str
    object: str
    api_version: str
    created: str
    created_by: str
    delimiter: str
    line_ending: str
    header: list[str]
    rows: list[list[str]]
    state: str = "UploadComplete"
    reads: int = field(default=0)

    def info(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id, "operation": self.operation, "object": self.object, "createdById": self.created_by,
            "createdDate": self.created, "systemModstamp": self.created, "state": self.state,
            "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(self.api_version),
            "lineEnding": self.line_ending, "columnDelimiter": self.delimiter,
        }
        if self.reads:  # the information resource's extra fields (not in the create answer)
            body.update({"jobType": "V2Query", "numberRecordsProcessed": len(self.rows), "retries": 0,
                         "totalProcessingTime": 0})
        return body


def _render(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and len(value) == 28 and value.endswith("+0000") and value[10] == "T":
        return value[:-5] + "Z"  # stored REST form 2024-01-31T09:30:00.000+0000
    return str(value)


class QueryJobs:
    """One org's Bulk API 2.0 query jobs. Callers hold the emulator lock."""

    def __init__(self) -> None:
        self.jobs: dict[str, QueryJob] = {}
        self.created = 0  # for /limits' DailyBulkV2QueryJobs

    def create(self, store: Store, body: Any, version: str, user_id: str) -> QueryJob:
        if not isinstance(body, dict):
            raise ApiError(400, "JSON_PARSER_ERROR", "The request body must be a JSON object")
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise ApiError(400, "JSON_PARSER_ERROR", f'Unrecognized field "{unknown[0]}" in a query job '
                                                     "(the m3sh sandbox implements: "
                                                     f"{', '.join(sorted(CREATE_FIELDS))})", unknown[:1])
        operation = body.get("operation")
        if operation not in OPERATIONS:
            raise _invalid_job(f"operation must be one of {sorted(OPERATIONS)}, not {operation!r}")
        if body.get("contentType", "CSV") != "CSV":
            raise _invalid_job("contentType: the only supported value is CSV")
        delimiter = body.get("columnDelimiter", "COMMA")
        line_ending = body.get("lineEnding", "LF")
        if delimiter not in DELIMITERS:
            raise _invalid_job(f"columnDelimiter must be one of {sorted(DELIMITERS)}")
        if line_ending not in LINE_ENDINGS:
            raise _invalid_job(f"lineEnding must be one of {sorted(LINE_ENDINGS)}")
        text = body.get("query")
        if not isinstance(text, str) or not text.strip():
            raise _invalid_job("query: a query string has to be specified")
        try:
            q = soql.compile_query(text)
        except soql.SoqlError as exc:
            raise ApiError(400, exc.error_code, exc.message) from None
        if q.count is not None:
            raise _invalid_job("Bulk API 2.0 does not support aggregate functions such as COUNT() in a query job")
        if q.offset is not None:
            raise _invalid_job("Bulk API 2.0 does not support OFFSET in a query job")
        assert q.obj is not None
        records = store.select_records(q, include_deleted=operation == "queryAll")
        header = [".".join(ref.names) for ref in q.fields]
        rows = [[_render(soql.field_value(r, ref, store.resolve)) for ref in q.fields] for r in records]
        now = dt.datetime.now(dt.UTC)
        job = QueryJob(id=self._new_id(), operation=operation, object=q.obj.name, api_version=version,
                       created=now.strftime("%Y-%m-%dT%H:%M:%S.000+0000"), created_by=user_id,
                       delimiter=delimiter, line_ending=line_ending, header=header, rows=rows)
        self.jobs[job.id] = job
        self.created += 1
        return job

    def _new_id(self) -> str:
        return f"{JOB_ID_PREFIX}8X{secrets.token_hex(5).upper()}"[:15] + "AAA"

    def get(self, job_id: str) -> QueryJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    def info(self, job_id: str) -> dict[str, Any]:
        job = self.get(job_id)
        if job.state == "UploadComplete":
            job.state = "JobComplete"
        job.reads += 1
        return job.info()

    def abort(self, job_id: str, body: Any) -> dict[str, Any]:
        """"Abort a Query Job": PATCH ``{"state": "Aborted"}``, the only change the resource takes."""
        job = self.get(job_id)
        if not isinstance(body, dict) or set(body) != {"state"} or body["state"] != "Aborted":
            raise _invalid_job('a query job can only be changed with {"state": "Aborted"}')
        if job.state in ("JobComplete", "Failed", "Aborted"):
            raise _invalid_job(f"Job with state {job.state} cannot be aborted")
        job.state = "Aborted"
        job.reads += 1
        return job.info()

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        if job.state not in ("JobComplete", "Failed", "Aborted", "UploadComplete"):
            raise _invalid_job(f"Job with state {job.state} cannot be deleted")
        del self.jobs[job_id]

    def results(self, job_id: str, version: str, locator: str | None,
                max_records: str | None) -> tuple[bytes, dict[str, str]]:
        """One set of results and its ``Sforce-Locator`` / ``Sforce-NumberOfRecords`` headers."""
        job = self.get(job_id)
        if version != job.api_version:
            # "Use the same API version to get query results that you used to create the query.
            # Otherwise, the call returns a 409 error."
            raise ApiError(409, "INVALIDJOB", f"Job {job_id} was created in API version {job.api_version}; "
                                              f"get its results with the same version (not {version})")
        if job.state == "Aborted":
            raise _invalid_job(f"Job {job_id} was aborted; its results are not available")
        size = DEFAULT_MAX_RECORDS
        if max_records is not None:
            if not max_records.isdigit() or int(max_records) < 1:
                raise ApiError(400, "INVALIDJOB", f"maxRecords must be a positive integer, not {max_records!r}",
                               ["maxRecords"])
            size = int(max_records)
        start = 0
        if locator is not None:
            start = _offset(locator, len(job.rows))
        chunk = job.rows[start:start + size]
        end = start + len(chunk)
        out = io.StringIO()
        writer = csv.writer(out, delimiter=DELIMITERS[job.delimiter], lineterminator=LINE_ENDINGS[job.line_ending],
                            quoting=csv.QUOTE_ALL)
        writer.writerow(job.header)
        writer.writerows(chunk)
        next_locator = _locator(end) if end < len(job.rows) else "null"
        headers = {"Sforce-Locator": next_locator, "Sforce-NumberOfRecords": str(len(chunk))}
        return out.getvalue().encode("utf-8"), headers


def _locator(offset: int) -> str:
    return base64.b64encode(str(offset).encode()).decode().rstrip("=")


def _offset(locator: str, total: int) -> int:
    try:
        raw = base64.b64decode(locator + "=" * (-len(locator) % 4), validate=True).decode()
    except ValueError:
        raw = ""
    if not raw.isdigit() or int(raw) > total or _locator(int(raw)) != locator:
        raise ApiError(400, "INVALIDJOB", f"Invalid locator: {locator}", ["locator"])
    return int(raw)

