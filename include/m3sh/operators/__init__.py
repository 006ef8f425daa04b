"""Operators for users' own DAGs, no ``m3sh.yaml`` needed: m3ter plan actions, S3 usage files and usage
feeds -> m3ter, CRM (Salesforce, HubSpot) -> m3ter, m3ter bills -> NetSuite (or any m3sh invoice
destination), reconciliation, automation rules and the analytics export.

Each takes typed keyword arguments, templates the fields users template, writes idempotently and
returns a JSON-safe dict (XCom). See ``docs/operators.md`` for an example DAG.

Names resolve on first use (PEP 562), so a DAG file importing one module, as m3sh_invoice_sync's
does, does not import the others (and with them the m3ter SDK, ~0.5 s of every parse).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from m3sh.operators.analytics import (
        M3terAnalyticsCommitOperator,
        M3terAnalyticsPlanOperator,
        M3terAnalyticsTableOperator,
    )
    from m3sh.operators.automation import (
        M3terApplyFiringsOperator,
        M3terFiringsSummaryOperator,
        M3terRulesEvaluateOperator,
    )
    from m3sh.operators.crm import (
        CrmExtractOperator,
        CrmToM3terSyncOperator,
        CrmWriteBackOperator,
        HubSpotToM3terOperator,
        M3terToCrmOperator,
        SalesforceToM3terOperator,
    )
    from m3sh.operators.invoicing import (
        M3terBillsCollectOperator,
        M3terBillsDeliverOperator,
        M3terBillsToNetSuiteOperator,
        M3terInvoiceRunSummaryOperator,
        NetSuitePaymentsToCrmOperator,
    )
    from m3sh.operators.m3ter import (
        M3terBalanceOperator,
        M3terBaseOperator,
        M3terSetCustomFieldsOperator,
        M3terSwitchPlanOperator,
    )
    from m3sh.operators.reconcile import (
        M3terReconcileAccountsOperator,
        M3terReconcileBillsOperator,
        ReconcileReportOperator,
    )
    from m3sh.operators.usage import S3UsageToM3terOperator
    from m3sh.operators.usage_feeds import (
        M3terUsageFeedsIngestOperator,
        M3terUsageFeedsPlanOperator,
        M3terUsageFeedsSummaryOperator,
    )

_MODULES = {
    "CrmExtractOperator": "m3sh.operators.crm",
    "CrmToM3terSyncOperator": "m3sh.operators.crm",
    "CrmWriteBackOperator": "m3sh.operators.crm",
    "M3terToCrmOperator": "m3sh.operators.crm",
    "HubSpotToM3terOperator": "m3sh.operators.crm",
    "M3terAnalyticsCommitOperator": "m3sh.operators.analytics",
    "M3terAnalyticsPlanOperator": "m3sh.operators.analytics",
    "M3terAnalyticsTableOperator": "m3sh.operators.analytics",
    "M3terApplyFiringsOperator": "m3sh.operators.automation",
    "M3terBalanceOperator": "m3sh.operators.m3ter",
    "M3terBaseOperator": "m3sh.operators.m3ter",
    "M3terBillsCollectOperator": "m3sh.operators.invoicing",
    "M3terBillsDeliverOperator": "m3sh.operators.invoicing",
    "M3terBillsToNetSuiteOperator": "m3sh.operators.invoicing",
    "M3terFiringsSummaryOperator": "m3sh.operators.automation",
    "M3terInvoiceRunSummaryOperator": "m3sh.operators.invoicing",
    "NetSuitePaymentsToCrmOperator": "m3sh.operators.invoicing",
    "M3terReconcileAccountsOperator": "m3sh.operators.reconcile",
    "M3terReconcileBillsOperator": "m3sh.operators.reconcile",
    "M3terRulesEvaluateOperator": "m3sh.operators.automation",
    "M3terSetCustomFieldsOperator": "m3sh.operators.m3ter",
    "M3terSwitchPlanOperator": "m3sh.operators.m3ter",
    "M3terUsageFeedsIngestOperator": "m3sh.operators.usage_feeds",
    "M3terUsageFeedsPlanOperator": "m3sh.operators.usage_feeds",
    "M3terUsageFeedsSummaryOperator": "m3sh.operators.usage_feeds",
    "ReconcileReportOperator": "m3sh.operators.reconcile",
    "S3UsageToM3terOperator": "m3sh.operators.usage",
    "SalesforceToM3terOperator": "m3sh.operators.crm",
}
__all__ = [
    "CrmExtractOperator",
    "CrmToM3terSyncOperator",
    "CrmWriteBackOperator",
    "HubSpotToM3terOperator",
    "M3terAnalyticsCommitOperator",
    "M3terAnalyticsPlanOperator",
    "M3terAnalyticsTableOperator",
    "M3terApplyFiringsOperator",
    "M3terBalanceOperator",
    "M3terBaseOperator",
    "M3terBillsCollectOperator",
    "M3terBillsDeliverOperator",
    "M3terBillsToNetSuiteOperator",
    "M3terFiringsSummaryOperator",
    "M3terInvoiceRunSummaryOperator",
    "M3terReconcileAccountsOperator",
    "M3terReconcileBillsOperator",
    "M3terRulesEvaluateOperator",
    "M3terSetCustomFieldsOperator",
    "M3terSwitchPlanOperator",
    "M3terToCrmOperator",
    "M3terUsageFeedsIngestOperator",
    "M3terUsageFeedsPlanOperator",
    "M3terUsageFeedsSummaryOperator",
    "NetSuitePaymentsToCrmOperator",
    "ReconcileReportOperator",
    "S3UsageToM3terOperator",
    "SalesforceToM3terOperator",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
