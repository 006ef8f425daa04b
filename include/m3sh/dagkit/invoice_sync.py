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

Exactly once per bill and destination: every write is an upsert by external id or carries an
idempotency key, and the S3 ledger lets re-runs skip unchanged bills without calling anything.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

from airflow.sdk import DAG, Param, TaskGroup, task

from m3sh.compat import CronDataIntervalTimetable
from m3sh.config import M3shConfig, NetSuiteDestination, get_config
from m3sh.dagkit.defaults import common_dag_args
from m3sh.dagkit.errors import RunFailed
from m3sh.exceptions import RetryableError

log = logging.getLogger(__name__)
DAG_ID = "m3sh_invoice_sync"
MAX_MAP = 1024
NON_NETSUITE_THREADS = 4
MAP_LABEL = "{{ task.op_kwargs['chunk']['dest'] }} part {{ task.op_kwargs['chunk']['index'] + 1 }}"


POOL_DESCRIPTION = "m3sh: NetSuite per-account concurrency"


def required_pools(cfg: M3shConfig) -> dict[str, int]:
    """Airflow pools the NetSuite groups use, sized from config (``airflow pools set <name> <slots> ''``)."""
    return {d.pool: d.concurrency for d in cfg.invoicing.destinations
            if isinstance(d, NetSuiteDestination) and d.pool and d.enabled}


def _staging(storage: Any, run_id: str, *parts: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return storage.key("staging", DAG_ID, safe, *parts)


def _load_bills(storage: Any, key: str, wanted: set[str] | None = None) -> list[Any]:
    from m3sh.invoicing.models import EnrichedBill

    return [EnrichedBill.model_validate(row) for row in storage.iter_jsonl(key)
            if wanted is None or row["bill_id"] in wanted]


def build_invoice_sync_dag(cfg: M3shConfig | None = None) -> DAG:
    cfg = cfg or get_config()
    destinations = [d for d in cfg.invoicing.destinations if d.enabled]
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
                                           "data interval (exported bills are still skipped by the ledger)"),
        },
        doc_md=__doc__,
    ) as dag:

        @task
        def collect_bills(params: dict[str, Any], run_id: str, data_interval_start: dt.datetime | None = None,
                          data_interval_end: dt.datetime | None = None) -> dict[str, Any]:
            from m3sh.hooks.m3ter import M3terHook
            from m3sh.invoicing.deliver import fetch_bills
            from m3sh.invoicing.enrich import Enricher
            from m3sh.invoicing.routing import route_bill
            from m3sh.storage import Storage

            conf = get_config()
            storage = Storage.from_config(conf.storage)
            m3ter = M3terHook(conf.m3ter.conn_id)
            bill_ids = [str(b) for b in params.get("bill_ids") or []]
            scan_all = bool(params.get("full_scan")) or bool(bill_ids) or data_interval_start is None
            start, end = (None, None) if scan_all else (data_interval_start, data_interval_end)
            bills = list(fetch_bills(m3ter, conf.invoicing.bill_states, start, end, bill_ids or None))
            log.info("%d bill(s) in states %s changed in [%s, %s)%s", len(bills), conf.invoicing.bill_states,
                     start or "-", end or "-", f" among {len(bill_ids)} requested" if bill_ids else "")
            enriched, errors = Enricher(conf, m3ter).enrich(bills)
            only = [str(d) for d in params.get("destinations") or []]
            routes: dict[str, list[str]] = {d.name: [] for d in destinations}
            routed: dict[str, list[str]] = {}
            for bill in enriched:
                targets, _ = route_bill(conf.invoicing, bill, only or None)
                routed[bill.bill_id] = targets
                for t in targets:
                    routes.setdefault(t, []).append(bill.bill_id)
                if not targets:
                    log.warning("bill %s (%s, %s %.2f): no route matched (routes tried: %s)", bill.bill_id,
                                bill.account_code, bill.currency, bill.total, [r.name for r in conf.invoicing.routes])
            set_aside = [{"bill_id": e.bill_id, "account_code": e.account_code, "reason": e.reason} for e in errors]
            for s in set_aside:
                log.warning("bill %s (%s) set aside: %s", s["bill_id"], s["account_code"], s["reason"])
            bills_key = _staging(storage, run_id, "bills.jsonl")
            storage.put_jsonl(bills_key, (b.model_dump(mode="json") for b in enriched))
            routes_key = _staging(storage, run_id, "routes.json")
            storage.put_json(routes_key, {"by_destination": routes, "by_bill": routed, "set_aside": set_aside})
            counts = {name: len(ids) for name, ids in routes.items()}
            log.info("routed %d bill(s): %s; set aside %d", len(enriched), counts, len(set_aside))
            return {"bills_key": bills_key, "routes_key": routes_key, "bills": len(enriched),
                    "set_aside": len(set_aside), "by_destination": counts}

        def make_group(dest_name: str, is_netsuite: bool, pool: str | None, concurrency: int) -> Any:
            with TaskGroup(group_id=dest_name, tooltip=f"Deliver routed bills to {dest_name}") as group:

                @task(task_id="plan")
                def plan(collected: dict[str, Any]) -> list[dict[str, Any]]:
                    n = int(collected["by_destination"].get(dest_name, 0))
                    per = max(get_config().invoicing.bills_per_task, math.ceil(n / MAX_MAP))
                    chunks = math.ceil(n / per) if n else 0
                    log.info("%s: %d bill(s) in %d task(s) of up to %d", dest_name, n, chunks, per)
                    return [{"dest": dest_name, "index": i, "size": per, "routes_key": collected["routes_key"],
                             "bills_key": collected["bills_key"]} for i in range(chunks)]

                extra: dict[str, Any] = {"max_active_tis_per_dagrun": concurrency} if is_netsuite else {}
                if pool:
                    extra["pool"] = pool

                @task(task_id="deliver", map_index_template=MAP_LABEL, **extra)
                def deliver(chunk: dict[str, Any], params: dict[str, Any], run_id: str) -> dict[str, int]:
                    from m3sh.invoicing.deliver import deliver_batch, make_delivery
                    from m3sh.invoicing.ledger import Ledger, S3Ledger, WriteOnlyLedger
                    from m3sh.storage import Storage

                    conf = get_config()
                    storage = Storage.from_config(conf.storage)
                    routes = storage.get_json(chunk["routes_key"]) or {}
                    ids = routes.get("by_destination", {}).get(dest_name, [])
                    mine = ids[chunk["index"] * chunk["size"]:(chunk["index"] + 1) * chunk["size"]]
                    bills = _load_bills(storage, chunk["bills_key"], set(mine))
                    ledger: Ledger = S3Ledger(storage)
                    if params.get("redeliver"):
                        ledger = WriteOnlyLedger(ledger)
                    deliverer = make_delivery(conf, dest_name, ledger)
                    results = deliver_batch(deliverer, bills, dest_name, dry_run=bool(params.get("dry_run")),
                                            threads=1 if is_netsuite else NON_NETSUITE_THREADS)
                    storage.put_jsonl(_staging(storage, run_id, "results", dest_name, f"{chunk['index']:05d}.jsonl"),
                                      (r.to_row() for r in results))
                    counts: dict[str, int] = {}
                    for r in results:
                        counts[r.status] = counts.get(r.status, 0) + 1
                        if r.status in ("failed", "action_needed"):
                            log.error("bill %s (%s) -> %s %s: %s", r.bill_id, r.account_code, dest_name, r.status,
                                      r.detail)
                    log.info("%s part %d: %s", dest_name, chunk["index"] + 1, counts)
                    failed = [r for r in results if r.status == "failed"]
                    if any(r.retryable for r in failed):
                        raise RetryableError(f"{dest_name}: {len(failed)} bill(s) failed transiently, e.g. bill "
                                             f"{failed[0].bill_id}: {failed[0].detail}")
                    if failed:
                        raise RunFailed(f"{dest_name}: {len(failed)} bill(s) failed: "
                                        + "; ".join(f"bill {r.bill_id}: {r.detail}" for r in failed[:5]),
                                        records=[r.bill_id for r in failed])
                    return counts

                deliver.expand(chunk=plan(collected))  # type: ignore[call-arg,arg-type]
            return group

        @task(trigger_rule="all_done")
        def finalize(collected: dict[str, Any] | None, params: dict[str, Any], run_id: str) -> dict[str, Any]:
            from m3sh.hooks.m3ter import M3terHook
            from m3sh.invoicing.deliver import exported_destinations, mark_exported
            from m3sh.storage import Storage

            conf = get_config()
            storage = Storage.from_config(conf.storage)
            if not collected:
                raise RunFailed("collect_bills did not finish: no bill was read, nothing was exported", records=[])
            routes = storage.get_json(collected["routes_key"]) or {}
            by_bill: dict[str, list[str]] = routes.get("by_bill", {})
            results: dict[tuple[str, str], dict[str, Any]] = {}
            prefix = _staging(storage, run_id, "results") + "/"
            for obj in storage.list_keys(prefix):
                for row in storage.iter_jsonl(obj["Key"]):
                    results[(row["bill_id"], row["destination"])] = row
            for bill_id, dests in by_bill.items():
                for d in dests:
                    results.setdefault((bill_id, d), {
                        "bill_id": bill_id, "destination": d, "status": "failed",
                        "detail": f"no outcome recorded: the {d} delivery task did not finish (see its log)"})
            rows = list(results.values())
            dry_run = bool(params.get("dry_run"))
            bills = _load_bills(storage, collected["bills_key"])
            exported = exported_destinations(rows, by_bill)
            accounts = 0 if dry_run else mark_exported(M3terHook(conf.m3ter.conn_id), conf.invoicing.exported_field,
                                                         bills, exported, storage)
            counts: dict[str, dict[str, int]] = {}
            for r in rows:
                per = counts.setdefault(r["destination"], {})
                per[r["status"]] = per.get(r["status"], 0) + 1
            failed = [r for r in rows if r["status"] == "failed"]
            action = [r for r in rows if r["status"] == "action_needed"]
            set_aside = routes.get("set_aside", [])
            summary = {
                "run_id": run_id, "dry_run": dry_run, "bills": collected["bills"], "by_destination": counts,
                "exported": len(exported), "accounts_stamped": accounts,
                "action_needed": [{"bill_id": r["bill_id"], "account_code": r.get("account_code"),
                                   "destination": r["destination"], "message": r["detail"]} for r in action],
                "failed": [{"bill_id": r["bill_id"], "account_code": r.get("account_code"),
                            "destination": r["destination"], "error": r["detail"]} for r in failed],
                "set_aside": set_aside,
            }
            key = storage.key("reports", DAG_ID, "runs", f"{_staging(storage, run_id).rsplit('/', 1)[-1]}.json")
            storage.put_json(key, summary)
            storage.put_json(storage.key("reports", DAG_ID, "latest.json"), {**summary, "report_key": key})
            log.info("invoice sync%s: %d bill(s); %s; %d exported; summary %s", " (DRY RUN)" if dry_run else "",
                     collected["bills"], counts, len(exported), storage.uri(key))
            problems = ([f"{r['destination']}: bill {r['bill_id']} ({r.get('account_code')}): {r['detail']}"
                         for r in failed]
                        + [f"{r['destination']}: bill {r['bill_id']} ({r.get('account_code')}) ACTION NEEDED: "
                           f"{r['detail']}" for r in action]
                        + [f"set aside: bill {s['bill_id']} ({s['account_code']}): {s['reason']}" for s in set_aside])
            if problems:
                records = sorted({r["bill_id"] for r in failed + action} | {s["bill_id"] for s in set_aside})
                raise RunFailed(f"{len(records)} bill(s) not exported everywhere (summary {storage.uri(key)}): "
                                + "; ".join(problems[:20]) + (" ..." if len(problems) > 20 else ""),
                                records=records)
            return {"summary_key": key, "exported": len(exported), "by_destination": counts}

        collected = collect_bills()  # type: ignore[call-arg,misc]
        groups = [make_group(d.name, isinstance(d, NetSuiteDestination), getattr(d, "pool", None),
                             getattr(d, "concurrency", 1)) for d in destinations]
        done = finalize(collected)  # type: ignore[call-arg,arg-type,misc]
        for g in groups:
            g >> done
    return dag
