"""HTTP endpoints m3sh serves inside the Airflow api-server (mounted by ``plugins/m3sh_plugin.py``)."""
