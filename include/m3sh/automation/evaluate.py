"""One evaluation pass over m3ter: list endpoints in pages, never one call per account.

Per pass, for N accounts with balances and contracts: ``ceil(N/100)`` balance pages (only when a
balance rule is enabled), ``ceil(N/100)`` contract pages (only with a contract rule), one usage
query per usage rule, one ``meters``/``products`` lookup, and ``ceil(F/100)`` account lookups for
the F accounts that fired. Total credit (the "original" of a balance and the identity of a
threshold crossing) needs a transaction-summary call per balance; the sync evaluator keeps a
cache in S3 keyed by the balance ``version`` so only balances that changed since the last pass
cost a call. Triggers (async, on the triggerer) do not touch S3: they keep the same cache in memory
for as long as they poll.

:class:`Evaluator` (sync hook, workers) and :func:`aevaluate` (async hook, triggerer) fetch; the
decisions are the pure functions of :mod:`m3sh.automation.rules`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from m3sh import layout
from m3sh.automation import rules as R
from m3sh.automation.rules import Firing
from m3sh.config import TriggerRule
from m3sh.runs import chunked

if TYPE_CHECKING:
    from m3sh.hooks.m3ter import M3terAsyncHook, M3terHook
    from m3sh.storage import Storage

log = logging.getLogger(__name__)
PAGE = 100  # m3ter's maximum pageSize for balances, contracts and accounts
CREDIT_LOOKUP_CONCURRENCY = 8


@dataclass
class Evaluation:
    firings: list[Firing]
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _total_credit(summary: Mapping[str, Any] | None) -> float | None:
    if not summary:
        return None
    credit = summary.get("totalCreditAmount")
    if credit is None:
        credit = summary.get("initialCreditAmount")
    return float(credit) if credit is not None else None


class CreditsCache:
    """``{balance id: [version, total credit]}``: a balance's version changes with every transaction,
    so an unchanged version means an unchanged credit total.

    Kept in one S3 object by workers (``storage``), or in memory only (``storage=None``) by a trigger,
    which polls for hours in one process and must not touch S3 from the triggerer.
    """

    def __init__(self, storage: Storage | None) -> None:
        self.storage = storage
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False

    def load(self) -> CreditsCache:
        if self.storage is not None:
            self.entries = self.storage.get_json(layout.balance_credits(self.storage)) or {}
        return self

    def get(self, balance: Mapping[str, Any]) -> float | None:
        hit = self.entries.get(str(balance["id"]))
        if hit and hit[0] is not None and hit[0] == balance.get("version"):  # no version: never trusted
            return float(hit[1])
        return None

    def put(self, balance: Mapping[str, Any], credit: float) -> None:
        self.entries[str(balance["id"])] = [balance.get("version"), credit]
        self.dirty = True

    def save(self, live_ids: Iterable[str] | None = None) -> None:
        """Drop balances not in ``live_ids`` (gone from m3ter), then write if anything changed."""
        if live_ids is not None:
            live = set(live_ids)
            stale = [k for k in self.entries if k not in live]
            for k in stale:
                del self.entries[k]
            self.dirty = self.dirty or bool(stale)
        if self.dirty and self.storage is not None:
            self.storage.put_json(layout.balance_credits(self.storage), self.entries)
        self.dirty = False


def _kinds(rules: Sequence[TriggerRule]) -> set[str]:
    return {r.when.kind for r in rules}


# ----------------------------------------------------------------------------------------- sync
class Evaluator:
    """Evaluates rules with the sync :class:`~m3sh.hooks.m3ter.M3terHook` (tasks and sensor pokes)."""

    def __init__(self, hook: M3terHook, credits_cache: CreditsCache | None = None,
                 concurrency: int = CREDIT_LOOKUP_CONCURRENCY) -> None:
        self.hook = hook
        self.cache = credits_cache
        self.concurrency = concurrency

    def run(self, rules: Sequence[TriggerRule], now: dt.datetime | None = None,
            accounts: Sequence[str] | None = None, persist_cache: bool = True,
            notified_account_ids: Sequence[str] | None = None) -> Evaluation:
        """One pass; ``notified_account_ids`` narrows it to the balance rules of those accounts.

        m3ter's notifications are balance events that name their account, so the run they start
        lists that account's balances (a page each) instead of paging through every balance of the
        org, then looks up credits for its candidates; usage and contract rules are left to the
        scheduled pass.
        """
        now = now or dt.datetime.now(dt.UTC)
        if notified_account_ids is not None:
            rules = [r for r in rules if r.when.kind == "balance_below"]
        kinds = _kinds(rules)
        result = Evaluation([], counts={})
        firings: list[Firing] = []
        if "balance_below" in kinds:
            firings += self._balances([r for r in rules if r.when.kind == "balance_below"], now, result,
                                      persist_cache, notified_account_ids)
        for rule in (r for r in rules if r.when.kind == "usage_over_limit"):
            firings += self._usage(rule, now, result)
        contract_rules = [r for r in rules if r.when.kind in ("contract_ending", "contract_ended")]
        if contract_rules:
            contracts = list(self.hook.list_contracts(page_size=PAGE))
            result.counts["contracts"] = len(contracts)
            for rule in contract_rules:
                firings += R.contract_firings(rule, contracts, now)
        firings = self._with_codes(R.dedupe(firings))
        result.firings = R.filter_accounts(firings, {r.name: r for r in rules}, accounts)
        return result

    def _balances(self, rules: list[TriggerRule], now: dt.datetime, result: Evaluation,
                  persist_cache: bool, account_ids: Sequence[str] | None = None) -> list[Firing]:
        if account_ids is None:
            balances = list(self.hook.list_balances(page_size=PAGE))
        else:
            balances = [b for aid in sorted(set(account_ids))
                        for b in self.hook.list_balances(account_id=aid, page_size=PAGE)]
            persist_cache = False  # a partial listing must not prune the other balances' cached credits
        result.counts["balances"] = len(balances)
        products = self._product_ids(rules)
        candidates: dict[str, list[Mapping[str, Any]]] = {}
        for rule in rules:
            candidates[rule.name] = R.balance_candidates(rule, balances, now, products.get(rule.name))
        wanted = {str(b["id"]): b for group in candidates.values() for b in group}
        credits = self._credits(list(wanted.values()), result)
        if self.cache is not None and persist_cache:
            self.cache.save(live_ids=[str(b["id"]) for b in balances])
        out: list[Firing] = []
        for rule in rules:
            out += R.balance_firings(rule, candidates[rule.name], credits, now)
        return out

    def _product_ids(self, rules: list[TriggerRule]) -> dict[str, set[str] | None]:
        codes = sorted({c for r in rules for c in (r.when.balance_below.product_codes or [])  # type: ignore[union-attr]
                        })
        by_code = ({p["code"]: p["id"] for p in self.hook.list_products(codes=codes, page_size=PAGE)}
                   if codes else {})
        out: dict[str, set[str] | None] = {}
        for r in rules:
            pc = r.when.balance_below.product_codes  # type: ignore[union-attr]
            out[r.name] = {by_code[c] for c in pc if c in by_code} if pc else None
        return out

    def _credits(self, balances: list[Mapping[str, Any]], result: Evaluation) -> dict[str, float | None]:
        credits: dict[str, float | None] = {}
        missing = []
        for b in balances:
            hit = self.cache.get(b) if self.cache is not None else None
            if hit is None:
                missing.append(b)
            else:
                credits[str(b["id"])] = hit

        def lookup(b: Mapping[str, Any]) -> tuple[Mapping[str, Any], float | None]:
            return b, _total_credit(self.hook.balance_transaction_summary(str(b["id"])))

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            for b, credit in pool.map(lookup, missing):
                credits[str(b["id"])] = credit
                if credit is not None and self.cache is not None:
                    self.cache.put(b, credit)
        result.counts["credit_lookups"] = len(missing)
        return credits

    def _usage(self, rule: TriggerRule, now: dt.datetime, result: Evaluation) -> list[Firing]:
        cond = rule.when.usage_over_limit
        assert cond is not None
        meter = self.hook.find_meter(cond.meter)
        if meter is None:
            result.notes.append(f"rule {rule.name}: no m3ter meter with code {cond.meter!r}; skipped")
            return []
        answer = self.hook.query_usage(R.usage_query_body(rule, meter["id"], now))
        if answer.get("hasMoreData"):
            result.notes.append(f"rule {rule.name}: usage query truncated at 20000 accounts")
        rows = answer.get("data") or []
        result.counts[f"usage_rows:{rule.name}"] = len(rows)
        return R.usage_firings(rule, rows, now)

    def _with_codes(self, firings: list[Firing]) -> list[Firing]:
        missing = sorted({f.account_id for f in firings if not f.account_code})
        codes: dict[str, str | None] = {}
        for chunk in chunked(missing, PAGE):
            for a in self.hook.list_accounts(ids=chunk, page_size=PAGE):
                codes[a["id"]] = a.get("code")
        return [f if f.account_code else f.with_code(codes.get(f.account_id)) for f in firings]


# ---------------------------------------------------------------------------------------- async
async def aevaluate(hook: M3terAsyncHook, rules: Sequence[TriggerRule], now: dt.datetime | None = None, *,
                    accounts: Sequence[str] | None = None,
                    concurrency: int = CREDIT_LOOKUP_CONCURRENCY,
                    credit_cache: CreditsCache | None = None) -> Evaluation:
    """The async twin of :meth:`Evaluator.run` for triggers: no blocking call, no S3.

    ``credit_cache`` (in memory: ``CreditsCache(None)``) is kept by the caller across passes: a
    trigger polls for hours, and a ``percent_of_original`` rule makes every balance in scope a
    candidate, so without it each poll would cost one summary call per balance.
    """
    now = now or dt.datetime.now(dt.UTC)
    kinds = _kinds(rules)
    result = Evaluation([], counts={})
    firings: list[Firing] = []
    if "balance_below" in kinds:
        balance_rules = [r for r in rules if r.when.kind == "balance_below"]
        balances = await hook.alist_balances(page_size=PAGE)
        result.counts["balances"] = len(balances)
        product_codes = sorted({c for r in balance_rules
                                for c in (r.when.balance_below.product_codes or [])})  # type: ignore[union-attr]
        by_code = ({p["code"]: p["id"]
                    for p in await hook.alist_products(codes=product_codes, page_size=PAGE)}
                   if product_codes else {})
        candidates = {}
        for rule in balance_rules:
            pc = rule.when.balance_below.product_codes  # type: ignore[union-attr]
            pids = {by_code[c] for c in pc if c in by_code} if pc else None
            candidates[rule.name] = R.balance_candidates(rule, balances, now, pids)
        wanted = {str(b["id"]): b for group in candidates.values() for b in group}
        sem = asyncio.Semaphore(concurrency)

        cache = credit_cache if credit_cache is not None else CreditsCache(None)
        credits: dict[str, float | None] = {
            bid: hit for bid, b in wanted.items() if (hit := cache.get(b)) is not None}

        async def credit(bid: str) -> tuple[str, float | None]:
            async with sem:
                total = _total_credit(await hook.abalance_transaction_summary(bid))
            if total is not None:
                cache.put(wanted[bid], total)
            return bid, total

        missing = [bid for bid in wanted if bid not in credits]
        credits.update(await asyncio.gather(*(credit(bid) for bid in missing)))
        cache.save(live_ids=[str(b["id"]) for b in balances])  # in memory: prunes gone balances only
        result.counts["credit_lookups"] = len(missing)
        for rule in balance_rules:
            firings += R.balance_firings(rule, candidates[rule.name], credits, now)
    for rule in (r for r in rules if r.when.kind == "usage_over_limit"):
        cond = rule.when.usage_over_limit
        assert cond is not None
        meters = await hook.alist_meters(codes=[cond.meter], page_size=PAGE)
        if not meters:
            result.notes.append(f"rule {rule.name}: no m3ter meter with code {cond.meter!r}; skipped")
            continue
        answer = await hook.aquery_usage(R.usage_query_body(rule, meters[0]["id"], now))
        firings += R.usage_firings(rule, answer.get("data") or [], now)
    contract_rules = [r for r in rules if r.when.kind in ("contract_ending", "contract_ended")]
    if contract_rules:
        contracts = await hook.alist_contracts(page_size=PAGE)
        result.counts["contracts"] = len(contracts)
        for rule in contract_rules:
            firings += R.contract_firings(rule, contracts, now)
    firings = R.dedupe(firings)
    missing = sorted({f.account_id for f in firings if not f.account_code})
    codes: dict[str, str | None] = {}
    for chunk in chunked(missing, PAGE):
        for a in await hook.alist_accounts(ids=chunk, page_size=PAGE):
            codes[a["id"]] = a.get("code")
    firings = [f if f.account_code else f.with_code(codes.get(f.account_id)) for f in firings]
    result.firings = R.filter_accounts(firings, {r.name: r for r in rules}, accounts)
    return result
