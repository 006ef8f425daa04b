"""Durable m3sh state in S3 (through the Amazon provider's ``S3Hook``): manifests, dead letters,
staging files, reports and the trigger ledger.

Nothing m3sh needs between tasks lives on local disk, so any Celery/Kubernetes worker can pick up
any task and a killed worker loses nothing.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from m3sh.config import StorageConfig


class Storage:
    """JSON/JSONL objects under ``s3://<bucket>/<prefix>``."""

    def __init__(self, conn_id: str, bucket: str, prefix: str = "") -> None:
        self.conn_id = conn_id
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def from_config(cls, cfg: StorageConfig) -> Storage:
        return cls(cfg.conn_id, cfg.bucket, cfg.prefix)

    @cached_property
    def client(self) -> Any:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.conn_id).get_conn()

    def for_bucket(self, conn_id: str, bucket: str, prefix: str = "") -> Storage:
        """Another bucket; through this one's S3 client when the connection is the same (a boto3 client
        is not tied to a bucket, and building one costs ~0.3 s of CPU: seconds on a busy 2-core host,
        on the path of every event-started usage run)."""
        other = Storage(conn_id, bucket, prefix)
        if conn_id == self.conn_id:
            other.__dict__["client"] = self.client  # what @cached_property would have stored
        return other

    def key(self, *parts: str) -> str:
        return self.prefix + "/".join(p.strip("/") for p in parts if p)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # -- reads -------------------------------------------------------------------------------
    def get_json(self, key: str) -> Any | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def iter_jsonl(self, key: str) -> Iterator[dict[str, Any]]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except self.client.exceptions.NoSuchKey:
            return
        stream = gzip.GzipFile(fileobj=body) if key.endswith(".gz") else body
        for line in io.TextIOWrapper(stream, encoding="utf-8"):
            if line.strip():
                yield json.loads(line)

    def list_keys(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    # -- writes ------------------------------------------------------------------------------
    def put_json(self, key: str, value: Any) -> str:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(value, default=str, indent=1).encode(),
                               ContentType="application/json")
        return self.uri(key)

    def put_jsonl(self, key: str, rows: Iterable[dict[str, Any]]) -> int:
        buf = io.BytesIO()
        n = 0
        for row in rows:
            buf.write(json.dumps(row, default=str).encode() + b"\n")
            n += 1
        self.client.put_object(Bucket=self.bucket, Key=key, Body=buf.getvalue(), ContentType="application/x-ndjson")
        return n

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return self.uri(key)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)
