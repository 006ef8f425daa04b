"""Payments back from NetSuite, without systems: the SuiteQL m3sh sends, the parsing of its rows,
the payment state derived from them, the read window and the watermark (m3sh.invoicing.payments)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from m3sh.hooks.netsuite import invoice_payments_query
from m3sh.invoicing.payments import (
    InvoicePayment,
    PaymentRowError,
    parse_payment_row,
    payment_status,
    read_watermark,
    read_window,
    write_watermark,
)

UTC = dt.UTC
ROW = {"id": "1042", "tranid": "INV10007", "externalid": "bill-1", "foreigntotal": "100", "foreignamountpaid": "60",
       "foreignamountunpaid": "40", "status": "CustInvc:A", "currency": "USD", "duedate": "2026-12-31",
       "lastmodified": "2026-12-02 10:15:00"}


def _payment(**over: Any) -> InvoicePayment:
    return parse_payment_row({**ROW, **over}, "netsuite_us")


# -- parsing the SuiteQL rows -----------------------------------------------------------------------
def test_a_row_is_parsed_with_its_amounts_due_date_and_status() -> None:
    p = _payment()
    assert (p.source, p.invoice_id, p.tran_id, p.bill_id) == ("netsuite_us", "1042", "INV10007", "bill-1")
    assert (p.total, p.paid, p.remaining, p.currency) == (100.0, 60.0, 40.0, "USD")
    assert p.due_date == dt.date(2026, 12, 31) and p.status == "CustInvc:A"
    assert p.last_modified == "2026-12-02 10:15:00"


def test_null_columns_omitted_by_suiteql_mean_nothing_paid_and_no_due_date() -> None:
    row = {k: v for k, v in ROW.items() if k not in ("foreignamountpaid", "foreignamountunpaid", "duedate")}
    p = parse_payment_row(row, "netsuite_us")
    assert (p.paid, p.remaining, p.due_date) == (0.0, 100.0, None)


@pytest.mark.parametrize(("field", "value", "why"), [
    ("foreigntotal", "12,5", "not a number"),
    ("foreigntotal", None, "missing"),
    ("foreignamountunpaid", "n/a", "not a number"),
    ("duedate", "12/31/2026", "not a YYYY-MM-DD date"),
    ("status", "A", "not an invoice status"),
    ("externalid", None, "not an m3sh invoice"),
])
def test_a_bad_row_names_account_invoice_and_field(field: str, value: Any, why: str) -> None:
    row = {**ROW, field: value} if value is not None else {k: v for k, v in ROW.items() if k != field}
    with pytest.raises(PaymentRowError, match=why) as err:
        parse_payment_row(row, "netsuite_us")
    assert err.value.field == field and err.value.invoice == "INV10007" and err.value.source == "netsuite_us"
    assert f"NetSuite netsuite_us: invoice INV10007: field {field}" in str(err.value)


# -- the state --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("over", "as_of", "state", "text"), [
    ({}, "2026-12-02", "partly_paid", "partly paid 40.00 remaining"),
    ({"foreignamountpaid": "100", "foreignamountunpaid": "0", "status": "CustInvc:B"}, "2026-12-02", "paid", "paid"),
    # Paid in full on the due date's far side: paid, never overdue.
    ({"foreignamountpaid": "100", "foreignamountunpaid": "0", "status": "CustInvc:B"}, "2027-02-01", "paid", "paid"),
    ({"foreignamountpaid": "0", "foreignamountunpaid": "100"}, "2026-12-02", "open", "open (due 2026-12-31)"),
    ({"foreignamountpaid": "0", "foreignamountunpaid": "100", "duedate": None}, "2026-12-02", "open", "open"),
    # Due on the 31st: still open that day, overdue from the next.
    ({"foreignamountpaid": "0", "foreignamountunpaid": "100"}, "2026-12-31", "open", "open (due 2026-12-31)"),
    ({"foreignamountpaid": "0", "foreignamountunpaid": "100"}, "2027-01-01", "overdue",
     "overdue 100.00 remaining (due 2026-12-31)"),
    ({}, "2027-01-01", "overdue", "overdue 40.00 remaining (due 2026-12-31)"),  # partly paid and late
    ({"foreignamountunpaid": "0.004"}, "2026-12-02", "paid", "paid"),  # a sub-cent rest is paid
])
def test_payment_state_as_of_the_logical_date(over: dict[str, Any], as_of: str, state: str, text: str) -> None:
    row = {k: v for k, v in {**ROW, **over}.items() if v is not None}
    status = payment_status(parse_payment_row(row, "netsuite_us"), dt.date.fromisoformat(as_of))
    assert (status.state, status.text) == (state, text)
    assert status.remaining == (0.0 if state == "paid" else float(row["foreignamountunpaid"]))


# -- the query and the window -----------------------------------------------------------------------
def test_the_query_reads_invoices_modified_in_the_window_and_those_falling_due() -> None:
    q = invoice_payments_query(modified_from=dt.datetime(2026, 12, 1, tzinfo=UTC),
                               modified_until=dt.datetime(2026, 12, 2, tzinfo=UTC),
                               due_from=dt.date(2026, 11, 30), due_until=dt.date(2026, 12, 1))
    assert q.startswith("SELECT t.id, t.tranid, t.externalid, t.foreigntotal, t.foreignamountpaid, "
                        "t.foreignamountunpaid, BUILTIN.CF(t.status) AS status")
    assert ("WHERE t.type = 'CustInvc' AND t.externalid IS NOT NULL AND ((t.lastmodifieddate >= "
            "TO_DATE('2026-12-01 00:00:00', 'YYYY-MM-DD HH24:MI:SS') AND t.lastmodifieddate < "
            "TO_DATE('2026-12-02 00:00:00', 'YYYY-MM-DD HH24:MI:SS')) OR (BUILTIN.CF(t.status) = 'CustInvc:A' "
            "AND t.duedate >= TO_DATE('2026-11-30', 'YYYY-MM-DD') AND t.duedate < TO_DATE('2026-12-01', "
            "'YYYY-MM-DD'))) ORDER BY t.id") in q
    # The account's time zone: SuiteQL compares date-times as the account writes them.
    q = invoice_payments_query(modified_from=dt.datetime(2026, 12, 1, tzinfo=UTC), timezone="America/New_York")
    assert q.endswith("AND t.lastmodifieddate >= TO_DATE('2026-11-30 19:00:00', 'YYYY-MM-DD HH24:MI:SS') "
                      "ORDER BY t.id")
    assert "lastmodifieddate" not in invoice_payments_query().split("WHERE")[1]  # a full read
    with pytest.raises(ValueError, match="no time zone"):
        invoice_payments_query(modified_from=dt.datetime(2026, 12, 1))


def test_read_window_backfills_catches_up_and_full_scans() -> None:
    s, e = dt.datetime(2026, 12, 1, tzinfo=UTC), dt.datetime(2026, 12, 2, tzinfo=UTC)
    assert read_window(s, e, None) == (s, e)                          # first run: its interval
    assert read_window(s, e, s) == (s, e)                             # the usual run
    earlier = dt.datetime(2026, 11, 28, tzinfo=UTC)
    assert read_window(s, e, earlier) == (earlier, e)                 # runs failed or skipped: catch up
    later = dt.datetime(2026, 12, 20, tzinfo=UTC)
    assert read_window(s, e, later) == (s, e)                         # a backfill: exactly its interval
    assert read_window(e, e, later) == (later, None)                  # no interval: since the watermark
    assert read_window(s, e, later, full_scan=True) == (None, None)


class _Storage:
    def __init__(self) -> None:
        self.objects: dict[str, Any] = {}

    def key(self, *parts: str) -> str:
        return "m3sh/" + "/".join(parts)

    def get_json(self, key: str) -> Any:
        return self.objects.get(key)

    def put_json(self, key: str, value: Any) -> None:
        self.objects[key] = value


def test_the_watermark_only_moves_forward() -> None:
    storage = _Storage()
    assert read_watermark(storage, "netsuite_us") is None
    d1, d2 = dt.datetime(2026, 12, 1, tzinfo=UTC), dt.datetime(2026, 12, 2, tzinfo=UTC)
    assert write_watermark(storage, "netsuite_us", d2, None) == d2
    assert read_watermark(storage, "netsuite_us") == d2
    assert write_watermark(storage, "netsuite_us", d1, d2) == d2  # a backfill leaves it
    assert read_watermark(storage, "netsuite_us") == d2
    assert list(storage.objects) == ["m3sh/state/invoicing/payments/netsuite_us/watermark.json"]


# -- config and preflight -----------------------------------------------------------------------------
def test_payments_are_off_by_default_and_preflight_lists_their_fields_when_on() -> None:
    from m3sh.config import DEFAULT_CONFIG_PATH, load_config, parse_config
    from m3sh.preflight import needed_hubspot, needed_salesforce

    assert load_config().invoicing.payments.enabled is False
    assert "Payment_Status__c" not in needed_salesforce(load_config())["salesforce_default"]["Invoice__c"]
    text = DEFAULT_CONFIG_PATH.read_text().replace(
        "  routes:\n", "    - {name: hs, type: hubspot}\n  payments: {enabled: true}\n  routes:\n", 1)
    cfg = parse_config(text)
    sf = needed_salesforce(cfg)["salesforce_default"]
    assert [n.kind for n in sf["Invoice__c"]["Payment_Status__c"]] == ["text"]
    assert [n.kind for n in sf["Invoice__c"]["Amount_Remaining__c"]] == ["number"]
    assert sf["Account"]["M3ter_Invoice_Payment__c"][0].why == \
        "invoicing.destinations[salesforce].account_payment_fields.payment"
    assert "m3ter_last_invoice_payment" in needed_hubspot(cfg)["hubspot_default"].deal_properties.items
    with pytest.raises(ValueError, match=r"payments.sources names \['salesforce'\], which are not NetSuite"):
        parse_config(text.replace("payments: {enabled: true}", "payments: {enabled: true, sources: [salesforce]}"))


# -- the writers, against fakes of the Salesforce and HubSpot clients --------------------------------------
class _FakeSalesforce:
    def __init__(self, invoices: list[dict[str, Any]], records: dict[str, dict[str, Any]],
                 fail_on: str | None = None) -> None:
        self.invoices, self.records, self.fail_on = invoices, records, fail_on
        self.updates: list[tuple[str, str, dict[str, Any]]] = []
        self.queries: list[str] = []

    def query(self, soql: str, sobject: str = "query") -> Any:
        self.queries.append(sobject)
        if sobject == "Invoice__c":
            return iter([r for r in self.invoices if f"'{r['M3ter_Bill_Id__c']}'" in soql])
        return iter([{"Id": k, **v} for k, v in self.records.items() if f"'{k}'" in soql])

    def update_record(self, sobject: str, record_id: str, fields: dict[str, Any]) -> None:
        if record_id == self.fail_on:
            raise RuntimeError("UNABLE_TO_LOCK_ROW")
        self.updates.append((sobject, record_id, fields))
        self.records.setdefault(record_id, {}).update(fields)


def _sf_world(fail_on: str | None = None) -> tuple[Any, _FakeSalesforce]:
    from m3sh.config import SalesforceDestination
    from m3sh.invoicing.payments import SalesforcePayments

    invoices = [{"Id": "a0X1", "M3ter_Bill_Id__c": "bill-1", "Account__c": "001A", "Opportunity__c": "006A",
                 "Invoice_Number__c": "INV-7", "Invoice_Date__c": "2026-11-01", "Payment_Status__c": "open",
                 "Amount_Remaining__c": 100.0},
                {"Id": "a0X2", "M3ter_Bill_Id__c": "bill-2", "Account__c": "001B", "Opportunity__c": None,
                 "Invoice_Number__c": "INV-8", "Invoice_Date__c": "2026-10-01",
                 "Payment_Status__c": "open (due 2026-12-31)",
                 "Amount_Remaining__c": 100.0}]
    records = {"001A": {"M3ter_Last_Invoice__c": "INV-7", "M3ter_Invoice_Payment__c": None},
               "006A": {"M3ter_Last_Invoice__c": "INV-7", "M3ter_Invoice_Payment__c": "partly paid 40.00 remaining"},
               "001B": {"M3ter_Last_Invoice__c": "INV-9"},  # shows a later invoice
               "a0X1": {}, "a0X2": {}}
    fake = _FakeSalesforce(invoices, records, fail_on)
    return SalesforcePayments(SalesforceDestination(name="sf", type="salesforce"), sync=fake), fake


def _items(*bills: tuple[str, str]) -> list[Any]:
    out = []
    for bill_id, unpaid in bills:
        p = _payment(externalid=bill_id, foreignamountunpaid=unpaid, foreignamountpaid=str(100 - float(unpaid)))
        out.append((p, payment_status(p, dt.date(2026, 12, 2))))
    return out


def test_salesforce_writes_what_differs_on_the_invoice_and_on_records_showing_it() -> None:
    writer, fake = _sf_world()
    outcomes = writer.apply(_items(("bill-1", "40"), ("bill-2", "100"), ("bill-3", "0")))
    by = {(o.bill_id, o.record): o.status for o in outcomes}
    assert by == {("bill-1", "Invoice__c a0X1"): "written", ("bill-1", "Account 001A"): "written",
                  ("bill-1", "Opportunity 006A"): "unchanged",  # already shows it
                  ("bill-2", "Invoice__c a0X2"): "unchanged",  # open, as shown
                  ("bill-2", "Account 001B"): "not_latest",     # a later invoice is shown: left alone
                  ("bill-3", "Invoice__c"): "not_in_crm"}
    assert fake.updates == [
        ("Invoice__c", "a0X1", {"Payment_Status__c": "partly paid 40.00 remaining", "Amount_Remaining__c": 40.0}),
        ("Account", "001A", {"M3ter_Invoice_Payment__c": "partly paid 40.00 remaining"})]
    assert fake.queries == ["Invoice__c", "Account", "Opportunity"]  # one query each, not a read per record
    # Dry run: the same verdicts, no write, and what each record shows.
    writer, fake = _sf_world()
    preview = writer.apply(_items(("bill-1", "0")), dry_run=True)
    assert [o.status for o in preview] == ["dry_run", "dry_run", "dry_run"] and fake.updates == []
    assert "shows {'Payment_Status__c': 'open', 'Amount_Remaining__c': 100.0}" in preview[0].detail


def test_one_failed_record_never_stops_the_others() -> None:
    writer, fake = _sf_world(fail_on="a0X1")
    outcomes = writer.apply(_items(("bill-1", "40"), ("bill-2", "0")))
    assert [(o.bill_id, o.status) for o in outcomes if o.status == "failed"] == [("bill-1", "failed")]
    assert "UNABLE_TO_LOCK_ROW" in outcomes[0].detail
    assert ("Invoice__c", "a0X2", {"Payment_Status__c": "paid", "Amount_Remaining__c": 0.0}) in fake.updates


class _FakeHubSpot:
    def __init__(self, deals: dict[str, dict[str, Any]]) -> None:
        self.deals, self.updates, self.properties = deals, [], []  # type: ignore[var-annotated]

    def batch_read(self, object_type: str, ids: list[str], props: list[str]) -> dict[str, Any]:
        return {i: {"id": i, "properties": dict(self.deals[i])} for i in ids if i in self.deals}

    def ensure_property(self, object_type: str, name: str, label: str, **kw: Any) -> dict[str, Any]:
        self.properties.append(name)
        return {}

    def batch_update(self, object_type: str, inputs: list[dict[str, Any]]) -> Any:
        from m3sh.hooks.hubspot import BatchResult

        self.updates += inputs
        return BatchResult(succeeded=list(inputs))


class _Ledger:
    def __init__(self, entries: dict[str, str]) -> None:
        self.entries = entries

    def get(self, destination: str, key: str) -> dict[str, Any] | None:
        return {"remote_id": self.entries[key]} if key in self.entries else None


def test_hubspot_writes_the_deal_property_only_while_the_deal_shows_that_bill() -> None:
    from m3sh.config import HubSpotDestination
    from m3sh.invoicing.payments import HubSpotPayments

    summary = "INV-7 2026-11-01 100.00 EUR (m3ter bill {})"
    fake = _FakeHubSpot({"d1": {"m3ter_last_invoice": summary.format("bill-1")},
                         "d2": {"m3ter_last_invoice": summary.format("bill-9")},  # a later bill shown
                         "d3": {"m3ter_last_invoice": summary.format("bill-3"), "m3ter_last_invoice_payment": "paid"}})
    writer = HubSpotPayments(HubSpotDestination(name="hs", type="hubspot"),
                             _Ledger({"bill-1": "d1", "bill-2": "d2", "bill-3": "d3", "bill-4": "gone"}), hook=fake)
    outcomes = writer.apply(_items(("bill-1", "40"), ("bill-2", "0"), ("bill-3", "0"), ("bill-4", "0"),
                                   ("bill-5", "0")))
    assert sorted((o.bill_id, o.status) for o in outcomes) == [
        ("bill-1", "written"), ("bill-2", "not_latest"), ("bill-3", "unchanged"), ("bill-4", "failed"),
        ("bill-5", "not_in_crm")]
    assert fake.updates == [{"id": "d1", "properties": {"m3ter_last_invoice_payment": "partly paid 40.00 remaining"}}]
    assert fake.properties == ["m3ter_last_invoice_payment"]
    # Nothing to change: not even the property check.
    fake = _FakeHubSpot({"d3": {"m3ter_last_invoice": summary.format("bill-3"), "m3ter_last_invoice_payment": "paid"}})
    writer = HubSpotPayments(HubSpotDestination(name="hs", type="hubspot"), _Ledger({"bill-3": "d3"}), hook=fake)
    assert [o.status for o in writer.apply(_items(("bill-3", "0")))] == ["unchanged"]
    assert fake.properties == [] and fake.updates == []


def test_a_netsuite_connection_with_an_unknown_time_zone_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from m3sh.hooks.netsuite import NetSuiteHook

    conn = {"conn_type": "netsuite", "login": "ck", "password": "cs",
            "extra": {"account_id": "1234567", "token_id": "t", "token_secret": "ts", "timezone": "Mars/Olympus"}}
    monkeypatch.setenv("AIRFLOW_CONN_NS_TZ", json.dumps(conn))
    with pytest.raises(ValueError, match=r"'ns_tz': extra.timezone 'Mars/Olympus' is not an IANA time zone"):
        NetSuiteHook("ns_tz").settings  # noqa: B018
