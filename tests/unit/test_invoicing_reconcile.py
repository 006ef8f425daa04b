"""Reconciliation rules (missing / extra / amount / currency / status, corrections netted) and the
webhook signature a receiver verifies."""

from __future__ import annotations

import hashlib
import hmac

from m3sh.invoicing.reconcile import ExpectedBill, compare_accounts, compare_netsuite, compare_records, to_html
from m3sh.invoicing.webhook import signed_headers

B1 = "11111111-1111-4111-8111-111111111111"
B2 = "22222222-2222-4222-8222-222222222222"
B3 = "33333333-3333-4333-8333-333333333333"


def test_netsuite_missing_amount_currency_extra_and_credit_memos_netted() -> None:
    expected = {B1: ExpectedBill(B1, "acme", "USD", 100.0), B2: ExpectedBill(B2, "beta", "USD", 50.0)}
    rows = [
        {"externalid": B1, "type": "CustInvc", "foreigntotal": "120.00", "currency": "USD", "tranid": "INV1"},
        {"externalid": f"{B1}:cm:abc", "type": "CustCred", "foreigntotal": "-20.00", "currency": "USD"},
        {"externalid": B3, "type": "CustInvc", "foreigntotal": "7.00", "currency": "EUR"},
        {"externalid": "legacy-42", "type": "CustInvc", "foreigntotal": "1.00"},
    ]
    findings = compare_netsuite("ns", expected, rows, known_bills={B1, B2},
                                ledger={B2: {"delivered_at": "2026-11-02T00:00:00Z", "remote_id": "1001"}})
    got = {(f.check, f.bill_id) for f in findings}
    assert got == {("missing", B2), ("extra", B3)}  # B1 nets to 100 with its credit memo; legacy ids ignored
    missing = next(f for f in findings if f.check == "missing")
    assert "deleted in NetSuite" in missing.detail and "1001" in missing.detail
    rows[0] = {**rows[0], "foreigntotal": "121.00", "currency": "EUR"}
    got = {(f.check, f.bill_id, f.expected, f.actual) for f in compare_netsuite("ns", expected, rows, {B1, B2})}
    assert ("amount_mismatch", B1, "100.00", "101.00") in got and ("currency_mismatch", B1, "USD", "EUR") in got


def test_records_status_and_clean() -> None:
    expected = {B1: ExpectedBill(B1, "acme", "USD", 10.0, status="Posted")}
    assert compare_records("salesforce", "sf", expected, {B1: {"total": 10.0, "currency": "USD", "status": "Posted"}},
                           {B1}) == []
    findings = compare_records("salesforce", "sf", expected, {B1: {"total": 10.0, "status": "Approved"}}, {B1})
    assert [(f.check, f.expected, f.actual) for f in findings] == [("stale_status", "Posted", "Approved")]


def test_accounts_links_both_ways() -> None:
    links = {"m1": [("acme", "salesforce", "0015g00000AAAAAAAA")], "m2": [("beta", "hubspot", "9000000001")]}
    records = {("salesforce", "0015g00000AAAAAAAA"): {"currency": "EUR", "m3ter_currency": "USD"},
               ("hubspot", "9000000002"): {"m3ter_id": "gone"}}
    got = {(f.check, f.account) for f in compare_accounts(links, records, {"m1", "m2"})}
    assert got == {("account_currency_mismatch", "acme"), ("crm_record_missing", "beta"),
                   ("crm_link_broken", "9000000002")}


def test_html_report_says_what_is_wrong_in_words() -> None:
    findings = compare_records("s3", "archive", {B1: ExpectedBill(B1, "acme", "USD", 1.0)}, {}, {B1})
    page = to_html(findings, title="t", period="p", checked={"bills": 1}, notes=["n<ote>"]).decode()
    assert "1 difference(s) need attention" in page and "Missing in the destination" in page
    assert "n&lt;ote&gt;" in page
    assert "Everything matches" in to_html([], title="t", period="p", checked={}, notes=[]).decode()


def test_webhook_signature_matches_the_receivers_check() -> None:
    body = b'{"a":1}'
    headers = signed_headers(b"secret", body, f"{B1}:v1", now=1_800_000_000)
    expected = hmac.new(b"secret", b"1800000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-M3sh-Signature"] == expected and headers["Idempotency-Key"] == f"{B1}:v1"
