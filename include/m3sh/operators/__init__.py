"""Operators for users' own DAGs: m3ter plan actions and S3 usage ingest, no ``m3sh.yaml`` needed.

Each takes typed keyword arguments, templates the fields users template, writes idempotently and
returns a JSON-safe dict (XCom). See ``docs/operators.md`` for an example DAG.
"""

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
    "M3terSetCustomFieldsOperator",
    "M3terSwitchPlanOperator",
    "S3UsageToM3terOperator",
]
