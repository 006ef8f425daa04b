"""The m3sh Airflow plugin: mounts m3sh's HTTP endpoints inside the Airflow api-server.

* ``/m3sh/webhooks/m3ter`` - signed m3ter notification receiver; records an asset event on
  ``m3sh://m3ter/notifications`` so ``m3sh_plan_triggers`` runs within seconds
  (logic in :mod:`m3sh.web.receiver`; this file stays thin).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from m3sh.web.receiver import create_app


class M3shPlugin(AirflowPlugin):
    name = "m3sh"
    fastapi_apps = [
        {"app": create_app(), "url_prefix": "/m3sh", "name": "m3sh webhook receiver"},
    ]
