"""Airflow DAG: m3ter usage, bills, balances, plans -> daily Parquet in S3 (when analytics is configured).

Built by the m3sh package from m3sh.yaml ($M3SH_CONFIG, else m3sh.yaml in this DAGs folder);
written by `m3sh init`. The imported name is the DAG Airflow collects.
"""

from m3sh.dags import m3sh_analytics_export  # noqa: F401
