"""Parquet partitions in S3, replaced atomically, with a manifest readers can trust.

S3 has no rename, so "write to a temporary prefix, then swap" is done as copy + delete:

1. every table of the run is written to ``<root>_staging/date=D/run=<run>/<table>/part-0.parquet``;
2. :meth:`PartitionStore.commit` copies each staged file over ``<root><table>/date=D/part-0.parquet``
   (one server-side ``CopyObject``: a reader sees the old object or the new one, never half of it),
   deletes any other data file left in that partition, then writes ``_manifest.json`` **last**;
3. after every table is committed, ``<root>_runs/date=D.json`` names the run (cross-table marker)
   and the staging prefix of the day is deleted.

Every partition is exactly one object, so a plain glob (``<table>/date=*/part-0.parquet``) never
reads half a day. Strict readers (:mod:`m3sh.analytics.reader`) go further: they read only
partitions that have a manifest and fetch the file with ``If-Match: <manifest etag>``, retrying when
a swap happens between the two reads, so rows and manifest always agree.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from m3sh.analytics.schemas import SCHEMA_VERSION, TableSpec
from m3sh.storage import Storage

log = logging.getLogger(__name__)
PART = "part-0.parquet"
MANIFEST = "_manifest.json"


def safe_run(run_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)[:120]


def to_table(spec: TableSpec, rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows -> an Arrow table with exactly the documented schema, in the documented order.

    A value of the wrong type fails here, naming the table and column, rather than silently
    producing a file with a different schema.
    """
    rows = list(rows)
    columns: dict[str, list[Any]] = {f.name: [] for f in spec.schema}
    for row in rows:
        for name, values in columns.items():
            values.append(row.get(name))
    arrays = []
    for f in spec.schema:
        try:
            arrays.append(pa.array(columns[f.name], type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise ValueError(f"analytics table {spec.name}, column {f.name}: {exc}") from None
    table = pa.Table.from_arrays(arrays, schema=spec.schema)
    if table.num_rows:
        table = table.sort_by([(c, "ascending") for c in spec.sort_by])
    return table.replace_schema_metadata({
        "m3sh.table": spec.name, "m3sh.schema_version": str(SCHEMA_VERSION),
        "m3sh.schema_fingerprint": spec.fingerprint()})


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


class PartitionStore:
    """The analytics root ``s3://<bucket>/<prefix>`` and its partition layout."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    # -- layout ----------------------------------------------------------------------------------
    def partition(self, table: str, day: dt.date) -> str:
        return self.storage.key(table, f"date={day.isoformat()}") + "/"

    def data_key(self, table: str, day: dt.date) -> str:
        return self.partition(table, day) + PART

    def manifest_key(self, table: str, day: dt.date) -> str:
        return self.partition(table, day) + MANIFEST

    def staging_day(self, day: dt.date) -> str:
        return self.storage.key("_staging", f"date={day.isoformat()}") + "/"

    def staged_key(self, table: str, day: dt.date, run_id: str) -> str:
        return self.staging_day(day) + f"run={safe_run(run_id)}/{table}/{PART}"

    def run_marker_key(self, day: dt.date) -> str:
        return self.storage.key("_runs", f"date={day.isoformat()}.json")

    # -- write -----------------------------------------------------------------------------------
    def stage(self, spec: TableSpec, day: dt.date, run_id: str, table: pa.Table) -> dict[str, Any]:
        """Write one table's file for the run to the staging prefix; returns what commit needs."""
        data = parquet_bytes(table)
        key = self.staged_key(spec.name, day, run_id)
        self.storage.put_bytes(key, data, "application/vnd.apache.parquet")
        return {"table": spec.name, "staged_key": key, "rows": table.num_rows, "bytes": len(data),
                "schema_fingerprint": spec.fingerprint()}

    def commit(self, staged: dict[str, Any], day: dt.date, meta: dict[str, Any]) -> dict[str, Any]:
        """Swap one staged file into its partition; the manifest is written last. Idempotent."""
        client, bucket = self.storage.client, self.storage.bucket
        table = staged["table"]
        final = self.data_key(table, day)
        copied = client.copy_object(Bucket=bucket, Key=final, MetadataDirective="COPY",
                                    CopySource={"Bucket": bucket, "Key": staged["staged_key"]})
        etag = str(copied["CopyObjectResult"]["ETag"]).strip('"')
        for obj in self.storage.list_keys(self.partition(table, day)):
            if obj["Key"] not in (final, self.manifest_key(table, day)):  # e.g. files of an older layout
                self.storage.delete(obj["Key"])
        manifest = {
            "table": table, "date": day.isoformat(), "schema_version": SCHEMA_VERSION,
            "schema_fingerprint": staged["schema_fingerprint"], "rows": staged["rows"],
            "files": [{"key": final, "rows": staged["rows"], "bytes": staged["bytes"], "etag": etag}],
            **meta, "committed_at": now_iso(),
        }
        self.storage.put_json(self.manifest_key(table, day), manifest)
        return {"table": table, "rows": staged["rows"], "key": final, "manifest": self.manifest_key(table, day)}

    def finish(self, day: dt.date, committed: list[dict[str, Any]], meta: dict[str, Any]) -> str:
        """Cross-table marker for the day, then drop the day's staging prefix (all runs' leftovers)."""
        key = self.run_marker_key(day)
        self.storage.put_json(key, {"date": day.isoformat(), "schema_version": SCHEMA_VERSION, **meta,
                                    "tables": {c["table"]: {"rows": c["rows"], "manifest": c["manifest"]}
                                               for c in committed}, "finished_at": now_iso()})
        self.discard_staging(day)
        return key

    def discard_staging(self, day: dt.date) -> int:
        keys = [o["Key"] for o in self.storage.list_keys(self.staging_day(day))]
        for i in range(0, len(keys), 1000):
            self.storage.client.delete_objects(Bucket=self.storage.bucket,
                                               Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                       "Quiet": True})
        return len(keys)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
