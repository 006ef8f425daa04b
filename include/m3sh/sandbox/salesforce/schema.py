"""The emulated org's metadata: which sObjects exist, their key prefixes and typed fields.

One table drives describe, SOQL validation, write validation and value formatting, so the
emulator cannot describe a field it then refuses to query (or the other way round).
Field names and types follow the Salesforce object reference (crm-erp.md C.4); the custom fields
(``__c``) are the ones a billing integration adds to an org: m3ter ids written back to the CRM and
an ``Invoice__c`` object keyed by the m3ter bill id.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Field types as reported by describe (``fields[].type``).
STRING_TYPES = frozenset({"string", "textarea", "picklist", "email", "url", "phone", "id", "reference"})
NUMBER_TYPES = frozenset({"double", "currency", "percent", "int"})


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str
    label: str = ""
    createable: bool = True
    updateable: bool = True
    nillable: bool = True
    external_id: bool = False
    unique: bool = False
    reference_to: str | None = None  # target sObject of a lookup
    relationship_name: str | None = None  # name used to traverse the lookup in SOQL
    picklist: tuple[str, ...] = ()
    filterable: bool = True  # false for anyType (a field history's OldValue/NewValue)

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "label": self.label or self.name.removesuffix("__c").replace("_", " "),
            "type": self.type,
            "soapType": _SOAP_TYPES.get(self.type, "xsd:string"),
            "length": 255 if self.type in STRING_TYPES - {"id", "reference", "textarea"} else 0,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "filterable": self.filterable,
            "sortable": self.type != "textarea",
            "externalId": self.external_id,
            "unique": self.unique,
            "idLookup": self.name == "Id" or self.external_id,
            "custom": self.custom,
            "calculated": False,
            "referenceTo": [self.reference_to] if self.reference_to else [],
            "relationshipName": self.relationship_name,
            # The emulator refuses values outside a picklist (store.py), except for currency codes.
            "restrictedPicklist": bool(self.picklist) and self.name != "CurrencyIsoCode",
            "picklistValues": [
                {"value": v, "label": v, "active": True, "defaultValue": False} for v in self.picklist
            ],
        }


_SOAP_TYPES = {
    "id": "tns:ID", "reference": "tns:ID", "boolean": "xsd:boolean", "date": "xsd:date",
    "datetime": "xsd:dateTime", "double": "xsd:double", "currency": "xsd:double",
    "percent": "xsd:double", "int": "xsd:int", "anyType": "xsd:anyType",
}


@dataclass(frozen=True)
class ObjectDef:
    name: str
    prefix: str
    label: str
    fields: dict[str, FieldDef] = field(default_factory=dict)
    required: tuple[str, ...] = ()  # required on create (beyond system fields)
    name_defaults_to_id: bool = False  # custom objects with a text Name field
    history_of: str | None = None  # a field history object: the sObject whose changes it records

    @property
    def custom(self) -> bool:
        return self.name.endswith("__c")

    def field(self, name: str) -> FieldDef | None:
        """Case-insensitive lookup, as SOQL and the REST API are case-insensitive on names."""
        return self._lower.get(name.lower())

    def relationship(self, name: str) -> FieldDef | None:
        lowered = name.lower()
        for f in self.fields.values():
            if f.relationship_name and f.relationship_name.lower() == lowered:
                return f
        return None

    @property
    def _lower(self) -> dict[str, FieldDef]:
        cache = self.__dict__.get("_lower_cache")
        if cache is None:
            cache = {k.lower(): v for k, v in self.fields.items()}
            object.__setattr__(self, "_lower_cache", cache)
        return cache

    def describe(self, version: str) -> dict[str, object]:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            **self.summary(version),
            "fields": [f.describe() for f in self.fields.values()],
            "childRelationships": [],
            "recordTypeInfos": [],
            "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
        }

    def summary(self, version: str) -> dict[str, object]:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            "name": self.name,
            "label": self.label,
            "labelPlural": self.label + "s",
            "keyPrefix": self.prefix,
            "custom": self.custom,
            # field history is written by Salesforce alone ("Supported Calls: describeSObjects(),
            # getDeleted(), getUpdated(), query(), retrieve()")
            "createable": self.history_of is None,
            "updateable": self.history_of is None,
            "deletable": self.history_of is None,
            "queryable": True,
            "searchable": True,
            "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
        }


def _ro(name: str, type_: str, **kw: object) -> FieldDef:
    """A field the API computes (system audit fields, formulas): readable, never writable."""
    return FieldDef(name, type_, createable=False, updateable=False, **kw)  # type: ignore[arg-type]


def _ref(name: str, target: str, rel: str, **kw: object) -> FieldDef:
    return FieldDef(name, "reference", reference_to=target, relationship_name=rel, **kw)  # type: ignore[arg-type]


_CURRENCY = FieldDef("CurrencyIsoCode", "picklist", picklist=("USD", "EUR", "GBP"))


def _system(owner: bool = True) -> list[FieldDef]:
    fields = [
        _ro("Id", "id", nillable=False),
        _ro("IsDeleted", "boolean", nillable=False),
        _ro("CreatedDate", "datetime", nillable=False),
        _ro("LastModifiedDate", "datetime", nillable=False),
        _ro("SystemModstamp", "datetime", nillable=False),
    ]
    if owner:
        fields.append(_ref("OwnerId", "User", "Owner"))
    return fields


_INVOICE_STATUSES = ("Draft", "Pending", "Approved", "Posted", "Paid", "Void")


def _last_invoice() -> list[FieldDef]:
    """The latest m3ter invoice as m3sh's Salesforce destination writes it onto Accounts and
    Opportunities (``account_fields`` / ``opportunity_fields`` defaults)."""
    return [
        FieldDef("M3ter_Last_Invoice__c", "string"),
        FieldDef("M3ter_Invoice_Status__c", "picklist", picklist=_INVOICE_STATUSES),
        FieldDef("M3ter_Last_Invoice_Date__c", "date"),
        FieldDef("M3ter_Last_Invoice_Amount__c", "currency"),
        # The payments step's default account/opportunity_payment_fields (m3sh's own custom field).
        FieldDef("M3ter_Invoice_Payment__c", "string"),
    ]


def _obj(name: str, prefix: str, label: str, fields: list[FieldDef], **kw: object) -> ObjectDef:
    return ObjectDef(name, prefix, label, {f.name: f for f in fields}, **kw)  # type: ignore[arg-type]


OBJECTS: dict[str, ObjectDef] = {
    o.name: o
    for o in [
        _obj("User", "005", "User", [
            *_system(owner=False),
            _ro("Name", "string"),
            FieldDef("FirstName", "string"),
            FieldDef("LastName", "string", nillable=False),
            FieldDef("Email", "email"),
            FieldDef("Username", "string"),
            FieldDef("IsActive", "boolean"),
        ], required=("LastName",)),
        _obj("Account", "001", "Account", [
            *_system(),
            FieldDef("Name", "string", nillable=False),
            FieldDef("AccountNumber", "string"),
            FieldDef("Type", "picklist", picklist=("Prospect", "Customer", "Partner", "Other")),
            FieldDef("Industry", "picklist"),
            _ref("ParentId", "Account", "Parent"),
            FieldDef("BillingStreet", "textarea"),
            FieldDef("BillingCity", "string"),
            FieldDef("BillingState", "string"),
            FieldDef("BillingPostalCode", "string"),
            FieldDef("BillingCountry", "string"),
            FieldDef("Phone", "phone"),
            FieldDef("Website", "url"),
            FieldDef("Description", "textarea"),
            _CURRENCY,
            FieldDef("Owner_Name__c", "string"),
            FieldDef("Billing_Email__c", "email"),
            FieldDef("M3ter_Account_Id__c", "string", external_id=True, unique=True),
            FieldDef("M3ter_Plan__c", "string"),
            *_last_invoice(),
        ], required=("Name",)),
        _obj("Contact", "003", "Contact", [
            *_system(),
            _ref("AccountId", "Account", "Account"),
            _ro("Name", "string"),
            FieldDef("FirstName", "string"),
            FieldDef("LastName", "string", nillable=False),
            FieldDef("Email", "email"),
            FieldDef("Phone", "phone"),
            FieldDef("Title", "string"),
            _CURRENCY,
        ], required=("LastName",)),
        _obj("Product2", "01t", "Product", [
            *_system(owner=False),
            FieldDef("Name", "string", nillable=False),
            FieldDef("ProductCode", "string"),
            FieldDef("Description", "textarea"),
            FieldDef("Family", "picklist"),
            FieldDef("IsActive", "boolean"),
            FieldDef("QuantityUnitOfMeasure", "picklist"),
            _CURRENCY,
        ], required=("Name",)),
        _obj("Contract", "800", "Contract", [
            *_system(),
            _ref("AccountId", "Account", "Account", nillable=False),
            _ro("ContractNumber", "string"),
            FieldDef("Name", "string"),
            FieldDef("StartDate", "date"),
            # The object reference: EndDate is "Read-only. Calculated end date of the contract ... by
            # adding the ContractTerm to the StartDate" (no Create/Update property); store.py derives it.
            FieldDef("EndDate", "date", createable=False, updateable=False),
            FieldDef("ContractTerm", "int"),
            FieldDef("Status", "picklist", picklist=("Draft", "In Approval Process", "Activated")),
            _ro("StatusCode", "picklist", picklist=("Draft", "InApproval", "Activated")),
            FieldDef("ActivatedDate", "datetime"),
            FieldDef("SpecialTerms", "textarea"),
            FieldDef("Description", "textarea"),
            _CURRENCY,
            FieldDef("M3ter_Contract_Id__c", "string", external_id=True, unique=True),
        ], required=("AccountId",)),
        _obj("Opportunity", "006", "Opportunity", [
            *_system(),
            FieldDef("Name", "string", nillable=False),
            _ref("AccountId", "Account", "Account"),
            _ref("ContractId", "Contract", "Contract"),
            FieldDef("StageName", "picklist", nillable=False, picklist=(
                "Prospecting", "Qualification", "Proposal/Price Quote", "Negotiation/Review",
                "Closed Won", "Closed Lost")),
            FieldDef("CloseDate", "date", nillable=False),
            FieldDef("Amount", "currency"),
            FieldDef("Probability", "percent"),
            _ro("IsClosed", "boolean"),
            _ro("IsWon", "boolean"),
            FieldDef("Type", "picklist", picklist=("New Business", "Existing Business")),
            _ro("HasOpportunityLineItem", "boolean"),
            FieldDef("Description", "textarea"),
            _CURRENCY,
            FieldDef("PO_Number__c", "string"),
            *_last_invoice(),
        ], required=("Name", "StageName", "CloseDate")),
        _obj("OpportunityLineItem", "00k", "Opportunity Product", [
            *_system(owner=False),
            _ref("OpportunityId", "Opportunity", "Opportunity", nillable=False, updateable=False),
            _ref("Product2Id", "Product2", "Product2", updateable=False),
            _ro("ProductCode", "string"),
            _ro("Name", "string"),
            FieldDef("Quantity", "double", nillable=False),
            FieldDef("UnitPrice", "currency"),
            FieldDef("ListPrice", "currency"),
            _ro("TotalPrice", "currency"),
            FieldDef("Discount", "percent"),
            FieldDef("ServiceDate", "date"),
            FieldDef("Description", "string"),
            _CURRENCY,
        ], required=("OpportunityId", "Product2Id", "Quantity", "UnitPrice")),
        _obj("Invoice__c", "a0X", "Invoice", [
            *_system(),
            FieldDef("Name", "string"),
            _ref("Account__c", "Account", "Account__r"),
            _ref("Opportunity__c", "Opportunity", "Opportunity__r"),
            FieldDef("M3ter_Bill_Id__c", "string", external_id=True, unique=True),
            FieldDef("Invoice_Number__c", "string"),
            FieldDef("Amount__c", "currency"),
            FieldDef("Currency__c", "string"),
            FieldDef("Status__c", "picklist", picklist=_INVOICE_STATUSES),
            FieldDef("Invoice_Date__c", "date"),
            FieldDef("Due_Date__c", "date"),
            # Written by the payments step from NetSuite (invoice_payment_fields defaults).
            FieldDef("Payment_Status__c", "string"),
            FieldDef("Amount_Remaining__c", "currency"),
        ], name_defaults_to_id=True),
    ]
}

# ---------------------------------------------------------------------------------- field history
# Field History Tracking is per-org configuration (Setup > Object Manager > Fields & Relationships >
# Set History Tracking, at most 20 fields per object). The emulated org tracks the fields m3sh maps
# and writes: the account fields of the demo config (name, website, email, currency, country,
# owner name), the write-back id and plan, the latest-invoice and payment fields, the contract dates
# and PO number, and the invoice's status and payment. Not tracked: Contract EndDate (Salesforce
# computes it; the history shows the ContractTerm or StartDate that moved it) and long text areas.
TRACKED_FIELDS: dict[str, tuple[str, ...]] = {
    "Account": ("Name", "Website", "Billing_Email__c", "CurrencyIsoCode", "BillingCountry", "Owner_Name__c",
                "M3ter_Account_Id__c", "M3ter_Plan__c", "M3ter_Last_Invoice__c", "M3ter_Invoice_Status__c",
                "M3ter_Last_Invoice_Date__c", "M3ter_Last_Invoice_Amount__c", "M3ter_Invoice_Payment__c"),
    "Contract": ("StartDate", "ContractTerm", "Status", "M3ter_Contract_Id__c"),
    "Opportunity": ("Name", "StageName", "CloseDate", "Amount", "PO_Number__c", "M3ter_Last_Invoice__c",
                    "M3ter_Invoice_Status__c", "M3ter_Last_Invoice_Date__c", "M3ter_Last_Invoice_Amount__c",
                    "M3ter_Invoice_Payment__c"),
    "Invoice__c": ("Status__c", "Amount__c", "Invoice_Number__c", "Due_Date__c", "Payment_Status__c",
                   "Amount_Remaining__c"),
}
# Object reference: StandardObjectNameHistory (AccountHistory, ContractHistory; the parent's id in
# <Object>Id), OpportunityFieldHistory for Opportunity (OpportunityHistory is its *stage* history,
# other fields, not modelled), and CustomObject__History for custom objects (the parent in ParentId).
# Their fields: Id, IsDeleted, the parent id, CreatedById, CreatedDate, Field (restricted picklist:
# the tracked fields and "created"), OldValue and NewValue (anyType: Sort, but not Filter). DataType
# (API 47.0+) is not modelled: the reference does not list its values. Field holds the changed
# field's API name; that Salesforce reports every field so (a standard lookup may appear under its
# relationship name) rests on the reference's prose, "The name of the field that was changed".
# Every history row's id starts 017, the key prefix commonly reported for field history rows (not in
# the object reference; nothing in m3sh depends on it).
HISTORY_OBJECTS: dict[str, tuple[str, str, str]] = {  # parent -> (history object, parent id field, relationship)
    "Account": ("AccountHistory", "AccountId", "Account"),
    "Contract": ("ContractHistory", "ContractId", "Contract"),
    "Opportunity": ("OpportunityFieldHistory", "OpportunityId", "Opportunity"),
    "Invoice__c": ("Invoice__History", "ParentId", "Parent"),
}
HISTORY_CREATED = "created"  # the Field value of the row written when a record is created


def _history(parent: str) -> ObjectDef:
    name, id_field, rel = HISTORY_OBJECTS[parent]
    return _obj(name, "017", f"{OBJECTS[parent].label} History", [
        _ro("Id", "id", nillable=False),
        _ro("IsDeleted", "boolean", nillable=False),
        _ref(id_field, parent, rel, nillable=False, createable=False, updateable=False),
        _ref("CreatedById", "User", "CreatedBy", createable=False, updateable=False),
        _ro("CreatedDate", "datetime", nillable=False),
        _ro("Field", "picklist", nillable=False, picklist=(*TRACKED_FIELDS[parent], HISTORY_CREATED)),
        _ro("OldValue", "anyType", filterable=False),
        _ro("NewValue", "anyType", filterable=False),
    ], history_of=parent)


OBJECTS.update({h.name: h for h in (_history(parent) for parent in HISTORY_OBJECTS)})

_LOWER_OBJECTS = {k.lower(): v for k, v in OBJECTS.items()}
# history rows are never a lookup's target, and all share one prefix
_BY_PREFIX = {o.prefix: o for o in OBJECTS.values() if o.history_of is None}
_PRISTINE = dict(OBJECTS)


def _install(obj: ObjectDef) -> None:
    OBJECTS[obj.name] = obj
    _LOWER_OBJECTS[obj.name.lower()] = obj
    if obj.history_of is None:
        _BY_PREFIX[obj.prefix] = obj


def redefine_field(sobject: str, name: str, type_: str | None) -> ObjectDef:
    """An org admin's metadata change: delete a field (``type_=None``) or change its type.

    The change is process-wide (the emulator runs one org per process) and applies to describe,
    SOQL and writes alike, as in Salesforce; :func:`restore_schema` (every reset) undoes it.
    Records keep their stored values, but the API no longer exposes a deleted field.
    """
    obj = get_object(sobject)
    if obj is None:
        raise ValueError(f"unknown sobject {sobject!r}")
    current = obj.field(name)
    if current is None:
        raise ValueError(f"{obj.name} has no field {name!r}")
    if current.name == "Id":
        raise ValueError("the Id field cannot be changed")
    fields = dict(obj.fields)
    if type_ is None:
        del fields[current.name]
    else:
        fields[current.name] = replace(current, type=type_)
    new = replace(obj, fields=fields)  # a new instance: its case-insensitive name cache starts empty
    _install(new)
    return new


def restore_schema() -> None:
    """Back to the metadata this module defines (undoes :func:`redefine_field`)."""
    for obj in _PRISTINE.values():
        _install(obj)


def get_object(name: str) -> ObjectDef | None:
    return _LOWER_OBJECTS.get(name.lower())


def object_for_id(record_id: str) -> ObjectDef | None:
    return _BY_PREFIX.get(record_id[:3])
