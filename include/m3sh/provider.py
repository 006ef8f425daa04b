"""Airflow provider metadata: the ``m3ter``, ``hubspot`` and ``netsuite`` connection types, and the
integrations, hooks, operators, sensors, triggers and notifications m3sh ships (the official
providers' ``provider.yaml`` format), so ``airflow providers hooks`` and the docs tooling see them.

Airflow discovers this through the ``apache_airflow_provider`` entry point in ``pyproject.toml``. The
form fields are declared here (``conn-fields`` / ``ui-field-behaviour``, Airflow >= 3.2) rather than
through the deprecated ``get_connection_form_widgets`` hook classmethods, so the UI can render the
connection form without importing the hooks.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from packaging.version import Version

from m3sh import __version__


def _conn_fields_supported() -> bool:
    """Airflow >= 3.2 renders ``conn-fields``; 3.1 ignores them (version read without importing Airflow)."""
    try:
        return Version(Version(version("apache-airflow-core")).base_version) >= Version("3.2")
    except PackageNotFoundError:
        return True


def _hidden(*fields: str) -> list[str]:
    """Hidden form fields; on Airflow 3.1, which ignores ``conn-fields``, "extra" stays visible so the
    fields above can still be entered there as JSON (e.g. ``{"org_id": "..."}``)."""
    return [f for f in fields if f != "extra" or _conn_fields_supported()]


def _field(label: str, description: str, *, secret: bool = False, kind: str = "string",
           default: Any = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": [kind, "null"]}
    if secret:
        schema["format"] = "password"
    if default is not None:
        schema["default"] = default
    return {"label": label, "description": description, "schema": schema}


M3TER = "m3ter"
HUBSPOT = "HubSpot"
NETSUITE = "NetSuite"
INTEGRATIONS = [
    {"integration-name": M3TER, "external-doc-url": "https://www.m3ter.com/docs/api",
     "tags": ["service"], "how-to-guide": []},
    {"integration-name": HUBSPOT, "external-doc-url": "https://developers.hubspot.com/docs/api/overview",
     "tags": ["service"], "how-to-guide": []},
    {"integration-name": NETSUITE,
     "external-doc-url": "https://docs.oracle.com/en/cloud/saas/netsuite/ns-online-help/index.html",
     "tags": ["service"], "how-to-guide": []},
]


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "m3sh",
        "name": "m3sh",
        "description": "m3ter usage-based billing meshed with CRMs, ERPs and customer platforms.",
        "versions": [__version__],
        "integrations": INTEGRATIONS,
        "hooks": [
            {"integration-name": M3TER, "python-modules": ["m3sh.hooks.m3ter"]},
            {"integration-name": HUBSPOT, "python-modules": ["m3sh.hooks.hubspot"]},
            {"integration-name": NETSUITE, "python-modules": ["m3sh.hooks.netsuite"]},
        ],
        "operators": [
            {"integration-name": M3TER, "python-modules": ["m3sh.operators.m3ter", "m3sh.operators.usage",
                                                            "m3sh.operators.invoicing", "m3sh.operators.analytics",
                                                            "m3sh.operators.usage_feeds", "m3sh.operators.automation",
                                                            "m3sh.operators.crm", "m3sh.operators.reconcile"]},
        ],
        "sensors": [{"integration-name": M3TER, "python-modules": ["m3sh.sensors.m3ter"]}],
        "triggers": [{"integration-name": M3TER,
                      "python-modules": ["m3sh.triggers.m3ter", "m3sh.triggers.m3ter_uploads"]}],
        "notifications": ["m3sh.notifiers.alerts.M3shAlertNotifier"],
        "connection-types": [
            {
                "connection-type": "m3ter",
                "hook-class-name": "m3sh.hooks.m3ter.M3terHook",
                "hook-name": "m3ter",
                "conn-fields": {
                    "org_id": _field("Organization ID", "m3ter Organization UUID"),
                    "page_size": _field("Page size", "List page size (1-100)", kind="integer", default=100),
                },
                "ui-field-behaviour": {
                    "hidden-fields": _hidden("schema", "port", "extra"),
                    "relabeling": {"login": "Access Key ID", "password": "API Secret", "host": "API base URL"},
                    "placeholders": {"host": "https://api.m3ter.com (leave empty for production)"},
                },
            },
            {
                "connection-type": "hubspot",
                "hook-class-name": "m3sh.hooks.hubspot.HubSpotHook",
                "hook-name": "HubSpot",
                "conn-fields": {
                    "rate_limit_requests": _field("Rate limit (requests)", "Client-side limit per window",
                                                  kind="integer", default=100),
                    "rate_limit_window_s": _field("Rate limit window (s)", "Window for the client-side limit",
                                                  kind="integer", default=10),
                },
                "ui-field-behaviour": {
                    "hidden-fields": _hidden("schema", "port", "login", "extra"),
                    "relabeling": {"password": "Private app token", "host": "API base URL"},
                    "placeholders": {"host": "https://api.hubapi.com (leave empty for production)"},
                },
            },
            {
                "connection-type": "netsuite",
                "hook-class-name": "m3sh.hooks.netsuite.NetSuiteHook",
                "hook-name": "NetSuite",
                "conn-fields": {
                    "account_id": _field("Account ID", "NetSuite account id, e.g. 1234567 or 1234567_SB1"),
                    "token_id": _field("Token ID", "Token-based authentication token id"),
                    "token_secret": _field("Token secret", "Token-based authentication token secret",
                                           secret=True),
                    "concurrency": _field("Concurrency limit", "Max in-flight requests for this account",
                                          kind="integer", default=5),
                },
                "ui-field-behaviour": {
                    "hidden-fields": _hidden("schema", "port", "extra"),
                    "relabeling": {"login": "Consumer key", "password": "Consumer secret",
                                   "host": "REST base URL"},
                    "placeholders": {"host": "https://<account>.suitetalk.api.netsuite.com (optional)"},
                },
            },
        ],
    }
