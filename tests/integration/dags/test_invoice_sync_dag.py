"""``m3sh_invoice_sync`` end to end against the sandbox with whole ``dag.test()`` runs.

Demo seed with two NetSuite accounts: USD bills go to NetSuite US + Salesforce + S3, EUR bills to
NetSuite EU + S3. Everything is read back through public APIs (SuiteQL, SOQL, S3, m3ter) and
request stats prove that re-runs write nothing and faults never create duplicates.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from m3sh.sandbox.seed import demo_company

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

FAST_NETSUITE = {"max_attempts": 2, "backoff_base_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 10}


def _fast_netsuite(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Short NetSuite hook retries so an outage is declared in seconds, not minutes."""
    for conn_id, conn in sandbox.endpoints.connections().items():
        if conn["conn_type"] == "netsuite":
            fast = {**conn, "extra": {**conn["extra"], **FAST_NETSUITE}}
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fast))


def write_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str = "") -> Path:
    from m3sh.config import DEFAULT_CONFIG_PATH

    path = tmp_path / "m3sh.yaml"
    path.write_text(DEFAULT_CONFIG_PATH.read_text() + extra
                    + "\ndag_defaults: {retries: 1, retry_delay_s: 0.1, max_retry_delay_s: 0.5}\n")
    monkeypatch.setenv("M3SH_CONFIG", str(path))
    return path


def seed_bills(sandbox: Any, n_usd: int = 3, n_eur: int = 2) -> dict[str, Any]:
    """Create m3ter accounts for some demo customers (USD from Salesforce, EUR from both CRMs), bill
    the last month and approve: returns bills by currency and the customers used."""
    from m3sh.hooks.m3ter import M3terHook

    hook = M3terHook()
    company = demo_company()
    fresh = [c for c in company.customers if not c.in_m3ter]
    usd = [c for c in fresh if c.currency == "USD" and c.crm == "salesforce"][:n_usd]
    eur_sf = [c for c in fresh if c.currency == "EUR" and c.crm == "salesforce"][: n_eur - n_eur // 2]
    eur_hs = [c for c in fresh if c.currency == "EUR" and c.crm == "hubspot"][: n_eur // 2]
    customers = usd + eur_sf + eur_hs
    account_ids = []
    for c in customers:
        acc = hook.create_account({
            "code": c.key, "name": c.name, "emailAddress": c.email, "currency": c.currency,
            "customFields": {"crm_source": c.crm, "crm_id": c.salesforce_id or c.hubspot_id or "",
                             "subsidiary": "", "tax_code": ""}})
        plan = hook.find_plan(c.plan_code)
        assert plan is not None
        hook.create_account_plan({"accountId": acc["id"], "planId": plan["id"],
                                     "startDate": f"{c.contract_start.isoformat()}T00:00:00Z"})
        account_ids.append(acc["id"])
    job = sandbox.admin("m3ter", "run_billing", "POST", accountIds=account_ids)
    bill_ids = list(job["billIds"])
    hook.approve_bills(bill_ids)
    bills = [hook.get_bill(b) for b in bill_ids]
    return {"hook": hook, "customers": customers, "bills": bills,
            "usd": [b for b in bills if b["currency"] == "USD"], "eur": [b for b in bills if b["currency"] == "EUR"]}


@pytest.fixture
def inv_env(fresh_sandbox: Any, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    write_config(tmp_path, monkeypatch)
    _fast_netsuite(fresh_sandbox, monkeypatch)
    seeded = seed_bills(fresh_sandbox)
    assert len(seeded["usd"]) == 3 and len(seeded["eur"]) == 2
    return {**seeded, "sandbox": fresh_sandbox}


def run_sync(**conf: Any) -> Any:
    from m3sh.dagkit.invoice_sync import build_invoice_sync_dag

    return build_invoice_sync_dag().test(run_conf={"full_scan": True, **conf})


def netsuite(conn_id: str) -> Any:
    from m3sh.hooks.netsuite import NetSuiteHook

    return NetSuiteHook(conn_id)


def invoices(conn_id: str) -> list[dict[str, Any]]:
    return list(netsuite(conn_id).suiteql(
        "SELECT t.id, t.externalid, t.foreigntotal, BUILTIN.DF(t.currency) AS currency, t.entity, t.type "
        "FROM transaction t WHERE t.type = 'CustInvc' ORDER BY t.id"))


def writes(sandbox: Any, name: str) -> int:
    """Mutating requests an emulator received (SuiteQL, SOQL, logins and searches are reads)."""
    reads = ("/suiteql", "/search", "/batch/read", "/oauth/token", "/services/Soap/", "/usage/query")
    total = 0
    for key, n in sandbox.stats(name)["counts"].items():
        method, _, path = key.partition(" ")
        if method in ("PUT", "PATCH", "DELETE") or (method == "POST" and not any(r in path for r in reads)):
            total += int(n)
    return total


def _latest_summary() -> dict[str, Any]:
    from m3sh.config import get_config
    from m3sh.storage import Storage

    storage = Storage.from_config(get_config().storage)
    summary = storage.get_json(storage.key("reports", "m3sh_invoice_sync", "latest.json"))
    assert isinstance(summary, dict)
    return summary


def assert_one_invoice_per_bill(conn_id: str, bills: list[dict[str, Any]]) -> None:
    rows = invoices(conn_id)
    by_eid: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_eid.setdefault(r["externalid"], []).append(r)
    assert sorted(by_eid) == sorted(b["id"] for b in bills)
    ns = netsuite(conn_id)
    for bill in bills:
        (inv,) = by_eid[bill["id"]]
        expected = round(sum(round(li["subtotal"], 2) for li in bill["lineItems"]), 2)
        assert float(inv["foreigntotal"]) == pytest.approx(expected)
        assert inv["currency"] == bill["currency"]
        lines = list(ns.suiteql(f"SELECT linesequencenumber, item, foreignamount FROM transactionline "  # noqa: S608
                                f"WHERE transaction = {inv['id']} ORDER BY linesequencenumber"))
        assert [float(li["foreignamount"]) for li in lines] == pytest.approx(
            [round(li["subtotal"], 2) for li in sorted(bill["lineItems"], key=lambda x: x["sequenceNumber"])])
        assert {li["item"] for li in lines} <= {"502", "503"}
        (cust,) = ns.suiteql(f"SELECT externalid FROM customer WHERE id = {inv['entity']}")  # noqa: S608
        assert cust["externalid"] == bill["accountId"]


def test_bills_route_to_each_destination_exactly_once(inv_env: dict[str, Any]) -> None:
    from m3sh.config import get_config
    from m3sh.hooks.salesforce import SalesforceSync
    from m3sh.storage import Storage

    sandbox = inv_env["sandbox"]
    run = run_sync()
    assert run.state == "success"
    assert_one_invoice_per_bill("netsuite_default", inv_env["usd"])
    assert_one_invoice_per_bill("netsuite_eu", inv_env["eur"])

    sf_rows = list(SalesforceSync().query(
        "SELECT M3ter_Bill_Id__c, Account__c, Amount__c, Currency__c FROM Invoice__c"))
    assert sorted(r["M3ter_Bill_Id__c"] for r in sf_rows) == sorted(b["id"] for b in inv_env["usd"])
    sf_ids = {c.key: c.salesforce_id for c in inv_env["customers"]}
    for row in sf_rows:
        bill = next(b for b in inv_env["usd"] if b["id"] == row["M3ter_Bill_Id__c"])
        assert row["Account__c"][:15] == sf_ids[bill["accountCode"]][:15]
        assert row["Currency__c"] == "USD"

    archive = Storage("aws_default", "m3sh-archive")
    keys = {o["Key"] for o in archive.list_keys("invoices/")}
    for bill in inv_env["bills"]:
        y, m, d = bill["billDate"].split("-")
        base = f"invoices/year={y}/month={m}/day={d}/{bill['id']}"
        assert {base + ".json", base + ".csv"} <= keys
    assert len(keys) == 2 * len(inv_env["bills"])

    hook = inv_env["hook"]
    for bill in inv_env["bills"]:
        custom = hook.get_account(bill["accountId"])["customFields"]
        assert custom["exported_at"] and custom["exported_bill"] == bill["id"]
    storage = Storage.from_config(get_config().storage)
    assert storage.get_json(storage.key("state", "invoicing", "exported", f"{inv_env['bills'][0]['id']}.json"))

    # A re-run (and a backfill of the same bills) writes nothing anywhere.
    before = {n: writes(sandbox, n) for n in ("netsuite", "salesforce", "m3ter")}
    assert run_sync().state == "success"
    assert run_sync(bill_ids=[b["id"] for b in inv_env["bills"]]).state == "success"
    assert {n: writes(sandbox, n) for n in ("netsuite", "salesforce", "m3ter")} == before
    assert_one_invoice_per_bill("netsuite_default", inv_env["usd"])
    assert_one_invoice_per_bill("netsuite_eu", inv_env["eur"])
    assert {o["Key"] for o in archive.list_keys("invoices/")} == keys


def test_eu_outage_fails_only_eu_then_retry_completes_without_duplicates(inv_env: dict[str, Any]) -> None:
    sandbox = inv_env["sandbox"]
    sandbox.admin("netsuite", "account_fault", "POST", account="eu", status=503)
    run = run_sync()
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["netsuite_us.deliver"] == "success"
    assert states["salesforce.deliver"] == "success"
    assert states["archive.deliver"] == "success"
    assert states["netsuite_eu.deliver"] == "failed"
    assert states["finalize"] == "failed"
    assert_one_invoice_per_bill("netsuite_default", inv_env["usd"])
    eu_state = next(a for a in sandbox.state("netsuite")["accounts"].values() if a["label"] == "eu")
    assert eu_state["counts"]["invoice"] == 0  # read past the fault through the admin API
    summary = _latest_summary()
    failed = {(f["bill_id"], f["destination"]) for f in summary["failed"]}
    assert failed == {(b["id"], "netsuite_eu") for b in inv_env["eur"]}
    assert all("503" in f["error"] for f in summary["failed"])
    # The failure alert (Slack sink of the platform emulator) names the bills and the destination.
    slack = "\n".join(m["text"] for m in sandbox.state("platform")["slack"])
    assert "netsuite_eu" in slack and all(b["id"] in slack for b in inv_env["eur"])
    # EUR bills are not stamped as exported; USD bills are.
    hook = inv_env["hook"]
    assert not hook.get_account(inv_env["eur"][0]["accountId"])["customFields"].get("exported_bill")
    assert hook.get_account(inv_env["usd"][0]["accountId"])["customFields"]["exported_bill"]

    sandbox.admin("netsuite", "account_fault", "POST", account="eu")
    us_writes = len([r for r in sandbox.stats("netsuite")["recent"] if r["method"] == "PUT"])
    assert run_sync().state == "success"
    assert_one_invoice_per_bill("netsuite_eu", inv_env["eur"])
    assert_one_invoice_per_bill("netsuite_default", inv_env["usd"])
    # Only the EU customers and invoices were written on the retry.
    puts = len([r for r in sandbox.stats("netsuite")["recent"] if r["method"] == "PUT"])
    assert puts - us_writes == 2 * len(inv_env["eur"])


def test_lost_response_after_netsuite_created_the_invoice_makes_no_duplicate(inv_env: dict[str, Any]) -> None:
    sandbox = inv_env["sandbox"]
    sandbox.faults("netsuite", path_regex="/invoice/eid:", methods=["PUT"], drop_next=1, drop_after_processing=True)
    assert run_sync(destinations=["netsuite_us"]).state == "success"
    assert sandbox.admin("netsuite", "faults")["drop_next"] == 0  # the fault fired
    assert_one_invoice_per_bill("netsuite_default", inv_env["usd"])


def test_closed_period_is_action_needed_with_netsuites_message(inv_env: dict[str, Any]) -> None:
    sandbox = inv_env["sandbox"]
    tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
    sandbox.admin("netsuite", "close_period", "POST", account="eu", before=tomorrow)
    run = run_sync(destinations=["netsuite_eu"])
    assert run.state == "failed"
    summary = _latest_summary()
    assert {a["bill_id"] for a in summary["action_needed"]} == {b["id"] for b in inv_env["eur"]}
    assert all(a["message"].startswith("The accounting period is closed for the transaction date")
               for a in summary["action_needed"])
    assert invoices("netsuite_eu") == []


def test_dry_run_writes_nothing(inv_env: dict[str, Any]) -> None:
    sandbox = inv_env["sandbox"]
    before = {n: writes(sandbox, n) for n in ("netsuite", "salesforce", "m3ter")}
    run = run_sync(dry_run=True)
    assert run.state == "success"
    assert {n: writes(sandbox, n) for n in ("netsuite", "salesforce", "m3ter")} == before
    # Each mapped deliver task is labelled by destination and part in the UI (map_index_template).
    assert sorted(ti.rendered_map_index for ti in run.get_task_instances()
                  if ti.task_id.endswith(".deliver")) == ["archive part 1", "netsuite_eu part 1",
                                                          "netsuite_us part 1", "salesforce part 1"]
    assert _latest_summary()["by_destination"]["netsuite_us"] == {"dry_run": 3}


def test_customer_webhook_is_signed_and_sent_once_per_bill_version(
        fresh_sandbox: Any, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from m3sh.config import DEFAULT_CONFIG_PATH

    text = DEFAULT_CONFIG_PATH.read_text().replace("  routes:\n", (
        "    - {name: customer_hook, type: webhook, conn_id: m3sh_customer_webhook, endpoint: /invoices}\n"
        "  routes:\n    - {name: everyone, to: [customer_hook]}\n"), 1)
    path = tmp_path / "m3sh.yaml"
    path.write_text(text + "\ndag_defaults: {retries: 1, retry_delay_s: 0.1, max_retry_delay_s: 0.5}\n")
    monkeypatch.setenv("M3SH_CONFIG", str(path))
    seeded = seed_bills(fresh_sandbox, n_usd=2, n_eur=1)
    assert run_sync(destinations=["customer_hook"]).state == "success"
    hooks = [w for w in fresh_sandbox.state("platform")["webhooks"] if w["name"] == "invoices"]
    sent = sorted(json.loads(w["body"])["invoice"]["bill_id"] for w in hooks)
    assert sent == sorted(b["id"] for b in seeded["bills"])
    assert all(w["verified"] and w["idempotency_key"].startswith(json.loads(w["body"])["invoice"]["bill_id"] + ":")
               for w in hooks)
    # Forced re-delivery sends again, with the same idempotency keys: the receiver drops the repeats.
    assert run_sync(destinations=["customer_hook"], redeliver=True).state == "success"
    assert len([w for w in fresh_sandbox.state("platform")["webhooks"] if w["name"] == "invoices"]) == len(hooks)
