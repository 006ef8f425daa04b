"""The enriched bill (what every destination reads) and the outcome of one delivery.

An :class:`EnrichedBill` is built once per run from m3ter (+ CRM) and staged in S3, so every
destination task sees the same content. Its :attr:`EnrichedBill.fingerprint` covers only what an
invoice shows (lines, totals, dates, currency, customer), so approving or locking a bill in m3ter
does not look like a change, while a recalculated bill does and is re-delivered as a correction.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DeliveryStatus = Literal["delivered", "unchanged", "not_applicable", "failed", "action_needed", "dry_run"]
# Outcomes after which a bill counts as exported to that destination.
DONE_STATUSES = frozenset({"delivered", "unchanged", "not_applicable"})


class BillLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    line_type: str = Field(description="m3ter lineItemType, e.g. STANDING_CHARGE, USAGE")
    product_code: str | None = None
    description: str = ""
    quantity: float = 0.0
    unit_price: float = 0.0
    amount: float = Field(description="m3ter subtotal, unrounded")
    service_start: str | None = None
    service_end: str | None = None

    @property
    def amount_2dp(self) -> float:
        return round(self.amount, 2)


class CrmInfo(BaseModel):
    """What the CRM knows about the bill's customer (all optional: a CRM may not have the account)."""

    model_config = ConfigDict(frozen=True)

    source: str | None = Field(None, description="salesforce | hubspot")
    source_name: str | None = Field(None, description="The crm.sources name the record was read from (its org)")
    account_id: str | None = Field(None, description="Salesforce Account Id or HubSpot company id")
    owner: str | None = None
    po_number: str | None = None
    billing_address: str | None = None
    opportunity_id: str | None = Field(None, description="Salesforce Opportunity / HubSpot deal id")


class EnrichedBill(BaseModel):
    model_config = ConfigDict(frozen=True)

    bill_id: str
    m3ter_version: int = 1
    status: str = "APPROVED"
    locked: bool = False
    invoice_number: str | None = None
    account_id: str
    account_code: str
    account_name: str
    email: str | None = None
    currency: str
    bill_date: str
    due_date: str | None = None
    period_start: str | None = None
    period_end: str | None = None
    total: float
    lines: list[BillLine]
    subsidiary: str | None = None
    tax_code: str | None = None
    department: str | None = None
    custom_fields: dict[str, Any] = Field(default_factory=dict, description="m3ter account custom fields")
    crm: CrmInfo = CrmInfo()
    item_keys: list[str] = Field(default_factory=list, description="Per line: the key ERP item maps use")

    @property
    def erp_total(self) -> float:
        """What an ERP shows: the sum of the 2-decimal line amounts m3sh sends."""
        return round(sum(line.amount_2dp for line in self.lines), 2)

    @property
    def fingerprint(self) -> str:
        content = {
            "account": self.account_id, "currency": self.currency, "bill_date": self.bill_date,
            "due_date": self.due_date, "total": round(self.total, 6), "po": self.crm.po_number,
            "lines": [[li.line_type, li.product_code, round(li.quantity, 6), round(li.unit_price, 10),
                       round(li.amount, 6), li.description] for li in self.lines],
        }
        raw = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:20]

    @property
    def idempotency_key(self) -> str:
        """Bill id + content version, for receivers that de-duplicate (webhooks)."""
        return f"{self.bill_id}:{self.fingerprint}"

    def value(self, name: str) -> Any:
        """An enrichment value by the names ``required_enrichment`` uses."""
        if name in ("owner", "po_number", "billing_address"):
            return getattr(self.crm, name)
        if name == "crm_id":
            return self.crm.account_id
        if hasattr(self, name):
            return getattr(self, name)
        return self.custom_fields.get(name)


class Delivery(BaseModel):
    """The outcome of one bill at one destination; ``detail`` quotes the remote system's own words."""

    bill_id: str
    destination: str
    status: DeliveryStatus
    detail: str = ""
    remote_id: str | None = None
    fingerprint: str | None = None
    retryable: bool = False
    account_code: str | None = None

    def to_row(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class EnrichmentError(ValueError):
    """A bill cannot be exported until someone fills in missing data; names the bill and field."""

    def __init__(self, bill_id: str, account_code: str, reason: str) -> None:
        self.bill_id = bill_id
        self.account_code = account_code
        self.reason = reason
        super().__init__(f"bill {bill_id} (account {account_code}): {reason}")
