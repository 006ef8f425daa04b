"""The demo seed: Northwind Cloud's m3ter org, built from :mod:`m3sh.sandbox.seed`.

Seeded entities go through the same validation as API calls (``create_entity``) and get
deterministic UUIDs (uuid5 of kind + code), so ids are stable across resets and restarts.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from m3sh.sandbox import seed
from m3sh.sandbox.m3ter.billing import apply_transaction
from m3sh.sandbox.m3ter.routes_config import KIND_BY_NAME, create_entity
from m3sh.sandbox.m3ter.routes_misc import custom_fields_entity
from m3sh.sandbox.m3ter.store import SERVICE_USER

if TYPE_CHECKING:
    from m3sh.sandbox.m3ter.app import M3terEmulator

_NS = uuid.UUID("0b8e6c4e-9a53-4b7f-8f1a-6d3ee0e5a111")
ACCOUNT_CUSTOM_FIELDS = {"crm_source": "", "crm_id": "", "subsidiary": "", "tax_code": "", "exported_at": ""}
# Organization-level fields the demo config's trigger rules write (m3ter.custom_fields in include/m3sh.yaml),
# defined with a default as an org admin would, so `m3sh preflight` finds them.
RULE_CUSTOM_FIELDS = {"lifecycle": "", "renewal_status": ""}


def seed_id(kind: str, code: str) -> str:
    return str(uuid.uuid5(_NS, f"{kind}:{code}"))


def _add(emu: M3terEmulator, kind: str, code: str, body: dict[str, Any]) -> dict[str, Any]:
    return create_entity(emu, KIND_BY_NAME[kind], body, seed_id(kind, code))


def _at(day: dt.date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


def seed_demo(emu: M3terEmulator) -> None:
    emu.seeding = True
    try:
        _seed(emu)
    finally:
        emu.seeding = False


def _seed(emu: M3terEmulator) -> None:
    company = seed.demo_company()
    cf = custom_fields_entity(emu)
    cf["account"] = {**ACCOUNT_CUSTOM_FIELDS, **RULE_CUSTOM_FIELDS}
    cf["accountPlan"] = dict(RULE_CUSTOM_FIELDS)
    cf["contract"] = {"crm_opportunity_id": "", "po_number": ""}
    cf["plan"] = {"unit_price": 0, "usage_meter": "api_calls"}

    product = _add(emu, "products", seed.PRODUCT_CODE, {"code": seed.PRODUCT_CODE, "name": "API Platform"})
    for code, name in seed.METERS.items():
        unit = "calls" if code == "api_calls" else "GB"
        meter = _add(
            emu,
            "meters",
            code,
            {
                "code": code,
                "name": name,
                "productId": product["id"],
                "dataFields": [
                    {"category": "MEASURE", "code": "quantity", "name": "Quantity", "unit": unit},
                    {"category": "WHERE", "code": "region", "name": "Region"},
                ],
                "derivedFields": [],
            },
        )
        _add(
            emu,
            "aggregations",
            code,
            {
                "code": code,
                "name": f"{name} ({'sum' if code == 'api_calls' else 'max'})",
                "meterId": meter["id"],
                "targetField": "quantity",
                "aggregation": "SUM" if code == "api_calls" else "MAX",
                "unit": unit,
                "quantityPerUnit": 1,
                "rounding": "NONE",
            },
        )

    plans: dict[str, dict[str, Any]] = {}
    for code, spec in seed.PLANS.items():
        template = _add(
            emu,
            "plantemplates",
            f"{code}_template",
            {
                "code": f"{code}_template",
                "name": f"{spec['name']} template",
                "productId": product["id"],
                "currency": spec["currency"],
                "standingCharge": spec["standing_charge"],
                "billFrequency": "MONTHLY",
                "standingChargeDescription": "Monthly platform fee",
            },
        )
        plans[code] = _add(
            emu,
            "plans",
            code,
            {
                "code": code,
                "name": spec["name"],
                "planTemplateId": template["id"],
                "standingCharge": spec["standing_charge"],
                "customFields": {"unit_price": spec["unit_price"], "usage_meter": "api_calls"},
            },
        )

    credit = _add(
        emu, "transactiontypes", "prepaid_credit", {"code": "prepaid_credit", "name": "Prepaid credit"}
    )
    _add(emu, "transactiontypes", "top_up", {"code": "top_up", "name": "Top-up"})

    for c in company.customers:
        if not c.in_m3ter:
            continue
        account = _add(
            emu,
            "accounts",
            c.key,
            {
                "code": c.key,
                "name": c.name,
                "emailAddress": c.email,
                "currency": c.currency,
                "address": {"country": c.country},
                **({"purchaseOrderNumber": c.po_number} if c.po_number else {}),
                "customFields": {
                    **ACCOUNT_CUSTOM_FIELDS,
                    "crm_source": "hubspot,salesforce" if c.crm == "both" else c.crm,
                    "crm_id": c.salesforce_id or c.hubspot_id or "",
                },
            },
        )
        end = c.contract_end + dt.timedelta(days=1)
        contract = _add(
            emu,
            "contracts",
            c.key,
            {
                "code": c.key,
                "name": f"{c.name} contract",
                "accountId": account["id"],
                "startDate": c.contract_start.isoformat(),
                "endDate": c.contract_end.isoformat(),
                **({"purchaseOrderNumber": c.po_number} if c.po_number else {}),
            },
        )
        _add(
            emu,
            "accountplans",
            c.key,
            {
                "accountId": account["id"],
                "planId": plans[c.plan_code]["id"],
                "contractId": contract["id"],
                "startDate": _at(c.contract_start),
                "endDate": _at(end),
            },
        )
        if c.prepaid_balance:
            balance = _add(
                emu,
                "balances",
                f"prepaid-{c.key}",
                {
                    "code": f"prepaid-{c.key}",
                    "name": f"prepaid-{c.key}",
                    "accountId": account["id"],
                    "currency": c.currency,
                    "startDate": _at(c.contract_start),
                    "endDate": _at(end),
                    "contractId": contract["id"],
                    "description": "Prepaid API credits",
                    "balanceDrawDownDescription": "Prepaid credit used",
                },
            )
            apply_transaction(
                emu,
                balance,
                {
                    "amount": c.prepaid_balance,
                    "description": "Initial prepaid credit",
                    "transactionTypeId": credit["id"],
                },
                "SERVICE_USER",
                SERVICE_USER,
            )
