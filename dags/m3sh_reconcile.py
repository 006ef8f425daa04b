"""Airflow DAG: CRM <-> m3ter accounts, m3ter bills <-> each ERP <-> S3 archive; report and drift alert."""

from m3sh.dagkit.reconcile import build_reconcile_dag

dag = build_reconcile_dag()
