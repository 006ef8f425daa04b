"""The plan-automation audit trail: every firing, newest first, filtered, counted, paged, exported.

It reads the audit index the ledger writes with every status change
(:mod:`m3sh.automation.ledger`, ``triggers/index/<yyyy-mm>/<inverted time>!…``), so filtering,
totals and paging come from listings alone - ListObjectsV2 returns 1,000 keys a request, in key
order, which the inverted time makes newest first - and only the rows shown are read.

Cost of one page view (S3 requests): 1 listing of the months + one listing per 1,000 firings in
the months the date range touches (months are listed in parallel; a date bound inside a month
skips the rest with ``StartAfter`` or stops early) + one read per row shown (≤ 50, in parallel).
Measured (``python -m benchmarks.audit_trail``): 5,000 firings over 5 months, 59 requests (1 + 8
listings + 50 reads); 100,000 over 13 months, 159 (1 + 108 + 50); a one-week filter, 52-53 at
either size. The CSV export costs the same listings and no reads (9 and 109 requests); with
``details`` (kind, attempts, actions, errors: only the entries hold them) one read per row more,
streamed in batches.

Filters: ``rule`` (exact), ``account`` (the account code or m3ter id, exact, case-insensitive),
``outcome`` (claimed, done, failed, abandoned), ``from``/``to`` (UTC dates, inclusive, on the
time the firing was first claimed). The per-outcome totals count the set under every filter but
the outcome one (so they show the breakdown of what the other filters select); ``total`` counts
the rows matching all of them.

What it shows is scrubbed of secrets (:func:`scrub`): action details and errors come from
exception texts, which could carry a webhook URL or a token.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from m3sh.automation.ledger import (
    DEFAULT_LEASE_S,
    STATUSES,
    IndexRow,
    Ledger,
    index_meta_key,
    latest_index_rows,
    month_of,
    parse_time,
)

if TYPE_CHECKING:
    from m3sh.storage import Storage

log = logging.getLogger(__name__)
PAGE_SIZE = 50
READ_THREADS = 8
CSV_BATCH = 250  # rows whose entries are read together while the CSV streams
AUTO_BACKFILL = 200  # older ledger entries indexed per page view until the backfill is done
CSV_COLUMNS = ("fired_at", "rule", "account_code", "account_id", "entity", "entity_id", "crossing", "outcome",
               "firing_key")  # what the index holds: the export costs a listing per 1,000 firings
CSV_DETAIL_COLUMNS = ("kind", "attempts", "last_update", "actions", "error", "run_id")  # + a read per firing
_COMPLETE: set[tuple[str, str]] = set()  # (bucket, prefix) whose ledger is known to be fully indexed
_FAILED: dict[tuple[str, str], str] = {}  # (bucket, prefix) -> why this process cannot backfill (not retried)


class AuditQueryError(ValueError):
    """A filter or page parameter that cannot be used; names the parameter and the value."""

    def __init__(self, param: str, value: str, expected: str) -> None:
        super().__init__(f"{param}: {expected}, got {value!r}")
        self.param = param


# ------------------------------------------------------------------------------------ secrets
_URL = re.compile(r"\b([a-z][a-z0-9+.-]*://)(?:[^\s/@'\"<>]+@)?([^\s/?#'\"<>]+)[^\s'\"<>]*", re.I)
_SECRET_PAIR = re.compile(r"(?i)\b((?:access[_-]?)?token|secret|password|passwd|api[_-]?key|apikey|signature|"
                          r"authorization|client[_-]?secret)(\s*[=:]\s*|\"\s*:\s*\")(?:bearer\s+|basic\s+)?[^\s,;&\"']+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[a-z0-9._~+/=-]{8,}")


def scrub(text: Any) -> str:
    """``text`` with what could be a secret masked: a URL keeps only its scheme and host (webhook
    URLs carry their secret in the path or query), ``token=…``/``password: …`` pairs and bearer
    credentials become ``***``. Hand-written: Airflow's masker only knows secrets registered in the
    same process, and the api-server never sees the workers' (the ledger is written by workers)."""
    if text is None:
        return ""
    out = _URL.sub(lambda m: f"{m.group(1)}{m.group(2)}/***" if m.group(0) != m.group(1) + m.group(2)
                   else m.group(0), str(text))
    out = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}***", out)
    return _BEARER.sub(lambda m: f"{m.group(1)} ***", out)


def csv_safe(value: Any) -> str:
    """A cell a spreadsheet shows as text: one starting with ``= + - @`` (or a tab / CR) would be
    run as a formula (CSV injection, OWASP), so it gets a leading apostrophe; numbers stay numbers.
    Quoting of commas, quotes and newlines is the ``csv`` module's job."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text


# ------------------------------------------------------------------------------------ filters
def _date(param: str, value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise AuditQueryError(param, value, "expected a date YYYY-MM-DD") from None


@dataclass(frozen=True)
class AuditFilter:
    rule: str | None = None
    account: str | None = None
    outcome: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> AuditFilter:
        """From query parameters ``rule``, ``account``, ``outcome``, ``from``, ``to`` (empty = any)."""
        outcome = (params.get("outcome") or "").strip().lower() or None
        if outcome is not None and outcome not in STATUSES:
            raise AuditQueryError("outcome", str(params.get("outcome")), f"expected one of {', '.join(STATUSES)}")
        flt = cls(rule=(params.get("rule") or "").strip() or None,
                  account=(params.get("account") or "").strip() or None, outcome=outcome,
                  date_from=_date("from", params.get("from")), date_to=_date("to", params.get("to")))
        if flt.date_from and flt.date_to and flt.date_from > flt.date_to:
            raise AuditQueryError("to", str(params.get("to")), f"expected a date on or after from={flt.date_from}")
        return flt

    def params(self) -> dict[str, str]:
        """The query parameters that reproduce this filter (for shareable links)."""
        out = {"rule": self.rule, "account": self.account, "outcome": self.outcome,
               "from": self.date_from and self.date_from.isoformat(), "to": self.date_to and self.date_to.isoformat()}
        return {k: v for k, v in out.items() if v}

    @property
    def since(self) -> dt.datetime | None:
        return dt.datetime.combine(self.date_from, dt.time(0), dt.UTC) if self.date_from else None

    @property
    def before(self) -> dt.datetime | None:
        return dt.datetime.combine(self.date_to + dt.timedelta(days=1), dt.time(0), dt.UTC) if self.date_to else None

    def wants_month(self, month: str) -> bool:
        return ((self.since is None or month >= month_of(self.since))
                and (self.before is None or month <= month_of(self.before - dt.timedelta(microseconds=1))))

    def matches_except_outcome(self, row: IndexRow) -> bool:
        if self.rule is not None and row.rule != self.rule:
            return False
        if self.account is not None and self.account.lower() not in (row.account_code.lower(), row.account_id.lower()):
            return False
        if self.since is not None and row.fired_at < self.since:
            return False
        return self.before is None or row.fired_at < self.before


# ------------------------------------------------------------------------------------ results
@dataclass
class AuditPage:
    """One page of the audit trail and the exact totals of the filtered set."""

    entries: list[dict[str, Any]]
    total: int
    by_status: dict[str, int]
    page: int
    pages: int
    page_size: int
    rules: list[str]
    s3_requests: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def first(self) -> int:
        return (self.page - 1) * self.page_size + 1 if self.entries else 0

    @property
    def last(self) -> int:
        return self.first + len(self.entries) - 1 if self.entries else 0

    def to_dict(self) -> dict[str, Any]:
        return {"entries": self.entries, "total": self.total, "by_status": self.by_status, "page": self.page,
                "pages": self.pages, "page_size": self.page_size, "first": self.first, "last": self.last,
                "rules": self.rules, "s3_requests": self.s3_requests, "notes": self.notes}


def _error_of(entry: Mapping[str, Any]) -> str | None:
    if entry.get("error"):
        return str(entry["error"])
    if entry.get("status") in ("failed", "abandoned"):  # the error lives in the history step that failed
        for step in reversed(entry.get("history") or []):
            if isinstance(step, dict) and step.get("error"):
                return str(step["error"])
    return None


def describe(row: IndexRow, entry: Mapping[str, Any] | None, now: dt.datetime | None = None) -> dict[str, Any]:
    """What the page and the CSV show of one firing: the index row, completed by its ledger entry.
    A firing whose entry moved on since the listing shows the entry's (newer) state."""
    entry = entry or {}
    status = row.status
    if entry.get("status") and int(entry.get("rev") or 0) > row.rev:
        status = str(entry["status"])
    recorded = sorted((a for a in entry.get("actions") or [] if isinstance(a, dict)),
                      key=lambda a: int(a.get("index", 0)))
    actions = [scrub(f"{a.get('kind', '?')}: {a.get('status', '?')}" + (f" ({a['detail']})" if a.get("detail") else ""))
               for a in recorded]
    kind, ident = row.entity
    stale = None
    if status == "claimed" and entry.get("claimed_at"):
        age = ((now or dt.datetime.now(dt.UTC)) - parse_time(entry["claimed_at"])).total_seconds()
        if age > DEFAULT_LEASE_S:
            stale = "claim older than the lease (worker lost?): the next evaluation takes it over"
    error = _error_of(entry)
    code = entry.get("account_code") or row.account_code or None  # the index holds at most 200 characters of it
    return {"fired_at": row.fired_at.isoformat().replace("+00:00", "Z"), "rule": row.rule,
            "kind": entry.get("kind"), "account": code or row.account_id,
            "account_code": code, "account_id": row.account_id, "entity": kind or None,
            "entity_id": ident or None, "crossing": row.crossing, "status": status,
            "attempts": entry.get("attempts"), "at": entry.get("finished_at") or entry.get("claimed_at"),
            "first_seen": entry.get("first_seen"), "run": entry.get("claimed_by"), "actions": actions,
            "error": scrub(error) if error else None, "stale": stale, "key": row.firing_key}


# ------------------------------------------------------------------------------------ reader
class AuditTrail:
    """Queries over the audit index of one storage location (see the module docstring)."""

    def __init__(self, storage: Storage, threads: int = READ_THREADS, backfill_limit: int = AUTO_BACKFILL) -> None:
        self.storage = storage
        self.ledger = Ledger(storage)
        self.threads = threads
        self.backfill_limit = backfill_limit
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def count_requests(self) -> Iterator[list[int]]:
        """Counts the S3 requests made inside (every HTTP attempt of this storage's client)."""
        seen = [0]

        def count(**_: Any) -> None:
            with self._lock:
                seen[0] += 1

        events = self.storage.client.meta.events
        events.register("before-send.s3", count, unique_id=f"m3sh-audit-count-{id(seen)}")
        try:
            yield seen
        finally:
            events.unregister("before-send.s3", unique_id=f"m3sh-audit-count-{id(seen)}")

    # -- index coverage ------------------------------------------------------------------------
    def ensure_indexed(self) -> list[str]:
        """Index up to ``backfill_limit`` ledger entries written before the index existed (see
        :meth:`Ledger.backfill_index`), until the ledger records that none is left; then nothing
        (remembered per process). Notes for the page say what happened."""
        ident = (self.storage.bucket, self.storage.prefix)
        if ident in _COMPLETE:
            return []
        if ident in _FAILED:
            return [_FAILED[ident]]
        meta = self.storage.get_json(index_meta_key(self.storage.prefix))
        if isinstance(meta, dict) and meta.get("complete"):
            _COMPLETE.add(ident)
            return []
        try:
            result = self.ledger.backfill_index(limit=self.backfill_limit)
        except Exception as exc:  # e.g. a read-only role for the api-server: the page still shows the index
            log.warning("audit trail: backfill of the index failed: %s", exc)
            _FAILED[ident] = (f"Ledger entries written before the audit index existed may be missing (indexing them "
                              f"failed: {type(exc).__name__}); run `m3sh triggers backfill-index` once.")
            return [_FAILED[ident]]
        notes = []
        if result["indexed"]:
            notes.append(f"Indexed {result['indexed']:,} ledger entries written before the audit index existed.")
        if result["remaining"]:
            notes.append(f"{result['remaining']:,} older ledger entries are not listed yet: {self.backfill_limit} are "
                         "indexed per page view, or all at once with `m3sh triggers backfill-index`.")
        else:
            _COMPLETE.add(ident)
        return notes

    # -- listing -------------------------------------------------------------------------------
    def _month(self, month: str, flt: AuditFilter) -> tuple[list[IndexRow], Counter[str], set[str]]:
        matched: list[IndexRow] = []
        facets: Counter[str] = Counter()
        rules: set[str] = set()
        for row in latest_index_rows(self.ledger.index_rows(month, before=flt.before, since=flt.since)):
            rules.add(row.rule)
            if not flt.matches_except_outcome(row):
                continue
            facets[row.status] += 1
            if flt.outcome is None or row.status == flt.outcome:
                matched.append(row)
        return matched, facets, rules

    def scan(self, flt: AuditFilter) -> tuple[list[IndexRow], dict[str, int], list[str]]:
        """Every firing the filter selects (newest first), the per-outcome totals, the rules seen."""
        months = [m for m in self.ledger.index_months() if flt.wants_month(m)]
        matched: list[IndexRow] = []
        facets: Counter[str] = Counter()
        rules: set[str] = set()
        if months:
            with ThreadPoolExecutor(min(self.threads, len(months))) as pool:
                for rows, counts, seen in pool.map(lambda m: self._month(m, flt), months):  # newest month first
                    matched += rows
                    facets.update(counts)
                    rules |= seen
        order = {s: n for n, s in enumerate(STATUSES)}
        by_status = dict(sorted(facets.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
        return matched, by_status, sorted(rules)

    def _entries(self, rows: list[IndexRow]) -> list[dict[str, Any] | None]:
        if not rows:
            return []
        keys = [r.ledger_key(self.storage.prefix) for r in rows]
        with ThreadPoolExecutor(min(self.threads, len(keys))) as pool:
            return list(pool.map(self.storage.get_json, keys))

    def page(self, flt: AuditFilter, page: int = 1, page_size: int = PAGE_SIZE, *, backfill: bool = True) -> AuditPage:
        """One page (1-based) of the filtered set, newest first, with exact totals."""
        if page < 1:
            raise AuditQueryError("page", str(page), "expected a page number from 1")
        with self.count_requests() as requests:
            notes = self.ensure_indexed() if backfill else []
            matched, by_status, rules = self.scan(flt)
            rows = matched[(page - 1) * page_size: page * page_size]
            now = dt.datetime.now(dt.UTC)
            entries = [describe(r, e, now) for r, e in zip(rows, self._entries(rows), strict=True)]
        pages = max(1, math.ceil(len(matched) / page_size))
        if page > pages and matched:
            notes.append(f"Page {page} is past the last page ({pages}).")
        return AuditPage(entries=entries, total=len(matched), by_status=by_status, page=page, pages=pages,
                         page_size=page_size, rules=rules, s3_requests=requests[0], notes=notes)

    # -- export --------------------------------------------------------------------------------
    def rows(self, flt: AuditFilter) -> Iterator[IndexRow]:
        """The filtered firings newest first, month by month (memory stays bounded for the export)."""
        for month in self.ledger.index_months():
            if flt.wants_month(month):
                yield from self._month(month, flt)[0]

    def export(self, flt: AuditFilter, *, details: bool = True, batch: int = CSV_BATCH) -> Iterator[dict[str, Any]]:
        """Every filtered firing newest first; with ``details``, completed by its entry (read
        ``batch`` at a time, in parallel), else from the index alone."""
        now = dt.datetime.now(dt.UTC)
        it = iter(self.rows(flt))
        while chunk := list(itertools.islice(it, batch)):
            entries = self._entries(chunk) if details else [None] * len(chunk)
            yield from (describe(r, e, now) for r, e in zip(chunk, entries, strict=True))

    def csv_rows(self, flt: AuditFilter, *, details: bool = False) -> Iterable[list[str]]:
        """CSV rows (header first) of :meth:`export`: :data:`CSV_COLUMNS`, plus
        :data:`CSV_DETAIL_COLUMNS` with ``details``; secrets scrubbed, formulas neutralised."""
        yield [*CSV_COLUMNS, *(CSV_DETAIL_COLUMNS if details else ())]
        for d in self.export(flt, details=details):
            row = [d["fired_at"], d["rule"], d["account_code"], d["account_id"], d["entity"], d["entity_id"],
                   d["crossing"], d["status"], d["key"]]
            if details:
                row += [d["kind"], d["attempts"], d["at"], "; ".join(d["actions"]), d["error"], d["run"]]
            yield [csv_safe(v) for v in row]
