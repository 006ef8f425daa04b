"""Fixtures of the production-wiring suite: one run of every scenario per test session.

The run needs no sandbox and no network (``transports.no_network`` fails any socket use and
records it); the DAG-coverage test in ``test_dag_operations.py`` is the only one that needs the
sandbox, and it reuses the same run for the wiring side of the comparison.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.wiring import scenarios
from tests.wiring.operations import Operation, Unclassified, classify_recorded


class Wired:
    """One scenario run and what the tests derive from it."""

    def __init__(self, run: scenarios.WiringRun, seconds: float) -> None:
        self.run = run
        self.seconds = seconds
        self.ops: dict[int, Operation] = {}
        self.unclassified: list[str] = []
        for i, rec in enumerate(run.records):
            try:
                self.ops[i] = classify_recorded(rec)
            except Unclassified as exc:
                self.unclassified.append(str(exc))

    @property
    def covered(self) -> set[Operation]:
        return set(self.ops.values())

    def of(self, system: str) -> list[tuple[Any, Operation]]:
        return [(self.run.records[i], op) for i, op in self.ops.items() if op.system == system]


@pytest.fixture(scope="session")
def wired() -> Wired:
    """Every scenario, run once per session (seconds; see scenarios.run)."""
    t0 = time.monotonic()
    run = scenarios.run()
    return Wired(run, time.monotonic() - t0)
