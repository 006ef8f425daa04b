"""Every m3ter API operation m3sh sends, in one table: method, path and the SDK method that sends it.

The named methods of :class:`~m3sh.hooks.m3ter.M3terHook` build their requests from here and
nowhere else. Paths are the OpenAPI document's templates (``shared/specs/m3ter-openapi.json``) under
``/organizations/{orgId}``; ``sdk`` names the official SDK (``m3ter`` 0.9) method that sends the same
method and path, and ``tests/wiring/test_m3ter_sdk_agreement.py`` checks each pair by recording what
the SDK sends. Where the SDK has no such method, ``sdk`` is ``None`` and the spec alone is the judge.

Why not call the SDK's resource methods themselves: they take snake_case keyword arguments and return
pydantic models, while m3sh's mapping speaks the documented camelCase wire format end to end; the
hook sends the same requests through the SDK's own HTTP client (auth, retries, typed errors, cursors).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class Op:
    method: str
    path: str  # template under /organizations/{orgId}, as in the spec
    sdk: str | None  # the SDK method sending the same request (attribute path on the client)
    host: str = "config"  # "config" (api.m3ter.com) or "ingest" (ingest.m3ter.com)
    # A list operation whose spec has the ``codes`` filter; the others (plans, products,
    # notification configurations, webhooks, account plans) are searched by code client-side.
    codes_filter: bool = False
    page_max: int = 100  # the spec's pageSize maximum of a list operation (100 or 200)

    def render(self, **params: str) -> str:
        """The path with each ``{name}`` filled in, URL-quoted (ids and codes may hold ``/``)."""
        path = self.path
        for name, value in params.items():
            path = path.replace("{" + name + "}", quote(str(value), safe=""))
        if "{" in path:
            raise ValueError(f"missing path parameters for {self.path!r}: {params}")
        return path


OPS: dict[str, Op] = {
    # accounts
    "list_accounts": Op("GET", "accounts", "accounts.list", codes_filter=True),
    "create_account": Op("POST", "accounts", "accounts.create"),
    "get_account": Op("GET", "accounts/{id}", "accounts.retrieve"),
    "update_account": Op("PUT", "accounts/{id}", "accounts.update"),
    # catalogue
    "list_plans": Op("GET", "plans", "plans.list"),
    "list_products": Op("GET", "products", "products.list", page_max=200),
    "create_product": Op("POST", "products", "products.create"),
    "get_product": Op("GET", "products/{id}", "products.retrieve"),
    "update_product": Op("PUT", "products/{id}", "products.update"),
    "list_meters": Op("GET", "meters", "meters.list", codes_filter=True),
    "get_custom_fields": Op("GET", "customfields", "custom_fields.retrieve"),
    "list_transaction_types": Op("GET", "picklists/transactiontypes", "transaction_types.list", codes_filter=True),
    # contracts and account plans
    "list_contracts": Op("GET", "contracts", "contracts.list", codes_filter=True),
    "create_contract": Op("POST", "contracts", "contracts.create"),
    "get_contract": Op("GET", "contracts/{id}", "contracts.retrieve"),
    "update_contract": Op("PUT", "contracts/{id}", "contracts.update"),
    "list_account_plans": Op("GET", "accountplans", "account_plans.list"),
    "create_account_plan": Op("POST", "accountplans", "account_plans.create"),
    "get_account_plan": Op("GET", "accountplans/{id}", "account_plans.retrieve"),
    "update_account_plan": Op("PUT", "accountplans/{id}", "account_plans.update"),
    # balances
    "list_balances": Op("GET", "balances", "balances.list"),
    "create_balance": Op("POST", "balances", "balances.create"),
    "get_balance": Op("GET", "balances/{id}", "balances.retrieve"),
    "update_balance": Op("PUT", "balances/{id}", "balances.update"),
    "list_balance_transactions": Op("GET", "balances/{balanceId}/transactions", "balances.transactions.list",
                                    page_max=200),
    "create_balance_transaction": Op("POST", "balances/{balanceId}/transactions", "balances.transactions.create"),
    "balance_transaction_summary": Op("GET", "balances/{balanceId}/transactions/summary",
                                      "balances.transactions.summary"),
    # external mappings
    "list_external_mappings": Op("GET", "externalmappings", "external_mappings.list", page_max=200),
    "create_external_mapping": Op("POST", "externalmappings", "external_mappings.create"),
    "get_external_mapping": Op("GET", "externalmappings/{id}", "external_mappings.retrieve"),
    "update_external_mapping": Op("PUT", "externalmappings/{id}", "external_mappings.update"),
    "list_external_mappings_by_m3ter_entity": Op("GET", "externalmappings/external/{entity}/{m3terId}",
                                                 "external_mappings.list_by_m3ter_entity", page_max=200),
    "list_external_mappings_by_external_id": Op(
        "GET", "externalmappings/externalid/{system}/{externalTable}/{externalId}",
        "external_mappings.list_by_external_entity", page_max=200),
    # notifications
    "list_notification_configurations": Op("GET", "notifications/configurations",
                                           "notification_configurations.list"),
    "create_notification_configuration": Op("POST", "notifications/configurations",
                                            "notification_configurations.create"),
    "get_notification_configuration": Op("GET", "notifications/configurations/{id}",
                                         "notification_configurations.retrieve"),
    "update_notification_configuration": Op("PUT", "notifications/configurations/{id}",
                                            "notification_configurations.update"),
    "list_webhook_destinations": Op("GET", "integrationdestinations/webhooks", "webhooks.list", page_max=200),
    "create_webhook_destination": Op("POST", "integrationdestinations/webhooks", "webhooks.create"),
    "get_webhook_destination": Op("GET", "integrationdestinations/webhooks/{id}", "webhooks.retrieve"),
    "update_webhook_destination": Op("PUT", "integrationdestinations/webhooks/{id}", "webhooks.update"),
    "list_integration_configs": Op("GET", "integrationconfigs", "integration_configurations.list", page_max=200),
    "create_integration_config": Op("POST", "integrationconfigs", "integration_configurations.create"),
    "enable_integration_config": Op("POST", "integrationconfigs/{id}/enable", "integration_configurations.enable"),
    # bills
    "list_bills": Op("GET", "bills", "bills.list"),
    "get_bill": Op("GET", "bills/{id}", "bills.retrieve"),
    "list_bill_line_items": Op("GET", "bills/{billId}/lineitems", "bills.line_items.list"),
    "approve_bills": Op("POST", "bills/approve", "bills.approve"),
    "update_bill_status": Op("PUT", "bills/{id}/status", "bills.update_status"),
    "lock_bill": Op("PUT", "bills/{id}/lock", "bills.lock"),
    "recalculate_bills": Op("POST", "billjobs/recalculate", "bill_jobs.recalculate"),
    # usage
    "submit_measurements": Op("POST", "measurements", "usage.submit", host="ingest"),
    "query_usage": Op("POST", "usage/query", "usage.query"),
    # measurement file uploads (the File Upload Service; on the Config API host, like the SDK sends them)
    "generate_upload_url": Op("POST", "fileuploads/measurements/generateUploadUrl",
                              "usage.file_uploads.generate_upload_url"),
    "list_upload_jobs": Op("GET", "fileuploads/measurements/jobs", "usage.file_uploads.jobs.list"),
    "get_upload_job": Op("GET", "fileuploads/measurements/jobs/{id}", "usage.file_uploads.jobs.retrieve"),
    "get_upload_job_original": Op("GET", "fileuploads/measurements/jobs/{id}/original",
                                  "usage.file_uploads.jobs.get_original_download_url"),
    # data exports
    "create_adhoc_data_export": Op("POST", "dataexports/adhoc", "data_exports.create_adhoc"),
    "get_data_export_job": Op("GET", "dataexports/jobs/{id}", "data_exports.jobs.retrieve"),
    "get_data_export_download_url": Op("GET", "dataexports/jobs/{jobId}/getdownloadurl",
                                       "data_exports.jobs.get_download_url"),
}
