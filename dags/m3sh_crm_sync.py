"""Airflow DAG: Salesforce + HubSpot accounts and contracts -> m3ter (hourly, backfillable).

Built by the m3sh package from m3sh.yaml ($M3SH_CONFIG, else m3sh.yaml in this DAGs folder);
written by `m3sh init`. The imported name is the DAG Airflow collects.
"""

from m3sh.dags import m3sh_crm_sync  # noqa: F401
