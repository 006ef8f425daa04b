"""One plan-automation pass as plain steps: evaluate the rules (firings in chunks, or a dry-run plan),
apply a chunk of firings under the ledger, and the pass summary. The automation operators
(:mod:`m3sh.operators.automation`) and so ``m3sh_plan_triggers`` call these; nothing here reads
``m3sh.yaml``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from m3sh.config import TriggerRule
from m3sh.runs import MAX_MAP, StepOutcome, chunked

log = logging.getLogger(__name__)

FIRINGS_PER_TASK = 50
DRY_RUN_LISTED = 200  # firings a dry run lists in its result
# A webhook-started run reads each notified account's balances (one call each); past this many
# accounts one full pass (~N/100 pages) is cheaper than that many calls.
MAX_NOTIFIED_ACCOUNTS = 20


class TooManyFirings(ValueError):
    """More chunks of firings than Airflow maps."""


def notified_account_ids(events: Any) -> list[str] | None:
    """The m3ter account ids named by the notifications that started this run, or ``None`` for a
    full pass: a scheduled, manual or backfill run, an event without an account (e.g. one created
    by hand in the UI), or more accounts than a narrowed pass is worth."""
    if not events:
        return None
    ids: set[str] = set()
    for asset in events:
        for event in events[asset]:
            account_id = (getattr(event, "extra", None) or {}).get("account_id")
            if not isinstance(account_id, str) or not account_id:
                return None
            ids.add(account_id)
    return sorted(ids) if 0 < len(ids) <= MAX_NOTIFIED_ACCOUNTS else None


def evaluate(m3ter: Any, rules: Sequence[TriggerRule], storage: Any, *, only_rules: Sequence[str] = (),
             accounts: Sequence[str] = (), dry_run: bool = False, notified: list[str] | None = None,
             firings_per_task: int = FIRINGS_PER_TASK) -> dict[str, Any]:
    """Evaluate the enabled rules (only ``only_rules`` when given) over every account, or over the
    ``notified`` accounts' balances. Returns ``{"chunks", "firings", "dry_run", "scope"}``: the
    firings not yet final in the ledger, in chunks of ``firings_per_task``; a dry run instead lists
    what would fire and which actions (``would_fire``, ``plan``) and changes nothing. Raises
    TooManyFirings past :data:`MAX_MAP` chunks."""
    from m3sh.automation.actions import plan_actions
    from m3sh.automation.evaluate import CreditsCache, Evaluator
    from m3sh.automation.ledger import Ledger
    from m3sh.automation.rules import select_rules

    selected = select_rules(rules, list(only_rules) or None)
    if not selected:
        log.info("no enabled trigger rule selected; nothing to evaluate")
        return {"chunks": [], "firings": 0, "dry_run": dry_run}
    if notified is None:
        scope = "all accounts"
        cache: CreditsCache | None = CreditsCache(storage).load()
    else:  # a webhook-started run: the notified accounts' balances only (see Evaluator.run)
        scope = f"balance rules of the notified account(s) {notified}"
        cache = None
    log.info("evaluating %s", scope)
    result = Evaluator(m3ter, cache).run(selected, accounts=list(accounts) or None, persist_cache=not dry_run,
                                         notified_account_ids=notified)
    for note in result.notes:
        log.warning("%s", note)
    log.info("evaluated %d rule(s): %s; %d firing(s)", len(selected), result.counts, len(result.firings))
    by_name = {r.name: r for r in selected}
    if dry_run:
        ledger = Ledger(storage)
        plan = [plan_actions(f, by_name[f.rule], ledger.get(f.key)) for f in result.firings]
        for p in plan:
            log.info("DRY RUN %s %s account=%s actions=%s", p["status"], p["key"], p["account"], p["actions"])
        # The run's result (XCom, Airflow UI) names each firing and its actions; capped so a dry
        # run over a big org stays a small XCom (the log above has every line).
        return {"chunks": [], "firings": len(plan), "dry_run": True, "scope": scope,
                "would_fire": [p["key"] for p in plan if p["status"] == "would_fire"][:DRY_RUN_LISTED],
                "plan": [{k: p[k] for k in ("key", "account", "status", "actions")} for p in plan[:DRY_RUN_LISTED]]}
    # Firings whose key is already final would only be re-claimed to read "already done".
    final = Ledger(storage).final_keys(f.key for f in result.firings)
    if final:
        log.info("%d firing(s) already done or abandoned (ledger markers): not re-applied", len(final))
    firings = [f.to_dict() for f in result.firings if f.key not in final]
    chunks = chunked(firings, firings_per_task)
    if len(chunks) > MAX_MAP:
        raise TooManyFirings(f"{len(firings)} firings exceed {MAX_MAP} mapped tasks")
    return {"chunks": chunks, "firings": len(firings), "dry_run": False, "scope": scope}


def chunks_of(evaluation: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    """The chunks of firings an evaluation planned (what the apply step is mapped over)."""
    return list(evaluation["chunks"])


def apply_chunk(firings: Sequence[Mapping[str, Any]], rules: Sequence[TriggerRule], runner: Any, ledger: Any,
                run_id: str) -> list[dict[str, Any]]:
    """Apply each firing exactly once under its ledger claim (see
    :func:`m3sh.automation.actions.apply_firing`); a firing whose rule is gone is skipped."""
    from m3sh.automation.actions import apply_firing
    from m3sh.automation.rules import Firing

    by_name = {r.name: r for r in rules}
    outcomes = []
    for item in firings:
        firing = Firing.from_dict(item)
        rule = by_name.get(firing.rule)
        if rule is None:
            outcomes.append({"key": firing.key, "status": "skipped", "reason": "rule removed from config"})
            continue
        outcomes.append(apply_firing(firing, rule, runner, ledger, run_id))
    return outcomes


def summarize_pass(evaluation: Mapping[str, Any], outcomes: Sequence[list[dict[str, Any]] | None]) -> StepOutcome:
    """Counts per outcome (a dry run: the evaluation's plan); a failure names the keys whose actions
    failed, which the next pass resumes."""
    from m3sh.automation.actions import summarize

    flat = [o for chunk in outcomes if chunk for o in chunk]
    totals = summarize(flat)
    totals["dry_run"] = evaluation.get("dry_run", False)
    if evaluation.get("dry_run"):
        totals["firings"] = evaluation.get("firings", 0)
        totals["would_fire"] = evaluation.get("would_fire", [])
        totals["plan"] = evaluation.get("plan", [])
    log.info("plan triggers summary: %s", totals)
    failed: list[str] = totals["failed_keys"]
    if failed:
        return StepOutcome(totals, f"{len(failed)} firing(s) had a failed action; the next pass resumes them: "
                                   f"{', '.join(failed[:20])}", failed)
    return StepOutcome(totals)
