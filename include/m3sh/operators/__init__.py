"""Operators for users' own DAGs: m3ter plan actions, S3 usage ingest and m3ter bills -> NetSuite
(or any m3sh invoice destination), no ``m3sh.yaml`` needed.

Each takes typed keyword arguments, templates the fields users template, writes idempotently and
returns a JSON-safe dict (XCom). See ``docs/operators.md`` for an example DAG.
"""

from m3sh.operators.invoicing import (
    M3terBillsCollectOperator,
    M3terBillsDeliverOperator,
    M3terBillsToNetSuiteOperator,
    M3terInvoiceRunSummaryOperator,
)
from m3sh.operators.m3ter import (
    M3terBalanceOperator,
    M3terBaseOperator,
    M3terSetCustomFieldsOperator,
    M3terSwitchPlanOperator,
)
from m3sh.operators.usage import S3UsageToM3terOperator

__all__ = [
    "M3terBalanceOperator",
    "M3terBaseOperator",
    "M3terBillsCollectOperator",
    "M3terBillsDeliverOperator",
    "M3terBillsToNetSuiteOperator",
    "M3terInvoiceRunSummaryOperator",
    "M3terSetCustomFieldsOperator",
    "M3terSwitchPlanOperator",
    "S3UsageToM3terOperator",
]
