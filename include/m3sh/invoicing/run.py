"""One invoice run as plain steps: collect (read, enrich, route, stage), plan, deliver a staged
chunk, and the run summary. The invoice operators (:mod:`m3sh.operators.invoicing`) and so
``m3sh_invoice_sync`` call these; nothing here reads ``m3sh.yaml``.

Key layout of a run, under the storage prefix (the UI page reads the two report keys)::

    staging/<dag id>/<run id>/bills.jsonl                       enriched bills
    staging/<dag id>/<run id>/routes.json                       by destination, by bill, set aside
    staging/<dag id>/<run id>/results/<destination>/<part>.jsonl  one row per bill delivered
    reports/<dag id>/runs/<run id>.json, reports/<dag id>/latest.json   the run summary

Tasks pass only the small JSON-safe *refs* (keys and counts) returned by :func:`collect`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

from m3sh import layout
from m3sh.config import M3shConfig
from m3sh.invoicing.deliver import Deliverer, deliver_batch, exported_destinations, fetch_bills, mark_exported
from m3sh.invoicing.models import Delivery, EnrichedBill
from m3sh.runs import MAX_MAP  # per destination at most; chunks grow beyond that
from m3sh.storage import Storage

log = logging.getLogger(__name__)

PROBLEMS_IN_MESSAGE = 20


# ------------------------------------------------------------------------------------- key layout
def staging_key(storage: Storage, dag_id: str, run_id: str, *parts: str) -> str:
    return layout.staging(storage, dag_id, run_id, *parts)


def results_prefix(storage: Storage, dag_id: str, run_id: str) -> str:
    return staging_key(storage, dag_id, run_id, "results") + "/"


def report_keys(storage: Storage, dag_id: str, run_id: str) -> tuple[str, str]:
    """``(this run's summary, latest.json)``."""
    return layout.invoice_run_reports(storage, dag_id, run_id)


def load_bills(storage: Storage, key: str, wanted: set[str] | None = None) -> list[EnrichedBill]:
    return [EnrichedBill.model_validate(row) for row in storage.iter_jsonl(key)
            if wanted is None or row["bill_id"] in wanted]


# ---------------------------------------------------------------------------------------- collect
def collect(m3ter: Any, cfg: M3shConfig, storage: Storage, *, dag_id: str, run_id: str,
            destinations: Sequence[str], bill_ids: Sequence[str] = (), only: Sequence[str] = (),
            start: dt.datetime | None = None, end: dt.datetime | None = None,
            route_all: bool = False) -> dict[str, Any]:
    """Bills in ``cfg.invoicing.bill_states`` changed in ``[start, end)`` (or exactly ``bill_ids``),
    enriched, routed by ``cfg.invoicing.routes`` (or, with ``route_all``, to every destination) and
    staged. A bill missing required enrichment is set aside with the reason; the rest go on.

    Returns the refs later steps read: ``{"bills_key", "routes_key", "bills", "set_aside",
    "by_destination"}``.
    """
    from m3sh.invoicing.enrich import Enricher
    from m3sh.invoicing.routing import route_bill

    states = cfg.invoicing.bill_states
    bills = list(fetch_bills(m3ter, states, start, end, list(bill_ids) or None))
    log.info("%d bill(s) in states %s changed in [%s, %s)%s", len(bills), states, start or "-", end or "-",
             f" among {len(bill_ids)} requested" if bill_ids else "")
    enriched, errors = Enricher(cfg, m3ter).enrich(bills)
    routes: dict[str, list[str]] = {name: [] for name in destinations}
    routed: dict[str, list[str]] = {}
    for bill in enriched:
        if route_all:
            targets = [name for name in destinations if not only or name in only]
        else:
            targets, _ = route_bill(cfg.invoicing, bill, list(only) or None)
        routed[bill.bill_id] = targets
        for t in targets:
            routes.setdefault(t, []).append(bill.bill_id)
        if not targets:
            log.warning("bill %s (%s, %s %.2f): no route matched (routes tried: %s)", bill.bill_id,
                        bill.account_code, bill.currency, bill.total, [r.name for r in cfg.invoicing.routes])
    set_aside = [{"bill_id": e.bill_id, "account_code": e.account_code, "reason": e.reason} for e in errors]
    for s in set_aside:
        log.warning("bill %s (%s) set aside: %s", s["bill_id"], s["account_code"], s["reason"])
    bills_key = staging_key(storage, dag_id, run_id, "bills.jsonl")
    storage.put_jsonl(bills_key, (b.model_dump(mode="json") for b in enriched))
    routes_key = staging_key(storage, dag_id, run_id, "routes.json")
    storage.put_json(routes_key, {"by_destination": routes, "by_bill": routed, "set_aside": set_aside})
    counts = {name: len(ids) for name, ids in routes.items()}
    log.info("routed %d bill(s): %s; set aside %d", len(enriched), counts, len(set_aside))
    return {"bills_key": bills_key, "routes_key": routes_key, "bills": len(enriched), "set_aside": len(set_aside),
            "by_destination": counts}


def plan_chunks(refs: dict[str, Any], destination: str, bills_per_task: int) -> list[dict[str, Any]]:
    """The destination's bills in parts of ``bills_per_task`` (more per part past :data:`MAX_MAP`
    parts); each part is the refs plus ``dest``, ``index`` and ``size``."""
    n = int(refs["by_destination"].get(destination, 0))
    per = max(bills_per_task, math.ceil(n / MAX_MAP))
    chunks = math.ceil(n / per) if n else 0
    log.info("%s: %d bill(s) in %d task(s) of up to %d", destination, n, chunks, per)
    return [{"dest": destination, "index": i, "size": per, "routes_key": refs["routes_key"],
             "bills_key": refs["bills_key"]} for i in range(chunks)]


# ---------------------------------------------------------------------------------------- deliver
def deliver_staged(deliverer: Deliverer, storage: Storage, refs: dict[str, Any], destination: str, *,
                   dag_id: str, run_id: str, dry_run: bool, threads: int) -> list[Delivery]:
    """Deliver the staged bills routed to ``destination`` (one part when ``refs`` has an ``index``)
    and record each outcome under the run's results prefix, which :func:`summarize` reads."""
    routes = storage.get_json(refs["routes_key"]) or {}
    by_destination: dict[str, list[str]] = routes.get("by_destination", {})
    if destination not in by_destination:
        # A name the collect step never routed to would deliver nothing, silently.
        raise ValueError(f"the collect step routed bills to {sorted(by_destination)}, not to {destination!r} "
                         "(give it this destination name)")
    ids = by_destination[destination]
    index = int(refs.get("index", 0))
    if "size" in refs:
        ids = ids[index * int(refs["size"]):(index + 1) * int(refs["size"])]
    bills = load_bills(storage, refs["bills_key"], set(ids))
    results = deliver_batch(deliverer, bills, destination, dry_run=dry_run, threads=threads)
    storage.put_jsonl(results_prefix(storage, dag_id, run_id) + f"{destination}/{index:05d}.jsonl",
                      (r.to_row() for r in results))
    return results


def count_statuses(results: Iterable[Delivery]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------- summary
def outcomes(storage: Storage, dag_id: str, run_id: str, by_bill: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One row per routed (bill, destination); a pair no task recorded counts as failed."""
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for obj in storage.list_keys(results_prefix(storage, dag_id, run_id)):
        for row in storage.iter_jsonl(obj["Key"]):
            results[(row["bill_id"], row["destination"])] = row
    for bill_id, dests in by_bill.items():
        for d in dests:
            results.setdefault((bill_id, d), {
                "bill_id": bill_id, "destination": d, "status": "failed",
                "detail": f"no outcome recorded: the {d} delivery task did not finish (see its log)"})
    return list(results.values())


def summarize(m3ter: Any, storage: Storage, refs: dict[str, Any], *, dag_id: str, run_id: str, dry_run: bool,
              exported_field: str | None) -> dict[str, Any]:
    """Merge the outcomes, stamp fully exported bills in m3ter (unless ``dry_run`` or no
    ``exported_field``), and write the summary (this run's key and ``latest.json``).

    Returns the summary plus ``report_key``, ``problems`` (messages naming destination, bill and
    error, action-needed text quoted) and ``records`` (bill ids not exported everywhere).
    """
    routes = storage.get_json(refs["routes_key"]) or {}
    by_bill: dict[str, list[str]] = routes.get("by_bill", {})
    rows = outcomes(storage, dag_id, run_id, by_bill)
    exported = exported_destinations(rows, by_bill)
    accounts = 0
    if not dry_run and exported_field:
        accounts = mark_exported(m3ter, exported_field, load_bills(storage, refs["bills_key"]), exported, storage)
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        per = counts.setdefault(r["destination"], {})
        per[r["status"]] = per.get(r["status"], 0) + 1
    failed = [r for r in rows if r["status"] == "failed"]
    action = [r for r in rows if r["status"] == "action_needed"]
    set_aside: list[dict[str, Any]] = routes.get("set_aside", [])
    summary: dict[str, Any] = {
        "run_id": run_id, "dry_run": dry_run, "bills": refs["bills"], "by_destination": counts,
        "exported": len(exported), "accounts_stamped": accounts,
        "action_needed": [{"bill_id": r["bill_id"], "account_code": r.get("account_code"),
                           "destination": r["destination"], "message": r["detail"]} for r in action],
        "failed": [{"bill_id": r["bill_id"], "account_code": r.get("account_code"),
                    "destination": r["destination"], "error": r["detail"]} for r in failed],
        "set_aside": set_aside,
    }
    key, latest = report_keys(storage, dag_id, run_id)
    storage.put_json(key, summary)
    storage.put_json(latest, {**summary, "report_key": key})
    log.info("invoice sync%s: %d bill(s); %s; %d exported; summary %s", " (DRY RUN)" if dry_run else "",
             refs["bills"], counts, len(exported), storage.uri(key))
    problems = ([f"{r['destination']}: bill {r['bill_id']} ({r.get('account_code')}): {r['detail']}" for r in failed]
                + [f"{r['destination']}: bill {r['bill_id']} ({r.get('account_code')}) ACTION NEEDED: {r['detail']}"
                   for r in action]
                + [f"set aside: bill {s['bill_id']} ({s['account_code']}): {s['reason']}" for s in set_aside])
    records = sorted({r["bill_id"] for r in failed + action} | {s["bill_id"] for s in set_aside})
    return {**summary, "report_key": key, "problems": problems, "records": records}


def problem_message(result: dict[str, Any], uri: str) -> str:
    """The failure text of a run with problems: count, summary location, the first problems."""
    problems: list[str] = result["problems"]
    return (f"{len(result['records'])} bill(s) not exported everywhere (summary {uri}): "
            + "; ".join(problems[:PROBLEMS_IN_MESSAGE]) + (" ..." if len(problems) > PROBLEMS_IN_MESSAGE else ""))
