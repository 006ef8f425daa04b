"""One reconciliation as plain steps: the CRM accounts check, the bills check (each destination read
back through its type's reader, beside its delivery code) and the report. The reconcile operators
(:mod:`m3sh.operators.reconcile`) and so ``m3sh_reconcile`` call these; nothing here reads ``m3sh.yaml``.

Key layout, under the storage prefix (the UI page reads ``latest.json``)::

    staging/<dag id>/<run id>/accounts.jsonl, bills.jsonl     each check's findings
    reports/<report name>/<date>/report.html, report.csv       the report for finance
    reports/<report name>/latest.json                          the summary of the last run
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from m3sh import layout
from m3sh.config import (
    CrmSource,
    HubSpotDestination,
    M3shConfig,
    NetSuiteDestination,
    S3Destination,
    SalesforceDestination,
)
from m3sh.invoicing.models import EnrichedBill
from m3sh.invoicing.reconcile import (
    ExpectedBill,
    Finding,
    compare_accounts,
    compare_deals,
    compare_netsuite,
    compare_records,
    to_csv,
    to_html,
)
from m3sh.invoicing.run import staging_key
from m3sh.storage import Storage

log = logging.getLogger(__name__)

REPORT_NAME = "reconcile"
DRIFT_IN_SUMMARY = 100
DRIFT_IN_LOG = 50
DRIFT_IN_MESSAGE = 10


# ------------------------------------------------------------------------------------- accounts
def check_accounts(m3ter: Any, sources: Sequence[CrmSource]) -> tuple[list[Finding], dict[str, int]]:
    """CRM records <-> m3ter accounts, both ways: an account linking to a record its CRM lacks, a
    record whose write-back field names an account m3ter lacks, and disagreeing currencies.

    Returns ``(findings, counts of what was compared)``."""
    from m3sh.crm.links import SourceLinks
    from m3sh.invoicing.enrich import crm_link

    accounts = {a["id"]: a for a in m3ter.list_accounts()}
    mappings: dict[str, list[dict[str, Any]]] = {}
    for m in m3ter.list_external_mappings():
        mappings.setdefault(str(m.get("m3terId")), []).append(m)
    enabled = [s for s in sources if s.enabled]
    resolver = SourceLinks(sources)
    # Keyed by source name, not type: every org is read on its own connection, and an account
    # linked from several orgs is checked against each (a retired source's links are history).
    links: dict[str, list[tuple[str, str, str]]] = {}
    for acc_id, acc in accounts.items():
        for source, crm_id in resolver.account_links(mappings.get(acc_id, [])):
            links.setdefault(acc_id, []).append((str(acc.get("code")), source.name, crm_id))
        if acc_id not in links:  # not linked by m3sh_crm_sync: the crm_source/crm_id custom fields
            link = crm_link(acc, [], resolver)
            if link and link[0] in {s.name for s in enabled}:
                links[acc_id] = [(str(acc.get("code")), link[0], link[1])]
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for source in enabled:
        for crm_id, rec in read_crm_accounts(source).items():
            records[(source.name, crm_id)] = rec
    for acc_id, acc_links in links.items():
        for _, source_name, crm_id in acc_links:
            linked = records.get((source_name, crm_id)) or records.get((source_name, crm_id[:15]))
            if linked is not None:
                linked["m3ter_currency"] = accounts[acc_id].get("currency")
    findings = compare_accounts(links, records, set(accounts))
    log.info("accounts: %d m3ter account(s), %d linked, %d CRM record(s): %d finding(s)", len(accounts),
             len(links), len(records), len(findings))
    return findings, {"m3ter accounts": len(accounts), "CRM records": len(records)}


def read_crm_accounts(source: CrmSource) -> dict[str, dict[str, Any]]:
    """The source's reader (:mod:`m3sh.crm.salesforce` / :mod:`m3sh.crm.hubspot`): record id ->
    ``{"m3ter_id", "currency"}``."""
    if source.type == "salesforce":
        from m3sh.crm.salesforce import read_account_links as read_salesforce

        return read_salesforce(source)
    from m3sh.crm.hubspot import read_account_links as read_hubspot

    return read_hubspot(source)


# ---------------------------------------------------------------------------------------- bills
@dataclass
class Expected:
    """What each destination should hold (destination name -> bill id -> bill), every m3ter bill
    id, and the bills that could not be enriched (as report notes)."""

    by_destination: dict[str, dict[str, ExpectedBill]]
    known: set[str]
    unroutable: list[str]


def delivered_to(dest: Any, bill: EnrichedBill) -> bool:
    """Whether the destination takes the bill at all (its delivery returns ``not_applicable`` otherwise)."""
    if isinstance(dest, SalesforceDestination) and bill.crm.source != "salesforce":
        return False  # not a Salesforce customer: nothing to attach an invoice to
    if isinstance(dest, HubSpotDestination) and (bill.crm.source != "hubspot" or not bill.crm.opportunity_id):
        return False  # no HubSpot deal to show it on
    # another org's (or portal's) customer: that org's destination has it
    return not (getattr(dest, "crm_source", None) and bill.crm.source_name != dest.crm_source)


def expected_bills(m3ter: Any, settings: M3shConfig, destinations: Sequence[Any], since: dt.date,
                   until: dt.datetime, *, route_all: bool = False) -> Expected:
    """Bills in ``settings.invoicing.bill_states`` dated on/after ``since`` and last changed before
    ``until`` (later changes are the next sync's job), routed by ``settings.invoicing.routes`` or,
    with ``route_all``, to every destination (as the collect step does without a config)."""
    from m3sh.invoicing.base import invoice_ref
    from m3sh.invoicing.deliver import bill_state, fetch_bills
    from m3sh.invoicing.enrich import CrmReader, Enricher, HubSpotReader
    from m3sh.invoicing.routing import route_bill

    enabled = {d.name: d for d in destinations if d.enabled}
    known = {str(b["id"]) for b in m3ter.list_bills(exclude_line_items=True)}
    bills = [b for b in fetch_bills(m3ter, settings.invoicing.bill_states, None, until)
             if str(b.get("billDate") or "") >= since.isoformat()]
    # Nothing is set aside here: reconciliation judges what the sync delivered, whatever it required.
    relaxed = settings.model_copy(update={"invoicing": settings.invoicing.model_copy(
        update={"required_enrichment": []})})
    # CRM facts only where a destination needs them: the HubSpot deal a bill's summary is shown on.
    readers: dict[str, CrmReader] = {}
    if any(isinstance(d, HubSpotDestination) for d in enabled.values()):
        readers = {s.name: HubSpotReader(s) for s in settings.crm.sources if s.enabled and s.type == "hubspot"}
    enriched, errors = Enricher(relaxed, m3ter, readers=readers).enrich(bills)
    expected: dict[str, dict[str, ExpectedBill]] = {name: {} for name in enabled}
    raw = {b["id"]: b for b in bills}
    for eb in enriched:
        targets = list(enabled) if route_all else route_bill(settings.invoicing, eb)[0]
        for name in targets:
            dest = enabled.get(name)
            if dest is None or not delivered_to(dest, eb):
                continue
            status = "Posted" if bill_state(raw[eb.bill_id]) == "LOCKED" else "Approved"
            expected[name][eb.bill_id] = ExpectedBill(
                eb.bill_id, eb.account_code, eb.currency, eb.erp_total, status, eb.bill_date, invoice=invoice_ref(eb),
                crm_record=(eb.crm.opportunity_id or "") if isinstance(dest, HubSpotDestination) else "")
    unroutable = [f"bill {e.bill_id} ({e.account_code}): {e.reason}" for e in errors]
    return Expected(expected, known, unroutable)


def check_destination(dest: Any, expected: Expected, ledger: Any,
                      destinations: Sequence[Any]) -> tuple[list[Finding], dict[str, int], list[str]]:
    """One destination read back through its type's reader and compared with what it should hold.

    ``ledger`` (an :class:`~m3sh.invoicing.ledger.S3Ledger`) says when m3sh delivered a bill NetSuite
    now lacks; ``destinations``: all of them, for NetSuite accounts shared by several.
    Returns ``(findings, counts of what was read, notes)``."""
    want = expected.by_destination.get(dest.name, {})
    if isinstance(dest, NetSuiteDestination):
        from m3sh.invoicing.netsuite import read_transactions

        rows = read_transactions(dest)
        # Destinations may share one NetSuite account (a subsidiary graduated into it, a OneWorld
        # account): the bills another of them expects there are not "extra" here.
        shared = {b for d in destinations if d.enabled and d.name != dest.name and isinstance(d, NetSuiteDestination)
                  and d.conn_id == dest.conn_id for b in expected.by_destination.get(d.name, {})} - set(want)
        rows = [r for r in rows if str(r.get("externalid") or "").partition(":")[0] not in shared]
        findings = compare_netsuite(dest.name, want, rows, expected.known, ledger.entries(dest.name))
        return findings, {f"{dest.name} invoices and credit memos": len(rows)}, []
    if isinstance(dest, SalesforceDestination):
        from m3sh.invoicing.salesforce import read_invoices

        found = read_invoices(dest)
        findings = compare_records("salesforce", dest.name, want, found, expected.known)
        return findings, {f"{dest.name} {dest.invoice_object} records": len(found)}, []
    if isinstance(dest, S3Destination):
        from m3sh.invoicing.s3archive import read_archived

        found = read_archived(dest, {bill_id: bill.bill_date for bill_id, bill in want.items()})
        return compare_records("s3", dest.name, want, found, expected.known), {
            f"{dest.name} archived bills": len(found)}, []
    if isinstance(dest, HubSpotDestination):
        from m3sh.invoicing.hubspot import parse_summary, read_deal_invoices

        shown = read_deal_invoices(dest, sorted({b.crm_record for b in want.values()}))
        findings, deals = compare_deals(dest.name, want, {d: parse_summary(v) for d, v in shown.items()})
        notes = [f"{dest.name}: a HubSpot deal shows its customer's latest invoice only; {len(want) - deals} "
                 "earlier bill(s) were superseded there and are not checked."] if len(want) > deals else []
        return findings, {f"{dest.name} deals": deals}, notes
    return [], {}, [f"{dest.name} ({dest.type}) cannot be read back; not reconciled."]


def check_bills(m3ter: Any, settings: M3shConfig, destinations: Sequence[Any], ledger: Any, *, lookback_days: int,
                now: dt.datetime | None = None, route_all: bool = False) -> dict[str, Any]:
    """m3ter bills dated in the last ``lookback_days`` <-> every enabled destination.

    Returns ``{"findings", "checked", "notes", "period"}`` (findings as :class:`Finding`)."""
    # Bills changed up to now count: a reconciliation is a statement about the present.
    until = now or dt.datetime.now(dt.UTC)
    since = until.date() - dt.timedelta(days=lookback_days)
    enabled = [d for d in destinations if d.enabled]
    expected = expected_bills(m3ter, settings, enabled, since, until, route_all=route_all)
    findings: list[Finding] = []
    checked = {"m3ter bills in scope": len({b for per in expected.by_destination.values() for b in per})}
    notes = [f"Bills dated on/after {since}, in states {settings.invoicing.bill_states}."]
    notes += [f"Not routable (set aside by the invoice sync): {n}" for n in expected.unroutable]
    for dest in enabled:
        found, counts, more = check_destination(dest, expected, ledger, enabled)
        findings += found
        checked.update(counts)
        notes += more
    if settings.invoicing.payments.enabled:
        found, counts = check_payments(settings, enabled, expected, ledger, until.date())
        findings += found
        checked.update(counts)
    log.info("bills since %s: %s; %d finding(s)", since, checked, len(findings))
    return {"findings": findings, "checked": checked, "notes": notes, "period": f"{since} to {until.date()}"}


def check_payments(settings: M3shConfig, enabled: Sequence[Any], expected: Expected, ledger: Any,
                   as_of: dt.date) -> tuple[list[Finding], dict[str, int]]:
    """NetSuite's payment state of the bills in scope <-> what the CRM destinations show (the payments
    step's writers, as a dry run): one ``payment_state_mismatch`` finding per record that differs."""
    from m3sh.invoicing.payments import payment_disagreements

    sources = [d for d in enabled if isinstance(d, NetSuiteDestination)
               and (settings.invoicing.payments.sources is None or d.name in settings.invoicing.payments.sources)]
    crm = [d for d in enabled if isinstance(d, SalesforceDestination | HubSpotDestination)]
    if not sources or not crm:
        return [], {}
    bills = {s.name: set(expected.by_destination.get(s.name, {})) for s in sources}
    outcomes, items = payment_disagreements(sources, crm, ledger, bills, as_of)
    state = {p.bill_id: s.text for p, s in items}
    system = {d.name: d.type for d in crm}
    findings = [Finding("payment_state_mismatch", system.get(o.destination, "netsuite"), o.destination,
                        bill_id=o.bill_id, expected=state.get(o.bill_id, ""), actual=o.detail, detail=o.record)
                for o in outcomes]
    return findings, {"NetSuite invoices with payment state": len(items)}


# ------------------------------------------------------------------------------------ staging
def stage_findings(storage: Storage, dag_id: str, run_id: str, name: str, findings: Iterable[Finding]) -> str:
    key = staging_key(storage, dag_id, run_id, name)
    storage.put_jsonl(key, (asdict(f) for f in findings))
    return key


def load_findings(storage: Storage, keys: Iterable[str]) -> list[Finding]:
    return [Finding(**row) for key in keys for row in storage.iter_jsonl(key)]


# ------------------------------------------------------------------------------------- report
def report_keys(storage: Storage, day: str, name: str = REPORT_NAME) -> tuple[str, str, str]:
    """``(report.html, report.csv, latest.json)``."""
    return layout.reconcile_reports(storage, name, day)


def write_report(storage: Storage, findings: list[Finding], *, checked: dict[str, int], notes: list[str],
                 period: str, run_id: str, name: str = REPORT_NAME,
                 now: dt.datetime | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The HTML page and CSV of the day, and ``latest.json``. Returns ``(summary, the previous
    summary or {})``: the previous one says whether this run resolves earlier drift."""
    now = now or dt.datetime.now(dt.UTC)
    html_key, csv_key, latest_key = report_keys(storage, now.date().isoformat(), name)
    storage.put_bytes(html_key, to_html(findings, title="m3sh reconciliation", period=period, checked=checked,
                                        notes=notes), "text/html")
    storage.put_bytes(csv_key, to_csv(findings), "text/csv")
    previous = storage.get_json(latest_key) or {}
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.check] = counts.get(f.check, 0) + 1
    summary = {"run_id": run_id, "generated_at": now.isoformat(), "period": period, "clean": not findings,
               "findings": len(findings), "by_check": counts, "checked": checked, "html_key": html_key,
               "csv_key": csv_key, "drift": [asdict(f) for f in findings[:DRIFT_IN_SUMMARY]]}
    storage.put_json(latest_key, summary)
    log.info("reconciliation: %d finding(s) %s; report %s", len(findings), counts, storage.uri(html_key))
    return summary, previous if isinstance(previous, dict) else {}


def log_drift(findings: list[Finding], *, dry_run: bool = False) -> None:
    for f in findings if dry_run else findings[:DRIFT_IN_LOG]:
        log.warning("drift%s: %s %s %s bill=%s account=%s expected=%s actual=%s %s", " (dry run)" if dry_run else "",
                    f.check, f.system, f.destination, f.bill_id, f.account, f.expected, f.actual, f.detail)


def drift_message(findings: list[Finding], counts: dict[str, int], report_uri: str) -> str:
    """The failure text: how many, of which kinds, the first ones, and where the report is."""
    return (f"reconciliation found {len(findings)} difference(s) {counts}: "
            + "; ".join(f"{f.destination} {f.check} {f.record}" for f in findings[:DRIFT_IN_MESSAGE])
            + f" (report {report_uri})")


def resolved_alert(previous: dict[str, Any], *, dag_id: str, task_id: str, run_id: str) -> dict[str, Any]:
    """The "resolved" alert of a clean run after a drifting one (the m3sh alert's shape)."""
    return {"event": "resolved", "dag_id": dag_id, "task_id": task_id, "map_index": -1, "run_id": run_id,
            "try_number": None, "records": [], "log_url": None,
            "cause": f"all {previous.get('findings')} difference(s) of {previous.get('run_id')} are gone"}


def send_alert(channels: Iterable[dict[str, Any]], alert: dict[str, Any]) -> int:
    """Send to every channel (:class:`~m3sh.config.Notifier` dumps); a broken channel is logged and
    never fails the run. Returns the channels that took it."""
    from m3sh.notifiers.alerts import format_text, send

    sent = 0
    for channel in channels:
        try:
            send(channel, alert, format_text(alert))
            sent += 1
        except Exception:
            log.exception("%s alert to %s failed", alert.get("event"), channel.get("name"))
    return sent
