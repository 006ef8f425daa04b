"""Analytics output: one day of m3ter usage, bills, balances and plans per run, as Parquet in S3.

:mod:`.schemas` (the documented tables), :mod:`.extract` (API reads), :mod:`.data_export` (m3ter
data export jobs), :mod:`.partition` (atomic partition swap + manifests), :mod:`.reader` (reading
committed partitions back), :mod:`.export` (what the DAG's tasks call).
"""
