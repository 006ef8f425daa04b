"""Airflow DAG: Salesforce + HubSpot accounts and contracts -> m3ter (hourly, backfillable). See README."""

from m3sh.dagkit.crm_sync import build_crm_sync_dag

dag = build_crm_sync_dag()
