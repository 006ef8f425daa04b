"""The "m3sh" page of the Airflow UI: what m3sh did, in one screen a finance person can read.

Mounted by the m3sh plugin at ``/m3sh/ui`` inside the Airflow api-server and shown in the UI's
navigation as an external view (an iframe on ``/plugin/m3sh``). Sections:

* **CRM sync**: the last sync per CRM source with record counts, and the recent syncs with what
  changed in m3ter (reports ``<prefix>reports/m3sh_crm_sync/<run_id>.json``) and the conflicts the
  m3ter -> CRM steps recorded (``conflicts/crm/<source>/<run id>.json``);
* **Usage ingest**: files, rows accepted and rejected per feed (manifests under
  ``manifests/usage/``) and the dead-letter files (``dead-letter/usage/``);
* **Invoices**: the latest invoice-sync run per destination with its failures and *action needed*
  items (``reports/m3sh_invoice_sync/latest.json``) and, per destination, how many bills the
  delivery ledger holds (``state/invoicing/ledger/<destination>/``);
* **Plan & contract automation**: exact totals per outcome and the newest firings of the trigger
  audit trail, with a link to the full trail at ``/m3sh/ui/audit`` (filters by rule, account,
  outcome and date range as query parameters, so a filtered view is a shareable URL; 50 firings a
  page; ``/m3sh/ui/audit.csv`` exports the filtered set, ``?details=1`` with actions and errors;
  ``/m3sh/ui/api/audit`` is the page as JSON).
  It reads the audit index the ledger writes (:mod:`m3sh.automation.audit`), never the whole ledger;
* **Reconciliation**: the latest summary (``reports/reconcile/latest.json``);
* **Recent runs** of the m3sh DAGs, read from Airflow's public REST API *with the caller's own
  token*, so the page shows exactly the runs that user may see.

It reads durable state only (S3 and Airflow), never local files, so every api-server replica shows
the same page. Every section is read independently: one unreadable source shows its error in its
own box and never blanks the page.

Authentication: the same as Airflow's own API (:func:`airflow.api_fastapi.core_api.security.get_user`:
the ``Authorization: Bearer`` token, else the UI's ``_token`` session cookie), plus the auth
manager's ``WEBSITE`` view permission. A browser without a session is redirected to Airflow's
login page; API clients get 401.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import html
import io
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from m3sh import layout

if TYPE_CHECKING:
    import httpx

    from m3sh.automation.audit import AuditFilter, AuditPage
    from m3sh.config import M3shConfig
    from m3sh.storage import Storage

log = logging.getLogger(__name__)
COOKIE_NAME = "_token"  # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN
DAG_PREFIX = "m3sh_"
CRM_DAG = "m3sh_crm_sync"
INVOICE_DAG = "m3sh_invoice_sync"
MAX_OBJECTS = 300  # newest objects read per section (manifests, reports)
READ_THREADS = 8
CONFLICTS_SHOWN = 20  # the newest; every conflict stays in S3 (conflicts/crm/<source>/<run id>.json)
_bearer = HTTPBearer(auto_error=False)


# ------------------------------------------------------------------------------------ reading
@dataclass
class Section:
    """One block of the page: its data, or the reason it could not be read."""

    data: Any = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def _guard(fn: Callable[[], Any]) -> Section:
    try:
        result = fn()
    except Exception as exc:  # one unreadable source must not blank the whole page
        log.warning("m3sh view: %s failed: %s", getattr(fn, "__name__", fn), exc)
        return Section(error=f"{type(exc).__name__}: {str(exc)[:300]}")
    return result if isinstance(result, Section) else Section(data=result)


def _iso(value: Any) -> str | None:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    return str(value) if value else None


class StatusReader:
    """Reads the durable state m3sh's DAGs leave in S3 (see the module docstring for the keys)."""

    def __init__(self, cfg: M3shConfig, storage: Storage, max_objects: int = MAX_OBJECTS) -> None:
        self.cfg = cfg
        self.storage = storage
        self.max_objects = max_objects

    # -- helpers ------------------------------------------------------------------------------
    def _newest(self, prefix: str, *, flat: bool = False, suffix: str = ".json") -> tuple[list[dict[str, Any]], int]:
        """Objects under ``prefix`` newest first (at most ``max_objects``), and how many there are."""
        objs = [o for o in self.storage.list_keys(prefix) if o["Key"].endswith(suffix)
                and (not flat or "/" not in o["Key"][len(prefix):])]
        objs.sort(key=lambda o: o["LastModified"], reverse=True)
        return objs[: self.max_objects], len(objs)

    def _read_many(self, keys: Iterable[str]) -> list[Any]:
        keys = list(keys)
        if not keys:
            return []
        with ThreadPoolExecutor(min(READ_THREADS, len(keys))) as pool:
            return list(pool.map(self.storage.get_json, keys))

    # -- sections -----------------------------------------------------------------------------
    def crm(self) -> Section:
        prefix = layout.reports_prefix(self.storage, CRM_DAG)
        objs, total = self._newest(prefix, flat=True)
        reports = []
        for obj, rep in zip(objs, self._read_many(o["Key"] for o in objs), strict=True):
            if not isinstance(rep, dict):
                continue
            counts = rep.get("counts") or {}
            reports.append({
                "run_id": rep.get("run_id") or obj["Key"][len(prefix):-5], "at": _iso(obj["LastModified"]),
                "dry_run": bool(rep.get("dry_run")), "records": rep.get("records"),
                "sources": rep.get("sources") or {}, "customers": counts.get("customers"),
                "created": sum(v for k, v in counts.items() if k.endswith("_create")),
                "updated": sum(v for k, v in counts.items() if k.endswith("_update")),
                "conflicts": sum(v for k, v in counts.items() if k.endswith("_conflict")),
                "errors": sum(v for k, v in counts.items() if k.endswith("_error")),
                "m3ter_writes": counts.get("m3ter_writes", 0), "write_backs": counts.get("write_backs", 0)})
        per_source = []
        for src in self.cfg.crm.sources:
            last = next((r for r in reports if src.name in r["sources"]), None)
            last_live = next((r for r in reports if src.name in r["sources"] and not r["dry_run"]), None)
            per_source.append({"source": src.name, "type": src.type, "enabled": src.enabled,
                               "last_run": last and last["run_id"], "last_at": last and last["at"],
                               "last_records": last and last["sources"].get(src.name),
                               "last_dry_run": last and last["dry_run"],
                               "last_live_at": last_live and last_live["at"],
                               "last_live_records": last_live and last_live["sources"].get(src.name)})
        notes = [f"showing the newest {len(objs)} of {total} sync reports"] if total > len(objs) else []
        conflicts, files = self._crm_conflicts()
        per_run = collections.Counter(str(c["run_id"]) for c in conflicts)
        for r in reports:  # a run's conflicts: the CRM -> m3ter step's plus the m3ter -> CRM steps'
            r["conflicts"] += per_run.get(str(r["run_id"]), 0)
        if files > self.max_objects:
            notes.append(f"conflicts: showing those of the newest {self.max_objects} of {files} runs with conflicts")
        return Section(data={"per_source": per_source, "runs": reports, "conflicts": conflicts[:CONFLICTS_SHOWN]},
                       notes=notes)

    def _crm_conflicts(self) -> tuple[list[dict[str, Any]], int]:
        """Fields changed in m3ter and in a CRM between two syncs (m3sh.crm.outbound), newest first."""
        objs, total = self._newest(layout.crm_conflicts_prefix(self.storage))
        out: list[dict[str, Any]] = []
        for obj, doc in zip(objs, self._read_many(o["Key"] for o in objs), strict=True):
            for c in (doc.get("conflicts") or []) if isinstance(doc, dict) else []:
                out.append({**{k: c.get(k) for k in ("source", "record", "account", "field", "m3ter_value",
                                                      "crm_value", "m3ter_changed_at", "crm_changed_at",
                                                      "rule", "decision", "run_id")},
                            "at": _iso(obj["LastModified"])})
        return out, total

    def usage(self) -> Section:
        prefix = layout.usage_manifests_prefix(self.storage)
        objs, total = self._newest(prefix)
        feeds: dict[str, dict[str, Any]] = {f.name: {"feed": f.name, "files": 0, "rows_read": 0, "accepted": 0,
                                                     "rejected": 0, "failed_files": 0, "last_at": None}
                                            for f in self.cfg.usage.feeds}
        for man in self._read_many(o["Key"] for o in objs):
            if not isinstance(man, dict):
                continue
            feed = feeds.setdefault(str(man.get("feed")), {"feed": man.get("feed"), "files": 0, "rows_read": 0,
                                                           "accepted": 0, "rejected": 0, "failed_files": 0,
                                                           "last_at": None})
            feed["files"] += 1
            feed["failed_files"] += man.get("status") == "failed"
            for k in ("rows_read", "accepted", "rejected"):
                feed[k] += int(man.get(k) or 0)
            if man.get("finished_at") and (feed["last_at"] is None or man["finished_at"] > feed["last_at"]):
                feed["last_at"] = man["finished_at"]
        dl_prefix = layout.usage_dead_letters_prefix(self.storage)
        dead, dl_total = self._newest(dl_prefix, suffix=".jsonl")
        dl_feeds: dict[str, dict[str, Any]] = {}
        for obj in self.storage.list_keys(dl_prefix):
            rest = obj["Key"][len(dl_prefix):]
            name = rest.split("/", 1)[0]
            d = dl_feeds.setdefault(name, {"feed": name, "files": 0, "bytes": 0})
            d["files"] += 1
            d["bytes"] += int(obj.get("Size") or 0)
        recent_dead = []
        for obj in dead[:10]:
            rows = sum(1 for _ in self.storage.iter_jsonl(obj["Key"]))
            rest = obj["Key"][len(dl_prefix):]
            feed_name, _, file_key = rest.partition("/")
            recent_dead.append({"feed": feed_name, "file": file_key.removesuffix(".jsonl"), "rows": rows,
                                "at": _iso(obj["LastModified"]), "uri": self.storage.uri(obj["Key"])})
        notes = [f"totals over the newest {len(objs)} of {total} ingested files"] if total > len(objs) else []
        return Section(data={"feeds": list(feeds.values()), "dead_letter_feeds": list(dl_feeds.values()),
                             "dead_letter_files": dl_total, "recent_dead_letters": recent_dead}, notes=notes)

    def invoices(self) -> Section:
        latest = self.storage.get_json(layout.latest_report(self.storage, INVOICE_DAG))
        ledger: dict[str, int] = {}
        for dest in self.cfg.invoicing.destinations:
            prefix = layout.delivery_ledger_prefix(self.storage, dest.name)
            ledger[dest.name] = sum(1 for o in self.storage.list_keys(prefix)
                                    if not o["Key"][len(prefix):].startswith("customer"))
        destinations = []
        by_dest = (latest or {}).get("by_destination") or {}
        for dest in self.cfg.invoicing.destinations:
            counts = by_dest.get(dest.name) or {}
            destinations.append({"destination": dest.name, "type": dest.type, "enabled": dest.enabled,
                                 "last_run": counts, "ledger_bills": ledger.get(dest.name, 0)})
        return Section(data={"latest": latest, "destinations": destinations})

    def triggers(self) -> Section:
        from m3sh.automation.audit import AuditFilter, AuditTrail

        page = AuditTrail(self.storage).page(AuditFilter())
        return Section(data={"entries": page.entries, "by_status": page.by_status, "total": page.total,
                             "s3_requests": page.s3_requests}, notes=page.notes)

    def reconcile(self) -> Section:
        return Section(data=self.storage.get_json(layout.latest_report(self.storage, "reconcile")))

    def snapshot(self) -> dict[str, Section]:
        parts = {"crm": self.crm, "usage": self.usage, "invoices": self.invoices, "triggers": self.triggers,
                 "reconcile": self.reconcile}
        with ThreadPoolExecutor(len(parts)) as pool:
            futures = {name: pool.submit(_guard, fn) for name, fn in parts.items()}
            return {name: f.result() for name, f in futures.items()}


class AirflowRuns:
    """Recent m3sh DAG runs through Airflow's public REST API, as the calling user."""

    def __init__(self, client: httpx.Client, token: str | None) -> None:
        self.client = client
        self.token = token

    def recent(self, limit: int = 25) -> Section:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        r = self.client.get("/api/v2/dags/~/dagRuns", headers=headers, timeout=15,
                            params={"dag_id_pattern": DAG_PREFIX, "order_by": "-run_after", "limit": limit})
        if r.status_code != 200:
            return Section(error=f"Airflow REST API answered HTTP {r.status_code}: {r.text[:200]}")
        runs = [run for run in r.json().get("dag_runs", []) if str(run.get("dag_id", "")).startswith(DAG_PREFIX)]
        return Section(data=[{k: run.get(k) for k in ("dag_id", "dag_run_id", "state", "run_type", "run_after",
                                                       "start_date", "end_date", "conf", "note")} for run in runs])


# ------------------------------------------------------------------------------------ rendering
_CSS = """
:root { color-scheme: light; --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --bg:#f7f8fa; --ok:#1f7a4d;
        --bad:#b42318; --warn:#9a6700; --blue:#0b5cad; }
* { box-sizing: border-box; }
body { margin:0; padding:24px 28px 48px; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
       color:var(--ink); background:var(--bg); }
header { display:flex; align-items:baseline; justify-content:space-between; gap:16px; margin-bottom:18px; }
h1 { font-size:22px; margin:0; } h2 { font-size:17px; margin:0 0 4px; }
.sub { color:var(--muted); font-size:13px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:16px 18px; margin:0 0 16px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:10px 0 12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 14px; min-width:150px; background:#fcfcfd; }
.card .n { font-size:22px; font-weight:600; font-variant-numeric:tabular-nums; }
.card .l { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; width:100%; margin:8px 0 4px; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:6px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; font-size:12px; text-transform:uppercase; letter-spacing:.03em; }
td.num, th.num { text-align:right; }
.badge { display:inline-block; white-space:nowrap; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600;
         background:#eef2f6; color:var(--muted); }
.badge.success, .badge.done, .badge.ok, .badge.clean { background:#e3f4ea; color:var(--ok); }
.badge.failed, .badge.abandoned, .badge.error, .badge.drift { background:#fde8e7; color:var(--bad); }
.badge.running, .badge.queued, .badge.claimed, .badge.dry { background:#fff4d6; color:var(--warn); }
.alert { border-left:4px solid var(--bad); background:#fff6f5; padding:8px 12px; margin:8px 0; border-radius:4px; }
.action { border-left:4px solid var(--warn); background:#fffaf0; padding:8px 12px; margin:8px 0; border-radius:4px; }
.empty { color:var(--muted); font-style:italic; margin:8px 0; }
.note { color:var(--muted); font-size:12px; }
a { color:var(--blue); text-decoration:none; } a:hover { text-decoration:underline; }
code { font-size:12px; background:#f1f3f5; padding:1px 4px; border-radius:4px; }
form.filters { display:flex; flex-wrap:wrap; gap:10px 16px; align-items:flex-end; margin:8px 0 12px; }
form.filters label { display:flex; flex-direction:column; gap:2px; font-size:12px; color:var(--muted); }
form.filters input, form.filters select { font:inherit; color:var(--ink); padding:4px 6px; border:1px solid var(--line);
                                          border-radius:6px; background:#fff; }
form.filters button { font:inherit; padding:5px 14px; border-radius:6px; border:1px solid var(--blue);
                      background:var(--blue); color:#fff; cursor:pointer; }
.pager { margin:8px 0; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _n(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return _e(value)


def _when(value: Any) -> str:
    if not value:
        return "—"
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return _e(value)
    return f'<span title="{_e(value)}">{parsed.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")} UTC</span>'


def _badge(state: Any, label: str | None = None) -> str:
    s = _e(state or "none")
    return f'<span class="badge {s}">{_e(label or state or "—")}</span>'


def _table(headers: list[str], rows: list[list[str]], numeric: Iterable[int] = ()) -> str:
    num = set(numeric)
    head = "".join(f'<th class="num">{_e(h)}</th>' if i in num else f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cards(items: list[tuple[str, Any]]) -> str:
    return '<div class="cards">' + "".join(f'<div class="card"><div class="n">{_n(v)}</div>'
                                           f'<div class="l">{_e(label)}</div></div>' for label, v in items) + "</div>"


def _section(anchor: str, title: str, sub: str, sec: Section, body: Callable[[Any], str]) -> str:
    inner = (f'<div class="alert">Could not read this section: {_e(sec.error)}</div>' if sec.error
             else body(sec.data))
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in sec.notes)
    return f'<section id="{anchor}"><h2>{_e(title)}</h2><div class="sub">{_e(sub)}</div>{inner}{notes}</section>'


def _run_link(ui_base: str, dag_id: str, run_id: str | None) -> str:
    if not run_id:
        return "—"
    return (f'<a target="_top" href="{_e(ui_base)}/dags/{quote(dag_id)}/runs/{quote(run_id, safe="")}">'
            f"{_e(run_id)}</a>")


def _crm_html(data: dict[str, Any], ui_base: str) -> str:
    rows = []
    for s in data["per_source"]:
        mode = "" if s["last_run"] is None else (" " + _badge("dry", "dry run") if s["last_dry_run"] else "")
        rows.append([f"<b>{_e(s['source'])}</b>", _e(s["type"]), _badge("ok" if s["enabled"] else "none",
                                                                         "enabled" if s["enabled"] else "disabled"),
                     _when(s["last_at"]) + mode, _n(s["last_records"]), _when(s["last_live_at"]),
                     _n(s["last_live_records"])])
    out = _table(["Source", "Type", "Status", "Last sync", "Records read", "Last live sync", "Records read (live)"],
                 rows, numeric=[4, 6])
    runs = data["runs"][:10]
    if not runs:
        return out + '<p class="empty">No CRM sync has run yet.</p>'
    out += "<h3 class='sub'>Recent syncs</h3>" + _table(
        ["When", "Run", "Mode", "CRM records", "Customers", "Creates", "Updates", "Conflicts", "Errors",
         "m3ter writes", "Write-backs"],
        [[_when(r["at"]), _run_link(ui_base, CRM_DAG, r["run_id"]),
          _badge("dry", "dry run") if r["dry_run"] else _badge("ok", "live"), _n(r["records"]), _n(r["customers"]),
          _n(r["created"]), _n(r["updated"]), _n(r["conflicts"]),
          _badge("failed", str(r["errors"])) if r["errors"] else "0", _n(r["m3ter_writes"]), _n(r["write_backs"])]
         for r in runs], numeric=[3, 4, 5, 6, 7, 9, 10])
    out += '<p class="note">For a dry run, creates, updates and write-backs are what a live run would do.</p>'
    conflicts = data.get("conflicts") or []
    out += ("<h3 class='sub'>Conflicts (a field changed in m3ter and in the CRM between two syncs; the "
            "ownership rule decided)</h3>")
    if not conflicts:
        return out + '<p class="empty">No conflicts recorded.</p>'
    return out + _table(
        ["When", "Run", "Source", "Record", "Account", "Field", "m3ter value", "m3ter changed", "CRM value",
         "CRM changed", "Decision"],
        [[_when(c["at"]), _run_link(ui_base, CRM_DAG, c["run_id"]), _e(c["source"]), _e(c["record"]),
          _e(c["account"]), f"<b>{_e(c['field'])}</b>", _e(c["m3ter_value"]), _when(c["m3ter_changed_at"]),
          _e(c["crm_value"]), _when(c["crm_changed_at"]), _e(c["decision"])] for c in conflicts])


def _usage_html(data: dict[str, Any]) -> str:
    feeds = data["feeds"]
    totals = [("files ingested", sum(f["files"] for f in feeds)),
              ("rows accepted", sum(f["accepted"] for f in feeds)),
              ("rows rejected", sum(f["rejected"] for f in feeds)),
              ("dead-letter files", data["dead_letter_files"])]
    out = _cards(totals)
    out += _table(["Feed", "Files", "Rows read", "Accepted", "Rejected", "Failed files", "Last file finished"],
                  [[f"<b>{_e(f['feed'])}</b>", _n(f["files"]), _n(f["rows_read"]), _n(f["accepted"]),
                    _n(f["rejected"]), _n(f["failed_files"]), _when(f["last_at"])] for f in feeds],
                  numeric=[1, 2, 3, 4, 5])
    if data["recent_dead_letters"]:
        out += "<h3 class='sub'>Latest dead-letter files (invalid rows, with file, line, field and reason)</h3>"
        out += _table(["When", "Feed", "Source file", "Rows", "Dead-letter object"],
                      [[_when(d["at"]), _e(d["feed"]), _e(d["file"]), _n(d["rows"]), f"<code>{_e(d['uri'])}</code>"]
                       for d in data["recent_dead_letters"]], numeric=[3])
    else:
        out += '<p class="empty">No dead letters: every row was valid.</p>'
    return out


def _invoices_html(data: dict[str, Any], ui_base: str) -> str:
    latest = data["latest"] or {}
    out = ""
    if latest:
        mode = " " + _badge("dry", "dry run") if latest.get("dry_run") else ""
        out += (f'<p>Latest invoice sync: {_run_link(ui_base, INVOICE_DAG, latest.get("run_id"))}{mode}</p>'
                + _cards([("bills in the run", latest.get("bills")), ("fully exported", latest.get("exported")),
                          ("failed deliveries", len(latest.get("failed") or [])),
                          ("action needed", len(latest.get("action_needed") or [])),
                          ("set aside", len(latest.get("set_aside") or []))]))
    else:
        out += '<p class="empty">No invoice sync has finished yet.</p>'
    rows = []
    for d in data["destinations"]:
        c = d["last_run"]
        problems = int(c.get("failed", 0)) + int(c.get("action_needed", 0))
        rows.append([f"<b>{_e(d['destination'])}</b>", _e(d["type"]), _n(c.get("delivered", 0) if c else None),
                     _n(c.get("unchanged", 0) if c else None), _n(c.get("dry_run", 0) if c else None),
                     _badge("failed", str(c.get("failed"))) if c.get("failed") else "0",
                     _badge("running", str(c.get("action_needed"))) if c.get("action_needed") else "0",
                     _n(d["ledger_bills"]), _badge("failed" if problems else ("ok" if c else "none"),
                                                   "needs attention" if problems else ("ok" if c else "no bills"))])
    out += _table(["Destination", "Type", "Delivered", "Unchanged", "Would deliver (dry run)", "Failed",
                   "Action needed", "Bills delivered (all time)", "Status"], rows, numeric=[2, 3, 4, 7])
    out += '<p class="note">Per-destination counts are from the latest invoice sync run.</p>'
    for item in latest.get("action_needed") or []:
        out += (f'<div class="action"><b>Action needed</b> — bill {_e(item.get("bill_id"))} '
                f'({_e(item.get("account_code"))}) for {_e(item.get("destination"))}: {_e(item.get("message"))}</div>')
    for item in latest.get("failed") or []:
        out += (f'<div class="alert"><b>Failed</b> — bill {_e(item.get("bill_id"))} ({_e(item.get("account_code"))}) '
                f'to {_e(item.get("destination"))}: {_e(item.get("error"))}</div>')
    for item in latest.get("set_aside") or []:
        out += (f'<div class="action"><b>Set aside</b> — bill {_e(item.get("bill_id"))} '
                f'({_e(item.get("account_code"))}): {_e(item.get("reason"))}</div>')
    return out


def _firings_table(entries: list[dict[str, Any]]) -> str:
    rows = []
    for e in entries:
        what = _e(e["kind"] or e["entity"]) + (f" <span class='note'>{_e(e['entity'])} {_e(e['entity_id'])}</span>"
                                               if e["entity"] else "")
        notes = "".join(f"<div class='note'>{_e(n)}</div>" for n in (e["error"], e["stale"]) if n)
        status = _badge(e["status"]) + notes
        account = _e(e["account"]) + (f" <span class='note'>{_e(e['account_id'])}</span>"
                                      if e["account_code"] and e["account_id"] else "")
        rows.append([_when(e["fired_at"]), f"<b>{_e(e['rule'])}</b>", account, what, status, _n(e["attempts"]),
                     _when(e["at"]), "<br>".join(_e(a) for a in e["actions"]) or "—"])
    return _table(["Fired", "Rule", "Account", "What", "Outcome", "Attempts", "Last update", "Actions"], rows,
                  numeric=[5])


def _outcome_cards(total: int, by_status: dict[str, int], label: str) -> str:
    return _cards([(label, total), *((f"{k}", v) for k, v in by_status.items())])


def _triggers_html(data: dict[str, Any], view_base: str) -> str:
    entries = data["entries"]
    if not entries:
        return '<p class="empty">No plan or contract automation has fired yet.</p>'
    newest = entries[:10]
    return (_outcome_cards(data["total"], data["by_status"], "firings")
            + f"<h3 class='sub'>The {len(newest)} newest firings</h3>" + _firings_table(newest)
            + f'<p><a id="open-audit" href="{_e(view_base)}/audit">Open the audit trail</a> — every firing, '
              "filtered by rule, account, outcome and date, 50 a page, with a CSV export.</p>")


def _reconcile_html(data: dict[str, Any] | None) -> str:
    if not data:
        return '<p class="empty">No reconciliation has run yet.</p>'
    status = _badge("clean", "no differences") if data.get("clean") else _badge("drift", f"{data.get('findings')} "
                                                                                          "difference(s)")
    out = (f"<p>{status} &nbsp; period {_e(data.get('period'))}, generated {_when(data.get('generated_at'))}</p>"
           + _table(["What was compared", "Records"], [[_e(k), _n(v)] for k, v in (data.get("checked") or {}).items()],
                    numeric=[1]))
    if data.get("by_check"):
        out += _table(["Difference", "Count"], [[_e(k), _n(v)] for k, v in data["by_check"].items()], numeric=[1])
    drift = data.get("drift") or []
    if drift:
        out += _table(["Check", "Destination", "Record", "Expected", "Actual", "Detail"],
                      [[_e(f.get("check")), _e(f.get("destination")), _e(f.get("record") or f.get("bill_id")),
                        _e(f.get("expected")), _e(f.get("actual")), _e(f.get("detail"))] for f in drift[:25]])
    out += (f'<p class="note">Full report: <code>{_e(data.get("html_key"))}</code>, '
            f'CSV <code>{_e(data.get("csv_key"))}</code></p>')
    return out


def _runs_html(runs: list[dict[str, Any]], crm_reports: dict[str, dict[str, Any]], ui_base: str) -> str:
    if not runs:
        return '<p class="empty">No m3sh DAG has run yet.</p>'
    rows = []
    for r in runs:
        conf = r.get("conf") or {}
        params = ", ".join(f"{k}={v}" for k, v in conf.items() if v not in (None, [], "", False)) or "—"
        result = "—"
        report = crm_reports.get(str(r["dag_run_id"])) if r["dag_id"] == CRM_DAG else None
        if report:
            result = (f"{_n(report['records'])} CRM records, {_n(report['created'])} to create, "
                      f"{_n(report['updated'])} to update" if report["dry_run"] else
                      f"{_n(report['records'])} CRM records, {_n(report['m3ter_writes'])} m3ter writes")
        rows.append([_e(r["dag_id"]), _run_link(ui_base, str(r["dag_id"]), r.get("dag_run_id")),
                     _e(r.get("run_type")), _badge(r.get("state")), _when(r.get("start_date")),
                     _when(r.get("end_date")), _e(params), result])
    return _table(["DAG", "Run", "Type", "State", "Started", "Ended", "Params", "Result"], rows)


def render_page(snapshot: dict[str, Section], runs: Section, *, user: str, ui_base: str = "",
                view_base: str = "", now: dt.datetime | None = None) -> str:
    """The whole page as HTML (every value escaped)."""
    now = now or dt.datetime.now(dt.UTC)
    crm_data = snapshot["crm"].data or {"runs": []}
    crm_reports = {r["run_id"]: r for r in crm_data.get("runs", [])}
    body = "".join([
        _section("runs", "Recent runs", "The latest runs of the m3sh DAGs in Airflow", runs,
                 lambda d: _runs_html(d, crm_reports, ui_base)),
        _section("crm", "CRM sync", "Accounts and contracts from the CRMs into m3ter (m3sh_crm_sync)",
                 snapshot["crm"], lambda d: _crm_html(d, ui_base)),
        _section("usage", "Usage ingest", "Usage files into m3ter measurements; invalid rows go to dead letters "
                 "(m3sh_usage_ingest)", snapshot["usage"], _usage_html),
        _section("invoices", "Invoices", "m3ter bills delivered to each destination (m3sh_invoice_sync)",
                 snapshot["invoices"], lambda d: _invoices_html(d, ui_base)),
        _section("triggers", "Plan & contract automation", "Audit trail: each firing is acted on once "
                 "(m3sh_plan_triggers)", snapshot["triggers"], lambda d: _triggers_html(d, view_base)),
        _section("reconcile", "Reconciliation", "CRM, m3ter and ERP compared (m3sh_reconcile)",
                 snapshot["reconcile"], _reconcile_html),
    ])
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>m3sh</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
            f'<header><div><h1>m3sh</h1><div class="sub">Billing data flows between the CRMs, m3ter and the ERPs'
            f'</div></div><div class="sub">as of {now.strftime("%Y-%m-%d %H:%M:%S")} UTC · signed in as {_e(user)} · '
            f'<a href="">refresh</a></div></header>{body}</body></html>')


def _audit_href(view_base: str, path: str, params: dict[str, str], **extra: Any) -> str:
    query = urlencode({**params, **{k: str(v) for k, v in extra.items() if v not in (None, "")}})
    return f"{view_base}/{path}" + (f"?{query}" if query else "")


def _audit_form(view_base: str, params: dict[str, str], rules: list[str]) -> str:
    from m3sh.automation.ledger import STATUSES

    def options(values: Iterable[str], selected: str | None) -> str:
        return '<option value="">any</option>' + "".join(
            f'<option value="{_e(v)}"{" selected" if v == selected else ""}>{_e(v)}</option>' for v in values)

    return (f'<form id="audit-filters" class="filters" method="get" action="{_e(view_base)}/audit">'
            f'<label>Rule <select name="rule">{options(rules, params.get("rule"))}</select></label>'
            f'<label>Account <input name="account" placeholder="code or m3ter id" value="{_e(params.get("account"))}">'
            f'</label><label>Outcome <select name="outcome">{options(STATUSES, params.get("outcome"))}</select></label>'
            f'<label>From <input type="date" name="from" value="{_e(params.get("from"))}"></label>'
            f'<label>To <input type="date" name="to" value="{_e(params.get("to"))}"></label>'
            f'<button type="submit">Apply</button> <a href="{_e(view_base)}/audit">Reset</a></form>')


def render_audit_page(result: AuditPage | None, params: dict[str, str], *, user: str, view_base: str = "",
                      rules: Iterable[str] = (), error: str | None = None, now: dt.datetime | None = None) -> str:
    """The audit trail page: filter form, exact totals, one page of firings, paging and export links."""
    now = now or dt.datetime.now(dt.UTC)
    choices = sorted({*rules, *(result.rules if result else []), *([params["rule"]] if params.get("rule") else [])})
    body = _audit_form(view_base, params, choices)
    if error:
        body += f'<div class="alert" id="audit-error">{_e(error)}</div>'
    if result is not None:
        body += _outcome_cards(result.total, result.by_status, "firings match" if params else "firings")
        csv_href = _audit_href(view_base, "audit.csv", params)
        details_href = _audit_href(view_base, "audit.csv", params, details=1)

        def step(rel: str, label: str, page: int) -> str:
            if not 1 <= page <= result.pages:
                return f'<span class="note">{label}</span>'
            return f'<a rel="{rel}" href="{_e(_audit_href(view_base, "audit", params, page=page))}">{label}</a>'

        pager = (f'<p class="pager">Showing <span id="audit-range">'
                 f'{_n(result.first)}&ndash;{_n(result.last)}</span> of '
                 f'<b id="audit-total">{_n(result.total)}</b>, newest first · page {result.page} of {result.pages} · '
                 f'{step("prev", "← newer", result.page - 1)} · {step("next", "older →", result.page + 1)} · '
                 f'<a id="audit-csv" href="{_e(csv_href)}" download>Export CSV</a> '
                 f'(<a id="audit-csv-details" href="{_e(details_href)}" download>with actions and errors</a>, '
                 "slower: reads every firing)</p>")
        table = (_firings_table(result.entries) if result.entries else
                 '<p class="empty">No firing matches these filters.</p>')
        bottom = (f'<p class="pager">page {result.page} of {result.pages} · {step("prev", "← newer", result.page - 1)} '
                  f'· {step("next", "older →", result.page + 1)}</p>')  # no ids: those are the top pager's
        body += pager + table + (bottom if len(result.entries) > 10 else "")
        body += "".join(f'<p class="note">{_e(n)}</p>' for n in result.notes)
        body += ('<p class="note">Totals per outcome count every firing the other filters select; times are UTC; '
                 '"Fired" is when the firing was first claimed.</p>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>m3sh · audit trail</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
            f'<header><div><h1>Audit trail</h1><div class="sub">Plan &amp; contract automation: every firing, what it '
            f'did and how it ended (m3sh_plan_triggers)</div></div><div class="sub">as of '
            f'{now.strftime("%Y-%m-%d %H:%M:%S")} UTC · signed in as {_e(user)} · '
            f'<a href="{_e(view_base)}/">back to m3sh</a></div></header>'
            f'<section id="audit">{body}</section></body></html>')


# ------------------------------------------------------------------------------------ auth + app
class LoginRequired(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _token(request: Request, creds: HTTPAuthorizationCredentials | None) -> str | None:
    if creds and creds.scheme.lower() == "bearer":
        return str(creds.credentials)
    return request.cookies.get(COOKIE_NAME)


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def require_user(request: Request, creds: BearerDep) -> Any:
    """Airflow's own authentication (bearer token or UI cookie) + the ``WEBSITE`` view permission."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import get_user

    try:
        user = await get_user(request, None, creds)
    except HTTPException as exc:
        if exc.status_code in (401, 403) and "text/html" in request.headers.get("accept", ""):
            raise LoginRequired(get_auth_manager().get_url_login(next_url=str(request.url))) from None
        raise
    if not get_auth_manager().is_authorized_view(access_view=AccessView.WEBSITE, user=user):
        raise HTTPException(403, "Forbidden")
    return user


UserDep = Annotated[Any, Depends(require_user)]


def self_api_url() -> str:
    """Where this api-server answers (its public REST API is read over loopback as the caller)."""
    if url := os.environ.get("M3SH_AIRFLOW_API_URL"):
        return url.rstrip("/")
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="") or ""
    if base.startswith(("http://", "https://")) and not os.environ.get("M3SH_UI_LOOPBACK"):
        return base.rstrip("/")
    host = conf.get("api", "host", fallback="127.0.0.1") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    scheme = "https" if conf.get("api", "ssl_cert", fallback="") else "http"
    return f"{scheme}://{host}:{conf.getint('api', 'port', fallback=8080)}"


def create_app(
    config: Callable[[], M3shConfig] | None = None,
    storage: Callable[[M3shConfig], Storage] | None = None,
    airflow_client: Callable[[], httpx.Client] | None = None,
) -> FastAPI:
    """The view app; dependencies are created per request (plugin import stays cheap)."""
    app = FastAPI(title="m3sh view", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(LoginRequired)
    async def _to_login(_request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(exc.url, status_code=307)

    def sources() -> tuple[M3shConfig, Storage]:
        from m3sh.config import get_config
        from m3sh.storage import Storage

        cfg = (config or get_config)()
        return cfg, (storage or (lambda c: Storage.from_config(c.storage)))(cfg)

    def gather(token: str | None) -> tuple[dict[str, Section], Section]:
        reader = StatusReader(*sources())
        client = airflow_client() if airflow_client else _default_client()
        try:
            with ThreadPoolExecutor(1) as pool:
                runs_future = pool.submit(_guard, lambda: AirflowRuns(client, token).recent())
                snapshot = reader.snapshot()
                runs = runs_future.result()
        finally:
            if airflow_client is None:
                client.close()
        return snapshot, runs

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request, user: UserDep, creds: BearerDep) -> HTMLResponse:
        snapshot, runs = gather(_token(request, creds))
        view_base = str(request.scope.get("root_path", ""))
        return HTMLResponse(render_page(snapshot, runs, user=str(user.get_name()), ui_base=view_base.removesuffix(
            "/m3sh/ui"), view_base=view_base), headers={"Cache-Control": "no-store"})

    @app.get("/api/status")
    def status(request: Request, user: UserDep, creds: BearerDep) -> JSONResponse:
        snapshot, runs = gather(_token(request, creds))
        doc = {name: {"data": s.data, "error": s.error, "notes": s.notes} for name, s in snapshot.items()}
        doc["runs"] = {"data": runs.data, "error": runs.error, "notes": runs.notes}
        return JSONResponse(doc, headers={"Cache-Control": "no-store"})

    _audit_routes(app, sources)
    return app


def _audit_routes(app: FastAPI, sources: Callable[[], tuple[M3shConfig, Storage]]) -> None:
    """The audit trail of plan automation (m3sh.automation.audit): page, JSON and CSV."""

    def audit_query(request: Request) -> tuple[AuditFilter, int]:
        from m3sh.automation.audit import AuditFilter, AuditQueryError

        raw = request.query_params.get("page") or "1"
        if not raw.isdigit() or int(raw) < 1:
            raise AuditQueryError("page", raw, "expected a page number from 1")
        return AuditFilter.from_params(request.query_params), int(raw)

    @app.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, user: UserDep) -> HTMLResponse:
        from m3sh.automation.audit import AuditQueryError, AuditTrail

        cfg, store = sources()
        kwargs: dict[str, Any] = {"user": str(user.get_name()), "view_base": str(request.scope.get("root_path", "")),
                                  "rules": [r.name for r in cfg.triggers]}
        headers = {"Cache-Control": "no-store"}
        try:
            flt, page_no = audit_query(request)
        except AuditQueryError as exc:
            params = {k: v for k, v in request.query_params.items() if k in _AUDIT_PARAMS and v}
            return HTMLResponse(render_audit_page(None, params, error=f"Invalid filter: {exc}", **kwargs),
                                status_code=400, headers=headers)
        sec = _guard(lambda: AuditTrail(store).page(flt, page_no))
        error = f"Could not read the audit trail: {sec.error}" if sec.error else None
        return HTMLResponse(render_audit_page(sec.data, flt.params(), error=error, **kwargs), headers=headers)

    @app.get("/api/audit")
    def audit_api(request: Request, user: UserDep) -> JSONResponse:
        from m3sh.automation.audit import AuditQueryError, AuditTrail

        try:
            flt, page_no = audit_query(request)
        except AuditQueryError as exc:
            return JSONResponse({"detail": str(exc), "param": exc.param}, status_code=400)
        sec = _guard(lambda: AuditTrail(sources()[1]).page(flt, page_no))
        if sec.error:
            return JSONResponse({"detail": f"could not read the audit trail: {sec.error}"}, status_code=502)
        return JSONResponse({**sec.data.to_dict(), "filter": flt.params()}, headers={"Cache-Control": "no-store"})

    @app.get("/audit.csv")
    def audit_csv(request: Request, user: UserDep) -> Response:
        from m3sh.automation.audit import AuditQueryError, AuditTrail

        try:
            flt, _ = audit_query(request)
        except AuditQueryError as exc:
            return Response(f"invalid filter: {exc}\n", status_code=400, media_type="text/plain")
        trail = AuditTrail(sources()[1])
        details = request.query_params.get("details", "") in ("1", "true", "yes")
        rows = iter(trail.csv_rows(flt, details=details))
        try:
            trail.ensure_indexed()
            # The header and the first rows before the response starts: an unreadable bucket is a
            # 502 with the reason, not a 200 with a truncated file.
            first = [next(rows), *itertools.islice(rows, 1)]
        except Exception as exc:
            log.warning("m3sh view: audit CSV failed: %s", exc)
            return Response(f"could not read the audit trail: {type(exc).__name__}: {str(exc)[:300]}\n",
                            status_code=502, media_type="text/plain")

        def chunks() -> Iterator[str]:
            buf = io.StringIO()
            writer = csv.writer(buf)  # RFC 4180 quoting of commas, quotes and line breaks; CRLF rows
            for row in itertools.chain(first, rows):
                writer.writerow(row)
                if buf.tell() > 64_000:
                    yield buf.getvalue()
                    buf.seek(0)
                    buf.truncate()
            yield buf.getvalue()

        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        return StreamingResponse(chunks(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="m3sh-audit-trail-{stamp}.csv"', "Cache-Control": "no-store"})


_AUDIT_PARAMS = ("rule", "account", "outcome", "from", "to")


def _default_client() -> httpx.Client:
    import httpx

    url = self_api_url()
    # A self-signed certificate is only skipped for loopback, i.e. this very server.
    return httpx.Client(base_url=url, verify=not url.startswith(("https://127.0.0.1", "https://localhost")))
