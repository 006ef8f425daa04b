"""What the hook tests against the emulators share."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def m3(fresh_sandbox: Any) -> Any:
    """The sandbox with m3ter's request stats cleared and no cached token (each test counts its own)."""
    from m3sh.hooks.m3ter import TOKEN_CACHE

    TOKEN_CACHE.clear()
    fresh_sandbox.admin("m3ter", "stats", "DELETE")
    return fresh_sandbox
