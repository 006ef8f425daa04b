"""Canonical CRM records: what every CRM is mapped into before anything is written to m3ter."""

from __future__ import annotations

import datetime as dt
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

# The canonical names m3sh.yaml may use, declared once: the config validator enumerates them (an
# unknown key is an error, not a map entry nobody reads) and the CRM mapping iterates over them.
CanonicalAccountField = Literal["name", "domain", "email", "currency", "country", "owner", "po_number"]
"""Keys of ``crm.sources[].account_fields`` and ``crm.ownership.fields``: :class:`CrmAccount` fields."""
CANONICAL_ACCOUNT_FIELDS: tuple[CanonicalAccountField, ...] = get_args(CanonicalAccountField)

CanonicalContractField = Literal["start_date", "end_date", "po_number"]
"""Keys of ``crm.sources[].contract_fields``: what each CRM's contract record gives the m3ter contract."""
CANONICAL_CONTRACT_FIELDS: tuple[CanonicalContractField, ...] = get_args(CanonicalContractField)


class CrmAccount(BaseModel):
    """One customer record as one CRM sees it, already mapped to canonical field names."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="CRM source name from m3sh.yaml")
    source_type: str = Field(description="salesforce | hubspot")
    crm_id: str
    crm_object: str = Field(description="e.g. Account or companies")
    name: str
    domain: str | None = None
    email: str | None = None
    currency: str | None = None
    country: str | None = None
    owner: str | None = None
    po_number: str | None = None
    m3ter_id: str | None = Field(None, description="Value of the write-back field, if any")
    plan_code: str | None = Field(None, description="CRM product code / SKU of the subscription")
    contract_id: str | None = None
    contract_start: dt.date | None = None
    contract_end: dt.date | None = None
    modified_at: dt.datetime | None = None
    priority: int = 100


class Customer(BaseModel):
    """One real customer after de-duplication across CRMs; ``records`` lists every CRM view of it."""

    model_config = ConfigDict(extra="forbid")

    code: str
    records: list[CrmAccount]

    @property
    def primary(self) -> CrmAccount:
        return min(self.records, key=lambda r: (r.priority, r.source, r.crm_id))

    def value(self, field: str) -> object:
        """The field from the highest-priority CRM that has it."""
        for rec in sorted(self.records, key=lambda r: (r.priority, r.source, r.crm_id)):
            v = getattr(rec, field)
            if v not in (None, ""):
                return v
        return None
