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
nothing), ``rules`` and ``accounts`` (only these rule names / account codes). The tasks are
:mod:`m3sh.operators.automation`'s operators; this module only wires them.
"""

from __future__ import annotations

from airflow.sdk import DAG, Asset, Param, task

from m3sh.automation.run import FIRINGS_PER_TASK, chunks_of, notified_account_ids
from m3sh.compat import AssetOrTimeSchedule, CronTriggerTimetable
from m3sh.config import M3shConfig, get_config
from m3sh.dagkit.defaults import FROM_PARAM, common_dag_args
from m3sh.operators.automation import (
    M3terApplyFiringsOperator,
    M3terFiringsSummaryOperator,
    M3terRulesEvaluateOperator,
)

__all__ = ["DAG_ID", "NOTIFICATIONS_ASSET_URI", "build_plan_triggers_dag", "notifications_asset",
           "notified_account_ids"]
DAG_ID = "m3sh_plan_triggers"
NOTIFICATIONS_ASSET_URI = "m3sh://m3ter/notifications"
MAP_LABEL = "{{ task.firings | length }} firing(s)"


def notifications_asset() -> Asset:
    return Asset(uri=NOTIFICATIONS_ASSET_URI, name="m3ter_notifications")


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
        evaluation = M3terRulesEvaluateOperator(
            task_id="evaluate", config=cfg, m3ter_conn_id=cfg.m3ter.conn_id, only_rules=FROM_PARAM.format("rules"),
            accounts=FROM_PARAM.format("accounts"), preview=FROM_PARAM.format("dry_run"),
            firings_per_task=FIRINGS_PER_TASK).output
        # A mapped task's arguments are serialized with the DAG: the config goes in its JSON form.
        applied = M3terApplyFiringsOperator.partial(
            task_id="apply_firings", config=cfg.model_dump(mode="json", exclude_defaults=True),
            m3ter_conn_id=cfg.m3ter.conn_id, map_index_template=MAP_LABEL,
        ).expand(firings=task(task_id="chunks_of")(chunks_of)(evaluation)).output  # type: ignore[arg-type]
        M3terFiringsSummaryOperator(task_id="summary", evaluation=evaluation, outcomes=applied,
                                    trigger_rule="all_done")
    return dag
