"""Object types, built-in property definitions and association types of the emulated portal.

Only what billing integrations touch is modelled; names and type ids follow api-notes A.1/A.3/A.8.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from m3sh.sandbox.hubspot.errors import HubSpotHTTPError

# canonical name -> objectTypeId
OBJECT_TYPE_IDS: dict[str, str] = {
    "contacts": "0-1",
    "companies": "0-2",
    "deals": "0-3",
    "products": "0-7",
    "line_items": "0-8",
}
SINGULAR: dict[str, str] = {
    "contacts": "contact",
    "companies": "company",
    "deals": "deal",
    "products": "product",
    "line_items": "line_item",
}
_ALIASES: dict[str, str] = {
    **{k: k for k in OBJECT_TYPE_IDS},
    **{v: k for k, v in OBJECT_TYPE_IDS.items()},
    **{v: k for k, v in SINGULAR.items()},
    "lineitems": "line_items",
    "line_item": "line_items",
}

# The change cursor differs per object (api-notes A.3): contacts keep the legacy name.
LASTMOD_PROPERTY: dict[str, str] = {t: "hs_lastmodifieddate" for t in OBJECT_TYPE_IDS}
LASTMOD_PROPERTY["contacts"] = "lastmodifieddate"

# Returned when a request names no properties (spec descriptions; line items by analogy).
DEFAULT_PROPERTIES: dict[str, list[str]] = {
    "companies": ["name", "domain"],
    "contacts": ["firstname", "lastname", "email"],
    "deals": ["dealname", "amount", "closedate", "pipeline", "dealstage"],
    "products": ["name", "description", "price"],
    "line_items": ["name", "quantity", "price", "amount", "hs_product_id"],
}
# Properties the free-text ``query`` of search looks at.
QUERY_PROPERTIES: dict[str, list[str]] = {
    "companies": ["name", "domain", "website", "phone"],
    "contacts": ["firstname", "lastname", "email", "phone", "company"],
    "deals": ["dealname"],
    "products": ["name", "description", "hs_sku"],
    "line_items": ["name", "hs_sku"],
}

FIELD_TYPE_FOR = {
    "string": "text",
    "number": "number",
    "date": "date",
    "datetime": "date",
    "enumeration": "select",
    "bool": "booleancheckbox",
    "phone_number": "phonenumber",
}
VALID_TYPES = set(FIELD_TYPE_FOR)
VALID_FIELD_TYPES = {
    "text", "textarea", "number", "date", "select", "radio", "checkbox", "booleancheckbox",
    "phonenumber", "file", "html", "calculation_equation",
}

# (name, type, label, hasUniqueValue, readOnlyValue)
_COMMON: list[tuple[str, str, str, bool, bool]] = [
    ("hs_object_id", "number", "Record ID", True, True),
    ("createdate", "datetime", "Create Date", False, True),
    ("hubspot_owner_id", "enumeration", "Owner", False, False),
]
_BUILTIN: dict[str, list[tuple[str, str, str, bool, bool]]] = {
    "companies": [
        ("name", "string", "Name", False, False),
        ("domain", "string", "Company Domain Name", False, False),
        ("website", "string", "Website URL", False, False),
        ("phone", "phone_number", "Phone Number", False, False),
        ("country", "string", "Country/Region", False, False),
        ("city", "string", "City", False, False),
        ("industry", "string", "Industry", False, False),
        ("description", "string", "Description", False, False),
        ("annualrevenue", "number", "Annual Revenue", False, False),
        ("numberofemployees", "number", "Number of Employees", False, False),
        ("hs_lastmodifieddate", "datetime", "Last Modified Date", False, True),
    ],
    "contacts": [
        ("firstname", "string", "First Name", False, False),
        ("lastname", "string", "Last Name", False, False),
        ("email", "string", "Email", True, False),
        ("phone", "phone_number", "Phone Number", False, False),
        ("company", "string", "Company Name", False, False),
        ("jobtitle", "string", "Job Title", False, False),
        ("lastmodifieddate", "datetime", "Last Modified Date", False, True),
    ],
    "deals": [
        ("dealname", "string", "Deal Name", False, False),
        ("amount", "number", "Amount", False, False),
        ("closedate", "datetime", "Close Date", False, False),
        ("pipeline", "string", "Pipeline", False, False),
        ("dealstage", "string", "Deal Stage", False, False),
        ("dealtype", "string", "Deal Type", False, False),
        ("description", "string", "Deal Description", False, False),
        ("deal_currency_code", "string", "Currency", False, False),
        ("hs_lastmodifieddate", "datetime", "Last Modified Date", False, True),
    ],
    "products": [
        ("name", "string", "Name", False, False),
        ("description", "string", "Description", False, False),
        ("price", "number", "Unit price", False, False),
        ("hs_sku", "string", "SKU", False, False),
        ("hs_cost_of_goods_sold", "number", "Unit cost", False, False),
        ("recurringbillingfrequency", "string", "Billing frequency", False, False),
        ("hs_recurring_billing_period", "string", "Term", False, False),
        ("hs_lastmodifieddate", "datetime", "Last Modified Date", False, True),
    ],
    "line_items": [
        ("name", "string", "Name", False, False),
        ("description", "string", "Description", False, False),
        ("quantity", "number", "Quantity", False, False),
        ("price", "number", "Unit price", False, False),
        ("amount", "number", "Net price", False, False),
        ("discount", "number", "Unit discount", False, False),
        ("hs_product_id", "number", "Product ID", False, False),
        ("hs_sku", "string", "SKU", False, False),
        ("recurringbillingfrequency", "string", "Billing frequency", False, False),
        ("hs_recurring_billing_period", "string", "Term", False, False),
        ("hs_recurring_billing_start_date", "date", "Billing start date", False, False),
        ("hs_tax_rate_group_id", "string", "Tax rate group", False, False),
        ("hs_lastmodifieddate", "datetime", "Last Modified Date", False, True),
    ],
}

# HUBSPOT_DEFINED default (unlabelled) association type ids: (from, to) -> typeId
DEFAULT_ASSOCIATION_TYPES: dict[tuple[str, str], int] = {
    ("contacts", "companies"): 279,
    ("companies", "contacts"): 280,
    ("deals", "contacts"): 3,
    ("contacts", "deals"): 4,
    ("deals", "companies"): 341,
    ("companies", "deals"): 342,
    ("deals", "line_items"): 19,
    ("line_items", "deals"): 20,
}
# Every HUBSPOT_DEFINED type id we know: typeId -> (from, to, label or None)
KNOWN_ASSOCIATION_TYPES: dict[int, tuple[str, str, str | None]] = {
    1: ("contacts", "companies", "Primary"),
    2: ("companies", "contacts", "Primary"),
    5: ("deals", "companies", "Primary"),
    6: ("companies", "deals", "Primary"),
    **{tid: (f, t, None) for (f, t), tid in DEFAULT_ASSOCIATION_TYPES.items()},
}
REVERSE_TYPE: dict[int, int] = {1: 2, 2: 1, 5: 6, 6: 5, 279: 280, 280: 279, 3: 4, 4: 3, 341: 342,
                                342: 341, 19: 20, 20: 19}


def canonical_type(object_type: str) -> str:
    """Map any accepted spelling (``deals``, ``0-3``, ``deal``) to the canonical plural name."""
    try:
        return _ALIASES[object_type.lower()]
    except KeyError:
        raise HubSpotHTTPError(
            400, f"Unable to infer object type from: {object_type}", "VALIDATION_ERROR"
        ) from None


def iso_ms(ts: dt.datetime) -> str:
    """HubSpot timestamps: UTC, millisecond precision, ``Z`` suffix."""
    return ts.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def property_definition(
    name: str,
    type_: str,
    label: str,
    *,
    field_type: str | None = None,
    group_name: str = "",
    has_unique_value: bool = False,
    read_only_value: bool = False,
    hubspot_defined: bool = True,
    description: str = "",
    options: list[dict[str, Any]] | None = None,
    created: dt.datetime | None = None,
) -> dict[str, Any]:
    """A ``Property`` as the properties API returns it."""
    ts = iso_ms(created or dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    return {
        "name": name,
        "label": label,
        "type": type_,
        "fieldType": field_type or FIELD_TYPE_FOR.get(type_, "text"),
        "description": description,
        "groupName": group_name,
        "options": options or [],
        "displayOrder": -1,
        "calculated": False,
        "externalOptions": False,
        "hasUniqueValue": has_unique_value,
        "hidden": False,
        "hubspotDefined": hubspot_defined,
        "formField": not read_only_value,
        "createdAt": ts,
        "updatedAt": ts,
        "archived": False,
        "modificationMetadata": {
            "archivable": not hubspot_defined,
            "readOnlyDefinition": hubspot_defined,
            "readOnlyValue": read_only_value,
        },
    }


def default_group(object_type: str) -> str:
    return f"{SINGULAR[object_type].replace('_', '')}information"


def builtin_properties(object_type: str) -> dict[str, dict[str, Any]]:
    group = default_group(object_type)
    out: dict[str, dict[str, Any]] = {}
    for name, type_, label, unique, read_only in _COMMON + _BUILTIN[object_type]:
        out[name] = property_definition(
            name, type_, label, group_name=group, has_unique_value=unique, read_only_value=read_only
        )
    return out


# HubSpot's other standard object types, which every portal has but this emulator holds no records of
# (alias -> canonical name). Published connectors read every type's property definitions when they
# discover their streams (airbyte-source-hubspot's schema loaders, tap-hubspot's tickets); these
# types answer with HubSpot's common properties only, and have no records, routes or associations.
UNMODELLED_TYPES: dict[str, str] = {
    alias: plural
    for plural, singular, type_id in [
        ("tickets", "ticket", "0-5"), ("calls", "call", "0-48"), ("emails", "email", "0-49"),
        ("meetings", "meeting", "0-47"), ("notes", "note", "0-46"), ("tasks", "task", "0-27"),
        ("leads", "lead", "0-136"), ("goal_targets", "goal_target", "0-74"), ("deal_splits", "deal_split", ""),
        ("forms", "form", ""),  # airbyte-source-hubspot's forms stream reads /properties/v2/form/properties
    ]
    for alias in (plural, singular, type_id) if alias
}


def unmodelled_properties(object_type: str) -> list[dict[str, Any]] | None:
    """The common property definitions of an unmodelled standard type, or None when it is not one."""
    plural = UNMODELLED_TYPES.get(object_type.lower())
    if plural is None:
        return None
    group = f"{plural.rstrip('s').replace('_', '')}information"
    last = ("hs_lastmodifieddate", "datetime", "Last Modified Date", False, True)
    return [property_definition(name, type_, label, group_name=group, has_unique_value=unique,
                                read_only_value=read_only)
            for name, type_, label, unique, read_only in [*_COMMON, last]]

