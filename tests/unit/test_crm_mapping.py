"""The CRM mapping reads exactly the canonical fields m3sh.yaml may name (issue #18).

The canonical sets are declared once (``m3sh.models.records``); the config enumerates them and
these tests hold the mapping to them in both directions: every canonical name reaches the m3ter
account or contract, and nothing the mapping writes escapes the config's control.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from m3sh.config import CrmSource, FieldOwnership
from m3sh.crm.hubspot import extract_hubspot
from m3sh.crm.salesforce import extract_salesforce
from m3sh.mapping.crm import (
    CONTRACT_ATTRIBUTES,
    M3TER_ACCOUNT_CUSTOM_FIELDS,
    M3TER_ACCOUNT_FIELDS,
    contract_values,
    desired_account,
    to_crm_account,
)
from m3sh.models.records import CANONICAL_ACCOUNT_FIELDS, CANONICAL_CONTRACT_FIELDS, CrmAccount, Customer

CRM_VALUES = {"name": "Acme Ltd", "domain": "acme.com", "email": "ap@acme.com", "currency": "EUR",
              "country": "DE", "owner": "Ada Lovelace", "po_number": "PO-1"}
START, END = dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, tzinfo=dt.UTC)


def _source(**kw: Any) -> CrmSource:
    return CrmSource.model_validate({"name": "sf", "type": "salesforce", "conn_id": "c", **kw})


def _customer() -> Customer:
    source = _source(account_fields={c: f"Crm_{c}__c" for c in CANONICAL_ACCOUNT_FIELDS})
    record = {f"Crm_{c}__c": v for c, v in CRM_VALUES.items()}
    return Customer(code="acme", records=[to_crm_account(record, source, crm_id="001", crm_object="Account")])


def test_every_canonical_account_field_is_read_from_its_mapped_crm_field() -> None:
    rec = _customer().records[0]
    assert {c: getattr(rec, c) for c in CANONICAL_ACCOUNT_FIELDS} == CRM_VALUES


def test_every_canonical_account_field_lands_on_the_m3ter_account_and_nothing_else_does() -> None:
    """Vice versa: the m3ter fields the sync writes are exactly the canonical fields' (plus crm_source)."""
    assert sorted([*M3TER_ACCOUNT_FIELDS.values(), *M3TER_ACCOUNT_CUSTOM_FIELDS.values()]) \
        == sorted(CANONICAL_ACCOUNT_FIELDS)
    created = desired_account(_customer(), None, FieldOwnership())
    custom = created.pop("customFields")
    assert set(created) == set(M3TER_ACCOUNT_FIELDS)
    assert set(custom) == {*M3TER_ACCOUNT_CUSTOM_FIELDS, "crm_source"}
    assert {M3TER_ACCOUNT_FIELDS[k]: v for k, v in created.items()} \
        | {M3TER_ACCOUNT_CUSTOM_FIELDS[k]: v for k, v in custom.items() if k != "crm_source"} == CRM_VALUES


@pytest.mark.parametrize("canonical", CANONICAL_ACCOUNT_FIELDS)
def test_each_canonical_ownership_key_decides_its_m3ter_field(canonical: str) -> None:
    """``ownership.fields.<canonical>: m3ter_wins`` keeps m3ter's value of that field and only that one
    (domain and owner were keyed by their custom field names before, so `domain:` did nothing)."""
    current = {"name": "Old", "emailAddress": "old@x.com", "currency": "USD", "purchaseOrderNumber": "PO-0",
               "customFields": {"crm_source": "sf", "crm_domain": "old.com", "crm_owner": "Grace", "country": "US"}}
    ownership = FieldOwnership.model_validate({"fields": {canonical: "m3ter_wins"}})
    update = desired_account(_customer(), current, ownership)
    written = {M3TER_ACCOUNT_FIELDS[k] for k in update if k != "customFields"}
    written |= {M3TER_ACCOUNT_CUSTOM_FIELDS[k] for k in update["customFields"] if k != "crm_source"}
    assert written == set(CANONICAL_ACCOUNT_FIELDS) - {canonical}


def test_contract_attributes_cover_the_canonical_contract_fields() -> None:
    assert tuple(CONTRACT_ATTRIBUTES) == CANONICAL_CONTRACT_FIELDS
    assert set(CONTRACT_ATTRIBUTES.values()) <= set(CrmAccount.model_fields)


def test_contract_values_follow_contract_fields_and_defaults() -> None:
    deal = {"renewal_on": "2027-03-31", "contract_start": "2026-04-01T00:00:00Z", "po_number": "PO-9",
            "contract_end": "2026-12-31"}
    hs = CrmSource.model_validate({"name": "hs", "type": "hubspot", "conn_id": "c",
                                   "contract_fields": {"end_date": "renewal_on"}})
    assert contract_values(deal, hs, where="deal 1") == {
        "contract_start": dt.date(2026, 4, 1), "contract_end": dt.date(2027, 3, 31), "po_number": "PO-9"}
    # a PO mapped on the account record wins; the deal's is then not read (no double source)
    with_po = hs.model_copy(update={"account_fields": {"po_number": "company_po"}})
    assert "po_number" not in contract_values(deal, with_po, where="deal 1")
    with pytest.raises(ValueError, match=r"deal 7: field 'renewal_on' \(crm.sources\[hs\].contract_fields.end_date\) "
                                         r"holds 'soon', not a date"):
        contract_values({"renewal_on": "soon"}, hs, where="deal 7")


class _FakeSalesforce:
    """Records SOQL; answers from per-object rows (enough for extract_salesforce's reads)."""

    def __init__(self, rows: dict[str, list[dict[str, Any]]]) -> None:
        self.rows = rows
        self.soql: list[str] = []

    def query_modified(self, sobject: str, fields: Sequence[str], start: dt.datetime,
                       end: dt.datetime) -> Iterator[dict[str, Any]]:
        self.soql.append(f"modified {sobject}: {fields}")
        return iter(self.rows.get(sobject, []) if sobject == "Account" else [])

    def query(self, soql: str, sobject: str = "query") -> Iterator[dict[str, Any]]:
        self.soql.append(soql)
        return iter(self.rows.get(sobject, []))


def test_salesforce_reads_the_contract_fields_it_is_told_to() -> None:
    source = _source(account_fields={"name": "Name"},
                     contract_fields={"start_date": "Billing_Start__c", "po_number": "Customer_PO__c"})
    sf = _FakeSalesforce({
        "Account": [{"Id": "001A", "Name": "Acme"}],
        "Contract": [{"Id": "800A", "AccountId": "001A", "Billing_Start__c": "2026-02-01", "EndDate": "2027-01-31",
                      "StartDate": "2025-01-01"}],
        "Opportunity": [{"Id": "006A", "AccountId": "001A", "Customer_PO__c": "PO-77", "PO_Number__c": "PO-old",
                         "StageName": "Closed Won"}],
    })
    [rec] = extract_salesforce(source, START, END, sf=sf)  # type: ignore[arg-type]
    assert (rec.contract_id, rec.contract_start, rec.contract_end, rec.po_number) == (
        "800A", dt.date(2026, 2, 1), dt.date(2027, 1, 31), "PO-77")
    contract_soql = next(q for q in sf.soql if "FROM Contract" in q)
    assert contract_soql.startswith("SELECT AccountId, Billing_Start__c, EndDate, Id, SystemModstamp FROM Contract")
    assert contract_soql.endswith("ORDER BY Billing_Start__c DESC")  # "latest" by the mapped start date
    assert next(q for q in sf.soql if "FROM Opportunity" in q).startswith(
        "SELECT AccountId, CloseDate, Customer_PO__c, Id, StageName, SystemModstamp FROM Opportunity")
    # a name that is not a field API name never reaches SOQL, even from an unvalidated source
    bad = source.model_copy(update={"contract_fields": {"start_date": "StartDate FROM Contract --"}})
    with pytest.raises(ValueError, match="are not Salesforce field API names"):
        extract_salesforce(bad, START, END, sf=sf)  # type: ignore[arg-type]


class _FakeHubSpot:
    """One company with two closed-won deals; records the properties asked for."""

    def __init__(self, deals: dict[str, dict[str, Any]]) -> None:
        self.deals = {k: {"id": k, "properties": v} for k, v in deals.items()}
        self.asked: dict[str, set[str]] = {}

    def search_modified(self, object_type: str, start: dt.datetime, end: dt.datetime,
                        props: Sequence[str]) -> list[dict[str, Any]]:
        self.asked.setdefault(object_type, set()).update(props)
        return [{"id": "9", "properties": {"name": "Acme"}}] if object_type == "companies" else []

    def get_associations(self, from_type: str, ids: Sequence[str], to_type: str) -> dict[str, list[str]]:
        return {"9": sorted(self.deals)} if (from_type, to_type) == ("companies", "deals") else {}

    def batch_read(self, object_type: str, ids: Sequence[str], props: Sequence[str]) -> dict[str, Any]:
        self.asked.setdefault(object_type, set()).update(props)
        return {i: self.deals[i] for i in ids} if object_type == "deals" else {}


def test_hubspot_reads_the_deal_properties_it_is_told_to() -> None:
    source = CrmSource.model_validate({
        "name": "hs", "type": "hubspot", "conn_id": "c", "account_fields": {"name": "name"},
        "contract_fields": {"start_date": "term_start", "end_date": "term_end", "po_number": "customer_po"}})
    hook = _FakeHubSpot({
        "1": {"dealstage": "closedwon", "term_start": "2025-01-01", "term_end": "2025-12-31", "customer_po": "PO-a",
              "contract_start": "2030-01-01"},
        "2": {"dealstage": "closedwon", "term_start": "2026-01-01", "term_end": "2026-12-31", "customer_po": "PO-b"},
    })
    [rec] = extract_hubspot(source, START, END, hook=hook)  # type: ignore[arg-type]
    # the latest won deal by the mapped start (deal 1's unmapped contract_start does not count)
    assert (rec.contract_id, rec.contract_start, rec.contract_end, rec.po_number) == (
        "2", dt.date(2026, 1, 1), dt.date(2026, 12, 31), "PO-b")
    assert {"term_start", "term_end", "customer_po"} <= hook.asked["deals"]
    assert not {"contract_start", "contract_end", "po_number"} & hook.asked["deals"]
