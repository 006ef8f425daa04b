"""One CRM -> m3ter sync as plain steps: the window, extract one source to staged JSONL,
de-duplicate + diff + upsert into m3ter (report and write-backs staged), and write the m3ter ids
back into one source. The CRM operators (:mod:`m3sh.operators.crm`) and so ``m3sh_crm_sync`` call
these; nothing here reads ``m3sh.yaml``.

Key layout of a run, under the storage prefix (the UI page reads the reports)::

    staging/<dag id>/<run id>/<source>.jsonl        records changed in the window, one per line
    staging/<dag id>/<run id>/write_backs.jsonl     m3ter ids each CRM record lacks
    reports/<dag id>/<run id>.json                  the diff: counts, every change, write-backs

Steps pass only small JSON-safe *refs* (keys and counts).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from m3sh import layout
from m3sh.config import CrmSource, M3shConfig
from m3sh.storage import Storage

if TYPE_CHECKING:
    from m3sh.hooks.m3ter import M3terHook

log = logging.getLogger(__name__)
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
CHANGES_LOGGED = 50
ERRORS_IN_MESSAGE = 10


# ------------------------------------------------------------------------------------- key layout
def staging_key(storage: Storage, dag_id: str, run_id: str, name: str) -> str:
    return layout.staging(storage, dag_id, run_id, f"{name}.jsonl")


def report_key(storage: Storage, dag_id: str, run_id: str) -> str:
    return layout.crm_run_report(storage, dag_id, run_id)


# ----------------------------------------------------------------------------------------- window
def window(start: dt.datetime | None, end: dt.datetime | None, *, full_resync: bool, lookback_minutes: int,
           now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """``[start, end)`` of CRM changes a run reads: its data interval widened by ``lookback_minutes``
    (clock skew), or everything when ``full_resync`` or the run has no interval (an empty one too,
    as manual runs of unscheduled DAGs have: a few minutes of changes would be a surprising sync)."""
    now = now or dt.datetime.now(dt.UTC)
    if full_resync or start is None or (end is not None and end <= start):
        return EPOCH, now + dt.timedelta(minutes=1)
    return start - dt.timedelta(minutes=lookback_minutes), end or now


# ---------------------------------------------------------------------------------------- extract
def extract(source: CrmSource, storage: Storage, *, dag_id: str, run_id: str, start: dt.datetime,
            end: dt.datetime, plan_map: dict[str, str], accounts: Sequence[str] = ()) -> dict[str, Any]:
    """The source's accounts changed in ``[start, end)`` (only ``accounts`` when given: CRM ids,
    domains or billing emails), staged as JSONL. Returns ``{"source", "key", "records"}``."""
    from m3sh.crm.sync import filter_accounts

    if source.type == "salesforce":
        from m3sh.crm.salesforce import extract_salesforce

        records = extract_salesforce(source, start, end, plan_map=plan_map)
    else:
        from m3sh.crm.hubspot import extract_hubspot

        records = extract_hubspot(source, start, end, plan_map=plan_map)
    if accounts:
        records = filter_accounts(records, list(accounts))
    key = staging_key(storage, dag_id, run_id, source.name)
    n = storage.put_jsonl(key, (r.model_dump(mode="json") for r in records))
    log.info("%s: staged %d record(s) changed in [%s, %s) at %s", source.name, n, start, end, storage.uri(key))
    return {"source": source.name, "key": key, "records": n}


# ------------------------------------------------------------------------------------------- sync
def sync(m3ter: M3terHook, cfg: M3shConfig, storage: Storage, staged: Sequence[dict[str, Any]], *, dag_id: str,
         run_id: str, dry_run: bool) -> dict[str, Any]:
    """De-duplicate the staged records across sources (``cfg.crm.match_keys``), diff them against
    m3ter and upsert accounts, contracts, account plans and external mappings (``dry_run``: write
    nothing). The report and the write-backs (none in a dry run) are staged before returning.

    Returns ``{"report_key", "write_backs_key", "counts", "errors"}``; ``errors`` names each
    failed m3ter write (``{"entity", "code", "detail"}``).
    """
    from m3sh.crm.sync import CrmToM3ter, M3terIndex
    from m3sh.mapping.crm import dedupe
    from m3sh.models.records import CrmAccount

    records = [CrmAccount.model_validate(r) for s in staged for r in storage.iter_jsonl(s["key"])]
    index = M3terIndex(m3ter, sources=cfg.crm.sources)
    customers = dedupe(records, list(cfg.crm.match_keys), cfg.m3ter.account_code_from,
                       existing_codes=index.match_codes())
    report = CrmToM3ter(m3ter, cfg, index, dry_run=dry_run).apply(customers)
    rkey = report_key(storage, dag_id, run_id)
    storage.put_json(rkey, {"run_id": run_id, "records": len(records),
                            "sources": {s["source"]: s["records"] for s in staged}, **report.to_dict()})
    wb_key = staging_key(storage, dag_id, run_id, "write_backs")
    storage.put_jsonl(wb_key, [] if dry_run else report.write_backs)
    counts = report.counts()
    log.info("crm sync%s: %d CRM record(s) -> %d customer(s); %s; report %s",
             " (DRY RUN, nothing written)" if dry_run else "", len(records), len(customers), counts,
             storage.uri(rkey))
    for c in report.changes[:CHANGES_LOGGED]:
        log.info("  %s %s %s before=%s after=%s %s", c.action, c.entity, c.code, c.before, c.after, c.detail or "")
    errors = [{"entity": c.entity, "code": c.code, "detail": c.detail} for c in report.changes
              if c.action == "error"]
    return {"report_key": rkey, "write_backs_key": wb_key, "counts": counts, "errors": errors}


def failure_message(errors: Sequence[dict[str, Any]]) -> str:
    """The text a sync with failed m3ter writes fails with: how many, and the first by name."""
    return (f"{len(errors)} m3ter write(s) failed: "
            + "; ".join(f"{e['entity']} {e['code']}: {e['detail']}" for e in errors[:ERRORS_IN_MESSAGE])
            + (" ..." if len(errors) > ERRORS_IN_MESSAGE else ""))


# ------------------------------------------------------------------------------------- write-back
def write_back(source: CrmSource, storage: Storage, write_backs_key: str) -> int:
    """Write the m3ter account id into the source's records that lack it (``write_back_field``;
    nothing without one). Returns how many records were written."""
    items = _for_source(storage.iter_jsonl(write_backs_key), source.name)
    if source.type == "salesforce":
        from m3sh.crm.salesforce import write_back_salesforce

        n = write_back_salesforce(source, items)
    else:
        from m3sh.crm.hubspot import write_back_hubspot

        n = write_back_hubspot(source, items)
    log.info("%s: wrote the m3ter account id back to %d record(s)", source.name, n)
    return n


def _for_source(rows: Iterable[dict[str, Any]], name: str) -> list[dict[str, str]]:
    return [r for r in rows if r["source"] == name]
