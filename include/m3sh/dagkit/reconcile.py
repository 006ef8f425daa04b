"""``m3sh_reconcile``: does every system agree? Daily, for the bills of the look-back period.

Graph: ``compare_accounts`` (CRM accounts <-> m3ter accounts) and ``compare_bills`` (m3ter bills <->
each NetSuite account's invoices via SuiteQL <-> Salesforce ``Invoice__c`` <-> the S3 archive) stage
their findings in S3 -> ``report`` writes an HTML page (for finance) and a CSV under
``reports/reconcile/<date>/``, ``reports/reconcile/latest.json`` for the UI, and fails the run with
``RunFailed(records=...)`` when anything drifted, so the failure alert fires. A clean run after a
drifting one sends a "resolved" alert.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict
from typing import Any

from airflow.sdk import DAG, CronDataIntervalTimetable, Param, task

from m3sh.config import M3shConfig, get_config
from m3sh.dagkit.defaults import common_dag_args
from m3sh.dagkit.errors import RunFailed

log = logging.getLogger(__name__)
DAG_ID = "m3sh_reconcile"


def _staging(storage: Any, run_id: str, name: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return storage.key("staging", DAG_ID, safe, name)


def expected_bills(conf: M3shConfig, m3ter: Any, since: dt.date, until: dt.datetime) -> tuple[
        dict[str, dict[str, Any]], set[str], dict[str, list[str]]]:
    """``(expected per destination, every m3ter bill id, notes)``: bills in the export states dated
    on/after ``since`` and last changed before ``until`` (later changes are the next sync's job)."""
    from m3sh.invoicing.deliver import bill_state, fetch_bills
    from m3sh.invoicing.enrich import Enricher
    from m3sh.invoicing.reconcile import ExpectedBill
    from m3sh.invoicing.routing import route_bill

    all_ids = {b["id"] for b in m3ter.list_bills(exclude_line_items=True)}
    bills = [b for b in fetch_bills(m3ter, conf.invoicing.bill_states, None, until)
             if str(b.get("billDate") or "") >= since.isoformat()]
    relaxed = conf.model_copy(update={"invoicing": conf.invoicing.model_copy(update={"required_enrichment": []})})
    enriched, errors = Enricher(relaxed, m3ter, readers={}).enrich(bills)
    expected: dict[str, dict[str, Any]] = {d.name: {} for d in conf.invoicing.destinations if d.enabled}
    raw = {b["id"]: b for b in bills}
    for eb in enriched:
        targets, _ = route_bill(conf.invoicing, eb)
        for t in targets:
            dest = conf.destination(t)
            if dest.type == "salesforce" and eb.crm.source != "salesforce":
                continue  # not a Salesforce customer: nothing to attach an invoice to
            if getattr(dest, "crm_source", None) and eb.crm.source_name != dest.crm_source:
                continue  # another org's (or portal's) customer: that org's destination has it
            status = "Posted" if bill_state(raw[eb.bill_id]) == "LOCKED" else "Approved"
            expected[t][eb.bill_id] = ExpectedBill(eb.bill_id, eb.account_code, eb.currency, eb.erp_total, status,
                                                      eb.bill_date)
    notes = {"unroutable": [f"bill {e.bill_id} ({e.account_code}): {e.reason}" for e in errors]}
    return expected, all_ids, notes


def build_reconcile_dag(cfg: M3shConfig | None = None) -> DAG:
    cfg = cfg or get_config()
    with DAG(
        dag_id=DAG_ID,
        description="CRM <-> m3ter accounts; m3ter bills <-> NetSuite accounts <-> Salesforce <-> S3 archive",
        schedule=CronDataIntervalTimetable("0 6 * * *", timezone="UTC"),
        **common_dag_args(cfg, "invoicing", "reconcile"),
        params={
            "dry_run": Param(False, type="boolean",
                             description="Compare and log the differences; write no report and raise no alert"),
            "lookback_days": Param(0, type="integer", minimum=0,
                                   description="Bills dated this many days back "
                                               "(0: invoicing.reconcile_lookback_days)"),
        },
        doc_md=__doc__,
    ) as dag:

        @task
        def compare_accounts(run_id: str) -> dict[str, Any]:
            from m3sh.crm.links import SourceLinks
            from m3sh.hooks.m3ter import M3terHook
            from m3sh.invoicing.enrich import crm_link
            from m3sh.invoicing.reconcile import compare_accounts as compare
            from m3sh.storage import Storage

            conf = get_config()
            storage = Storage.from_config(conf.storage)
            m3ter = M3terHook(conf.m3ter.conn_id)
            accounts = {a["id"]: a for a in m3ter.list_accounts()}
            mappings: dict[str, list[dict[str, Any]]] = {}
            for m in m3ter.list_external_mappings():
                mappings.setdefault(str(m.get("m3terId")), []).append(m)
            sources = [s for s in conf.crm.sources if s.enabled]
            resolver = SourceLinks(conf.crm.sources)
            # Keyed by source name, not type: every org is read on its own connection, and an account
            # linked from several orgs is checked against each (a retired source's links are history).
            links: dict[str, list[tuple[str, str, str]]] = {}
            for acc_id, acc in accounts.items():
                for source, crm_id in resolver.account_links(mappings.get(acc_id, [])):
                    links.setdefault(acc_id, []).append((str(acc.get("code")), source.name, crm_id))
                if acc_id not in links:  # not linked by m3sh_crm_sync: the crm_source/crm_id custom fields
                    link = crm_link(acc, [], resolver)
                    if link and link[0] in {s.name for s in sources}:
                        links[acc_id] = [(str(acc.get("code")), link[0], link[1])]
            records: dict[tuple[str, str], dict[str, Any]] = {}
            for s in sources:
                cur_field = s.account_fields.get("currency")
                if s.type == "salesforce":
                    from m3sh.hooks.salesforce import SalesforceSync

                    fields = ["Id"] + [f for f in (s.write_back_field, cur_field) if f]
                    for rec in SalesforceSync(conn_id=s.conn_id).query(
                            f"SELECT {', '.join(fields)} FROM Account", sobject="Account"):  # noqa: S608
                        records[(s.name, str(rec["Id"]))] = {
                            "m3ter_id": rec.get(s.write_back_field) if s.write_back_field else None,
                            "currency": rec.get(cur_field) if cur_field else None}
                else:
                    from m3sh.hooks.hubspot import HubSpotHook

                    props = [p for p in (s.write_back_field, cur_field) if p]
                    for rec in HubSpotHook(s.conn_id).iter_objects("companies", props):
                        p = rec.get("properties") or {}
                        records[(s.name, str(rec["id"]))] = {
                            "m3ter_id": p.get(s.write_back_field) if s.write_back_field else None,
                            "currency": p.get(cur_field) if cur_field else None}
            for acc_id, acc_links in links.items():
                for _, source_name, crm_id in acc_links:
                    linked = records.get((source_name, crm_id)) or records.get((source_name, crm_id[:15]))
                    if linked is not None:
                        linked["m3ter_currency"] = accounts[acc_id].get("currency")
            findings = compare(links, records, set(accounts))
            key = _staging(storage, run_id, "accounts.jsonl")
            storage.put_jsonl(key, (asdict(f) for f in findings))
            log.info("accounts: %d m3ter account(s), %d linked, %d CRM record(s): %d finding(s)", len(accounts),
                     len(links), len(records), len(findings))
            return {"key": key, "findings": len(findings),
                    "checked": {"m3ter accounts": len(accounts), "CRM records": len(records)}}

        @task
        def compare_bills(params: dict[str, Any], run_id: str) -> dict[str, Any]:
            from m3sh.hooks.m3ter import M3terHook
            from m3sh.invoicing.ledger import S3Ledger
            from m3sh.invoicing.reconcile import compare_netsuite, compare_records
            from m3sh.invoicing.s3archive import archive_keys
            from m3sh.storage import Storage

            conf = get_config()
            storage = Storage.from_config(conf.storage)
            m3ter = M3terHook(conf.m3ter.conn_id)
            # Bills changed up to now count: a reconciliation is a statement about the present.
            until = dt.datetime.now(dt.UTC)
            days = int(params.get("lookback_days") or 0) or conf.invoicing.reconcile_lookback_days
            since = until.date() - dt.timedelta(days=days)
            expected, known, notes = expected_bills(conf, m3ter, since, until)
            ledger = S3Ledger(storage)
            findings: list[Any] = []
            checked = {"m3ter bills in scope": len({b for per in expected.values() for b in per})}
            note_lines = [f"Bills dated on/after {since}, in states {conf.invoicing.bill_states}."]
            note_lines += [f"Not routable (set aside by the invoice sync): {n}" for n in notes["unroutable"]]
            for dest in (d for d in conf.invoicing.destinations if d.enabled):
                want = expected.get(dest.name, {})
                if dest.type == "netsuite":
                    from m3sh.hooks.netsuite import NetSuiteHook

                    rows = list(NetSuiteHook(dest.conn_id).suiteql(
                        "SELECT t.id, t.tranid, t.externalid, t.type, t.foreigntotal, "
                        "BUILTIN.DF(t.currency) AS currency FROM transaction t "
                        "WHERE t.type IN ('CustInvc', 'CustCred') ORDER BY t.id"))
                    # Destinations may share one NetSuite account (a subsidiary graduated into it, a
                    # OneWorld account): the bills another of them expects there are not "extra" here.
                    shared = {b for d in conf.invoicing.destinations
                              if d.enabled and d.name != dest.name and d.type == "netsuite"
                              and d.conn_id == dest.conn_id for b in expected.get(d.name, {})} - set(want)
                    rows = [r for r in rows if str(r.get("externalid") or "").partition(":")[0] not in shared]
                    findings += compare_netsuite(dest.name, want, rows, known, ledger.entries(dest.name))
                    checked[f"{dest.name} invoices and credit memos"] = len(rows)
                elif dest.type == "salesforce":
                    from m3sh.hooks.salesforce import SalesforceSync

                    found = {str(r[dest.external_id_field]): {"total": r.get("Amount__c"),
                                                             "currency": r.get("Currency__c"),
                                                             "status": r.get("Status__c")}
                             for r in SalesforceSync(conn_id=dest.conn_id).query(
                                 f"SELECT {dest.external_id_field}, Amount__c, Currency__c, Status__c "  # noqa: S608
                                 f"FROM {dest.invoice_object}", sobject=dest.invoice_object)
                             if r.get(dest.external_id_field)}
                    findings += compare_records("salesforce", dest.name, want, found, known)
                    checked[f"{dest.name} {dest.invoice_object} records"] = len(found)
                elif dest.type == "s3":
                    archive = Storage(dest.conn_id, dest.bucket)
                    found = {}
                    for bill_id, bill in want.items():
                        data = archive.get_json(archive_keys(dest, bill_id, bill.bill_date)[0])
                        if isinstance(data, dict):
                            found[bill_id] = {"total": data.get("erp_total"), "currency": data.get("currency")}
                    findings += compare_records("s3", dest.name, want, found, known)
                    checked[f"{dest.name} archived bills"] = len(found)
                else:
                    note_lines.append(f"{dest.name} ({dest.type}) cannot be read back; not reconciled.")
            key = _staging(storage, run_id, "bills.jsonl")
            storage.put_jsonl(key, (asdict(f) for f in findings))
            log.info("bills since %s: %s; %d finding(s)", since, checked, len(findings))
            return {"key": key, "findings": len(findings), "checked": checked, "notes": note_lines,
                    "period": f"{since} to {until.date()}"}

        @task
        def report(accounts: dict[str, Any], bills: dict[str, Any], params: dict[str, Any],
                   run_id: str) -> dict[str, Any]:
            from m3sh.invoicing.reconcile import Finding, to_csv, to_html
            from m3sh.notifiers.alerts import format_text, send
            from m3sh.storage import Storage

            conf = get_config()
            storage = Storage.from_config(conf.storage)
            findings = [Finding(**row) for part in (accounts, bills) for row in storage.iter_jsonl(part["key"])]
            if params.get("dry_run"):
                for f in findings:
                    log.warning("drift (dry run): %s", f)
                log.info("dry run: %d difference(s); no report written, no alert", len(findings))
                return {"clean": not findings, "dry_run": True}
            day = dt.datetime.now(dt.UTC).date().isoformat()
            html_key = storage.key("reports", "reconcile", day, "report.html")
            csv_key = storage.key("reports", "reconcile", day, "report.csv")
            checked = {**accounts["checked"], **bills["checked"]}
            storage.put_bytes(html_key, to_html(findings, title="m3sh reconciliation", period=bills["period"],
                                                checked=checked, notes=bills["notes"]), "text/html")
            storage.put_bytes(csv_key, to_csv(findings), "text/csv")
            latest_key = storage.key("reports", "reconcile", "latest.json")
            previous = storage.get_json(latest_key) or {}
            counts: dict[str, int] = {}
            for f in findings:
                counts[f.check] = counts.get(f.check, 0) + 1
            summary = {"run_id": run_id, "generated_at": dt.datetime.now(dt.UTC).isoformat(), "period": bills["period"],
                       "clean": not findings, "findings": len(findings), "by_check": counts, "checked": checked,
                       "html_key": html_key, "csv_key": csv_key, "drift": [asdict(f) for f in findings[:100]]}
            storage.put_json(latest_key, summary)
            log.info("reconciliation: %d finding(s) %s; report %s", len(findings), counts, storage.uri(html_key))
            if findings:
                for f in findings[:50]:
                    log.warning("drift: %s %s %s bill=%s account=%s expected=%s actual=%s %s", f.check, f.system,
                                f.destination, f.bill_id, f.account, f.expected, f.actual, f.detail)
                raise RunFailed(f"reconciliation found {len(findings)} difference(s) {counts}: "
                                + "; ".join(f"{f.destination} {f.check} {f.record}" for f in findings[:10])
                                + f" (report {storage.uri(html_key)})",
                                records=sorted({f.record for f in findings}))
            if previous and previous.get("clean") is False:
                log.info("reconciliation resolved: the %d difference(s) of run %s are gone",
                         int(previous.get("findings") or 0), previous.get("run_id"))
                alert = {"event": "resolved", "dag_id": DAG_ID, "task_id": "report", "map_index": -1,
                         "run_id": run_id, "try_number": None, "records": [], "log_url": None,
                         "cause": f"all {previous.get('findings')} difference(s) of {previous.get('run_id')} are gone"}
                for channel in (n.model_dump() for n in conf.alerting.notifiers if n.name in conf.alerting.on_failure):
                    try:
                        send(channel, alert, format_text(alert))
                    except Exception:
                        log.exception("resolved alert to %s failed", channel["name"])
            return {"clean": True, "html_key": html_key}

        report(compare_accounts(), compare_bills())  # type: ignore[call-arg,arg-type,misc]
    return dag

