"""The Airflow pools a config asks for: ``m3sh pools sync`` and the demo create them before any run
(Airflow never schedules a task whose pool does not exist: it stays "scheduled" with only a
scheduler log line saying why)."""

from __future__ import annotations

from m3sh.config import M3shConfig, NetSuiteDestination

NETSUITE_POOL_DESCRIPTION = "m3sh: NetSuite per-account concurrency"
INGEST_POOL_DESCRIPTION = "m3sh: usage ingest tasks sending to one m3ter org at once"


def required_pools(cfg: M3shConfig) -> dict[str, tuple[int, str]]:
    """Pool name -> (slots, description): each enabled NetSuite destination's pool, sized to its
    concurrency, and the usage ingest pool when ``m3ter.ingest_pool`` names one."""
    out = {d.pool: (d.concurrency, NETSUITE_POOL_DESCRIPTION) for d in cfg.invoicing.destinations
           if isinstance(d, NetSuiteDestination) and d.pool and d.enabled}
    if cfg.m3ter.ingest_pool:
        out[cfg.m3ter.ingest_pool] = (cfg.m3ter.ingest_pool_slots, INGEST_POOL_DESCRIPTION)
    return out
