"""``open_next_balance`` against the sandbox: a depleted prepaid balance opens its next period once.

Asserted through m3ter's public API: the account's balances (code, dates, currency, products,
rollover, contract) and the new balance's transactions and amount. "Exactly once" means one new
balance and one credit after a second pass, a re-run, a second firing under another key, and a
create whose response was lost after m3ter applied it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.dags.test_plan_triggers_dag import _run, _writes

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

RULE = """
triggers:
  - name: next_period
    when: {balance_below: {amount: 100}}
    actions:
      - open_next_balance: {}
"""


@pytest.fixture
def env(fresh_sandbox: Any, airflow_db: Path, m3sh_config: Any) -> dict[str, Any]:
    from m3sh.config import load_config
    from m3sh.hooks.m3ter import M3terHook

    path = m3sh_config(replace={"\ntriggers:\n": RULE, "  prefix: m3sh/\n": f"  prefix: t-{uuid.uuid4().hex[:8]}/\n"})
    return {"sb": fresh_sandbox, "hook": M3terHook(), "cfg": load_config(path)}


def _depleted(env: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A prepaid balance running this calendar month with a rollover and a product, drawn to 40."""
    hook = env["hook"]
    horizon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    balance = sorted(hook.list_balances(end_date_start=horizon), key=lambda b: b["code"])[0]
    product = sorted(hook.list_products(), key=lambda p: p["code"])[0]
    now = dt.datetime.now(dt.UTC)
    hook.update_balance(balance["id"], {
        "startDate": f"{now:%Y-%m}-01T00:00:00Z", "endDate": _month_after(now),
        "rolloverAmount": 50.0, "rolloverEndDate": _month_after(now, day=8),
        "productIds": [product["id"]]})
    hook.create_balance_transaction(balance["id"], {"amount": -(balance["amount"] - 40), "description": "usage"})
    balance = hook.get_balance(balance["id"])
    assert balance["amount"] == pytest.approx(40)
    return hook.get_account(balance["accountId"]), balance


def _month_after(at: dt.datetime, months: int = 1, day: int = 1) -> str:
    index = at.year * 12 + at.month - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}-{day:02d}T00:00:00Z"


def _successors(env: dict[str, Any], balance: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for b in env["hook"].list_balances(account_id=balance["accountId"])
            if b["id"] != balance["id"]]


def _credits(env: dict[str, Any], balance_id: str) -> list[dict[str, Any]]:
    return [t for t in env["hook"].list_balance_transactions(balance_id)
            if t["amount"] > 0]


def _pass(env: dict[str, Any], rule_name: str, account: dict[str, Any]) -> list[dict[str, Any]]:
    """One evaluation pass with the DAG's own evaluate/apply steps, under ``rule_name``'s key."""
    from m3sh.automation.actions import ActionRunner, apply_firing
    from m3sh.automation.evaluate import Evaluator
    from m3sh.automation.ledger import Ledger
    from m3sh.storage import Storage

    cfg, hook = env["cfg"], env["hook"]
    rule = cfg.triggers[0].model_copy(update={"name": rule_name})
    firings = Evaluator(hook).run([rule], accounts=[account["code"]]).firings
    ledger, runner = Ledger(Storage.from_config(cfg.storage)), ActionRunner(cfg, hook)
    return [apply_firing(f, rule, runner, ledger, f"pass-{rule_name}") for f in firings]


def test_depleted_balance_opens_the_next_month_once_across_passes_reruns_and_firings(env: dict[str, Any]) -> None:
    hook = env["hook"]
    account, balance = _depleted(env)
    initial = hook.get_balance(f"{balance['id']}/transactions/summary")["initialCreditAmount"]
    now = dt.datetime.now(dt.UTC)

    _run(rules=["next_period"], accounts=[account["code"]])

    (new,) = _successors(env, balance)
    assert new["code"] == f"{balance['code']}-{_month_after(now)[:10].replace('-', '')}"
    assert (new["startDate"], new["endDate"]) == (_month_after(now), _month_after(now, 2))
    assert new["currency"] == balance["currency"] and new["productIds"] == balance["productIds"]
    assert new["rolloverAmount"] == 50.0 and new["rolloverEndDate"] == _month_after(now, 2, day=8)
    assert new["contractId"] == balance["contractId"]  # the seeded contract runs past the new start
    assert new["amount"] == pytest.approx(initial) and len(_credits(env, new["id"])) == 1
    assert hook.get_balance(balance["id"])["amount"] == pytest.approx(40)  # the old period is left alone

    # a manual re-run and a second pass write nothing to m3ter (the ledger says done) ...
    writes = _writes(env)
    _run(rules=["next_period"], accounts=[account["code"]])
    assert [o["status"] for o in _pass(env, "next_period", account)] == ["skipped"]
    assert _writes(env) == writes
    # ... and a second firing under another key (another rule, a lost ledger) finds the balance it opened
    (out,) = _pass(env, "next_period_again", account)
    assert out["actions"] == ["open_next_balance:unchanged"]
    assert _writes(env) == writes
    assert [b["id"] for b in _successors(env, balance)] == [new["id"]] and len(_credits(env, new["id"])) == 1


def test_a_lost_create_response_still_opens_exactly_one_balance(env: dict[str, Any]) -> None:
    sb = env["sb"]
    account, balance = _depleted(env)
    # m3ter creates the balance, then the connection drops before the answer: the hook must find it
    sb.faults("m3ter", path_regex=r"/balances$", methods=["POST"], drop_next=1, drop_after_processing=True)
    _run(rules=["next_period"], accounts=[account["code"]])
    assert sb.admin("m3ter", "faults")["drop_next"] == 0

    (new,) = _successors(env, balance)
    assert len(_credits(env, new["id"])) == 1
    (out,) = _pass(env, "after_the_drop", account)
    assert out["actions"] == ["open_next_balance:unchanged"]
    assert [b["id"] for b in _successors(env, balance)] == [new["id"]] and len(_credits(env, new["id"])) == 1


def test_event_time_start_then_the_default_finds_that_next_period(env: dict[str, Any]) -> None:
    """``start: event_time`` opens the next period at the firing; the default mode (at the balance's
    end) then recognises that balance as the next period and opens nothing else."""
    from m3sh.automation.actions import ActionRunner
    from m3sh.automation.rules import Firing
    from m3sh.config import OpenNextBalance

    hook = env["hook"]
    account, balance = _depleted(env)
    runner = ActionRunner(env["cfg"], hook)
    now = dt.datetime.now(dt.UTC)
    fired_at = f"{now:%Y-%m}-11T00:00:00Z"  # inside the balance's period (this calendar month)
    firing = Firing("r", "balance_below", account["id"], "balance", balance["id"], "credits=1", fired_at,
                    account["code"])

    out = runner.open_next_balance(firing, OpenNextBalance(start="event_time", months=2, amount=25))
    assert out.status == "done", out.detail
    (new,) = _successors(env, balance)
    assert (new["startDate"], new["endDate"]) == (fired_at, _month_after(now, 2, day=11))
    assert new["code"] == f"{balance['code']}-{now:%Y%m}11" and new["amount"] == pytest.approx(25)

    out = runner.open_next_balance(firing, OpenNextBalance())
    assert out.status == "unchanged" and new["code"] in out.detail
    assert [b["id"] for b in _successors(env, balance)] == [new["id"]]
