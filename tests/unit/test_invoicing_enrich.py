"""Enrichment rules: custom fields, subsidiary fallback, PO precedence, CRM link, required fields,
NetSuite item mapping and the content fingerprint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from m3sh.config import InvoicingConfig, parse_config
from m3sh.crm.links import SourceLinks
from m3sh.invoicing.enrich import Enricher, crm_link, enrich_bill
from m3sh.invoicing.models import CrmInfo, EnrichmentError
from m3sh.invoicing.netsuite import invoice_body, item_for


def m3ter_bill(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "bill-1", "version": 2, "accountId": "acc-1", "accountCode": "acme", "currency": "EUR",
        "billDate": "2026-11-01", "dueDate": "2026-12-01", "startDate": "2026-10-01", "endDate": "2026-11-01",
        "status": "APPROVED", "locked": False, "sequentialInvoiceNumber": "INV-000007", "billTotal": 459.42,
        "lineItems": [
            {"lineItemType": "USAGE", "description": "Usage: API calls", "quantity": 300.0,
             "averageUnitPrice": 0.0014, "subtotal": 0.42, "sequenceNumber": 2, "productCode": "api_platform"},
            {"lineItemType": "STANDING_CHARGE", "description": "Standing charge", "quantity": 1.0,
             "averageUnitPrice": 459.0, "subtotal": 459.0, "sequenceNumber": 1},
        ],
    }
    base.update(kw)
    return base


def account(**custom: Any) -> dict[str, Any]:
    return {"id": "acc-1", "code": "acme", "name": "Acme GmbH", "emailAddress": "ap@acme.example",
            "currency": "EUR", "customFields": {"subsidiary": "", "tax_code": "", **custom}}


TWO_SOURCES = """
crm:
  sources:
    - {name: salesforce, type: salesforce, conn_id: s, priority: 10}
    - {name: hubspot, type: hubspot, conn_id: h, priority: 20}
"""
CFG = InvoicingConfig(subsidiary_by_currency={"EUR": "eu"}, required_enrichment=["subsidiary"])


def test_lines_are_ordered_and_custom_fields_win_over_currency_fallback() -> None:
    eb = enrich_bill(m3ter_bill(), account(subsidiary="nl", tax_code="VAT21"), CrmInfo(), CFG)
    assert [li.line_type for li in eb.lines] == ["STANDING_CHARGE", "USAGE"]
    assert eb.subsidiary == "nl" and eb.tax_code == "VAT21"
    assert eb.erp_total == 459.42
    assert enrich_bill(m3ter_bill(), account(), CrmInfo(), CFG).subsidiary == "eu"


def test_missing_required_enrichment_names_bill_field_and_fix() -> None:
    cfg = InvoicingConfig(required_enrichment=["subsidiary", "po_number"])
    with pytest.raises(EnrichmentError) as err:
        enrich_bill(m3ter_bill(currency="GBP"), account(), CrmInfo(), cfg)
    assert err.value.bill_id == "bill-1"
    assert "missing subsidiary" in err.value.reason and "missing po_number" in err.value.reason
    assert "subsidiary_by_currency" in err.value.reason


def test_po_precedence_bill_then_account_then_crm() -> None:
    crm = CrmInfo(source="salesforce", account_id="001x", po_number="PO-CRM", owner="Ada")
    assert enrich_bill(m3ter_bill(purchaseOrderNumber="PO-BILL"), account(), crm, CFG).crm.po_number == "PO-BILL"
    acc = {**account(), "purchaseOrderNumber": "PO-ACC"}
    assert enrich_bill(m3ter_bill(), acc, crm, CFG).crm.po_number == "PO-ACC"
    eb = enrich_bill(m3ter_bill(), account(), crm, CFG)
    assert eb.crm.po_number == "PO-CRM" and eb.crm.owner == "Ada"


def test_fingerprint_ignores_approval_and_locking_but_not_content() -> None:
    a = enrich_bill(m3ter_bill(), account(), CrmInfo(), CFG)
    b = enrich_bill(m3ter_bill(status="APPROVED", locked=True, version=5), account(), CrmInfo(), CFG)
    assert a.fingerprint == b.fingerprint
    changed = m3ter_bill()
    changed["lineItems"][0] = {**changed["lineItems"][0], "quantity": 301.0, "subtotal": 0.4214}
    assert enrich_bill(changed, account(), CrmInfo(), CFG).fingerprint != a.fingerprint


def test_crm_link_prefers_external_mappings_then_custom_fields() -> None:
    links = SourceLinks(parse_config(TWO_SOURCES).crm.sources)
    mappings = [{"externalSystem": "hubspot", "externalTable": "companies", "externalId": "9000000001"}]
    assert crm_link(account(crm_id="0015g00000ABCDEFGH"), mappings, links) == ("hubspot", "9000000001")
    assert crm_link(account(crm_source="salesforce", crm_id="0015g00000ABCDEFGH"), [], links) == (
        "salesforce", "0015g00000ABCDEFGH")
    assert crm_link(account(crm_source="hubspot", crm_id="9000000002"), [], links) == ("hubspot", "9000000002")
    assert crm_link(account(), [], links) is None
    # no sources configured: the id's shape still tells the CRM
    assert crm_link(account(crm_id="9000000003"), [], SourceLinks([])) == ("hubspot", "9000000003")


def test_crm_link_is_the_best_priority_source_of_several_orgs() -> None:
    """Two orgs of one CRM: the link names the source (its org), best priority first; a mapping of a
    source no longer configured (retired) or disabled is not a link."""
    cfg = parse_config(TWO_SOURCES.replace("    - {name: hubspot, type: hubspot, conn_id: h, priority: 20}\n",
                                           "    - {name: sf_acme, type: salesforce, conn_id: a, priority: 5}\n"))
    links = SourceLinks(cfg.crm.sources)
    mappings = [{"externalSystem": "salesforce", "externalTable": "Account", "externalId": "001A"},
                {"externalSystem": "sf_acme", "externalTable": "Account", "externalId": "001B"},
                {"externalSystem": "sf_retired", "externalTable": "Account", "externalId": "001C"}]
    assert crm_link(account(), mappings, links) == ("sf_acme", "001B")
    assert crm_link(account(), [mappings[2]], links) is None
    disabled = SourceLinks([s.model_copy(update={"enabled": s.name != "sf_acme"}) for s in cfg.crm.sources])
    assert crm_link(account(), mappings, disabled) == ("salesforce", "001A")


def test_netsuite_item_map_by_product_then_line_type_then_default() -> None:
    cfg = parse_config("""
invoicing:
  destinations:
    - {name: ns, type: netsuite, conn_id: c, subsidiary_id: "3", default_item_id: "900",
       item_map: {api_platform: "501", STANDING_CHARGE: "502"}}
""")
    dest = cfg.invoicing.destinations[0]
    eb = enrich_bill(m3ter_bill(purchaseOrderNumber="PO-1"), account(tax_code="T1", department="7"), CrmInfo(), CFG)
    assert [item_for(dest, li) for li in eb.lines] == ["502", "501"]
    body = invoice_body(dest, eb, "42", "2")
    assert body["entity"] == {"id": "42"} and body["subsidiary"] == {"id": "3"}
    assert body["otherRefNum"] == "PO-1" and body["department"] == {"id": "7"}
    assert [li["amount"] for li in body["item"]["items"]] == [459.0, 0.42]
    assert all(li["taxCode"] == {"id": "T1"} for li in body["item"]["items"])
    from m3sh.invoicing.models import BillLine

    assert item_for(dest, BillLine(line_type="BALANCE_CONSUMED", amount=-5)) == "900"


class FakeM3ter:
    def __init__(self) -> None:
        self.accounts = {"acc-1": account(crm_source="salesforce", crm_id="0015g00000ABCDEFGH"),
                         "acc-2": {**account(), "id": "acc-2", "code": "nocrm", "currency": "GBP"}}

    def get_account(self, entity_id: str) -> dict[str, Any]:
        return self.accounts[entity_id]

    def list_external_mappings(self) -> list[dict[str, Any]]:
        return []


class FakeReader:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def read(self, ids: Sequence[str]) -> dict[str, CrmInfo]:
        self.calls.append(list(ids))
        return {i: CrmInfo(source="salesforce", account_id=i, owner="Grace", po_number="PO-9") for i in ids}


def test_enricher_reads_each_crm_once_and_sets_aside_bad_bills() -> None:
    cfg = parse_config("invoicing: {subsidiary_by_currency: {EUR: eu}}")
    reader = FakeReader()
    enricher = Enricher(cfg, FakeM3ter(), readers={"salesforce": reader})
    bills = [m3ter_bill(), m3ter_bill(id="bill-2"), m3ter_bill(id="bill-3", accountId="acc-2", currency="GBP")]
    done, errors = enricher.enrich(bills)
    assert reader.calls == [["0015g00000ABCDEFGH"]]
    assert [b.bill_id for b in done] == ["bill-1", "bill-2"]
    assert done[0].crm.owner == "Grace" and done[0].crm.po_number == "PO-9"
    assert [(e.bill_id, e.account_code) for e in errors] == [("bill-3", "nocrm")]
