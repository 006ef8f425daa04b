"""Airflow DAG: m3ter usage, bills, balances and plans -> daily Parquet tables in S3. Built from m3sh.yaml; see docs/analytics.md."""

from m3sh.dagkit.analytics_export import enabled_dag

dag = enabled_dag()
