"""``m3sh_plan_triggers``: rules over balances, usage and contract dates -> plan switches, balance
resets, custom fields, CRM fields and notifications, each firing acted on exactly once.

Schedule: every 5 minutes **or** when the m3sh webhook receiver records an event on the asset
``m3sh://m3ter/notifications`` (a signed m3ter notification arrived), so a depleted balance is
handled within seconds instead of at the next poll. A run started by notifications evaluates the
balance rules of the accounts they name (one balance listing each plus a credit lookup per low
balance, whatever the org's size); the scheduled pass covers everything, every 5 minutes.

Graph: ``evaluate`` (one pass over m3ter list endpoints for every account) -> ``apply_firings``
(mapped over chunks of firings; each firing claimed in the S3 ledger, actions in order, every
outcome recorded) -> ``summary`` (counts; fails naming the keys whose actions failed, and those
are resumed by the next pass). Params: ``dry_run`` (list what would fire and which actions; change
nothing), ``rules`` and ``accounts`` (only these rule names / account codes).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

from m3sh.compat import AssetOrTimeSchedule, CronTriggerTimetable
from m3sh.config import M3shConfig, get_config
from m3sh.dagkit.defaults import common_dag_args
from m3sh.dagkit.errors import RunFailed

log = logging.getLogger(__name__)
DAG_ID = "m3sh_plan_triggers"
NOTIFICATIONS_ASSET_URI = "m3sh://m3ter/notifications"
FIRINGS_PER_TASK = 50
DRY_RUN_LISTED = 200  # firings a dry run lists in its result
# A webhook-started run reads each notified account's balances (one call each); past this many
# accounts one full pass (~N/100 pages) is cheaper than that many calls.
MAX_NOTIFIED_ACCOUNTS = 20
MAP_LABEL = "{{ task.op_kwargs['chunk'] | length }} firing(s)"


def notifications_asset() -> Asset:
    return Asset(uri=NOTIFICATIONS_ASSET_URI, name="m3ter_notifications")


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


def build_plan_triggers_dag(cfg: M3shConfig | None = None) -> DAG:
    cfg = cfg or get_config()
    with DAG(
        dag_id=DAG_ID,
        description="Balances, usage limits and contract dates -> plan switches, resets, fields; exactly once",
        schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("*/5 * * * *", timezone="UTC"),
                                     assets=notifications_asset()),
        **common_dag_args(cfg, "triggers", "plan-automation"),
        params={
            "dry_run": Param(False, type="boolean",
                             description="List what would fire and which actions; change nothing"),
            "rules": Param([], type="array", description="Only these rule names (empty: every enabled rule)"),
            "accounts": Param([], type="array", description="Only these m3ter account codes (empty: all)"),
        },
        doc_md=__doc__,
    ) as dag:

        @task
        def evaluate(params: dict[str, Any], run_id: str | None = None,
                     triggering_asset_events: Any = None) -> dict[str, Any]:
            from m3sh.automation.actions import plan_actions
            from m3sh.automation.evaluate import CreditsCache, Evaluator
            from m3sh.automation.ledger import Ledger
            from m3sh.automation.rules import select_rules
            from m3sh.hooks.m3ter import M3terHook
            from m3sh.storage import Storage

            conf = get_config()
            rules = select_rules(conf.triggers, params.get("rules") or None)
            dry_run = bool(params.get("dry_run"))
            if not rules:
                log.info("no enabled trigger rule selected; nothing to evaluate")
                return {"chunks": [], "firings": 0, "dry_run": dry_run}
            storage = Storage.from_config(conf.storage)
            notified = notified_account_ids(triggering_asset_events)
            if notified is None:
                scope = "all accounts"
                cache = CreditsCache(storage).load()
            else:  # a webhook-started run: the notified accounts' balances only (see Evaluator.run)
                scope = f"balance rules of the notified account(s) {notified}"
                cache = None
            log.info("evaluating %s", scope)
            result = Evaluator(M3terHook(conf.m3ter.conn_id), cache).run(
                rules, accounts=params.get("accounts") or None, persist_cache=not dry_run,
                notified_account_ids=notified)
            for note in result.notes:
                log.warning("%s", note)
            log.info("evaluated %d rule(s): %s; %d firing(s)", len(rules), result.counts, len(result.firings))
            by_name = {r.name: r for r in rules}
            if dry_run:
                ledger = Ledger(storage)
                plan = [plan_actions(f, by_name[f.rule], ledger.get(f.key)) for f in result.firings]
                for p in plan:
                    log.info("DRY RUN %s %s account=%s actions=%s", p["status"], p["key"], p["account"], p["actions"])
                # The run's result (XCom, Airflow UI) names each firing and its actions; capped so a
                # dry run over a big org stays a small XCom (the log above has every line).
                return {"chunks": [], "firings": len(plan), "dry_run": True, "scope": scope,
                        "would_fire": [p["key"] for p in plan if p["status"] == "would_fire"][:DRY_RUN_LISTED],
                        "plan": [{k: p[k] for k in ("key", "account", "status", "actions")}
                                 for p in plan[:DRY_RUN_LISTED]]}
            # Firings whose key is already final would only be re-claimed to read "already done".
            final = Ledger(storage).final_keys(f.key for f in result.firings)
            if final:
                log.info("%d firing(s) already done or abandoned (ledger markers): not re-applied", len(final))
            firings = [f.to_dict() for f in result.firings if f.key not in final]
            chunks = [firings[i:i + FIRINGS_PER_TASK] for i in range(0, len(firings), FIRINGS_PER_TASK)]
            if len(chunks) > 1024:
                raise RunFailed(f"{len(firings)} firings exceed 1024 mapped tasks", records=[])
            return {"chunks": chunks, "firings": len(firings), "dry_run": False, "scope": scope}

        @task
        def chunks_of(evaluation: dict[str, Any]) -> list[list[dict[str, Any]]]:
            return list(evaluation["chunks"])

        @task(map_index_template=MAP_LABEL)
        def apply_firings(chunk: list[dict[str, Any]], run_id: str | None = None) -> list[dict[str, Any]]:
            from m3sh.automation.actions import ActionRunner, apply_firing
            from m3sh.automation.ledger import Ledger
            from m3sh.automation.rules import Firing
            from m3sh.hooks.m3ter import M3terHook
            from m3sh.storage import Storage

            conf = get_config()
            rules = {r.name: r for r in conf.triggers}
            runner = ActionRunner(conf, M3terHook(conf.m3ter.conn_id))
            ledger = Ledger(Storage.from_config(conf.storage))
            outcomes = []
            for item in chunk:
                firing = Firing.from_dict(item)
                rule = rules.get(firing.rule)
                if rule is None:
                    outcomes.append({"key": firing.key, "status": "skipped", "reason": "rule removed from config"})
                    continue
                outcomes.append(apply_firing(firing, rule, runner, ledger, run_id or "manual"))
            return outcomes

        @task(trigger_rule="all_done")
        def summary(evaluation: dict[str, Any], outcomes: list[list[dict[str, Any]]] | None) -> dict[str, Any]:
            from m3sh.automation.actions import summarize

            flat = [o for chunk in (outcomes or []) if chunk for o in chunk]
            totals = summarize(flat)
            totals["dry_run"] = evaluation.get("dry_run", False)
            if evaluation.get("dry_run"):
                totals["firings"] = evaluation.get("firings", 0)
                totals["would_fire"] = evaluation.get("would_fire", [])
                totals["plan"] = evaluation.get("plan", [])
            log.info("plan triggers summary: %s", totals)
            if totals["failed_keys"]:
                raise RunFailed(f"{len(totals['failed_keys'])} firing(s) had a failed action; the next pass "
                                f"resumes them: {', '.join(totals['failed_keys'][:20])}",
                                records=totals["failed_keys"])
            return totals

        evaluation = evaluate()  # type: ignore[call-arg,misc]
        applied = apply_firings.expand(chunk=chunks_of(evaluation))  # type: ignore[arg-type]
        summary(evaluation, applied)  # type: ignore[arg-type]
    return dag
