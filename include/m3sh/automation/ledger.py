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

**The audit index** (``triggers/index/<yyyy-mm>/<inverted time>!<firing key>!<rev>!<status>!<account
code>``, empty objects): every status change (claimed, done, failed, abandoned) also writes the
firing's index key and deletes the one it replaces, so ListObjectsV2 - which returns keys in
ascending UTF-8 order - lists each month newest first, and the audit trail filters by rule,
account, outcome and date, counts and pages from listings alone (1,000 firings a request) without
reading an entry. The time is the firing's ``first_seen`` (it never changes, so a firing keeps its
place); ``rev`` counts the entry's status changes and only grows, because every change is a
conditional put on the ledger object. Concurrent writers never share an object: each firing has its
own keys, and only the claim holder writes them (after its ledger put succeeded). A worker killed
between the ledger put and the index writes leaves either a superseded key (readers keep the highest
``rev`` of a firing: :func:`latest_index_rows`) or the firing listed in its previous state until
the next status change, the next claim of a finished firing (its final marker is written after the
index, so that claim still happens), or ``m3sh triggers backfill-index --verify`` repairs it.
Ledgers written before the index existed are indexed by :meth:`Ledger.backfill_index` (that command,
or a bounded run on each page view until done). The order relies on ListObjectsV2 returning keys
in UTF-8 binary order, as general purpose buckets do (directory buckets do not).

The key layout of all of this is defined once, in the functions below the imports (the writer
here and the readers in :mod:`m3sh.automation.audit` and the UI use them; nothing else builds
these keys).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from m3sh import layout

if TYPE_CHECKING:
    from m3sh.automation.rules import Firing
    from m3sh.storage import Storage

log = logging.getLogger(__name__)
FINAL = ("done", "abandoned")
DEFAULT_LEASE_S = 15 * 60
DEFAULT_MAX_ATTEMPTS = 3
STATUSES = ("claimed", "done", "failed", "abandoned")
LIST_PAGE = 1000  # ListObjectsV2's maximum (and default) page size
READ_THREADS = 8


# ------------------------------------------------------------------------ S3 key layout
# Under m3sh.layout's ``triggers/``; ``root`` is the storage prefix (``storage.prefix``, e.g. ``m3sh/``):
# the index is listed and parsed as raw keys.
def ledger_prefix(root: str) -> str:
    return f"{layout.triggers_prefix(root)}ledger/"


def final_prefix(root: str) -> str:
    return f"{layout.triggers_prefix(root)}final/"


def index_prefix(root: str) -> str:
    return f"{layout.triggers_prefix(root)}index/"


def index_meta_key(root: str) -> str:
    """Where :meth:`Ledger.backfill_index` records that every ledger entry is indexed (outside
    :func:`index_prefix`, so listings of the index never see it)."""
    return f"{layout.triggers_prefix(root)}index-meta.json"


def firing_rule(firing_key: str) -> str:
    return firing_key.split("|", 1)[0]


def firing_digest(firing_key: str) -> str:
    return hashlib.sha256(firing_key.encode()).hexdigest()[:40]


def ledger_object_key(root: str, firing_key: str) -> str:
    return f"{ledger_prefix(root)}{firing_rule(firing_key)}/{firing_digest(firing_key)}.json"


def final_marker_key(root: str, firing_key: str) -> str:
    return f"{final_prefix(root)}{firing_rule(firing_key)}/{firing_digest(firing_key)}"


_INVERT = 10**16 - 1  # microseconds since 1970 fit in 16 digits until the year 2286
_SEP = "!"  # never produced by _enc (quote() escapes it), valid in S3 keys without special handling


def _enc(value: str) -> str:
    return quote(value, safe="")


def parse_time(value: Any) -> dt.datetime:
    """An entry's timestamp (``2026-11-20T10:00:00.123456Z``) as an aware UTC datetime."""
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def inverted_time(at: dt.datetime) -> str:
    """16 digits that sort newest first: ``10**16 - 1 - microseconds since the epoch``."""
    micros = (at.astimezone(dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    return f"{_INVERT - micros:016d}"


def month_of(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m")


def index_month_prefix(root: str, month: str) -> str:
    return f"{index_prefix(root)}{month}/"


def index_key(root: str, *, fired_at: dt.datetime, firing_key: str, rev: int, status: str,
              account_code: str | None) -> str:
    """The audit index key of one firing in one state (see the module docstring)."""
    name = _SEP.join((inverted_time(fired_at), _enc(firing_key), f"{rev:06d}", status,
                      _enc(account_code or "")[:200]))  # the code is shown, never matched on in full
    return index_month_prefix(root, month_of(fired_at)) + name


def entry_fired_at(entry: dict[str, Any]) -> dt.datetime:
    return parse_time(entry.get("first_seen") or entry.get("claimed_at"))


def entry_index_key(root: str, entry: dict[str, Any]) -> str:
    return index_key(root, fired_at=entry_fired_at(entry), firing_key=str(entry["key"]),
                     rev=int(entry.get("rev") or 0), status=str(entry.get("status")),
                     account_code=entry.get("account_code"))


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One firing as its index key describes it: enough to filter, count and page without a read."""

    key: str  # the S3 key of the index object
    fired_at: dt.datetime
    firing_key: str
    rev: int
    status: str
    account_code: str

    @property
    def rule(self) -> str:
        return firing_rule(self.firing_key)

    @property
    def account_id(self) -> str:
        parts = self.firing_key.split("|")
        return parts[1] if len(parts) > 1 else ""

    @property
    def entity(self) -> tuple[str, str]:
        """(entity kind, entity id), e.g. ("balance", "bal-1")."""
        parts = self.firing_key.split("|")
        kind, _, ident = (parts[2] if len(parts) > 2 else "").partition(":")
        return kind, ident

    @property
    def crossing(self) -> str:
        parts = self.firing_key.split("|", 3)
        return parts[3] if len(parts) > 3 else ""

    def ledger_key(self, root: str) -> str:
        return ledger_object_key(root, self.firing_key)


def parse_index_key(root: str, key: str) -> IndexRow | None:
    """The row an index key encodes, or None for a key that is not one (left alone, never fatal)."""
    base = index_prefix(root)
    if not key.startswith(base):
        return None
    parts = key[len(base):].split("/", 1)[-1].split(_SEP)
    if len(parts) != 5 or len(parts[0]) != 16 or not parts[0].isdigit() or not parts[2].isdigit():
        return None
    micros = _INVERT - int(parts[0])
    fired_at = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
    return IndexRow(key, fired_at, unquote(parts[1]), int(parts[2]), parts[3], unquote(parts[4]))


def latest_index_rows(rows: Iterable[IndexRow]) -> Iterator[IndexRow]:
    """Each firing once, in its latest state: the keys of one firing sort next to each other
    (same time and firing key, ascending ``rev``), so the last of each run wins."""
    held: IndexRow | None = None
    for row in rows:
        if held is None or (held.fired_at, held.firing_key) != (row.fired_at, row.firing_key):
            if held is not None:
                yield held
            held = row
        elif row.rev >= held.rev:
            held = row
    if held is not None:
        yield held


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
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.storage = storage
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.root = storage.prefix
        self.prefix = ledger_prefix(self.root)
        self.final_prefix = final_prefix(self.root)
        self.index_prefix = index_prefix(self.root)
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))  # a parameter so tests can write history

    def _now(self) -> str:
        return format_time(self._clock())

    @staticmethod
    def _digest(firing_key: str) -> str:
        return firing_digest(firing_key)

    @staticmethod
    def _rule(firing_key: str) -> str:
        return firing_rule(firing_key)

    def object_key(self, firing_key: str) -> str:
        return ledger_object_key(self.root, firing_key)

    def _final_marker_key(self, firing_key: str) -> str:
        return final_marker_key(self.root, firing_key)

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
        """Ledger entries in S3 key order (not time order: the audit trail reads the index instead)."""
        prefix = self.prefix + (f"{rule}/" if rule else "")
        for n, obj in enumerate(self.storage.list_keys(prefix)):
            if limit is not None and n >= limit:
                return
            entry = self.storage.get_json(obj["Key"])
            if entry:
                yield entry

    def index_months(self) -> list[str]:
        """The months (``yyyy-mm``) the audit index holds, newest first: one delimiter listing."""
        months: list[str] = []
        paginator = self.storage.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.storage.bucket, Prefix=self.index_prefix, Delimiter="/",
                                       PaginationConfig={"PageSize": LIST_PAGE}):
            months += [p["Prefix"][len(self.index_prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(months, reverse=True)

    def index_rows(self, month: str, *, before: dt.datetime | None = None,
                   since: dt.datetime | None = None) -> Iterator[IndexRow]:
        """Every index key of one month (superseded ones too: see :func:`latest_index_rows`), newest
        first, fired before ``before`` and at or after ``since``. The bounds cost nothing: the
        listing starts after ``before`` (``StartAfter``) and stops at the first key older than ``since``."""
        kwargs: dict[str, Any] = {"Bucket": self.storage.bucket, "Prefix": index_month_prefix(self.root, month),
                                  "PaginationConfig": {"PageSize": LIST_PAGE}}
        if before is not None:
            # "~" sorts after the separator, so a key fired exactly at ``before`` is skipped too
            kwargs["StartAfter"] = f"{kwargs['Prefix']}{inverted_time(before)}~"
        for page in self.storage.client.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                row = parse_index_key(self.root, obj["Key"])
                if row is None:
                    continue
                if since is not None and row.fired_at < since:
                    return
                yield row

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

    def _index(self, entry: dict[str, Any], before: dict[str, Any] | None) -> None:
        """Write the entry's audit index key (idempotent), then drop the key of its previous state.
        Called only after the ledger put succeeded, i.e. by the claim holder."""
        key = entry_index_key(self.root, entry)
        self.storage.put_bytes(key, b"", "text/plain")
        if before is not None:
            old = entry_index_key(self.root, before)
            if old != key:
                self.storage.delete(old)

    @staticmethod
    def _with_status(entry: dict[str, Any], status: str, **changes: Any) -> dict[str, Any]:
        """A copy of ``entry`` in ``status``; ``rev`` grows with every status change (index keys carry it)."""
        rev = int(entry.get("rev") or 0) + (status != entry.get("status"))
        return {**entry, **changes, "status": status, "rev": rev}

    def claim(self, firing: Firing, run_id: str) -> Claim:
        """Take the firing's key, or say why not (already fired, in progress, gave up)."""
        now = self._now()
        entry: dict[str, Any] = {
                 "key": firing.key, "rule": firing.rule, "kind": firing.kind, "account_id": firing.account_id,
                 "account_code": firing.account_code, "entity": firing.entity, "entity_id": firing.entity_id,
                 "event_time": firing.event_time, "detail": firing.detail, "status": "claimed", "rev": 1,
                 "claimed_by": run_id, "claimed_at": now, "first_seen": now, "attempts": 1,
                 "actions": [], "history": []}
        try:
            etag = self._put(entry, if_none_match=True)
        except Exception as exc:
            if not _precondition_failed(exc):
                raise
        else:
            self._index(entry, None)
            return Claim(True, entry, "new", etag)
        current, etag = self._read(firing.key)
        if current is None:  # deleted between the two calls: try once more
            return self.claim(firing, run_id)
        status = current.get("status")
        if status in FINAL:
            # Finished before markers (or the index) existed, or a write after the final put was lost.
            self._index(current, None)
            self._mark_final(firing.key)
            return Claim(False, current, f"already {status} (first seen {current.get('first_seen')})", etag)
        age = (self._clock() - parse_time(current.get("claimed_at"))).total_seconds()
        if status == "claimed" and current.get("claimed_by") != run_id and age < self.lease_s:
            return Claim(False, current, f"in progress in run {current.get('claimed_by')}", etag)
        if int(current.get("attempts", 1)) >= self.max_attempts and status == "failed":
            abandoned = self._with_status(current, "abandoned", history=[
                *current.get("history", []), {"at": self._now(), "status": "abandoned"}])
            try:
                self._put(abandoned, if_match=etag)
            except Exception as exc:
                if _precondition_failed(exc):
                    return Claim(False, current, "claimed concurrently by another worker", etag)
                raise
            self._index(abandoned, current)
            self._mark_final(firing.key)
            return Claim(False, abandoned, f"abandoned after {abandoned['attempts']} attempt(s)", etag)
        taken = self._with_status(current, "claimed", claimed_by=run_id, claimed_at=self._now(),
                                  attempts=int(current.get("attempts", 1)) + 1)
        try:
            new_etag = self._put(taken, if_match=etag)
        except Exception as exc:
            if _precondition_failed(exc):
                return Claim(False, current, "claimed concurrently by another worker", etag)
            raise
        self._index(taken, current)
        return Claim(True, taken, f"resumed ({status})", new_etag)

    def update(self, claim: Claim) -> None:
        """Write the holder's entry back (after each action and at the end)."""
        claim.etag = self._put(claim.entry, if_match=claim.etag) if claim.etag else self._put(claim.entry)

    def finish(self, claim: Claim, status: str, error: str | None = None) -> None:
        before = dict(claim.entry)
        now = self._now()
        step = {"at": now, "status": status, "run": before.get("claimed_by"), **({"error": error} if error else {})}
        history = [*claim.entry.get("history", []), step]
        claim.entry.clear()
        claim.entry.update(self._with_status(before, status, finished_at=now, history=history))
        self.update(claim)
        self._index(claim.entry, before)
        if status in FINAL:
            self._mark_final(str(claim.entry["key"]))

    # -- the index of ledgers written before it existed -------------------------------------------
    def backfill_index(self, limit: int | None = None, verify: bool = False,
                       threads: int = READ_THREADS) -> dict[str, int]:
        """Index ledger entries that have no index key (ledgers written before the index existed),
        at most ``limit`` of them; drop superseded index keys. Idempotent and safe beside running
        writers: every key it writes is one a writer would write for the entry's state as read, and
        revisions only grow, so a newer key always wins. ``verify`` also reads every indexed entry
        and re-indexes those whose index lags (a write lost to a killed worker): one read per entry.

        Costs one listing per 1,000 index keys and ledger entries, plus a read and a write per entry
        indexed. When nothing is left to index it records that in :func:`index_meta_key`, so readers
        stop checking.
        """
        latest: dict[str, IndexRow] = {}  # ledger object key -> its newest index row
        superseded: list[str] = []
        for month in self.index_months():
            rows = list(self.index_rows(month))
            keep = list(latest_index_rows(rows))
            kept = {r.key for r in keep}
            superseded += [r.key for r in rows if r.key not in kept]
            for r in keep:
                have = latest.get(r.ledger_key(self.root))
                if have is None or r.rev > have.rev:
                    latest[r.ledger_key(self.root)] = r
        ledger_keys = [o["Key"] for o in self.storage.list_keys(self.prefix) if o["Key"].endswith(".json")]
        missing = [k for k in ledger_keys if k not in latest]
        batch = missing if limit is None else missing[:max(0, limit)]
        remaining = len(missing) - len(batch)
        todo = batch + ([k for k in ledger_keys if k in latest] if verify else [])

        def index_one(key: str) -> str:
            entry = self.storage.get_json(key)
            if not isinstance(entry, dict) or not entry.get("key") or not (entry.get("first_seen")
                                                                          or entry.get("claimed_at")):
                log.warning("ledger object %s is not a ledger entry; not indexed", key)
                return "unreadable"
            want = entry_index_key(self.root, entry)
            have = latest.get(key)
            if have is not None and (have.key == want or have.rev > int(entry.get("rev") or 0)):
                return "ok"  # up to date (or the entry changed since the listing: its writer indexed it)
            self.storage.put_bytes(want, b"", "text/plain")
            if have is not None:
                self.storage.delete(have.key)
            return "repaired" if have is not None else "indexed"

        outcomes: dict[str, int] = {"indexed": 0, "repaired": 0, "unreadable": 0, "ok": 0}
        if todo:
            with ThreadPoolExecutor(min(threads, len(todo))) as pool:
                for outcome in pool.map(index_one, todo):
                    outcomes[outcome] += 1
        for start in range(0, len(superseded), 1000):  # DeleteObjects takes up to 1,000 keys a request
            self.storage.client.delete_objects(Bucket=self.storage.bucket, Delete={
                "Objects": [{"Key": k} for k in superseded[start:start + 1000]], "Quiet": True})
        if remaining == 0:
            self.storage.put_json(index_meta_key(self.root), {"complete": True, "checked_at": self._now(),
                                                             "ledger_entries": len(ledger_keys)})
        return {"ledger_entries": len(ledger_keys), "indexed": outcomes["indexed"], "repaired": outcomes["repaired"],
                "unreadable": outcomes["unreadable"], "superseded_removed": len(superseded), "remaining": remaining}
