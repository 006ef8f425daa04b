"""The m3sh Airflow plugin: mounts m3sh's HTTP endpoints inside the Airflow api-server.

* ``/m3sh/ui/`` - the "m3sh" page (status of every use case, read from S3 and Airflow's REST API;
  Airflow login required), shown in the UI's navigation as an external view on ``/plugin/m3sh``
  (logic in :mod:`m3sh.web.ui`);
* ``/m3sh/webhooks/m3ter`` - signed m3ter notification receiver; records an asset event on
  ``m3sh://m3ter/notifications`` so ``m3sh_plan_triggers`` runs within seconds
  (logic in :mod:`m3sh.web.receiver`; this file stays thin).

Airflow loads it through the ``airflow.plugins`` entry point in ``pyproject.toml``, so ``pip install m3sh``
into an existing Airflow brings the page and the receiver; nothing goes into the plugins folder (a copy
there would register a second "m3sh" plugin, which Airflow skips and reports as a plugin import error).

The view is listed first: Airflow mounts plugin apps in order, and ``/m3sh`` would otherwise
swallow ``/m3sh/ui``.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from m3sh.web import ui
from m3sh.web.receiver import create_app


class M3shPlugin(AirflowPlugin):
    name = "m3sh"
    fastapi_apps = [
        {"app": ui.create_app(), "url_prefix": "/m3sh/ui", "name": "m3sh view"},
        {"app": create_app(), "url_prefix": "/m3sh", "name": "m3sh webhook receiver"},
    ]
    external_views = [
        {
            "name": "m3sh",
            "href": "/m3sh/ui/",
            "url_route": "m3sh",
            "destination": "nav",
            "nav_top_level": True,
        },
    ]
