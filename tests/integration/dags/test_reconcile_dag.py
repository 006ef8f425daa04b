"""``m3sh_reconcile`` end to end: clean after an invoice sync; a deleted NetSuite invoice and a
changed amount are reported (HTML + CSV + latest.json, failure alert); repaired -> clean + resolved."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from tests.integration.dags.test_invoice_sync_dag import _fast_netsuite, netsuite, run_sync, seed_bills, write_config

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]


@pytest.fixture
def rec_env(fresh_sandbox: Any, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    write_config(tmp_path, monkeypatch)
    _fast_netsuite(fresh_sandbox, monkeypatch)
    seeded = seed_bills(fresh_sandbox)
    assert run_sync().state == "success"
    return {**seeded, "sandbox": fresh_sandbox}


def run_reconcile() -> Any:
    from m3sh.dagkit.reconcile import build_reconcile_dag

    return build_reconcile_dag().test(run_conf={})


def latest() -> tuple[dict[str, Any], Any]:
    from m3sh.config import get_config
    from m3sh.storage import Storage

    storage = Storage.from_config(get_config().storage)
    summary = storage.get_json(storage.key("reports", "reconcile", "latest.json"))
    assert isinstance(summary, dict)
    return summary, storage


def test_reconcile_clean_then_drift_then_resolved(rec_env: dict[str, Any]) -> None:
    sandbox = rec_env["sandbox"]
    assert run_reconcile().state == "success"
    summary, _ = latest()
    assert summary["clean"] is True and summary["findings"] == 0
    assert summary["checked"]["m3ter bills in scope"] == len(rec_env["bills"])

    # Someone deletes an EU invoice and edits a US invoice's line amount in NetSuite.
    eu_bill, us_bill = rec_env["eur"][0], rec_env["usd"][0]
    eu = netsuite("netsuite_eu")
    eu.delete_record("invoice", f"eid:{eu_bill['id']}")
    us = netsuite("netsuite_default")
    inv = us.get_by_external_id("invoice", us_bill["id"])
    assert inv is not None
    first = inv["item"]["items"][0]
    edited = {"item": {"items": [{"line": first["line"], "amount": first["amount"] + 10}]}}
    us.patch_record("invoice", inv["id"], edited, replace=())

    run = run_reconcile()
    assert run.state == "failed"
    summary, storage = latest()
    assert summary["clean"] is False
    drift = {(d["check"], d["destination"], d["bill_id"]) for d in summary["drift"]}
    assert drift == {("missing", "netsuite_eu", eu_bill["id"]), ("amount_mismatch", "netsuite_us", us_bill["id"])}
    missing = next(d for d in summary["drift"] if d["check"] == "missing")
    assert "deleted in NetSuite" in missing["detail"]
    rows = list(csv.DictReader(io.StringIO(storage.client.get_object(
        Bucket=storage.bucket, Key=summary["csv_key"])["Body"].read().decode())))
    assert {(r["check"], r["bill_id"]) for r in rows} == {(c, b) for c, _, b in drift}
    page = storage.client.get_object(Bucket=storage.bucket, Key=summary["html_key"])["Body"].read().decode()
    assert "2 difference(s) need attention" in page and "Amount differs" in page and eu_bill["id"] in page
    slack = [m["text"] for m in sandbox.state("platform")["slack"]]
    assert any("m3sh_reconcile.report" in t and eu_bill["id"] in t and us_bill["id"] in t for t in slack)

    # Repair: re-deliver ignoring the ledger (upserts: still one invoice per bill), then reconcile again.
    assert run_sync(redeliver=True, destinations=["netsuite_us", "netsuite_eu"]).state == "success"
    assert run_reconcile().state == "success"
    assert latest()[0]["clean"] is True
    slack = [m["text"] for m in sandbox.state("platform")["slack"]]
    assert any("resolved" in t and "m3sh_reconcile" in t for t in slack)
    for conn_id, bills in (("netsuite_default", rec_env["usd"]), ("netsuite_eu", rec_env["eur"])):
        eids = [r["externalid"] for r in netsuite(conn_id).suiteql(
            "SELECT externalid FROM transaction WHERE type = 'CustInvc' ORDER BY id")]
        assert sorted(eids) == sorted(b["id"] for b in bills)
