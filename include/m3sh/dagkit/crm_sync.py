"""``m3sh_crm_sync``: CRM accounts and contracts changed in the data interval -> m3ter.

Hourly with real data intervals and catch-up, so a backfill of any window re-syncs exactly the
records changed in it. Graph: ``extract_<source>`` (one per enabled CRM, staged as JSONL in S3) ->
``sync_to_m3ter`` (de-duplicate, diff, upsert; report in S3) -> ``write_back_<source>`` (m3ter ids
into the CRM where missing). XComs carry only keys and counts.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import DAG, CronDataIntervalTimetable, Param, task

from m3sh.config import M3shConfig, get_config
from m3sh.dagkit.defaults import common_dag_args
from m3sh.dagkit.errors import RunFailed

log = logging.getLogger(__name__)
DAG_ID = "m3sh_crm_sync"
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _window(params: dict[str, Any], start: dt.datetime | None, end: dt.datetime | None,
            lookback_minutes: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    if params.get("full_resync") or start is None:
        return EPOCH, now + dt.timedelta(minutes=1)
    return start - dt.timedelta(minutes=lookback_minutes), end or now


def _staging_key(storage: Any, run_id: str, name: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return storage.key("staging", DAG_ID, safe, f"{name}.jsonl")


def build_crm_sync_dag(cfg: M3shConfig | None = None) -> DAG:
    cfg = cfg or get_config()
    with DAG(
        dag_id=DAG_ID,
        description="Salesforce + HubSpot accounts/contracts -> m3ter accounts, contracts, plans, mappings",
        schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
        **common_dag_args(cfg, "crm", "unified-billing", catchup=True),
        params={
            "dry_run": Param(False, type="boolean", description="Compute and store the diff, write nothing"),
            "full_resync": Param(False, type="boolean", description="Ignore the data interval: every record"),
            "accounts": Param([], type="array",
                              description="Only these CRM ids, domains or billing emails (empty: all)"),
        },
        doc_md=__doc__,
    ) as dag:
        sources = [s for s in cfg.crm.sources if s.enabled]
        for s in cfg.crm.sources:
            if not s.enabled:
                log.info("CRM source %s is disabled in m3sh.yaml: not read or written", s.name)

        def make_extract(source_name: str) -> Any:
            @task(task_id=f"extract_{source_name}")
            def extract(params: dict[str, Any], run_id: str, data_interval_start: dt.datetime | None = None,
                        data_interval_end: dt.datetime | None = None) -> dict[str, Any]:
                from m3sh.crm.sync import filter_accounts
                from m3sh.storage import Storage

                conf = get_config()
                source = next(s for s in conf.crm.sources if s.name == source_name)
                start, end = _window(params, data_interval_start, data_interval_end, conf.crm.lookback_minutes)
                if source.type == "salesforce":
                    from m3sh.crm.salesforce import extract_salesforce

                    records = extract_salesforce(source, start, end, plan_map=conf.crm.plan_map)
                else:
                    from m3sh.crm.hubspot import extract_hubspot

                    records = extract_hubspot(source, start, end, plan_map=conf.crm.plan_map)
                if params.get("accounts"):
                    records = filter_accounts(records, list(params["accounts"]))
                storage = Storage.from_config(conf.storage)
                key = _staging_key(storage, run_id, source_name)
                n = storage.put_jsonl(key, (r.model_dump(mode="json") for r in records))
                log.info("%s: staged %d record(s) changed in [%s, %s) at %s", source_name, n, start, end,
                         storage.uri(key))
                return {"source": source_name, "key": key, "records": n}

            return extract()  # type: ignore[call-arg,misc]

        @task
        def sync_to_m3ter(staged: list[dict[str, Any]], params: dict[str, Any], run_id: str) -> dict[str, Any]:
            from m3sh.crm.sync import CrmToM3ter, M3terIndex
            from m3sh.hooks.m3ter import M3terHook
            from m3sh.mapping.crm import dedupe
            from m3sh.models.records import CrmAccount
            from m3sh.storage import Storage

            conf = get_config()
            storage = Storage.from_config(conf.storage)
            records = [CrmAccount.model_validate(r) for s in staged for r in storage.iter_jsonl(s["key"])]
            hook = M3terHook(conf.m3ter.conn_id)
            index = M3terIndex(hook, sources=conf.crm.sources)
            customers = dedupe(records, list(conf.crm.match_keys), conf.m3ter.account_code_from,
                               existing_codes=index.match_codes())
            dry_run = bool(params.get("dry_run"))
            report = CrmToM3ter(hook, conf, index, dry_run=dry_run).apply(customers)
            report_key = storage.key("reports", DAG_ID, f"{run_id}.json")
            storage.put_json(report_key, {"run_id": run_id, "records": len(records),
                                          "sources": {s["source"]: s["records"] for s in staged},
                                          **report.to_dict()})
            wb_key = _staging_key(storage, run_id, "write_backs")
            storage.put_jsonl(wb_key, [] if dry_run else report.write_backs)
            counts = report.counts()
            log.info("crm sync%s: %d CRM record(s) -> %d customer(s); %s; report %s",
                     " (DRY RUN, nothing written)" if dry_run else "", len(records), len(customers), counts,
                     storage.uri(report_key))
            for c in report.changes[:50]:
                log.info("  %s %s %s before=%s after=%s %s", c.action, c.entity, c.code, c.before, c.after,
                         c.detail or "")
            errors = [c for c in report.changes if c.action == "error"]
            if errors:
                raise RunFailed(f"{len(errors)} m3ter write(s) failed: "
                              + "; ".join(f"{c.entity} {c.code}: {c.detail}" for c in errors[:10]),
                              records=[c.code for c in errors])
            return {"report_key": report_key, "write_backs_key": wb_key, "counts": counts}

        def make_write_back(source_name: str) -> Any:
            @task(task_id=f"write_back_{source_name}")
            def write_back(result: dict[str, Any]) -> int:
                from m3sh.storage import Storage

                conf = get_config()
                source = next(s for s in conf.crm.sources if s.name == source_name)
                storage = Storage.from_config(conf.storage)
                items = [i for i in storage.iter_jsonl(result["write_backs_key"]) if i["source"] == source_name]
                if source.type == "salesforce":
                    from m3sh.crm.salesforce import write_back_salesforce

                    n = write_back_salesforce(source, items)
                else:
                    from m3sh.crm.hubspot import write_back_hubspot

                    n = write_back_hubspot(source, items)
                log.info("%s: wrote the m3ter account id back to %d record(s)", source_name, n)
                return n

            return write_back

        staged = [make_extract(s.name) for s in sources]
        result = sync_to_m3ter(staged)  # type: ignore[call-arg,misc]
        for s in sources:
            make_write_back(s.name)(result)
    return dag
