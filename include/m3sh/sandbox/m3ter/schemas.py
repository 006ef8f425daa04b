"""Request-body field specs of the m3ter Config API, taken from the OpenAPI document.

Generated once from ``shared/specs/m3ter-openapi.json`` (the ``*Request`` schemas, ``allOf``
flattened) and kept as plain data so the emulator validates bodies exactly like the published
contract without shipping or parsing the 1.3 MB spec at start-up. Each entry is
``field -> (json type, required, constraints)``.
"""

from __future__ import annotations

from typing import Any

FieldSpec = tuple[str, bool, dict[str, Any]]

REQUEST_FIELDS: dict[str, dict[str, FieldSpec]] = {
    "products": {
        "customFields": ("object", False, {"maxItems": 100}),
        "name": ("string", True, {"maxLength": 200, "minLength": 1}),
        "code": ("string", True, {"maxLength": 80, "minLength": 1}),
    },
    "plantemplates": {
        "customFields": ("object", False, {"maxItems": 100}),
        "productId": ("string", True, {"maxLength": 36, "minLength": 36}),
        "name": ("string", True, {"maxLength": 200, "minLength": 1}),
        "currency": ("string", True, {"maxLength": 3, "minLength": 3}),
        "standingCharge": ("number", True, {"minimum": 0}),
        "standingChargeDescription": ("string", False, {"maxLength": 200}),
        "standingChargeInterval": ("integer", False, {"minimum": 1, "maximum": 365}),
        "standingChargeOffset": ("integer", False, {"minimum": 0, "maximum": 364}),
        "billFrequencyInterval": ("integer", False, {"minimum": 1, "maximum": 365}),
        "billFrequency": (
            "string",
            True,
            {"enum": ["DAILY", "WEEKLY", "MONTHLY", "ANNUALLY", "AD_HOC", "MIXED"]},
        ),
        "ordinal": ("integer", False, {"minimum": 0}),
        "code": ("string", False, {"maxLength": 80}),
        "minimumSpend": ("number", False, {"minimum": 0}),
        "minimumSpendDescription": ("string", False, {"maxLength": 200}),
        "standingChargeBillInAdvance": ("boolean", False, {}),
        "minimumSpendBillInAdvance": ("boolean", False, {}),
    },
    "plans": {
        "customFields": ("object", False, {"maxItems": 100}),
        "planTemplateId": ("string", True, {"maxLength": 36, "minLength": 36}),
        "name": ("string", True, {"maxLength": 200, "minLength": 1}),
        "code": ("string", True, {"maxLength": 80, "minLength": 1}),
        "standingCharge": ("number", False, {"minimum": 0}),
        "standingChargeDescription": ("string", False, {"maxLength": 200}),
        "ordinal": ("integer", False, {"minimum": 0}),
        "bespoke": ("boolean", False, {}),
        "minimumSpend": ("number", False, {"minimum": 0}),
        "minimumSpendDescription": ("string", False, {"maxLength": 200}),
        "standingChargeBillInAdvance": ("boolean", False, {}),
        "minimumSpendBillInAdvance": ("boolean", False, {}),
        "minimumSpendAccountingProductId": ("string", False, {"maxLength": 36, "minLength": 36}),
        "standingChargeAccountingProductId": ("string", False, {"maxLength": 36, "minLength": 36}),
        "accountId": ("string", False, {"maxLength": 36, "minLength": 36}),
    },
    "accounts": {
        "customFields": ("object", False, {"maxItems": 100}),
        "name": ("string", True, {"maxLength": 200, "minLength": 1}),
        "code": ("string", True, {"maxLength": 80, "minLength": 1}),
        "address": ("object", False, {}),
        "emailAddress": ("string", True, {"format": "email"}),
        "parentAccountId": ("string", False, {}),
        "billEpoch": ("string", False, {"format": "date"}),
        "purchaseOrderNumber": ("string", False, {"maxLength": 100}),
        "currency": ("string", False, {}),
        "statementDefinitionId": ("string", False, {}),
        "autoGenerateStatementMode": ("string", False, {"enum": ["NONE", "JSON", "JSON_AND_CSV"]}),
        "creditApplicationOrder": (
            "array",
            False,
            {"itemEnum": ["PREPAYMENT", "BALANCE"], "items": "string"},
        ),
        "daysBeforeBillDue": ("integer", False, {"minimum": 0}),
    },
    "accountplans": {
        "customFields": ("object", False, {"maxItems": 100}),
        "accountId": ("string", True, {"maxLength": 36, "minLength": 36}),
        "planId": ("string", False, {"maxLength": 36, "minLength": 36}),
        "planGroupId": ("string", False, {"maxLength": 36, "minLength": 36}),
        "startDate": ("string", True, {"format": "date-time"}),
        "endDate": ("string", False, {"format": "date-time"}),
        "code": ("string", False, {"maxLength": 80}),
        "billEpoch": ("string", False, {"format": "date"}),
        "contractId": ("string", False, {"maxLength": 36, "minLength": 36}),
        "childBillingMode": ("string", False, {"enum": ["PARENT_SUMMARY", "PARENT_BREAKDOWN", "CHILD"]}),
    },
    "contracts": {
        "customFields": ("object", False, {"maxItems": 100}),
        "accountId": ("string", True, {"minLength": 1}),
        "name": ("string", True, {"maxLength": 200, "minLength": 1}),
        "code": ("string", False, {"maxLength": 80}),
        "description": ("string", False, {"maxLength": 500}),
        "purchaseOrderNumber": ("string", False, {"maxLength": 100}),
        "applyContractPeriodLimits": ("boolean", False, {}),
        "usageFilters": ("array", False, {}),
        "billGroupingKeyId": ("string", False, {}),
        "startDate": ("string", True, {"format": "date"}),
        "endDate": ("string", True, {"format": "date"}),
    },
    "balances": {
        "customFields": ("object", False, {"maxItems": 100}),
        "code": ("string", True, {"maxLength": 80, "minLength": 1}),
        "name": ("string", True, {"minLength": 1}),
        "description": ("string", False, {}),
        "accountId": ("string", True, {"minLength": 1}),
        "startDate": ("string", True, {"format": "date-time"}),
        "endDate": ("string", True, {"format": "date-time"}),
        "currency": ("string", True, {"minLength": 1}),
        "rolloverAmount": ("number", False, {"minimum": 0}),
        "rolloverEndDate": ("string", False, {"format": "date-time"}),
        "balanceDrawDownDescription": ("string", False, {"maxLength": 200}),
        "overageSurchargePercent": ("number", False, {}),
        "overageDescription": ("string", False, {"maxLength": 200}),
        "productIds": ("array", False, {"items": "string"}),
        "lineItemTypes": (
            "array",
            False,
            {
                "itemEnum": [
                    "STANDING_CHARGE",
                    "USAGE",
                    "MINIMUM_SPEND",
                    "COUNTER_RUNNING_TOTAL_CHARGE",
                    "COUNTER_ADJUSTMENT_DEBIT",
                    "AD_HOC",
                ],
                "items": "string",
            },
        ),
        "contractId": ("string", False, {}),
        "consumptionsAccountingProductId": ("string", False, {"maxLength": 36, "minLength": 36}),
        "feesAccountingProductId": ("string", False, {"maxLength": 36, "minLength": 36}),
        "allowOverdraft": ("boolean", False, {}),
    },
    "transactions": {
        "description": ("string", False, {}),
        "amount": ("number", True, {}),
        "paid": ("number", False, {}),
        "currencyPaid": ("string", False, {}),
        "transactionTypeId": ("string", False, {"maxLength": 36}),
        "appliedDate": ("string", False, {"format": "date-time"}),
        "transactionDate": ("string", False, {"format": "date-time"}),
    },
    "meters": {
        "customFields": ("object", False, {"maxItems": 100}),
        "productId": ("string", False, {"maxLength": 36, "minLength": 36}),
        "groupId": ("string", False, {"maxLength": 36, "minLength": 36}),
        "name": ("string", True, {"maxLength": 200, "minLength": 1}),
        "code": ("string", True, {"maxLength": 80, "minLength": 1}),
        "dataFields": ("array", True, {"maxItems": 15, "minItems": 1}),
        "derivedFields": ("array", True, {"maxItems": 15}),
    },
    "aggregations": {
        "customFields": ("object", False, {"maxItems": 100}),
        "name": ("string", True, {"maxLength": 200, "minLength": 1}),
        "rounding": ("string", True, {"enum": ["UP", "DOWN", "NEAREST", "NONE"]}),
        "quantityPerUnit": ("number", True, {"minimum": 0}),
        "unit": ("string", True, {"maxLength": 50, "minLength": 1}),
        "code": ("string", False, {"maxLength": 80}),
        "accountingProductId": ("string", False, {"maxLength": 36, "minLength": 36}),
        "meterId": ("string", True, {"maxLength": 36, "minLength": 36}),
        "targetField": ("string", True, {"maxLength": 80, "minLength": 1}),
        "aggregation": (
            "string",
            True,
            {"enum": ["SUM", "MIN", "MAX", "COUNT", "LATEST", "MEAN", "UNIQUE", "CUSTOM_SQL"]},
        ),
        "segmentedFields": ("array", False, {"maxItems": 5, "items": "string"}),
        "segments": ("array", False, {"maxItems": 1000}),
        "defaultValue": ("number", False, {"minimum": 0}),
        "customSql": ("string", False, {"maxLength": 2048}),
    },
    "billjobs": {
        "lastDateInBillingPeriod": ("string", False, {"format": "date"}),
        "billingFrequency": ("string", False, {"enum": ["DAILY", "WEEKLY", "MONTHLY", "ANNUALLY", "AD_HOC"]}),
        "billFrequencyInterval": ("integer", False, {}),
        "billDate": ("string", False, {"format": "date"}),
        "externalInvoiceDate": ("string", False, {"format": "date"}),
        "dueDate": ("string", False, {"format": "date"}),
        "accountIds": ("array", False, {"maxItems": 100, "minItems": 1, "items": "string"}),
        "targetCurrency": ("string", False, {"maxLength": 3, "minLength": 3}),
        "currencyConversions": ("array", False, {"maxItems": 250}),
        "timezone": ("string", False, {}),
        "yearEpoch": ("string", False, {"format": "date"}),
        "monthEpoch": ("string", False, {"format": "date"}),
        "weekEpoch": ("string", False, {"format": "date"}),
        "dayEpoch": ("string", False, {"format": "date"}),
    },
    "customfields": {
        "organization": ("object", False, {"maxItems": 25}),
        "account": ("object", False, {"maxItems": 25}),
        "accountPlan": ("object", False, {"maxItems": 25}),
        "meter": ("object", False, {"maxItems": 25}),
        "product": ("object", False, {"maxItems": 25}),
        "planTemplate": ("object", False, {"maxItems": 25}),
        "plan": ("object", False, {"maxItems": 25}),
        "aggregation": ("object", False, {"maxItems": 25}),
        "compoundAggregation": ("object", False, {"maxItems": 25}),
        "contract": ("object", False, {"maxItems": 25}),
    },
    "transactiontypes": {
        "code": ("string", False, {"maxLength": 80}),
        "name": ("string", True, {"maxLength": 200, "minLength": 1}),
        "archived": ("boolean", False, {}),
    },
    "webhooks": {
        "name": ("string", True, {"minLength": 1}),
        "description": ("string", True, {"minLength": 1}),
        "code": ("string", False, {}),
        "active": ("boolean", False, {}),
        "url": ("string", True, {"minLength": 1}),
        "credentials": ("object", True, {}),
    },
    "integrationconfigs": {  # IntegrationConfigRequest
        "entityType": ("string", True, {"minLength": 1}),
        "entityId": ("string", False, {}),
        "destination": ("string", True, {"minLength": 1}),
        "destinationId": ("string", False, {}),
        "configData": ("object", False, {}),
        "credentials": ("object", False, {}),
        "integrationCredentialsId": ("string", False, {}),
        "name": ("string", False, {}),
    },
    "externalmappings": {
        "m3terEntity": ("string", True, {"minLength": 1}),
        "m3terId": ("string", True, {"minLength": 1}),
        "externalSystem": ("string", True, {"minLength": 1}),
        "externalTable": ("string", True, {"minLength": 1}),
        "externalId": ("string", True, {"minLength": 1}),
        "integrationConfigId": ("string", False, {}),
    },
    "notifications": {
        "name": ("string", True, {"minLength": 1}),
        "description": ("string", True, {"minLength": 1}),
        "active": ("boolean", False, {}),
        "alwaysFireEvent": ("boolean", False, {}),
        "calculation": ("string", False, {}),
        "code": ("string", True, {"minLength": 1}),
        "eventName": ("string", True, {"minLength": 1}),
    },
}


class ApiError(Exception):
    """An m3ter error answer: the status code plus the single ``{"message"}`` body the API uses."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _check_format(name: str, value: str, fmt: str) -> None:
    # Imported lazily: only PUT/POST bodies reach here, never the ingest hot path.
    from m3sh.sandbox.m3ter.timeutil import parse_date, parse_datetime

    if fmt == "date-time":
        parse_datetime(value, name)
    elif fmt == "date":
        parse_date(value, name)
    elif fmt == "email" and ("@" not in value or value.startswith("@") or value.endswith("@")):
        raise ApiError(400, f"{name}: must be a well-formed email address")


def check_value(name: str, value: Any, spec: FieldSpec) -> None:
    """Validate one field against its spec; raises a 400 naming the field like m3ter does."""
    json_type, _, c = spec
    types = _JSON_TYPES.get(json_type, (object,))
    if isinstance(value, bool) and json_type in ("number", "integer"):
        raise ApiError(400, f"{name}: must be a {json_type}")
    if not isinstance(value, types):
        raise ApiError(400, f"{name}: must be a {json_type}")
    if isinstance(value, str):
        if "minLength" in c and len(value) < c["minLength"]:
            raise ApiError(400, f"{name}: length must be at least {c['minLength']}")
        if "maxLength" in c and len(value) > c["maxLength"]:
            raise ApiError(400, f"{name}: length must be at most {c['maxLength']}")
        if "enum" in c and value not in c["enum"]:
            raise ApiError(400, f"{name}: must be one of {', '.join(c['enum'])}")
        if "format" in c:
            _check_format(name, value, c["format"])
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in c and value < c["minimum"]:
            raise ApiError(400, f"{name}: must be >= {c['minimum']}")
        if "maximum" in c and value > c["maximum"]:
            raise ApiError(400, f"{name}: must be <= {c['maximum']}")
    if isinstance(value, list | dict):
        if "minItems" in c and len(value) < c["minItems"]:
            raise ApiError(400, f"{name}: must have at least {c['minItems']} entries")
        if "maxItems" in c and len(value) > c["maxItems"]:
            raise ApiError(400, f"{name}: must have at most {c['maxItems']} entries")
    if isinstance(value, list):
        for item in value:
            if c.get("items") == "string" and not isinstance(item, str):
                raise ApiError(400, f"{name}: entries must be strings")
            if "itemEnum" in c and item not in c["itemEnum"]:
                raise ApiError(400, f"{name}: entries must be one of {', '.join(c['itemEnum'])}")


def check_custom_fields(name: str, value: Any) -> None:
    """customFields maps hold strings or numbers only (the SDK models reject anything else)."""
    if not isinstance(value, dict):
        raise ApiError(400, f"{name}: must be an object")
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ApiError(400, f"{name}.{k}: must be a string or a number")


def validate_body(kind: str, body: Any, *, update: bool = False) -> dict[str, Any]:
    """Check a create/update body against the spec and return only the known fields.

    Unknown fields are dropped rather than echoed, like the real API, so a client that misspells
    a field sees it missing in the response instead of believing it was stored.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    fields = REQUEST_FIELDS[kind]
    out: dict[str, Any] = {}
    for name, spec in fields.items():
        value = body.get(name)
        if value is None:
            if spec[1]:
                raise ApiError(400, f"{name}: must not be null")
            continue
        check_value(name, value, spec)
        if name == "customFields" or (kind == "customfields" and spec[0] == "object"):
            check_custom_fields(name, value)
        out[name] = value
    if update:
        version = body.get("version")
        if version is None:
            raise ApiError(400, "version: must not be null on update")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ApiError(400, "version: must be an integer")
        out["version"] = version
    return out
