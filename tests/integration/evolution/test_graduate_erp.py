"""Graduate an ERP: the US subsidiary's invoicing moves from NetSuite account A (``netsuite_us``) to
account B from a cut-over date D, by a config edit only (docs/evolution.md, "Graduate an ERP").

The sandbox has two NetSuite accounts, so B is a new destination on the second account's connection
(``netsuite_eu``); the EU destination stays in the config, as it would in production. Whole
``m3sh_invoice_sync`` and ``m3sh_reconcile`` runs; everything is read back through SuiteQL on each
account, the emulators' request logs and the S3 ledger.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from m3sh.sandbox.seed import demo_company
from tests.integration.dags.test_invoice_sync_dag import _fast_netsuite, netsuite, run_sync, writes
from tests.integration.evolution.conftest import Stack

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

ACCOUNT_A = "netsuite_default"  # connection of destination netsuite_us
ACCOUNT_B = "netsuite_eu"  # connection of the new destination netsuite_us_b


def _first_of_next_month(day: dt.date) -> dt.date:
    return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def _create_accounts(n: int) -> tuple[Any, list[str]]:
    """m3ter accounts (with plans) for ``n`` USD demo customers not yet in m3ter."""
    from m3sh.hooks.m3ter import M3terHook

    hook = M3terHook()
    fresh = [c for c in demo_company().customers
             if not c.in_m3ter and c.currency == "USD" and c.crm == "salesforce"][:n]
    assert len(fresh) == n, "the demo seed has too few USD Salesforce customers"
    ids = []
    for c in fresh:
        acc = hook.create_account({
            "code": c.key, "name": c.name, "emailAddress": c.email, "currency": c.currency,
            "customFields": {"crm_source": c.crm, "crm_id": c.salesforce_id or "", "subsidiary": "",
                             "tax_code": ""}})
        plan = hook.find_plan(c.plan_code)
        assert plan is not None
        hook.create_account_plan({"accountId": acc["id"], "planId": plan["id"],
                                     "startDate": f"{c.contract_start.isoformat()}T00:00:00Z"})
        ids.append(acc["id"])
    return hook, ids


def _bill(sandbox: Any, hook: Any, account_ids: list[str], last_day: dt.date | None = None) -> list[dict[str, Any]]:
    """Run billing for these accounts (the period ending ``last_day``; default: last month), approve."""
    body: dict[str, Any] = {"accountIds": account_ids}
    if last_day is not None:
        body["lastDateInBillingPeriod"] = last_day.isoformat()
    bill_ids = list(sandbox.admin("m3ter", "run_billing", "POST", **body)["billIds"])
    hook.approve_bills(bill_ids)
    return [hook.get_bill(b) for b in bill_ids]


def _invoice_counts(conn_id: str) -> dict[str, int]:
    """external id -> number of invoices with it in one NetSuite account (SuiteQL GROUP BY)."""
    rows = netsuite(conn_id).suiteql(
        "SELECT t.externalid, COUNT(*) AS n FROM transaction t WHERE t.type = 'CustInvc' GROUP BY t.externalid")
    return {str(r["externalid"]): int(r["n"]) for r in rows}


def _customers(conn_id: str) -> dict[str, int]:
    rows = netsuite(conn_id).suiteql("SELECT c.externalid, COUNT(*) AS n FROM customer c GROUP BY c.externalid")
    return {str(r["externalid"]): int(r["n"]) for r in rows if r.get("externalid")}


def _invoice_puts(sandbox: Any) -> list[str]:
    """Bill ids of the invoice upserts (``PUT .../invoice/eid:<bill id>``) NetSuite received, in order."""
    return [r["path"].rsplit("eid:", 1)[1].split("?")[0] for r in sandbox.stats("netsuite")["recent"]
            if r["method"] == "PUT" and "/invoice/eid:" in r["path"]]


def _ledger(destination: str) -> set[str]:
    from m3sh.config import get_config
    from m3sh.invoicing.ledger import S3Ledger
    from m3sh.storage import Storage

    return set(S3Ledger(Storage.from_config(get_config().storage)).entries(destination))


def _reconcile() -> tuple[Any, dict[str, Any]]:
    from m3sh.config import get_config
    from m3sh.dagkit.reconcile import build_reconcile_dag
    from m3sh.storage import Storage

    run = build_reconcile_dag().test(run_conf={})
    storage = Storage.from_config(get_config().storage)
    summary = storage.get_json(storage.key("reports", "reconcile", "latest.json"))
    assert isinstance(summary, dict)
    return run, summary


def test_graduate_us_invoicing_to_a_new_netsuite_account(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = stack.sandbox
    _fast_netsuite(sandbox, monkeypatch)
    hook, accounts = _create_accounts(3)

    # Before: last month's bills of two customers are delivered to account A by the demo config.
    before = _bill(sandbox, hook, accounts[:2])
    assert {b["currency"] for b in before} == {"USD"} and len(before) == 2
    assert run_sync().state == "success"
    assert _invoice_counts(ACCOUNT_A) == {b["id"]: 1 for b in before}
    assert _invoice_counts(ACCOUNT_B) == {}

    # The cut-over: the first day after the period being billed now, i.e. the date of the next bills.
    cutover = _first_of_next_month(dt.date.fromisoformat(before[0]["billDate"][:10]))
    assert all(dt.date.fromisoformat(b["billDate"][:10]) < cutover for b in before)

    def graduate(data: dict[str, Any]) -> None:
        inv = data["invoicing"]
        a = next(d for d in inv["destinations"] if d["name"] == "netsuite_us")
        a["cutover_until"] = cutover.isoformat()
        inv["destinations"].insert(inv["destinations"].index(a) + 1, {
            "name": "netsuite_us_b", "type": "netsuite", "conn_id": ACCOUNT_B, "subsidiary_id": "1",
            "default_item_id": "503", "item_map": {"STANDING_CHARGE": "502", "USAGE": "503"},
            "concurrency": 5, "cutover_from": cutover.isoformat()})
        usd = next(r for r in inv["routes"] if r["name"] == "usd")
        usd["to"] = ["netsuite_us", "netsuite_us_b", *[t for t in usd["to"] if t != "netsuite_us"]]

    cfg = stack.edit(graduate)  # validated by load_config (cross-references, cut-over dates)
    dests = {d.name: d for d in cfg.invoicing.destinations}
    assert dests["netsuite_us"].cutover_until == cutover and dests["netsuite_us_b"].cutover_from == cutover

    # After: the next period's bills (dated D) of all three customers; a late pre-D bill of the third
    # customer (last month, approved only now); and a change to a delivered pre-D bill (late usage,
    # recalculated, approved again).
    late = _bill(sandbox, hook, accounts[2:])
    after = _bill(sandbox, hook, accounts, last_day=cutover - dt.timedelta(days=1))
    assert all(b["billDate"][:10] == cutover.isoformat() for b in after) and len(after) == 3
    assert all(dt.date.fromisoformat(b["billDate"][:10]) < cutover for b in late) and len(late) == 1
    changed = before[0]
    hook.update_bill_status(changed['id'], "PENDING")
    hook.submit_measurements([{"uid": f"graduate-late-{changed['id']}", "meter": "api_calls",
                               "account": changed["accountCode"], "ts": f"{changed['startDate'][:10]}T12:00:00Z",
                               "measure": {"quantity": 250_000}}])
    hook.recalculate_bills([changed["id"]])
    hook.approve_bills([changed["id"]])
    before[0] = hook.get_bill(changed["id"])
    new_total = round(sum(round(li["subtotal"], 2) for li in before[0]["lineItems"]), 2)
    assert new_total != round(sum(round(li["subtotal"], 2) for li in changed["lineItems"]), 2)

    puts_before = len(_invoice_puts(sandbox))
    assert run_sync().state == "success"
    # The untouched delivered pre-D bill was not re-sent (to A or B); the changed one was updated in
    # A only, the late one went once (to A), each post-D bill once (to B).
    assert sorted(_invoice_puts(sandbox)[puts_before:]) == sorted(b["id"] for b in [changed, *late, *after])
    assert _invoice_counts(ACCOUNT_A) == {b["id"]: 1 for b in before + late}
    assert _invoice_counts(ACCOUNT_B) == {b["id"]: 1 for b in after}
    (row,) = netsuite(ACCOUNT_A).suiteql(
        f"SELECT t.foreigntotal FROM transaction t WHERE t.externalid = '{changed['id']}'")  # noqa: S608
    assert float(row["foreigntotal"]) == pytest.approx(new_total)
    # B created its customers on first use (external id = m3ter account id), one each.
    assert _customers(ACCOUNT_B) == {a: 1 for a in accounts}
    assert _customers(ACCOUNT_A) == {a: 1 for a in accounts}
    assert _ledger("netsuite_us") == {b["id"] for b in before + late}
    assert _ledger("netsuite_us_b") == {b["id"] for b in after}

    # Re-running writes nothing to either account.
    ns_writes = writes(sandbox, "netsuite")
    assert run_sync().state == "success"
    assert writes(sandbox, "netsuite") == ns_writes
    assert _invoice_counts(ACCOUNT_A) == {b["id"]: 1 for b in before + late}
    assert _invoice_counts(ACCOUNT_B) == {b["id"]: 1 for b in after}

    # Reconciliation covers both sides of the cut-over: a post-D bill posted into A by hand is its
    # only finding (on the wrong side); once removed, the report is clean.
    a = netsuite(ACCOUNT_A)
    template = a.get_by_external_id("invoice", before[1]["id"])
    assert template is not None
    stray = after[0]["id"]
    a.upsert_by_external_id("invoice", stray, {
        "entity": {"id": template["entity"]["id"]}, "currency": {"id": template["currency"]["id"]},
        "tranDate": after[0]["billDate"][:10],
        "item": {"items": [{"item": {"id": "503"}, "quantity": 1, "rate": 1.0, "amount": 1.0}]}})
    run, summary = _reconcile()
    assert run.state == "failed"
    assert [(f["check"], f["destination"], f["bill_id"]) for f in summary["drift"]] == [
        ("extra", "netsuite_us", stray)]
    a.delete_record("invoice", f"eid:{stray}")
    run, summary = _reconcile()
    assert (run.state, summary["clean"], summary["findings"]) == ("success", True, 0), summary["drift"]
    assert summary["checked"]["m3ter bills in scope"] == len(before + late + after)
    assert summary["checked"]["netsuite_us invoices and credit memos"] == len(before + late)
    assert summary["checked"]["netsuite_us_b invoices and credit memos"] == len(after)
