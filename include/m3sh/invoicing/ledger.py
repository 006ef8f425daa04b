"""What m3sh delivered where: one small JSON object per bill and destination, in S3.

The ledger is what makes a re-run, a retry or a backfill write nothing new: a destination skips a
bill whose ledger entry carries the bill's current fingerprint, without calling the remote system.
It is an optimisation on top of the remote idempotency (external ids, upserts, idempotency keys),
never a replacement: if the ledger write is lost after a delivery, the next run re-sends and the
remote system still ends with one record.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any, Protocol

from m3sh import layout
from m3sh.storage import Storage


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ledger(Protocol):
    def get(self, destination: str, key: str) -> dict[str, Any] | None: ...

    def put(self, destination: str, key: str, entry: dict[str, Any]) -> None: ...


class S3Ledger:
    """The durable ledger under ``<storage prefix>state/invoicing/ledger/<destination>/``."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _key(self, destination: str, key: str) -> str:
        return layout.delivery_ledger(self.storage, destination, key)

    def get(self, destination: str, key: str) -> dict[str, Any] | None:
        value = self.storage.get_json(self._key(destination, key))
        return value if isinstance(value, dict) else None

    def put(self, destination: str, key: str, entry: dict[str, Any]) -> None:
        self.storage.put_json(self._key(destination, key), {**entry, "recorded_at": now_iso()})

    def prefix(self, destination: str) -> str:
        return layout.delivery_ledger_prefix(self.storage, destination)

    def entries(self, destination: str) -> dict[str, dict[str, Any]]:
        """Every bill entry of a destination (customer entries, keyed ``customer:...``, excluded)."""
        out: dict[str, dict[str, Any]] = {}
        for obj in self.storage.list_keys(self.prefix(destination)):
            name = obj["Key"].rsplit("/", 1)[-1]
            if name.startswith("customer"):
                continue
            entry = self.storage.get_json(obj["Key"])
            if isinstance(entry, dict) and entry.get("bill_id"):
                out[str(entry["bill_id"])] = entry
        return out


class MemoryLedger:
    """In-process ledger for benchmarks and unit tests."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, destination: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._data.get((destination, key))

    def put(self, destination: str, key: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._data[(destination, key)] = dict(entry)


class WriteOnlyLedger:
    """Reads nothing, records everything: re-delivers every bill (repairs records deleted or edited
    in a destination, as reported by ``m3sh_reconcile``) while keeping the ledger current."""

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner

    def get(self, destination: str, key: str) -> dict[str, Any] | None:
        return None

    def put(self, destination: str, key: str, entry: dict[str, Any]) -> None:
        self.inner.put(destination, key, entry)
