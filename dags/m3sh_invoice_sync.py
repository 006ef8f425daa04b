"""Airflow DAG: m3ter bills -> enriched, routed -> NetSuite accounts, Salesforce, HubSpot, S3, webhooks."""

from m3sh.dagkit.invoice_sync import build_invoice_sync_dag

dag = build_invoice_sync_dag()
