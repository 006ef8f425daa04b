"""HTTP endpoints m3sh serves inside the Airflow api-server.

Mounted by :mod:`m3sh.plugin`, which Airflow loads through the ``airflow.plugins`` entry point.
"""
