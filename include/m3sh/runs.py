"""What the steps of m3sh's config-driven runs share: Airflow's map limit, chunking work for mapped
tasks, and a summary step's outcome (totals, plus the failure text and the records it names)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

MAX_MAP = 1024  # Airflow's limit on mapped task instances per task


def chunked(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


@dataclass
class StepOutcome:
    """A run's totals, and when something did not go through, the failure text and what it names."""

    totals: dict[str, Any]
    failure: str | None = None
    records: list[str] = field(default_factory=list)
