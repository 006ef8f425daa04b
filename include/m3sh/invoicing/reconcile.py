"""Reconciliation: m3ter bills vs each destination's records (NetSuite via SuiteQL, Salesforce via
SOQL, the S3 archive, HubSpot deals), and CRM accounts vs m3ter accounts, as a list of findings
plus CSV/HTML.

The comparisons are pure functions over plain rows (:func:`compare_netsuite`, :func:`compare_records`,
:func:`compare_deals`, ...), so each rule is tested without systems; :mod:`m3sh.invoicing.reconcile_run`
gathers the rows through each destination's reader (beside its delivery code).
Amounts compare the ERP total with the sum of the 2-decimal line amounts m3sh sends (what the ERP
can hold), netting credit memos and adjustment invoices (external ids ``<bill id>:...``).
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

AMOUNT_TOLERANCE = 0.005
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

LABELS = {
    "missing": "Missing in the destination",
    "extra": "In the destination but not (or no longer) an exportable m3ter bill",
    "amount_mismatch": "Amount differs",
    "currency_mismatch": "Currency differs",
    "stale_status": "Status not updated",
    "crm_record_missing": "m3ter account links to a CRM record that does not exist",
    "crm_link_broken": "CRM record points to an m3ter account that does not exist",
    "account_currency_mismatch": "CRM and m3ter disagree on the account currency",
    "payment_state_mismatch": "CRM payment state differs from NetSuite's",
}
CSV_COLUMNS = ["check", "system", "destination", "bill_id", "account", "expected", "actual", "detail"]


@dataclass(frozen=True)
class Finding:
    check: str
    system: str
    destination: str
    bill_id: str = ""
    account: str = ""
    expected: str = ""
    actual: str = ""
    detail: str = ""

    @property
    def record(self) -> str:
        return self.bill_id or self.account


@dataclass(frozen=True)
class ExpectedBill:
    """What a destination should hold for one bill."""

    bill_id: str
    account: str
    currency: str
    total: float
    status: str = "Approved"
    bill_date: str = ""
    invoice: str = ""  # the invoice reference CRM records show (m3ter's invoice number, else the bill id)
    crm_record: str = ""  # the CRM record a CRM destination writes to (HubSpot: the deal)


def _money(value: float) -> str:
    return f"{value:.2f}"


def compare_netsuite(dest: str, expected: dict[str, ExpectedBill], rows: list[dict[str, Any]],
                     known_bills: set[str], ledger: dict[str, dict[str, Any]] | None = None) -> list[Finding]:
    """``rows``: SuiteQL transactions with ``externalid``, ``foreigntotal`` (credit memos negative),
    ``currency`` (ISO code via BUILTIN.DF), ``type``. ``known_bills``: every m3ter bill id."""
    ledger = ledger or {}
    invoices: dict[str, dict[str, Any]] = {}
    corrections: dict[str, float] = {}
    out: list[Finding] = []
    for row in rows:
        eid = str(row.get("externalid") or "")
        if not eid:
            continue
        base, sep, _ = eid.partition(":")
        if sep:
            corrections[base] = corrections.get(base, 0.0) + float(row.get("foreigntotal") or 0.0)
        elif row.get("type") == "CustInvc":
            invoices[eid] = row
    for bill_id, bill in sorted(expected.items()):
        inv = invoices.get(bill_id)
        if inv is None:
            seen = ledger.get(bill_id)
            detail = (f"m3sh delivered it on {seen.get('delivered_at')} (internal id {seen.get('remote_id')}): "
                      "deleted in NetSuite?") if seen else "never exported (run m3sh_invoice_sync)"
            out.append(Finding("missing", "netsuite", dest, bill_id, bill.account, _money(bill.total), "", detail))
            continue
        net = round(float(inv.get("foreigntotal") or 0.0) + corrections.get(bill_id, 0.0), 2)
        if abs(net - bill.total) > AMOUNT_TOLERANCE:
            out.append(Finding("amount_mismatch", "netsuite", dest, bill_id, bill.account, _money(bill.total),
                               _money(net), f"NetSuite invoice {inv.get('tranid') or inv.get('id')}"))
        currency = str(inv.get("currency") or "")
        if currency and currency.upper() != bill.currency.upper():
            out.append(Finding("currency_mismatch", "netsuite", dest, bill_id, bill.account, bill.currency, currency,
                               f"NetSuite invoice {inv.get('tranid') or inv.get('id')}"))
    for eid, inv in sorted(invoices.items()):
        if eid in expected or not _UUID.match(eid):
            continue
        why = "routed to another destination or not in an exportable state" if eid in known_bills \
            else "no such bill in m3ter (deleted?)"
        out.append(Finding("extra", "netsuite", dest, eid, "", "", _money(float(inv.get("foreigntotal") or 0.0)),
                           f"NetSuite invoice {inv.get('tranid') or inv.get('id')}: {why}"))
    return out


def compare_records(system: str, dest: str, expected: dict[str, ExpectedBill],
                    found: dict[str, dict[str, Any]], known_bills: set[str]) -> list[Finding]:
    """Salesforce / S3 archive records keyed by bill id with ``total``, ``currency`` and ``status``."""
    out: list[Finding] = []
    for bill_id, bill in sorted(expected.items()):
        rec = found.get(bill_id)
        if rec is None:
            out.append(Finding("missing", system, dest, bill_id, bill.account, _money(bill.total), "",
                               "never exported, or deleted in the destination"))
            continue
        if rec.get("total") is not None and abs(float(rec["total"]) - bill.total) > AMOUNT_TOLERANCE:
            out.append(Finding("amount_mismatch", system, dest, bill_id, bill.account, _money(bill.total),
                               _money(float(rec["total"]))))
        if rec.get("currency") and str(rec["currency"]).upper() != bill.currency.upper():
            out.append(Finding("currency_mismatch", system, dest, bill_id, bill.account, bill.currency,
                               str(rec["currency"])))
        if rec.get("status") and rec["status"] != bill.status:
            out.append(Finding("stale_status", system, dest, bill_id, bill.account, bill.status, str(rec["status"])))
    for bill_id in sorted(set(found) - set(expected)):
        if bill_id not in known_bills:
            out.append(Finding("extra", system, dest, bill_id, "", "", "", "no such bill in m3ter (deleted?)"))
    return out


def compare_deals(dest: str, expected: dict[str, ExpectedBill],
                  shown: dict[str, dict[str, Any] | None]) -> tuple[list[Finding], int]:
    """HubSpot: a deal shows one summary, its customer's latest invoice. ``shown``: deal id -> the
    parsed summary (``bill_id``, ``invoice``, ``date``, ``total``, ``currency``; None when empty or
    not m3sh's); a deal HubSpot no longer has is absent. Per deal the latest expected bill (bill
    date, then invoice) must be shown, unless the deal shows a later invoice (one outside the
    period); earlier bills of a deal were superseded there and cannot be checked.

    Returns ``(findings, deals checked)``."""
    latest: dict[str, ExpectedBill] = {}
    for bill in expected.values():
        current = latest.get(bill.crm_record)
        if bill.crm_record and (current is None or (bill.bill_date[:10], bill.invoice)
                                > (current.bill_date[:10], current.invoice)):
            latest[bill.crm_record] = bill
    out: list[Finding] = []
    for deal_id, bill in sorted(latest.items()):
        if deal_id not in shown:
            out.append(Finding("missing", "hubspot", dest, bill.bill_id, bill.account, _money(bill.total), "",
                               f"HubSpot deal {deal_id} not found (deleted or merged?)"))
            continue
        got = shown[deal_id]
        if got is not None and got.get("bill_id") == bill.bill_id:
            where = f"HubSpot deal {deal_id}"
            if abs(float(got.get("total") or 0.0) - bill.total) > AMOUNT_TOLERANCE:
                out.append(Finding("amount_mismatch", "hubspot", dest, bill.bill_id, bill.account, _money(bill.total),
                                   _money(float(got.get("total") or 0.0)), where))
            if got.get("currency") and str(got["currency"]).upper() != bill.currency.upper():
                out.append(Finding("currency_mismatch", "hubspot", dest, bill.bill_id, bill.account, bill.currency,
                                   str(got["currency"]), where))
        elif got is None or (str(got.get("date")), str(got.get("invoice"))) < (bill.bill_date[:10], bill.invoice):
            what = f"invoice {got.get('invoice')} of {got.get('date')}" if got else "no m3sh invoice"
            out.append(Finding("missing", "hubspot", dest, bill.bill_id, bill.account, _money(bill.total), "",
                               f"HubSpot deal {deal_id} shows {what}"))
    return out, len(latest)


def compare_accounts(m3ter_links: dict[str, list[tuple[str, str, str]]],
                     crm_records: dict[tuple[str, str], dict[str, Any]], m3ter_ids: set[str]) -> list[Finding]:
    """``m3ter_links``: m3ter account id -> [(code, crm source, crm id)], one per linked CRM source (an
    account may be linked from several orgs); ``crm_records``: (crm source, crm id) ->
    ``{"m3ter_id", "currency", "m3ter_currency"}`` for CRM records; ``m3ter_ids``: every m3ter account id."""
    out: list[Finding] = []
    for acc_id, links in sorted(m3ter_links.items()):
        for code, crm_type, crm_id in links:
            rec = crm_records.get((crm_type, crm_id)) or crm_records.get((crm_type, crm_id[:15]))
            if rec is None:
                out.append(Finding("crm_record_missing", crm_type, "crm", account=code, expected=crm_id,
                                   detail=f"m3ter account {acc_id} links to {crm_type} {crm_id}"))
            elif rec.get("currency") and rec.get("m3ter_currency") and rec["currency"] != rec["m3ter_currency"]:
                out.append(Finding("account_currency_mismatch", crm_type, "crm", account=code,
                                   expected=str(rec["m3ter_currency"]), actual=str(rec["currency"])))
    for (crm_type, crm_id), rec in sorted(crm_records.items()):
        m3_id = rec.get("m3ter_id")
        if m3_id and m3_id not in m3ter_ids:
            out.append(Finding("crm_link_broken", crm_type, "crm", account=crm_id, expected=str(m3_id),
                               detail=f"{crm_type} {crm_id} has m3ter account id {m3_id}, which m3ter does not know"))
    return out


# ------------------------------------------------------------------------------------ reports
def to_csv(findings: list[Finding]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS)
    writer.writeheader()
    for f in findings:
        writer.writerow(asdict(f))
    return buf.getvalue().encode()


def to_html(findings: list[Finding], *, title: str, period: str, checked: dict[str, int], notes: list[str]) -> bytes:
    """A self-contained page a finance person can read: verdict, counts, then one row per problem."""
    esc = html.escape
    counts = Counter((f.check, f.destination) for f in findings)
    verdict = ("<p class='ok'>Everything matches.</p>" if not findings else
               f"<p class='bad'>{len(findings)} difference(s) need attention.</p>")
    checked_rows = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in sorted(checked.items()))
    count_rows = "".join(f"<tr><td>{esc(LABELS.get(c, c))}</td><td>{esc(d)}</td><td>{n}</td></tr>"
                         for (c, d), n in sorted(counts.items()))
    rows = "".join(
        "<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in (
            LABELS.get(f.check, f.check), f.destination, f.bill_id or "-", f.account or "-", f.expected or "-",
            f.actual or "-", f.detail)) + "</tr>" for f in findings)
    note_items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}th{{background:#f3f3f3}}
.ok{{color:#1a7f37;font-weight:bold}}.bad{{color:#cf222e;font-weight:bold}}</style></head><body>
<h1>{esc(title)}</h1><p>Period: {esc(period)}</p>{verdict}
<h2>What was compared</h2><table><tr><th>Records</th><th>Count</th></tr>{checked_rows}</table>
<h2>Differences by kind</h2><table><tr><th>Kind</th><th>Where</th><th>Count</th></tr>{count_rows}</table>
<h2>Details</h2><table><tr><th>Kind</th><th>Where</th><th>m3ter bill</th><th>Account</th><th>m3ter says</th>
<th>Destination says</th><th>Notes</th></tr>{rows}</table>
<h2>Notes</h2><ul>{note_items}</ul></body></html>"""
    return page.encode()
