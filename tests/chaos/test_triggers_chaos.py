"""Chaos for ``m3sh_plan_triggers``: m3ter writes meet a 429, a 503 and responses lost after m3ter
applied them, and the same m3ter notification is delivered twice to the receiver. Each action
of the firing must be applied exactly once, and the ledger must agree with m3ter's state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.chaos.conftest import Chaos

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun, pytest.mark.chaos]


class ListRecorder:
    """Stands in for the asset-event recorder: each accepted delivery would start one DAG run."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, uri: str, extra: dict[str, Any]) -> None:
        self.events.append(extra)


def _run(**conf: Any) -> Any:
    from m3sh.dagkit.plan_triggers import build_plan_triggers_dag

    return build_plan_triggers_dag().test(run_conf=conf or None)


def test_trigger_actions_apply_once_under_faults_and_duplicate_notifications(chaos: Chaos) -> None:
    from m3sh.automation.ledger import Ledger
    from m3sh.sandbox import credentials as cred
    from m3sh.sandbox.m3ter.notify import sign
    from m3sh.web.receiver import S3ReplayGuard, create_app

    hook = chaos.m3ter()
    plans = {p["id"]: p["code"] for p in hook.list_plans()}
    horizon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    balance = sorted(hook.list_balances(end_date_start=horizon), key=lambda b: b["code"])[0]
    account = hook.get_account(balance["accountId"])
    # usage that leaves 40 of the prepaid credit: the balance crosses the rule's 100 threshold
    calls = int((balance["amount"] - 40) / 0.002)
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    hook.submit_measurements([{"uid": f"chaos-deplete-{account['code']}", "meter": "api_calls",
                               "account": account["code"], "ts": ts, "measure": {"quantity": calls}}])
    chaos.sb.admin("m3ter", "drawdown", "POST", accountCode=account["code"])

    # m3ter delivers the balance notification twice (its retry after a slow answer): one is accepted.
    body = json.dumps({"id": "ev-balance-1", "eventName": "billing.balanceamount.updated",
                       "m3terEvent": {"eventData": {"newDto": {"id": balance["id"], "accountId": account["id"]}}}})
    stamp = str(int(time.time()))
    headers = {"X-m3ter-Timestamp": stamp, "X-m3ter-Event-Id": "ev-balance-1",
               "X-m3ter-Signature": sign(cred.WEBHOOK_SECRET, stamp, body.encode()), "Content-Type": "application/json"}
    rec = ListRecorder()
    receiver = TestClient(create_app(recorder=rec, replay=S3ReplayGuard(chaos.storage())))
    answers = [receiver.post("/webhooks/m3ter", content=body, headers=headers).status_code for _ in range(2)]
    assert answers == [202, 401] and len(rec.events) == 1

    # The pass it starts meets a 429, a 503 and a lost response on the very writes it makes: the
    # old plan's end date (PUT), then the new account plan (POST). A lost create is not re-sent
    # blindly (the hook looks for the account plan m3ter did attach), so the pass succeeds and
    # alerts nothing; should a failure still happen, it is alerted once and the next pass resumes.
    chaos.faults("m3ter", path_regex=r"/accountplans(/[^/]+)?$", methods=["POST", "PUT"],
                 burst_429=1, fail_next=1, error_status=503, drop_next=1, drop_after_processing=True,
                 retry_after_s=0)
    alerts = chaos.failure_alerts()
    first = _run(rules=["prepaid_depleted"])
    assert chaos.faults_spent("m3ter")
    chaos.assert_failed_tasks_alerted_once(first, alerts)
    # ... and the next pass resumes after the last completed action.
    alerts = chaos.failure_alerts()
    assert _run(rules=["prepaid_depleted"]).state == "success"
    # ... then the scheduled pass and a duplicate that slipped through both evaluate again
    writes = chaos.writes("m3ter")
    assert _run(rules=["prepaid_depleted"]).state == "success"
    assert _run(rules=["prepaid_depleted"], accounts=[account["code"]]).state == "success"
    assert chaos.writes("m3ter") == writes
    assert chaos.failure_alerts() == alerts

    # m3ter: one plan switch, one reset transaction, the field set; Slack: one message.
    aps = sorted(hook.list_account_plans(account_id=account["id"], include_all=True),
                 key=lambda ap: ap["startDate"])
    assert [plans[ap["planId"]] for ap in aps] == ["prepaid_usd", "growth_usd"]
    assert aps[0]["endDate"] == aps[1]["startDate"]
    txs = list(hook.list_balance_transactions(balance['id']))
    resets = [t for t in txs if str(t.get("description", "")).startswith("m3sh reset")]
    assert len(resets) == 1
    assert hook.get_balance(balance["id"])["amount"] == pytest.approx(0)
    assert hook.get_account(account["id"])["customFields"]["lifecycle"] == "converted_from_prepaid"
    notices = [m for m in chaos.sb.state("platform")["slack"] if account["code"] in (m.get("text") or "")]
    assert len(notices) == 1

    # The ledger agrees: one firing for this balance, done, every action done once.
    entries = [e for e in Ledger(chaos.storage()).entries(rule="prepaid_depleted")
               if e.get("account_id") == account["id"]]
    assert len(entries) == 1
    (entry,) = entries
    assert entry["status"] == "done"
    assert [a["status"] for a in entry["actions"]] == ["done", "done", "done", "done"]
    assert resets[0]["description"].endswith(entry["key"])


def test_a_lost_response_on_a_balance_transaction_does_not_apply_it_twice(chaos: Chaos) -> None:
    """m3ter applies the transaction but the response is lost: the hook must not re-send it blindly."""
    hook = chaos.m3ter()
    balance = sorted(hook.list_balances(), key=lambda b: b["code"])[0]
    note = "m3sh reset chaos-lost-response"
    chaos.faults("m3ter", path_regex="/transactions$", methods=["POST"], drop_next=1, drop_after_processing=True)
    with contextlib.suppress(Exception):  # the caller may see the drop; what matters is m3ter's state
        hook.create_balance_transaction(balance["id"], {"amount": -1.0, "description": note})
    txs = [t for t in hook.list_balance_transactions(balance['id'])
           if t.get("description") == note]
    assert len(txs) == 1
