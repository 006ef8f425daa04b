"""Canonical records m3sh moves between systems (validated pydantic models at every boundary)."""

from m3sh.models.records import CrmAccount, Customer

__all__ = ["CrmAccount", "Customer"]
