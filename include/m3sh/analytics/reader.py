"""Reading the analytics tables back, the strict way: committed partitions only.

A partition is committed when its ``_manifest.json`` exists. The data file is fetched with
``If-Match`` on the manifest's ETag, so a re-export swapping the file between the two reads is
noticed (HTTP 412) and the pair is read again: rows and manifest always belong to the same run.
Files whose ``schema_version`` differs from this m3sh's are refused rather than mixed.
"""

from __future__ import annotations

import datetime as dt
import io
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from m3sh.analytics.partition import MANIFEST, PartitionStore
from m3sh.analytics.schemas import SCHEMA_VERSION, spec
from m3sh.storage import Storage

if TYPE_CHECKING:
    from m3sh.config import M3shConfig


def analytics_storage(cfg: M3shConfig) -> Storage:
    """Where the analytics tables live (``analytics.bucket/prefix``, defaulting to the storage section)."""
    a, s = cfg.analytics, cfg.storage
    return Storage(a.conn_id or s.conn_id, a.bucket or s.bucket,
                   a.prefix if a.prefix is not None else f"{s.prefix}analytics/")


class AnalyticsReader:
    """``reader.table("bills", start, end)`` -> one Arrow table with a ``date`` column added."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.store = PartitionStore(storage)

    @classmethod
    def from_config(cls, cfg: M3shConfig) -> AnalyticsReader:
        return cls(analytics_storage(cfg))

    def dates(self, table: str) -> list[dt.date]:
        """Days with a committed partition of ``table``."""
        out = []
        root = self.storage.key(table) + "/date="
        for obj in self.storage.list_keys(root):
            key = obj["Key"]
            if key.endswith("/" + MANIFEST):
                out.append(dt.date.fromisoformat(key[len(root):].split("/", 1)[0]))
        return sorted(out)

    def manifest(self, table: str, day: dt.date) -> dict[str, Any] | None:
        value = self.storage.get_json(self.store.manifest_key(table, day))
        return value if isinstance(value, dict) else None

    def partition(self, table: str, day: dt.date, attempts: int = 5) -> pa.Table | None:
        """One committed partition, or None when the day has none."""
        from botocore.exceptions import ClientError

        for attempt in range(attempts):
            manifest = self.manifest(table, day)
            if manifest is None:
                return None
            if int(manifest.get("schema_version", 0)) != SCHEMA_VERSION:
                raise ValueError(f"{table} date={day}: schema version {manifest.get('schema_version')} "
                                 f"differs from this m3sh's {SCHEMA_VERSION}; re-export the day")
            parts = []
            try:
                for f in manifest["files"]:
                    body = self.storage.client.get_object(Bucket=self.storage.bucket, Key=f["key"],
                                                          IfMatch=f'"{f["etag"]}"')["Body"].read()
                    parts.append(pq.read_table(io.BytesIO(body)))
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412", "NoSuchKey") and attempt < attempts - 1:
                    time.sleep(0.2 * (attempt + 1))  # a re-export is swapping this partition
                    continue
                raise
            data = pa.concat_tables(parts) if parts else spec(table).schema.empty_table()
            if data.num_rows != int(manifest["rows"]):
                raise ValueError(f"{table} date={day}: {data.num_rows} rows read, manifest says {manifest['rows']}")
            return data.append_column("date", pa.array([day] * data.num_rows, type=pa.date32()))
        raise AssertionError("unreachable")  # pragma: no cover

    def table(self, table: str, start: dt.date | None = None, end: dt.date | None = None) -> pa.Table:
        """Every committed partition with ``start <= date < end`` (open bounds: all)."""
        parts = []
        for day in self.dates(table):
            if (start and day < start) or (end and day >= end):
                continue
            part = self.partition(table, day)
            if part is not None:
                parts.append(part)
        return pa.concat_tables(parts) if parts else _empty(table)

    def latest(self, table: str, on_or_before: dt.date | None = None) -> pa.Table:
        """The newest committed partition (snapshot tables such as ``accounts``)."""
        days = [d for d in self.dates(table) if on_or_before is None or d <= on_or_before]
        part = self.partition(table, days[-1]) if days else None
        return part if part is not None else _empty(table)


def _empty(table: str) -> pa.Table:
    return spec(table).schema.empty_table().append_column("date", pa.array([], type=pa.date32()))
