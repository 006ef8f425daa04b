"""Airflow DAG: usage files and feeds -> m3ter measurements (exactly once). Built from m3sh.yaml; see README."""

from m3sh.dagkit.usage_ingest import build_usage_ingest_dag

dag = build_usage_ingest_dag()
