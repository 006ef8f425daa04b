"""Airflow DAG: m3ter usage, bills, balances, plans -> daily Parquet in S3. Built from m3sh.yaml; docs/analytics.md."""

from m3sh.dagkit.analytics_export import enabled_dag

dag = enabled_dag()
