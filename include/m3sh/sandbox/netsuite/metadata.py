"""Record metadata in JSON Schema form: ``GET /services/rest/record/v1/metadata-catalog/{type}`` (issue 20).

NetSuite's "Working with JSON Schema Metadata" (help center section_1545129726.html) shows the
request (``Accept: application/schema+json``) and a shortened answer: a Draft 6 hyper-schema object
(``"$schema": "https://json-schema.org/draft-06/hyper-schema#"``) whose ``properties`` give each
field's ``title``, ``type``, ``format`` (``date``, ``date-time``, ``int64``), ``nullable`` and
``x-ns-custom-field``; "Record Collection Filtering" says the fields ``q`` can filter by are marked
``x-ns-filterable``. The metadata is per account and generated; no machine-readable instance is
published, so this rests on the prose and the one example. What the emulator serves: the fields it
stores for each record type (:mod:`m3sh.sandbox.netsuite.state`), references as ``nsResource``
objects, record links as arrays of ``nsLink`` (both schemas served too, as the answer's ``$ref``s
point at them), sublists inline. [modelled: a real account's references ``$ref`` the referenced
record type's schema, and its sublists a ``<type>-<sublist>Collection`` schema; the titles are
the emulator's.] The OpenAPI 3.0 form (``application/swagger+json``) is documented but not
implemented: refused with ``INVALID_HEADER``.
"""

from __future__ import annotations

from typing import Any

from m3sh.sandbox.netsuite.errors import NetSuiteApiError
from m3sh.sandbox.netsuite.record_query import filterable
from m3sh.sandbox.netsuite.state import ITEM_TYPES, PAYMENT_TYPES, RECORD_TYPES, TRANSACTION_TYPES

SCHEMA_JSON = "application/schema+json"
SWAGGER_JSON = "application/swagger+json"
CATALOG = "/services/rest/record/v1/metadata-catalog"
DRAFT6 = "https://json-schema.org/draft-06/hyper-schema#"


def _s(title: str) -> dict[str, Any]:
    return {"title": title, "type": "string", "nullable": True}


def _b(title: str) -> dict[str, Any]:
    return {"title": title, "type": "boolean", "nullable": True}


def _n(title: str) -> dict[str, Any]:
    return {"title": title, "type": "number", "format": "double", "nullable": True}


def _d(title: str) -> dict[str, Any]:
    return {"title": title, "type": "string", "format": "date", "nullable": True}


def _dt(title: str) -> dict[str, Any]:
    return {"title": title, "type": "string", "format": "date-time", "nullable": True}


def _ref(title: str) -> dict[str, Any]:
    return {"title": title, "type": "object", "$ref": f"{CATALOG}/nsResource"}


def _sublist(title: str, line: dict[str, Any]) -> dict[str, Any]:
    return {"title": title, "type": "object", "properties": {
        "links": _links(), "count": {"title": "Count", "type": "integer", "format": "int64"},
        "hasMore": _b("Has More"), "offset": {"title": "Offset", "type": "integer", "format": "int64"},
        "totalResults": {"title": "Total Results", "type": "integer", "format": "int64"},
        "items": {"title": "Items", "type": "array", "items": {"type": "object", "properties": line}}}}


def _links() -> dict[str, Any]:
    return {"title": "Links", "type": "array", "readOnly": True, "items": {"$ref": f"{CATALOG}/nsLink"}}


_BASE = {"links": _links(), "id": {"title": "Internal ID", "type": "string"}, "refName": _s("Reference Name"),
         "externalId": _s("External ID"), "createdDate": _dt("Date Created"),
         "lastModifiedDate": _dt("Last Modified Date")}
_LINE = {"line": {"title": "Line", "type": "integer", "format": "int64"}, "item": _ref("Item"),
         "quantity": _n("Quantity"), "rate": _n("Rate"), "amount": _n("Amount"), "description": _s("Description"),
         "price": _ref("Price Level"), "taxCode": _ref("Tax Code"), "isTaxable": _b("Taxable"),
         "units": _ref("Units"), "revRecStartDate": _d("Rev. Rec. Start Date"),
         "revRecEndDate": _d("Rev. Rec. End Date"), "department": _ref("Department"), "class": _ref("Class"),
         "location": _ref("Location")}
_PROPERTIES: dict[str, dict[str, Any]] = {
    "customer": {
        "entityId": _s("Customer ID"), "companyName": _s("Company Name"), "isPerson": _b("Type is Individual"),
        "firstName": _s("First Name"), "lastName": _s("Last Name"), "email": _s("Email"), "phone": _s("Phone"),
        "subsidiary": _ref("Primary Subsidiary"), "currency": _ref("Currency"), "terms": _ref("Terms"),
        "parent": _ref("Child Of"), "isInactive": _b("Inactive"), "comments": _s("Comments"), "url": _s("Web Address"),
        "defaultAddress": _s("Default Address"), "creditLimit": _n("Credit Limit"), "entityStatus": _ref("Status"),
        "category": _ref("Category"), "salesRep": _ref("Sales Rep"), "dateCreated": _dt("Date Created"),
        "balance": _n("Balance"), "overdueBalance": _n("Overdue Balance"),
        "addressBook": {"title": "Address Book", "type": "object"},
    },
    "transaction": {
        "tranId": _s("Document Number"), "entity": _ref("Customer"), "subsidiary": _ref("Subsidiary"),
        "currency": _ref("Currency"), "exchangeRate": _n("Exchange Rate"), "tranDate": _d("Date"),
        "dueDate": _d("Due Date"), "startDate": _d("Start Date"), "endDate": _d("End Date"),
        "postingPeriod": _ref("Posting Period"), "terms": _ref("Terms"), "memo": _s("Memo"),
        "otherRefNum": _s("PO #"), "createdFrom": _ref("Created From"), "department": _ref("Department"),
        "class": _ref("Class"), "location": _ref("Location"), "email": _s("Email"),
        "billingAddress": {"title": "Billing Address", "type": "object"}, "salesRep": _ref("Sales Rep"),
        "account": _ref("Account"), "status": _ref("Status"), "total": _n("Total"), "subtotal": _n("Subtotal"),
        "taxTotal": _n("Tax"), "discountTotal": _n("Discount"), "amountPaid": _n("Amount Paid"),
        "amountRemaining": _n("Amount Remaining"), "item": _sublist("Items", _LINE),
    },
    "item": {
        "itemId": _s("Item Name/Number"), "displayName": _s("Display Name/Code"), "description": _s("Description"),
        "salesDescription": _s("Sales Description"), "subsidiary": _ref("Subsidiary"),
        "includeChildren": _b("Include Children"), "isInactive": _b("Inactive"),
        "incomeAccount": _ref("Income Account"), "basePrice": _n("Base Price"),
    },
    "subsidiary": {"name": _s("Name"), "country": _s("Country"), "currency": _ref("Currency"),
                   "isInactive": _b("Inactive")},
    "currency": {"name": _s("Name"), "symbol": _s("ISO Code"), "isBaseCurrency": _b("Is Base Currency"),
                 "exchangeRate": _n("Default Exchange Rate")},
    "payment": {"customer": _ref("Customer"), "payment": _n("Payment Amount"), "tranDate": _d("Date"),
                "currency": _ref("Currency"), "status": _ref("Status")},
}
# The two schemas the record schemas ``$ref`` (reference objects and HATEOAS links).
SHARED: dict[str, dict[str, Any]] = {
    "nsLink": {"type": "object", "properties": {"rel": _s("Relation"), "href": _s("Link")}, "$schema": DRAFT6},
    "nsResource": {"type": "object", "properties": {
        "id": {"title": "Internal identifier", "type": "string"}, "refName": _s("Reference Name"),
        "externalId": _s("External identifier"), "links": _links()}, "$schema": DRAFT6},
}


def _kind(record_type: str) -> str:
    if record_type in TRANSACTION_TYPES:
        return "transaction"
    if record_type in ITEM_TYPES:
        return "item"
    if record_type in PAYMENT_TYPES:
        return "payment"
    return record_type


def record_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of a record type (or of ``nsLink`` / ``nsResource``); 404 otherwise."""
    if name in SHARED:
        return SHARED[name]
    if name not in RECORD_TYPES:
        raise NetSuiteApiError(404, "INVALID_REQUEST", f"Record type '{name}' does not exist.",
                               url_path=f"{CATALOG}/{name}")
    properties = {**_BASE, **_PROPERTIES[_kind(name)]}
    if name in ("subsidiary", "currency"):
        properties.pop("createdDate")  # reference data: the emulator keeps no dates on it
        properties.pop("lastModifiedDate")
    return {"type": "object", "properties": properties,
            "x-ns-filterable": list(filterable(name, set(TRANSACTION_TYPES))), "$schema": DRAFT6}


def check_accept(accept: str, name: str) -> None:
    """Only the JSON Schema form is served; the OpenAPI form and anything else are refused."""
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if SCHEMA_JSON in types:
        return
    if SWAGGER_JSON in types:
        raise NetSuiteApiError(400, "INVALID_HEADER", "Record metadata in OpenAPI 3.0 form (Accept: "
                               "application/swagger+json) is documented by NetSuite but not implemented by the m3sh "
                               "sandbox; ask for application/schema+json.", header="Accept",
                               url_path=f"{CATALOG}/{name}")
    raise NetSuiteApiError(400, "INVALID_HEADER", f"Record metadata is served as {SCHEMA_JSON} or {SWAGGER_JSON}; "
                           f"the Accept header asks for '{accept}'.", header="Accept", url_path=f"{CATALOG}/{name}")
