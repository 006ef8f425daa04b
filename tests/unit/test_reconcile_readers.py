"""Reconciliation's per-type readers (beside each destination's and CRM's delivery code) on fake
clients, the HubSpot deal rule, which destination takes which bill, and the reconcile operators'
arguments and wiring. The sandbox runs are tests/integration/test_reconcile_operators.py and
tests/integration/dags/test_reconcile_dag.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from m3sh.config import (
    CrmSource,
    HubSpotDestination,
    NetSuiteDestination,
    S3Destination,
    SalesforceDestination,
)
from m3sh.invoicing.models import BillLine, CrmInfo, EnrichedBill
from m3sh.invoicing.reconcile import ExpectedBill, compare_deals

B1 = "11111111-1111-4111-8111-111111111111"
B2 = "22222222-2222-4222-8222-222222222222"
B3 = "33333333-3333-4333-8333-333333333333"
REPO = Path(__file__).resolve().parents[2]


def _bill(bill_id: str = B1, *, source: str = "hubspot", source_name: str | None = None, deal: str | None = "77",
          amount: float = 100.0, bill_date: str = "2026-11-01", invoice: str | None = "INV-000010") -> EnrichedBill:
    return EnrichedBill(bill_id=bill_id, invoice_number=invoice, account_id="a-1", account_code="acme",
                        account_name="Acme", currency="USD", bill_date=bill_date, total=amount,
                        lines=[BillLine(line_type="STANDING_CHARGE", amount=amount)],
                        crm=CrmInfo(source=source, source_name=source_name or source, account_id="c-1",
                                    opportunity_id=deal))


# ------------------------------------------------------------------------------------- readers
class FakeSuiteQL:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.queries: list[str] = []

    def suiteql(self, query: str) -> Iterator[dict[str, Any]]:
        self.queries.append(query)
        return iter(self.rows)


def test_netsuite_reader_reads_invoices_and_credit_memos_with_iso_currency() -> None:
    from m3sh.invoicing.netsuite import read_transactions

    rows = [{"id": "1", "externalid": B1, "type": "CustInvc", "foreigntotal": "10.00", "currency": "USD"},
            {"id": "2", "externalid": f"{B1}:cm:f", "type": "CustCred", "foreigntotal": "-2.00", "currency": "USD"}]
    hook = FakeSuiteQL(rows)
    dest = NetSuiteDestination(type="netsuite", name="ns", conn_id="ns", subsidiary_id="1", default_item_id="5")
    assert read_transactions(dest, hook) == rows  # type: ignore[arg-type]
    (query,) = hook.queries
    assert "'CustInvc', 'CustCred'" in query and "BUILTIN.DF(t.currency) AS currency" in query


class FakeSoql:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.queries: list[tuple[str, str]] = []

    def query(self, soql: str, sobject: str = "query") -> Iterator[dict[str, Any]]:
        self.queries.append((soql, sobject))
        return iter(self.rows)


def test_salesforce_reader_keys_invoice_records_by_the_external_id_field() -> None:
    from m3sh.invoicing.salesforce import read_invoices

    sf = FakeSoql([{"Bill__c": B1, "Amount__c": 12.5, "Currency__c": "USD", "Status__c": "Posted"},
                   {"Bill__c": None, "Amount__c": 1.0}])  # a record m3sh did not write
    dest = SalesforceDestination(type="salesforce", name="sf", invoice_object="Inv__c", external_id_field="Bill__c")
    assert read_invoices(dest, sf) == {B1: {"total": 12.5, "currency": "USD", "status": "Posted"}}
    assert sf.queries == [("SELECT Bill__c, Amount__c, Currency__c, Status__c FROM Inv__c", "Inv__c")]
    hostile = SalesforceDestination(type="salesforce", name="sf", invoice_object="Inv__c WHERE Id != null")
    with pytest.raises(ValueError, match="not Salesforce API names"):
        read_invoices(hostile, sf)


class FakeStorage:
    def __init__(self, objects: dict[str, Any]) -> None:
        self.objects = objects
        self.read: list[str] = []

    def get_json(self, key: str) -> Any:
        self.read.append(key)
        return self.objects.get(key)


def test_s3_reader_reads_each_bills_archived_json_at_its_dated_key() -> None:
    from m3sh.invoicing.s3archive import archive_json, archive_keys, read_archived

    dest = S3Destination(type="s3", name="archive", bucket="b", prefix="invoices/")
    bill = _bill(B1, amount=42.0)
    storage = FakeStorage({archive_keys(dest, B1, bill.bill_date)[0]: archive_json(bill)})
    found = read_archived(dest, {B1: bill.bill_date, B2: "2026-10-05"}, storage)  # type: ignore[arg-type]
    assert found == {B1: {"total": 42.0, "currency": "USD"}}
    assert storage.read == ["invoices/year=2026/month=11/day=01/" + B1 + ".json",
                            "invoices/year=2026/month=10/day=05/" + B2 + ".json"]


class FakeHubSpot:
    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records = records
        self.calls: list[tuple[str, list[str], list[str]]] = []

    def batch_read(self, object_type: str, ids: list[str], properties: list[str]) -> dict[str, dict[str, Any]]:
        self.calls.append((object_type, list(ids), list(properties)))
        return {i: self.records[i] for i in ids if i in self.records}

    def iter_objects(self, object_type: str, properties: list[str]) -> Iterator[dict[str, Any]]:
        self.calls.append((object_type, [], list(properties)))
        return iter(self.records.values())


def test_hubspot_reader_reads_the_deal_property_and_parses_what_delivery_wrote() -> None:
    from m3sh.invoicing.hubspot import parse_summary, read_deal_invoices, summary_value

    bill = _bill(B1, amount=1234.5)
    hook = FakeHubSpot({"77": {"id": "77", "properties": {"inv": summary_value(bill)}},
                        "78": {"id": "78", "properties": {"inv": None}}})
    dest = HubSpotDestination(type="hubspot", name="hs", deal_property="inv")
    shown = read_deal_invoices(dest, ["78", "77", "79", "77"], hook)
    assert shown == {"77": summary_value(bill), "78": None}  # 79: gone from HubSpot
    assert hook.calls == [("deals", ["77", "78", "79"], ["inv"])]
    assert parse_summary(shown["77"]) == {"invoice": "INV-000010", "date": "2026-11-01", "total": 1234.5,
                                          "currency": "USD", "bill_id": B1}
    assert parse_summary("renewal call on Monday") is None and parse_summary(None) is None
    assert read_deal_invoices(dest, [], hook) == {}


def test_crm_account_readers_return_write_back_id_and_currency_per_record() -> None:
    from m3sh.crm.hubspot import read_account_links as read_hubspot
    from m3sh.crm.salesforce import read_account_links as read_salesforce

    sf_source = CrmSource(name="sf", type="salesforce", conn_id="sf", write_back_field="M3__c",
                          account_fields={"currency": "CurrencyIsoCode"})
    sf = FakeSoql([{"Id": "001A", "M3__c": "m-1", "CurrencyIsoCode": "EUR"}])
    assert read_salesforce(sf_source, sf) == {"001A": {"m3ter_id": "m-1", "currency": "EUR"}}  # type: ignore[arg-type]
    assert sf.queries == [("SELECT Id, M3__c, CurrencyIsoCode FROM Account", "Account")]
    bare = CrmSource(name="sf", type="salesforce", conn_id="sf")
    assert read_salesforce(bare, FakeSoql([{"Id": "001B"}])) == {  # type: ignore[arg-type]
        "001B": {"m3ter_id": None, "currency": None}}

    hs_source = CrmSource(name="hs", type="hubspot", conn_id="hs", write_back_field="m3_id",
                          account_fields={"currency": "billing_currency"})
    hook = FakeHubSpot({"9": {"id": "9", "properties": {"m3_id": "m-2", "billing_currency": "USD"}}})
    assert read_hubspot(hs_source, hook) == {"9": {"m3ter_id": "m-2", "currency": "USD"}}  # type: ignore[arg-type]
    assert hook.calls == [("companies", [], ["m3_id", "billing_currency"])]


# ---------------------------------------------------------------------------------- HubSpot rule
def _expected(bill_id: str, deal: str, bill_date: str, invoice: str, total: float = 10.0) -> ExpectedBill:
    return ExpectedBill(bill_id, "acme", "USD", total, bill_date=bill_date, invoice=invoice, crm_record=deal)


def test_a_deal_must_show_its_latest_bill_unless_it_shows_a_later_one() -> None:
    expected = {B1: _expected(B1, "77", "2026-10-01", "INV-1"), B2: _expected(B2, "77", "2026-11-01", "INV-2"),
                B3: _expected(B3, "88", "2026-11-01", "INV-3")}
    shows = {"bill_id": B2, "invoice": "INV-2", "date": "2026-11-01", "total": 10.0, "currency": "USD"}
    findings, deals = compare_deals("hs", expected, {"77": shows, "88": None})
    assert deals == 2  # B1 was superseded on deal 77 by B2 and is not checked
    assert [(f.check, f.bill_id) for f in findings] == [("missing", B3)]
    assert "deal 88 shows no m3sh invoice" in findings[0].detail

    older = {**shows, "bill_id": B1, "invoice": "INV-1", "date": "2026-10-01"}
    later = {**shows, "bill_id": "b-next", "invoice": "INV-9", "date": "2026-12-01"}
    wrong = {**shows, "total": 11.0, "currency": "EUR"}
    assert [(f.check, f.detail) for f in compare_deals("hs", expected, {"77": older, "88": later})[0]] == [
        ("missing", "HubSpot deal 77 shows invoice INV-1 of 2026-10-01")]
    assert {(f.check, f.expected, f.actual) for f in compare_deals("hs", expected, {"77": wrong, "88": later})[0]} \
        == {("amount_mismatch", "10.00", "11.00"), ("currency_mismatch", "USD", "EUR")}
    gone = compare_deals("hs", expected, {"88": later})[0]
    assert [(f.check, f.bill_id) for f in gone] == [("missing", B2)] and "not found" in gone[0].detail


def test_which_destination_takes_which_bill() -> None:
    from m3sh.invoicing.reconcile_run import delivered_to

    sf = SalesforceDestination(type="salesforce", name="sf")
    sf_acme = SalesforceDestination(type="salesforce", name="sf2", crm_source="sf_acme")
    hs = HubSpotDestination(type="hubspot", name="hs")
    archive = S3Destination(type="s3", name="archive", bucket="b")
    assert delivered_to(sf, _bill(source="salesforce")) and not delivered_to(sf, _bill(source="hubspot"))
    assert not delivered_to(sf_acme, _bill(source="salesforce")) and delivered_to(
        sf_acme, _bill(source="salesforce", source_name="sf_acme"))
    assert delivered_to(hs, _bill()) and not delivered_to(hs, _bill(deal=None))
    assert not delivered_to(hs, _bill(source="salesforce"))
    assert delivered_to(archive, _bill(source="salesforce")) and delivered_to(archive, _bill(deal=None))


# ------------------------------------------------------------------------------------ operators
def test_operators_need_their_arguments_inline_or_a_config_and_validate_them() -> None:
    from m3sh.config import M3shConfig
    from m3sh.operators.reconcile import (
        M3terReconcileAccountsOperator,
        M3terReconcileBillsOperator,
        ReconcileReportOperator,
    )

    ns = {"type": "netsuite", "name": "ns", "conn_id": "ns", "subsidiary_id": "1", "default_item_id": "5"}
    with pytest.raises(ValueError, match="bucket"):
        M3terReconcileBillsOperator(task_id="b", destinations=[ns])
    with pytest.raises(ValueError, match="destinations"):
        M3terReconcileBillsOperator(task_id="b", bucket="x")
    with pytest.raises(ValueError, match="invalid destination"):
        M3terReconcileBillsOperator(task_id="b", destinations=[{"type": "netsuite", "name": "ns"}], bucket="x")
    with pytest.raises(ValueError, match="is a name"):
        M3terReconcileBillsOperator(task_id="b", destinations=["ns"], bucket="x")
    with pytest.raises(ValueError, match="invalid arguments"):
        M3terReconcileBillsOperator(task_id="b", destinations=[ns], bill_states=["PAID"], bucket="x")
    op = M3terReconcileBillsOperator(task_id="b", destinations=[ns], bucket="x", lookback_days="{{ params.d }}")
    assert isinstance(op.destinations[0], NetSuiteDestination) and op.route_all
    assert "lookback_days" in op.template_fields

    cfg = M3shConfig(invoicing={"destinations": [ns, {**ns, "name": "off", "enabled": False}]})
    from_config = M3terReconcileBillsOperator(task_id="b2", config=cfg)
    assert [d.name for d in from_config.destinations] == ["ns"] and not from_config.route_all
    with pytest.raises(ValueError, match="not both"):
        M3terReconcileBillsOperator(task_id="b3", config=cfg, bill_states=["APPROVED"])

    with pytest.raises(ValueError, match="crm_sources"):
        M3terReconcileAccountsOperator(task_id="a", bucket="x")
    with pytest.raises(ValueError, match="invalid crm_sources"):
        M3terReconcileAccountsOperator(task_id="a", crm_sources=[{"name": "x", "type": "pipedrive"}], bucket="x")

    with pytest.raises(ValueError, match=r"accounts=\.\.\. and/or bills"):
        ReconcileReportOperator(task_id="r", bucket="x")
    with pytest.raises(ValueError, match="invalid alert_channels"):
        ReconcileReportOperator(task_id="r", bills="{{ x }}", bucket="x", alert_channels=[{"name": "a"}])
    alerting = {"notifiers": [{"name": "s", "type": "slack_webhook", "conn_id": "c"},
                              {"name": "e", "type": "email", "conn_id": "m"}], "on_failure": ["s"]}
    report = ReconcileReportOperator(task_id="r", bills="{{ x }}", config=M3shConfig(alerting=alerting))
    assert [c["name"] for c in report.alert_channels] == ["s"]
    assert ReconcileReportOperator(task_id="r2", bills="{{ x }}", bucket="x").alert_channels == []


def test_the_reconcile_dag_only_wires_the_operators_and_imports_no_client_at_parse() -> None:
    from m3sh.config import M3shConfig
    from m3sh.dagkit.reconcile import build_reconcile_dag

    source = (REPO / "include" / "m3sh" / "dagkit" / "reconcile.py").read_text()
    assert len(source.splitlines()) <= 60
    dag = build_reconcile_dag(M3shConfig())
    assert {t.task_id: type(t).__name__ for t in dag.tasks} == {
        "compare_accounts": "M3terReconcileAccountsOperator", "compare_bills": "M3terReconcileBillsOperator",
        "report": "ReconcileReportOperator"}
    assert dag.get_task("report").upstream_task_ids == {"compare_accounts", "compare_bills"}
    assert set(dag.params) == {"dry_run", "lookback_days"}
    code = ("import sys, m3sh.dagkit.reconcile; print(sorted(m for m in sys.modules if m == 'm3ter' or "
            "m.startswith(('m3sh.hooks', 'm3sh.invoicing', 'm3sh.crm', 'simple_salesforce', 'hubspot'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
