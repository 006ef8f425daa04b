"""``m3sh_reconcile``: does every system agree? Daily, for the bills of the look-back period.

Graph: ``compare_accounts`` (CRM accounts <-> m3ter accounts) and ``compare_bills`` (m3ter bills <->
each destination read back by its type's reader: NetSuite invoices via SuiteQL, the Salesforce
invoice object, the S3 archive, HubSpot deals) stage their findings in S3 -> ``report`` writes an
HTML page (for finance) and a CSV under ``reports/reconcile/<date>/``, ``reports/reconcile/latest.json``
for the UI, and fails the run with ``RunFailed(records=...)`` when anything drifted, so the failure
alert fires. A clean run after a drifting one sends a "resolved" alert.

The tasks are :mod:`m3sh.operators.reconcile`'s operators, which users can wire into their own DAGs
the same way; this module only wires them from config.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from m3sh.compat import CronDataIntervalTimetable
from m3sh.config import M3shConfig, get_config
from m3sh.dagkit.defaults import FROM_PARAM, common_dag_args
from m3sh.operators.reconcile import (
    M3terReconcileAccountsOperator,
    M3terReconcileBillsOperator,
    ReconcileReportOperator,
)

DAG_ID = "m3sh_reconcile"


def build_reconcile_dag(cfg: M3shConfig | None = None) -> DAG:
    cfg = cfg or get_config()
    with DAG(
        dag_id=DAG_ID,
        description="CRM <-> m3ter accounts; m3ter bills <-> NetSuite accounts, Salesforce, HubSpot, S3 archive",
        schedule=CronDataIntervalTimetable("0 6 * * *", timezone="UTC"),
        **common_dag_args(cfg, "invoicing", "reconcile"),
        params={
            "dry_run": Param(False, type="boolean",
                             description="Compare and log the differences; write no report and raise no alert"),
            "lookback_days": Param(0, type="integer", minimum=0,
                                   description="Bills dated this many days back "
                                               "(0: invoicing.reconcile_lookback_days)"),
        },
        doc_md=__doc__,
    ) as dag:
        accounts = M3terReconcileAccountsOperator(task_id="compare_accounts", config=cfg,
                                                  m3ter_conn_id=cfg.m3ter.conn_id)
        bills = M3terReconcileBillsOperator(task_id="compare_bills", config=cfg, m3ter_conn_id=cfg.m3ter.conn_id,
                                            lookback_days=FROM_PARAM.format("lookback_days"))
        ReconcileReportOperator(task_id="report", accounts=accounts.output, bills=bills.output, config=cfg,
                                preview=FROM_PARAM.format("dry_run"))
    return dag
