"""The m3sh DAGs, shipped in the package: a DAG file in an Airflow DAGs folder is one import.

``from m3sh.dags import m3sh_usage_ingest`` builds the ``m3sh_usage_ingest`` DAG from ``m3sh.yaml`` and
binds it to a module global of the importing file, where Airflow's DAG processor collects it (and
records that file as the DAG's ``fileloc``). ``m3sh init [DIR]`` writes exactly these files
(:func:`dag_file_text`); this repository's ``dags/`` holds the same text.

Each name is built on every ``from m3sh.dags import ...`` (module ``__getattr__``, PEP 562), not once
per process: a module-level DAG would be cached in ``sys.modules`` and a second parse in the same
process (DagBag refresh, tests switching ``M3SH_CONFIG``) would get the DAG of the old config.
Building is cheap: the config is cached per file and modification time (:func:`m3sh.config.get_config`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ShippedDag:
    dag_id: str
    builder: str  # "module:function" returning the DAG (or None when the config leaves it off)
    summary: str  # first line of the DAG file's docstring; "Airflow DAG" in it keeps safe-mode parsing on


DAGS: tuple[ShippedDag, ...] = (
    ShippedDag("m3sh_usage_ingest", "m3sh.dagkit.usage_ingest:build_usage_ingest_dag",
               "usage files and feeds -> m3ter measurements (exactly once)"),
    ShippedDag("m3sh_crm_sync", "m3sh.dagkit.crm_sync:build_crm_sync_dag",
               "Salesforce + HubSpot accounts and contracts -> m3ter (hourly, backfillable)"),
    ShippedDag("m3sh_invoice_sync", "m3sh.dagkit.invoice_sync:build_invoice_sync_dag",
               "m3ter bills -> enriched, routed -> NetSuite, Salesforce, HubSpot, S3, webhooks"),
    ShippedDag("m3sh_reconcile", "m3sh.dagkit.reconcile:build_reconcile_dag",
               "CRM <-> m3ter accounts, m3ter bills <-> each ERP <-> S3 archive; report and drift alert"),
    ShippedDag("m3sh_plan_triggers", "m3sh.dagkit.plan_triggers:build_plan_triggers_dag",
               "balances, usage limits, contract dates -> plan actions and notifications, exactly once"),
    ShippedDag("m3sh_analytics_export", "m3sh.dagkit.analytics_export:enabled_dag",
               "m3ter usage, bills, balances, plans -> daily Parquet in S3 (when analytics is configured)"),
)
_BY_ID = {d.dag_id: d for d in DAGS}


def build(dag_id: str) -> Any:
    """The DAG ``dag_id`` built from the current ``m3sh.yaml`` (``None`` if the config switches it off)."""
    module, func = _BY_ID[dag_id].builder.split(":")
    return getattr(importlib.import_module(module), func)()


def dag_file_text(dag_id: str) -> str:
    """The DAG file ``m3sh init`` writes for ``dag_id`` (and ``dags/<dag_id>.py`` in this repository)."""
    d = _BY_ID[dag_id]
    return (
        f'"""Airflow DAG: {d.summary}.\n\n'
        "Built by the m3sh package from m3sh.yaml ($M3SH_CONFIG, else m3sh.yaml in this DAGs folder);\n"
        "written by `m3sh init`. The imported name is the DAG Airflow collects.\n"
        '"""\n\n'
        f"from m3sh.dags import {dag_id}  # noqa: F401\n"
    )


def __getattr__(name: str) -> Any:
    if name in _BY_ID:
        return build(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}; m3sh DAGs: {', '.join(_BY_ID)}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_BY_ID])
