"""Where m3sh keeps its state in S3: the one key layout its writers and the m3sh page share.

Every key is under the storage prefix (``storage.prefix``, ``m3sh/`` by default)::

    staging/<dag_id>/<run id>/...                       a run's intermediate files (XComs carry these keys)
    reports/m3sh_crm_sync/<run id>.json                 CRM sync report per run           -> the m3sh page
    reports/to_crm/m3sh_crm_sync/<run id>/<source>.json m3ter -> CRM diff per run and source
    state/crm/to_crm/<source>.json                      per CRM record: m3ter fingerprint, last synced values
    conflicts/crm/<source>/<run id>.json                fields changed on both sides     -> the m3sh page
    reports/<dag_id>/latest.json, runs/<run id>.json    invoice run summaries             -> the m3sh page
    reports/<name>/<day>/report.html|.csv, latest.json  reconciliation reports            -> the m3sh page
    manifests/usage/<feed>/<digest>.json                one per usage object (key + ETag) -> the m3sh page
    dead-letter/usage/<feed>/<object key>.jsonl         rejected usage rows with reasons  -> the m3sh page
    state/invoicing/ledger/<destination>/<bill>.json    what each destination took         -> reconciliation
    state/invoicing/exported/<bill>.json                bills exported everywhere
    state/invoicing/payments/<netsuite dest>/watermark.json  end of the last payments read of that account
    state/invoicing/payments/<netsuite dest>/bills/<bill>.json  an invoice's last payment state -> analytics
    reports/<dag_id>/payments/<run id>.json             payments step outcome per run     -> the m3sh page
    triggers/ledger|final|index/..., index-meta.json    plan-automation ledger and audit index
    triggers/balance-credits.json                       the evaluator's credit cache
    alerts/open/<dag_id>/<task_id>.json                 failures alerted and not yet resolved
    webhooks/seen/<sha256>.json                         m3ter notifications already accepted

Functions take the :class:`~m3sh.storage.Storage` (its ``key`` joins under the prefix) or, for the
automation ledger's listings, the prefix itself. Changing a layout here moves writers and readers
together; an existing bucket then needs its objects moved (see docs/evolution.md).
"""

from __future__ import annotations

import hashlib
from typing import Protocol


class _Keyed(Protocol):
    prefix: str

    def key(self, *parts: str) -> str: ...


def safe_run_id(run_id: str) -> str:
    """A run id as one key segment (``manual__2026-01-01T00:00:00+00:00`` has ``:`` and ``+``)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)


# -- a run's staging area and reports -----------------------------------------------------------------
def staging(storage: _Keyed, dag_id: str, run_id: str, *parts: str) -> str:
    return storage.key("staging", dag_id, safe_run_id(run_id), *parts)


def reports_prefix(storage: _Keyed, name: str) -> str:
    return storage.key("reports", name) + "/"


def crm_run_report(storage: _Keyed, dag_id: str, run_id: str) -> str:
    # The raw run id: the m3sh page links a report to its run by it.
    return storage.key("reports", dag_id, f"{run_id}.json")


def invoice_run_reports(storage: _Keyed, dag_id: str, run_id: str) -> tuple[str, str]:
    """``(this run's summary, latest.json)``."""
    return (storage.key("reports", dag_id, "runs", f"{safe_run_id(run_id)}.json"),
            storage.key("reports", dag_id, "latest.json"))


def latest_report(storage: _Keyed, name: str) -> str:
    return storage.key("reports", name, "latest.json")


def reconcile_reports(storage: _Keyed, name: str, day: str) -> tuple[str, str, str]:
    """``(report.html, report.csv, latest.json)``."""
    return (storage.key("reports", name, day, "report.html"), storage.key("reports", name, day, "report.csv"),
            latest_report(storage, name))


# -- m3ter -> CRM ----------------------------------------------------------------------------------
def crm_outbound_report(storage: _Keyed, dag_id: str, run_id: str, source: str) -> str:
    """The m3ter -> CRM diff of one run and source (not under ``reports/<dag id>/``, whose listing
    readers take for the CRM -> m3ter run reports)."""
    return storage.key("reports", "to_crm", dag_id, safe_run_id(run_id), f"{source}.json")


def crm_outbound_state(storage: _Keyed, source: str) -> str:
    """Per CRM record of ``source``: the m3ter fingerprint and each field's last synced values."""
    return storage.key("state", "crm", "to_crm", f"{source}.json")


def crm_conflicts_prefix(storage: _Keyed) -> str:
    return storage.key("conflicts", "crm") + "/"


def crm_conflicts(storage: _Keyed, source: str, run_id: str) -> str:
    """Fields of ``source`` changed in m3ter and in the CRM since the last sync, found by one run."""
    return storage.key("conflicts", "crm", source, f"{safe_run_id(run_id)}.json")


# -- usage ingest -----------------------------------------------------------------------------------
def usage_manifests_prefix(storage: _Keyed) -> str:
    return storage.key("manifests", "usage") + "/"


def usage_manifest(storage: _Keyed, feed: str, digest: str) -> str:
    return storage.key("manifests", "usage", feed, f"{digest}.json")


def usage_dead_letters_prefix(storage: _Keyed) -> str:
    return storage.key("dead-letter", "usage") + "/"


def usage_dead_letter(storage: _Keyed, feed: str, source: str) -> str:
    """Rejected rows of one usage object (or HTTP feed window) ``source``."""
    return storage.key("dead-letter", "usage", feed, source + ".jsonl")


# -- invoicing ----------------------------------------------------------------------------------------
def delivery_ledger_prefix(storage: _Keyed, destination: str) -> str:
    return storage.key("state", "invoicing", "ledger", destination) + "/"


def delivery_ledger(storage: _Keyed, destination: str, key: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_.:" else "_" for ch in key)
    return storage.key("state", "invoicing", "ledger", destination, f"{safe}.json")


def exported_marker(storage: _Keyed, bill_id: str) -> str:
    return storage.key("state", "invoicing", "exported", f"{bill_id}.json")


def payments_watermark(storage: _Keyed, source: str) -> str:
    """Where the payments step keeps the end of its last completed read of one NetSuite destination."""
    return storage.key("state", "invoicing", "payments", source, "watermark.json")


def payments_states_prefix(storage: _Keyed, source: str) -> str:
    return storage.key("state", "invoicing", "payments", source, "bills") + "/"


def payments_state(storage: _Keyed, source: str, bill_id: str) -> str:
    """One invoice's payment state as the payments step last read it (the analytics table's source)."""
    safe = "".join(ch if ch.isalnum() or ch in "-_.:" else "_" for ch in bill_id)
    return storage.key("state", "invoicing", "payments", source, "bills", f"{safe}.json")


def payments_report(storage: _Keyed, dag_id: str, run_id: str, source: str) -> str:
    """One payments read's outcome (window, counts, per-record outcomes that were not ``unchanged``)."""
    return storage.key("reports", dag_id, "payments", safe_run_id(run_id), f"{source}.json")


# -- plan automation --------------------------------------------------------------------------------
def triggers_prefix(root: str) -> str:
    """The automation ledger's root (``root`` is the storage prefix: its listings work on raw keys)."""
    return f"{root}triggers/"


def balance_credits(storage: _Keyed) -> str:
    return storage.key("triggers", "balance-credits.json")


# -- alerts and the webhook receiver ----------------------------------------------------------------------
def open_alert(storage: _Keyed, dag_id: str, task_id: str) -> str:
    return storage.key("alerts", "open", dag_id, f"{task_id}.json")


def webhook_seen(storage: _Keyed, event_id: str) -> str:
    return storage.key("webhooks", "seen", hashlib.sha256(event_id.encode()).hexdigest() + ".json")
