"""The security suite reuses the chaos suite's per-test sandbox config (own storage prefix, fast retries)."""

from __future__ import annotations

from tests.chaos.conftest import chaos

__all__ = ["chaos"]
