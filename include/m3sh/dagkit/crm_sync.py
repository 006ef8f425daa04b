"""``m3sh_crm_sync``: CRM accounts and contracts changed in the data interval -> m3ter.

Hourly with real data intervals and catch-up, so a backfill of any window re-syncs exactly the
records changed in it. Graph: ``extract_<source>`` (one per enabled CRM, staged as JSONL in S3) ->
``sync_to_m3ter`` (de-duplicate, diff, upsert; report in S3) -> ``write_back_<source>`` (m3ter ids
into the CRM where missing) -> ``to_crm_<source>`` (m3ter-owned fields and the current plan back
into the CRM; conflicts recorded: :mod:`m3sh.crm.outbound`). XComs carry only keys and counts.
The tasks are the operators of :mod:`m3sh.operators.crm`, configured from ``m3sh.yaml``.
"""

from __future__ import annotations

import logging

from airflow.sdk import DAG, Param

from m3sh.compat import CronDataIntervalTimetable
from m3sh.config import M3shConfig, get_config
from m3sh.dagkit.defaults import FROM_PARAM, common_dag_args
from m3sh.operators.crm import (
    CrmExtractOperator,
    CrmToM3terSyncOperator,
    CrmWriteBackOperator,
    M3terToCrmOperator,
)

log = logging.getLogger(__name__)
DAG_ID = "m3sh_crm_sync"


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
            "m3ter_backfill": Param(False, type="boolean",
                                    description="m3ter -> CRM as a backfill run does it: re-apply the m3ter "
                                                "records modified in the data interval, and only those"),
        },
        doc_md=__doc__,
    ) as dag:
        for s in cfg.crm.sources:
            if not s.enabled:
                log.info("CRM source %s is disabled in m3sh.yaml: not read or written", s.name)
        sources = [s for s in cfg.crm.sources if s.enabled]
        staged = [CrmExtractOperator(task_id=f"extract_{s.name}", source=s, config=cfg,
                                     accounts=FROM_PARAM.format("accounts"),
                                     full_resync=FROM_PARAM.format("full_resync")).output for s in sources]
        synced = CrmToM3terSyncOperator(task_id="sync_to_m3ter", staged=staged, config=cfg,
                                        preview=FROM_PARAM.format("dry_run")).output
        for s, staged_ref in zip(sources, staged, strict=True):
            # After this source's write-back (same records) and the CRM -> m3ter step, whose report
            # holds m3ter's values before it wrote (conflicts need them); see m3sh.crm.outbound.
            CrmWriteBackOperator(task_id=f"write_back_{s.name}", synced=synced, source=s, config=cfg) >> \
                M3terToCrmOperator(task_id=f"to_crm_{s.name}", source=s, config=cfg, staged=staged_ref,
                                   synced=synced, full_resync=FROM_PARAM.format("full_resync"),
                                   preview=FROM_PARAM.format("dry_run"),
                                   backfill=FROM_PARAM.format("m3ter_backfill"))
    return dag
