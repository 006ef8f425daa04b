"""Credentials the sandbox emulators accept. Sandbox-only values: they unlock nothing real.

They live here (not in m3sh.yaml) so the emulators and `.sandbox/env` agree; the hooks never read
this module, only Airflow connections.
"""

from __future__ import annotations

from dataclasses import dataclass

from m3sh.sandbox.seed import DEMO_ORG_ID, NETSUITE_ACCOUNTS

M3TER_ORG_ID = DEMO_ORG_ID
M3TER_ACCESS_KEY = "sandbox-access-key-id"
M3TER_API_SECRET = "sandbox-m3ter-secret-0f3a"  # noqa: S105 - sandbox credential

HUBSPOT_TOKEN = "pat-sandbox-hubspot-7c21"  # noqa: S105 - sandbox credential

SALESFORCE_USERNAME = "integration@northwind.example"
SALESFORCE_PASSWORD = "sandbox-sf-password-91"  # noqa: S105 - sandbox credential
SALESFORCE_SECURITY_TOKEN = "sandbox-sf-token-55"  # noqa: S105 - sandbox credential
# The hosts simple-salesforce talks to: the login host of a production org, then the instance the
# login response's serverUrl names (a My Domain host). The sandbox serves each on its own port.
SALESFORCE_LOGIN_HOST = "login.salesforce.com"
SALESFORCE_INSTANCE_HOST = "northwind.my.salesforce.com"
# A second org (an acquired company's), for several CRM sources of one type: its own integration
# user and its own My Domain instance host; it logs in at the same login host, as in production.
SALESFORCE2_USERNAME = "integration@acme.example"
SALESFORCE2_PASSWORD = "sandbox-sf2-password-37"  # noqa: S105 - sandbox credential
SALESFORCE2_SECURITY_TOKEN = "sandbox-sf2-token-08"  # noqa: S105 - sandbox credential
SALESFORCE2_INSTANCE_HOST = "acme.my.salesforce.com"
# A connected app and a refresh token for the first org's integration user: the OAuth 2.0 refresh
# token flow that published connectors (tap-salesforce, airbyte-source-salesforce) log in with.
SALESFORCE_CLIENT_ID = "3MVG9sandbox.northwind.connected.app"
SALESFORCE_CLIENT_SECRET = "sandbox-sf-client-secret-4c"  # noqa: S105 - sandbox credential
SALESFORCE_REFRESH_TOKEN = "5Aep861sandbox.refresh.token.northwind"  # noqa: S105 - sandbox credential

AWS_ACCESS_KEY = "sandbox-aws-key"
AWS_SECRET_KEY = "sandbox-aws-secret-3e"  # noqa: S105 - sandbox credential

WEBHOOK_SECRET = "sandbox-webhook-secret-4d"  # noqa: S105 - sandbox credential


@dataclass(frozen=True)
class NetSuiteCredentials:
    account_id: str
    consumer_key: str
    consumer_secret: str
    token_id: str
    token_secret: str


NETSUITE: dict[str, NetSuiteCredentials] = {
    name: NetSuiteCredentials(
        account_id=account,
        consumer_key=f"sandbox-ck-{name}",
        consumer_secret=f"sandbox-cs-{name}-8b",
        token_id=f"sandbox-tid-{name}",
        token_secret=f"sandbox-ts-{name}-2a",
    )
    for name, account in NETSUITE_ACCOUNTS.items()
}
