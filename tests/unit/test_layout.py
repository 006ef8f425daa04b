"""m3sh's S3 key layout is defined once (m3sh.layout): these are the keys existing buckets hold, so
a change here is a migration (docs/evolution.md), never an accident. And nothing else builds them."""

from __future__ import annotations

import re
from pathlib import Path

from m3sh import layout
from m3sh.storage import Storage

INCLUDE = Path(__file__).resolve().parents[2] / "include" / "m3sh"


def test_every_key_where_existing_buckets_have_it() -> None:
    s = Storage("aws_default", "bucket", "m3sh/")
    run = "manual__2026-01-01T00:00:00+00:00"
    assert layout.staging(s, "m3sh_crm_sync", run, "hubspot.jsonl") == \
        "m3sh/staging/m3sh_crm_sync/manual__2026-01-01T00_00_00_00_00/hubspot.jsonl"
    assert layout.crm_run_report(s, "m3sh_crm_sync", run) == f"m3sh/reports/m3sh_crm_sync/{run}.json"
    assert layout.invoice_run_reports(s, "m3sh_invoice_sync", run) == (
        "m3sh/reports/m3sh_invoice_sync/runs/manual__2026-01-01T00_00_00_00_00.json",
        "m3sh/reports/m3sh_invoice_sync/latest.json")
    assert layout.reconcile_reports(s, "reconcile", "2026-01-02") == (
        "m3sh/reports/reconcile/2026-01-02/report.html", "m3sh/reports/reconcile/2026-01-02/report.csv",
        "m3sh/reports/reconcile/latest.json")
    assert layout.reports_prefix(s, "m3sh_crm_sync") == "m3sh/reports/m3sh_crm_sync/"
    assert layout.crm_outbound_report(s, "m3sh_crm_sync", run, "hubspot") == \
        "m3sh/reports/to_crm/m3sh_crm_sync/manual__2026-01-01T00_00_00_00_00/hubspot.json"
    assert layout.crm_outbound_state(s, "salesforce") == "m3sh/state/crm/to_crm/salesforce.json"
    assert layout.crm_conflicts_prefix(s) == "m3sh/conflicts/crm/"
    assert layout.crm_conflicts(s, "salesforce", run) == \
        "m3sh/conflicts/crm/salesforce/manual__2026-01-01T00_00_00_00_00.json"
    assert layout.usage_manifest(s, "platform", "abc") == "m3sh/manifests/usage/platform/abc.json"
    assert layout.usage_manifests_prefix(s) == "m3sh/manifests/usage/"
    assert layout.usage_dead_letter(s, "platform", "usage/2026/01.csv") == \
        "m3sh/dead-letter/usage/platform/usage/2026/01.csv.jsonl"
    assert layout.usage_dead_letters_prefix(s) == "m3sh/dead-letter/usage/"
    assert layout.delivery_ledger(s, "netsuite", "customer:acme/1") == \
        "m3sh/state/invoicing/ledger/netsuite/customer:acme_1.json"
    assert layout.delivery_ledger_prefix(s, "netsuite") == "m3sh/state/invoicing/ledger/netsuite/"
    assert layout.exported_marker(s, "b-1") == "m3sh/state/invoicing/exported/b-1.json"
    assert layout.payments_watermark(s, "netsuite_us") == "m3sh/state/invoicing/payments/netsuite_us/watermark.json"
    assert layout.payments_state(s, "netsuite_us", "b/1") == "m3sh/state/invoicing/payments/netsuite_us/bills/b_1.json"
    assert layout.payments_states_prefix(s, "netsuite_us") == "m3sh/state/invoicing/payments/netsuite_us/bills/"
    assert layout.payments_report(s, "m3sh_invoice_sync", run, "netsuite_us") == \
        "m3sh/reports/m3sh_invoice_sync/payments/manual__2026-01-01T00_00_00_00_00/netsuite_us.json"
    assert layout.triggers_prefix("m3sh/") == "m3sh/triggers/"
    assert layout.balance_credits(s) == "m3sh/triggers/balance-credits.json"
    assert layout.open_alert(s, "m3sh_usage_ingest", "summarize") == "m3sh/alerts/open/m3sh_usage_ingest/summarize.json"
    assert re.fullmatch(r"m3sh/webhooks/seen/[0-9a-f]{64}\.json", layout.webhook_seen(s, "evt-1"))


def test_no_module_builds_state_keys_of_its_own() -> None:
    """``storage.key("reports", ...)``-style calls live in m3sh.layout only (the sandbox and the
    analytics dataset, whose layout is docs/analytics.md's, are not m3sh's state)."""
    offenders = []
    for path in INCLUDE.rglob("*.py"):
        rel = path.relative_to(INCLUDE).as_posix()
        if rel == "layout.py" or rel.startswith(("sandbox/", "analytics/")):
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.key\(\s*[\"']", line):
                offenders.append(f"{rel}:{no}: {line.strip()}")
    assert not offenders, "build the key in m3sh.layout:\n" + "\n".join(offenders)
