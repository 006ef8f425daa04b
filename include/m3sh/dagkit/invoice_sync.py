"""``m3sh_invoice_sync``: m3ter bills ready for export -> enriched -> routed -> every destination.

Graph::

    collect_bills ──► <destination>.plan ──► <destination>.deliver (mapped)  ─┐  one group per
                  ──► ...                                                     ├► finalize
                  ──► <destination>.plan ──► <destination>.deliver (mapped)  ─┘  destination

* ``collect_bills`` reads bills in ``invoicing.bill_states`` changed in the data interval (or the
  ``bill_ids`` param), enriches and routes them, and stages them in S3. A bill missing required
  enrichment is set aside with the reason; the rest go on.
* Each destination has its own task group; a failing destination never blocks the others. NetSuite
  groups run their mapped tasks in the destination's Airflow pool (size = its ``concurrency``), one
  request stream per task, and the hook's per-account limiter guards each process.
* ``finalize`` (runs whatever happened upstream) merges the outcomes, stamps fully exported bills
  in m3ter, writes the run summary (with the *action needed* list quoting NetSuite) to S3 and fails
  the run with ``RunFailed(records=[bill ids])`` naming bill, destination and error.
* ``payments.<NetSuite destination>`` (``invoicing.payments.enabled``) reads the payment state of
  the invoices m3sh exported to that account, changed since the last read, and writes it to the
  Salesforce and HubSpot destinations. A task group of this DAG rather than a DAG of its own: it
  needs the same destinations, storage and daily interval, and it runs after the delivery groups
  (whatever their outcome), so an invoice delivered in this run is in the CRM before its state is
  written and a delivery failure never holds back the payments of other invoices.

Exactly once per bill and destination: every write is an upsert by external id or carries an
idempotency key, and the S3 ledger lets re-runs skip unchanged bills without calling anything.

The tasks are :mod:`m3sh.operators.invoicing`'s operators (``M3terBillsCollectOperator``,
``M3terBillsDeliverOperator`` mapped over parts of the bills, ``M3terInvoiceRunSummaryOperator``),
which users can wire into their own DAGs the same way; this module only wires them from config.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, TaskGroup, task

from m3sh.compat import CronDataIntervalTimetable
from m3sh.config import HubSpotDestination, M3shConfig, NetSuiteDestination, SalesforceDestination, get_config
from m3sh.dagkit.defaults import FROM_PARAM, common_dag_args
from m3sh.operators.invoicing import (
    M3terBillsCollectOperator,
    M3terBillsDeliverOperator,
    M3terInvoiceRunSummaryOperator,
    NetSuitePaymentsToCrmOperator,
)

DAG_ID = "m3sh_invoice_sync"
MAP_LABEL = "{{ task.staged['dest'] }} part {{ task.staged['index'] + 1 }}"


def build_invoice_sync_dag(cfg: M3shConfig | None = None) -> DAG:
    cfg = cfg or get_config()
    with DAG(
        dag_id=DAG_ID,
        description="m3ter bills -> enriched, routed -> NetSuite accounts, Salesforce, HubSpot, S3, webhooks",
        schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
        **common_dag_args(cfg, "invoicing", "erp", catchup=cfg.invoicing.catchup),
        params={
            "bill_ids": Param([], type="array", description="Only these m3ter bill ids (any change time)"),
            "dry_run": Param(False, type="boolean", description="Enrich, route and report; write nothing"),
            "destinations": Param([], type="array", description="Only these destination names (empty: all)"),
            "redeliver": Param(False, type="boolean",
                               description="Ignore the delivery ledger and upsert again (repairs what "
                                           "m3sh_reconcile reports missing or changed; still exactly once)"),
            "full_scan": Param(False, type="boolean",
                               description="Every bill in the configured states, not only those changed in the "
                                           "data interval (exported bills are still skipped by the ledger); "
                                           "the payments step reads every exported invoice"),
        },
        doc_md=__doc__,
    ) as dag:
        collected = M3terBillsCollectOperator(
            task_id="collect_bills", config=cfg, m3ter_conn_id=cfg.m3ter.conn_id,
            bill_ids=FROM_PARAM.format("bill_ids"), only_destinations=FROM_PARAM.format("destinations"),
            full_scan=FROM_PARAM.format("full_scan")).output
        done = M3terInvoiceRunSummaryOperator(
            task_id="finalize", staged=collected, config=cfg, m3ter_conn_id=cfg.m3ter.conn_id,
            preview=FROM_PARAM.format("dry_run"), trigger_rule="all_done")
        delivery_groups: list[TaskGroup] = []
        for dest in (d for d in cfg.invoicing.destinations if d.enabled):
            with TaskGroup(group_id=dest.name, tooltip=f"Deliver routed bills to {dest.name}") as group:
                plan = task(task_id="plan")(_plan)
                # NetSuite: one request stream per task, at most `concurrency` tasks, in its pool.
                limits: dict[str, Any] = {"max_active_tis_per_dagrun": dest.concurrency, "pool": dest.pool} \
                    if isinstance(dest, NetSuiteDestination) else {}
                M3terBillsDeliverOperator.partial(
                    task_id="deliver", destination=dest.model_dump(mode="json"), bucket=cfg.storage.bucket,
                    prefix=cfg.storage.prefix, aws_conn_id=cfg.storage.conn_id,
                    preview=FROM_PARAM.format("dry_run"), redeliver=FROM_PARAM.format("redeliver"),
                    map_index_template=MAP_LABEL, **{k: v for k, v in limits.items() if v},
                ).expand(staged=plan(collected, dest.name, cfg.invoicing.bills_per_task))  # type: ignore[arg-type]
            group >> done
            delivery_groups.append(group)
        _payments(cfg, delivery_groups)
    return dag


def _payments(cfg: M3shConfig, upstream: list[TaskGroup]) -> None:
    """``payments.<NetSuite destination>``: one task per NetSuite account read, after every delivery."""
    pays = cfg.invoicing.payments
    crm = [d for d in cfg.invoicing.destinations
           if d.enabled and isinstance(d, SalesforceDestination | HubSpotDestination)]
    sources = [d for d in cfg.invoicing.destinations if d.enabled and isinstance(d, NetSuiteDestination)
               and (pays.sources is None or d.name in pays.sources)]
    if not pays.enabled or not crm or not sources:
        return
    with TaskGroup(group_id="payments", tooltip="NetSuite payment state -> Salesforce / HubSpot") as group:
        for source in sources:
            NetSuitePaymentsToCrmOperator(
                task_id=source.name, source=source, destinations=crm, config=cfg,
                full_scan=FROM_PARAM.format("full_scan"), preview=FROM_PARAM.format("dry_run"),
                trigger_rule="all_done", **({"pool": source.pool} if source.pool else {}))
    for up in upstream:
        up >> group


def _plan(collected: dict[str, Any], dest_name: str, bills_per_task: int) -> list[dict[str, Any]]:
    from m3sh.invoicing.run import plan_chunks

    return plan_chunks(collected, dest_name, bills_per_task)
