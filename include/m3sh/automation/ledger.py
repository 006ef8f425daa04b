"""The ledger of fired keys: exactly-once guard and audit trail, one S3 object per firing key.

A firing is *claimed* with a conditional put (``If-None-Match: *``): of two workers racing on the
same key exactly one creates the object. Every action outcome is written back (``If-Match`` on the
ETag the holder saw) as soon as it happens, so a retry after a crash resumes after the last
completed action instead of repeating it; actions themselves also check m3ter/CRM state first.

States: ``claimed`` (actions running), ``done`` (every action done, unchanged or skipped with a
reason), ``failed`` (an action failed; the next pass retries the remaining actions, up to
``max_attempts`` passes, then ``abandoned``). A claim older than ``lease_s`` is considered dead
(worker lost) and may be taken over.

The ledger lives in S3 (``storage.prefix + triggers/ledger/``), never on local disk, so it survives
worker loss; :meth:`Ledger.entries` lists it for the UI and reports.

A key that reached a final state also gets an empty marker (``triggers/final/<rule>/<digest>``):
a condition usually stays true after its firing is done (a depleted balance stays depleted until
the next period), so every pass finds the same firings again. One listing of the markers (1,000
keys a request) lets the evaluation drop them, instead of two requests per firing to re-claim it
and read "already done". A marker is only a hint that can lag (then the claim still says no):
final states are never left, so it is never wrong.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from m3sh.automation.rules import Firing
    from m3sh.storage import Storage

log = logging.getLogger(__name__)
FINAL = ("done", "abandoned")
DEFAULT_LEASE_S = 15 * 60
DEFAULT_MAX_ATTEMPTS = 3


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _precondition_failed(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or status in (409, 412)


@dataclass
class Claim:
    """The outcome of :meth:`Ledger.claim`: ``acquired`` means this caller runs the actions."""

    acquired: bool
    entry: dict[str, Any]
    reason: str = ""
    etag: str | None = None


class Ledger:
    def __init__(self, storage: Storage, lease_s: float = DEFAULT_LEASE_S,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self.storage = storage
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.prefix = storage.key("triggers", "ledger") + "/"
        self.final_prefix = storage.key("triggers", "final") + "/"

    @staticmethod
    def _digest(firing_key: str) -> str:
        return hashlib.sha256(firing_key.encode()).hexdigest()[:40]

    @staticmethod
    def _rule(firing_key: str) -> str:
        return firing_key.split("|", 1)[0]

    def object_key(self, firing_key: str) -> str:
        return f"{self.prefix}{self._rule(firing_key)}/{self._digest(firing_key)}.json"

    def _final_marker_key(self, firing_key: str) -> str:
        return f"{self.final_prefix}{self._rule(firing_key)}/{self._digest(firing_key)}"

    def final_keys(self, firing_keys: Iterable[str]) -> set[str]:
        """Those of ``firing_keys`` that are known to be final (done or abandoned), from one listing
        of the markers per rule involved (see the module docstring)."""
        by_rule: dict[str, list[str]] = {}
        for key in firing_keys:
            by_rule.setdefault(self._rule(key), []).append(key)
        final: set[str] = set()
        for rule, keys in by_rule.items():
            marked = {obj["Key"].rsplit("/", 1)[-1] for obj in self.storage.list_keys(f"{self.final_prefix}{rule}/")}
            final.update(k for k in keys if self._digest(k) in marked)
        return final

    def _mark_final(self, firing_key: str) -> None:
        self.storage.put_bytes(self._final_marker_key(firing_key), b"", "text/plain")

    # -- reads --------------------------------------------------------------------------------
    def _read(self, firing_key: str) -> tuple[dict[str, Any] | None, str | None]:
        client = self.storage.client
        try:
            obj = client.get_object(Bucket=self.storage.bucket, Key=self.object_key(firing_key))
        except client.exceptions.NoSuchKey:
            return None, None
        return json.loads(obj["Body"].read()), obj.get("ETag")

    def get(self, firing_key: str) -> dict[str, Any] | None:
        return self._read(firing_key)[0]

    def entries(self, rule: str | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Ledger entries (newest objects first within S3's listing order is not guaranteed)."""
        prefix = self.prefix + (f"{rule}/" if rule else "")
        for n, obj in enumerate(self.storage.list_keys(prefix)):
            if limit is not None and n >= limit:
                return
            entry = self.storage.get_json(obj["Key"])
            if entry:
                yield entry

    # -- writes -------------------------------------------------------------------------------
    def _put(self, entry: dict[str, Any], *, if_none_match: bool = False, if_match: str | None = None) -> str | None:
        kwargs: dict[str, Any] = {}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match:
            kwargs["IfMatch"] = if_match
        resp = self.storage.client.put_object(
            Bucket=self.storage.bucket, Key=self.object_key(entry["key"]),
            Body=json.dumps(entry, default=str, indent=1).encode(), ContentType="application/json", **kwargs)
        etag: str | None = resp.get("ETag")
        return etag

    def claim(self, firing: Firing, run_id: str) -> Claim:
        """Take the firing's key, or say why not (already fired, in progress, gave up)."""
        entry: dict[str, Any] = {
                 "key": firing.key, "rule": firing.rule, "kind": firing.kind, "account_id": firing.account_id,
                 "account_code": firing.account_code, "entity": firing.entity, "entity_id": firing.entity_id,
                 "event_time": firing.event_time, "detail": firing.detail, "status": "claimed",
                 "claimed_by": run_id, "claimed_at": _now(), "first_seen": _now(), "attempts": 1,
                 "actions": [], "history": []}
        try:
            etag = self._put(entry, if_none_match=True)
            return Claim(True, entry, "new", etag)
        except Exception as exc:
            if not _precondition_failed(exc):
                raise
        current, etag = self._read(firing.key)
        if current is None:  # deleted between the two calls: try once more
            return self.claim(firing, run_id)
        status = current.get("status")
        if status in FINAL:
            self._mark_final(firing.key)  # finished before markers existed (or the marker write was lost)
            return Claim(False, current, f"already {status} (first seen {current.get('first_seen')})", etag)
        age = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(
            str(current.get("claimed_at")).replace("Z", "+00:00"))).total_seconds()
        if status == "claimed" and current.get("claimed_by") != run_id and age < self.lease_s:
            return Claim(False, current, f"in progress in run {current.get('claimed_by')}", etag)
        if int(current.get("attempts", 1)) >= self.max_attempts and status == "failed":
            current["status"] = "abandoned"
            current["history"] = [*current.get("history", []), {"at": _now(), "status": "abandoned"}]
            self._put(current, if_match=etag)
            self._mark_final(firing.key)
            return Claim(False, current, f"abandoned after {current['attempts']} attempt(s)", etag)
        taken = {**current, "status": "claimed", "claimed_by": run_id, "claimed_at": _now(),
                 "attempts": int(current.get("attempts", 1)) + 1}
        try:
            new_etag = self._put(taken, if_match=etag)
        except Exception as exc:
            if _precondition_failed(exc):
                return Claim(False, current, "claimed concurrently by another worker", etag)
            raise
        return Claim(True, taken, f"resumed ({status})", new_etag)

    def update(self, claim: Claim) -> None:
        """Write the holder's entry back (after each action and at the end)."""
        claim.etag = self._put(claim.entry, if_match=claim.etag) if claim.etag else self._put(claim.entry)

    def finish(self, claim: Claim, status: str, error: str | None = None) -> None:
        claim.entry["status"] = status
        claim.entry["finished_at"] = _now()
        claim.entry["history"] = [*claim.entry.get("history", []),
                                  {"at": _now(), "status": status, "run": claim.entry.get("claimed_by"),
                                   **({"error": error} if error else {})}]
        self.update(claim)
        if status in FINAL:
            self._mark_final(str(claim.entry["key"]))
