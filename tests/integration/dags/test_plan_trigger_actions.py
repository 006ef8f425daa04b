"""``m3sh_plan_triggers`` actions the base DAG test leaves out, each through whole ``dag.test()`` runs.

Covered here: ``top_up_balance``; ``set_custom_fields`` on the account plan; ``update_crm_fields``
on HubSpot (and the "no CRM mapping" skip); ``contract_ended`` with a plan switch; ``dry_run``; the
apply task's log of keys and outcomes; re-runs under other logical dates (what a backfill does).
Outcomes are read back through public APIs only: m3ter (M3terHook), the HubSpot emulator through
the real HubSpotHook and its request counter, and the S3 ledger.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.dags.test_plan_triggers_dag import _dag, _plans_of, _run, _writes

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

TOP_UP = 250.0
RULES = """
triggers:
  - name: low_top_up
    when: {balance_below: {amount: 100}}
    actions:
      - top_up_balance: 250
  - name: low_plan_tag
    when: {balance_below: {amount: 100}}
    actions:
      - set_custom_fields: {lifecycle: low_credit}
        custom_fields_on: accountplan
  - name: renewal_plan_tag
    when: {contract_ending_within_days: 30}
    actions:
      - set_custom_fields: {renewal_status: due}
        custom_fields_on: accountplan
  - name: renewal_hubspot
    when: {contract_ending_within_days: 30}
    actions:
      - update_crm_fields: {hubspot.description: "Renewal due (m3sh)"}
  - name: ended_downgrade
    when: {contract_ended: true}
    actions:
      - switch_plan: starter_usd
"""


@pytest.fixture
def env(fresh_sandbox: Any, airflow_db: Path, m3sh_config: Any) -> dict[str, Any]:
    """The demo config with this file's rules first and a private S3 prefix (a ledger of its own)."""
    from m3sh.automation.ledger import Ledger
    from m3sh.config import load_config
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage

    path = m3sh_config(replace={"\ntriggers:\n": RULES, "  prefix: m3sh/\n": f"  prefix: t-{uuid.uuid4().hex[:8]}/\n"},
                       extra="\ndag_defaults: {retries: 0, retry_delay_s: 0.1, max_retry_delay_s: 1}\n")
    cfg = load_config(path)
    hook = M3terHook()
    return {"sb": fresh_sandbox, "hook": hook, "cfg": cfg,
            "plans": {p["id"]: p["code"] for p in hook.list_plans()},
            "ledger": Ledger(Storage.from_config(cfg.storage))}


def _accounts(env: dict[str, Any], crm: str | None = None) -> list[dict[str, Any]]:
    """Seeded m3ter accounts (all prepaid) whose contract runs past the next 30 days, by code;
    ``crm`` keeps those whose CRM source is exactly that CRM."""
    hook, horizon = env["hook"], dt.datetime.now(dt.UTC).date() + dt.timedelta(days=45)
    running = {c["accountId"] for c in hook.list_contracts()
               if dt.date.fromisoformat(c["endDate"][:10]) > horizon}
    return sorted((a for a in hook.list_accounts() if a["id"] in running
                   and (crm is None or a["customFields"].get("crm_source") == crm)), key=lambda a: a["code"])


def _deplete(env: dict[str, Any], account: dict[str, Any], to: float = 40.0) -> dict[str, Any]:
    """Draw the account's prepaid balance down to ``to`` (a debit, as usage would)."""
    hook = env["hook"]
    balance = next(hook.list_balances(account_id=account["id"]))
    hook.create_balance_transaction(balance["id"], {"amount": -(balance["amount"] - to), "description": "usage"})
    balance = hook.get_balance(balance["id"])
    assert balance["amount"] == pytest.approx(to)
    return balance


def _credit_key(env: dict[str, Any], rule: str, balance: dict[str, Any]) -> str:
    """The firing key of a balance_below rule: the threshold crossing is the balance's total credit."""
    credit = env["hook"].get_balance(f"{balance['id']}/transactions/summary")["totalCreditAmount"]
    return f"{rule}|{balance['accountId']}|balance:{balance['id']}|credits={float(credit):g}"


def _top_ups(env: dict[str, Any], balance: dict[str, Any]) -> list[dict[str, Any]]:
    txs = env["hook"].list_balance_transactions(balance['id'])
    return [t for t in txs if str(t.get("description", "")).startswith("m3sh top_up ")]


def _end_contract(env: dict[str, Any], account: dict[str, Any], last_day: dt.date) -> dict[str, Any]:
    """Move the account's contract (and its account plan, which ends the midnight after) to ``last_day``."""
    hook = env["hook"]
    contract = next(hook.list_contracts(account_id=account["id"]))
    hook.update_contract(contract["id"], {"endDate": last_day.isoformat()})
    (plan,) = hook.list_account_plans(account_id=account["id"], include_all=True)
    hook.update_account_plan(plan["id"], {"endDate": f"{last_day + dt.timedelta(days=1)}T00:00:00Z"}, current=plan)
    return hook.get_contract(contract["id"])


def _hubspot_writes(env: dict[str, Any]) -> int:
    return int(env["sb"].stats("hubspot")["counts"].get("writes", 0))


def test_top_up_balance_credits_a_depleted_balance_once(env: dict[str, Any]) -> None:
    hook = env["hook"]
    account = _accounts(env)[0]
    balance = _deplete(env, account)
    key = _credit_key(env, "low_top_up", balance)

    _run(rules=["low_top_up"], accounts=[account["code"]])

    assert hook.get_balance(balance["id"])["amount"] == pytest.approx(40 + TOP_UP)
    (tx,) = _top_ups(env, balance)
    assert tx["amount"] == pytest.approx(TOP_UP) and tx["description"] == f"m3sh top_up {key}"
    entry = env["ledger"].get(key)
    assert entry is not None and entry["status"] == "done"
    assert [(a["kind"], a["status"]) for a in entry["actions"]] == [("top_up_balance", "done")]

    # the top-up lifted the balance over the threshold: a second pass (every rule) finds nothing to do
    writes = _writes(env)
    _run(rules=["low_top_up"])
    assert _writes(env) == writes
    assert len(_top_ups(env, balance)) == 1
    assert hook.get_balance(balance["id"])["amount"] == pytest.approx(40 + TOP_UP)


def test_custom_fields_on_accountplan_land_on_the_current_account_plan_once(env: dict[str, Any]) -> None:
    """A balance rule tags the plan running now; a contract-ending rule without a plan switch tags
    the plan that is ending (the one current until the contract's end), not skip it."""
    hook = env["hook"]
    low, ending = _accounts(env)[:2]
    _deplete(env, low)
    _end_contract(env, ending, dt.datetime.now(dt.UTC).date() + dt.timedelta(days=10))

    _run(rules=["low_plan_tag", "renewal_plan_tag"], accounts=[low["code"], ending["code"]])

    for account, field, value in ((low, "lifecycle", "low_credit"), (ending, "renewal_status", "due")):
        (plan,) = hook.list_account_plans(account_id=account["id"], include_all=True)
        assert plan["customFields"][field] == value, plan
        assert hook.get_account(account["id"])["customFields"].get(field) == account["customFields"].get(field)
    statuses = sorted((e["rule"], [a["status"] for a in e["actions"]]) for e in env["ledger"].entries())
    assert statuses == [("low_plan_tag", ["done"]), ("renewal_plan_tag", ["done"])]

    writes = _writes(env)
    _run(rules=["low_plan_tag", "renewal_plan_tag"], accounts=[low["code"], ending["code"]])
    assert _writes(env) == writes


def test_contract_ending_updates_the_hubspot_company_and_skips_an_unmapped_account(env: dict[str, Any]) -> None:
    from m3sh.hooks.hubspot import HubSpotHook

    hook = env["hook"]
    mapped, unmapped = _accounts(env, crm="hubspot")[:2]
    end = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=10)
    for account in (mapped, unmapped):
        _end_contract(env, account, end)
    # the link m3sh_crm_sync writes between an m3ter account and its HubSpot company (the seed's crm_id)
    company_id = mapped["customFields"]["crm_id"]
    hook.create_external_mapping({"externalSystem": "hubspot", "externalTable": "companies",
                                     "externalId": company_id, "m3terEntity": "Account", "m3terId": mapped["id"]})
    hubspot_writes = _hubspot_writes(env)

    _run(rules=["renewal_hubspot"], accounts=[mapped["code"], unmapped["code"]])

    company = HubSpotHook().get_object("companies", company_id, properties=["description"])
    assert company["properties"]["description"] == "Renewal due (m3sh)"
    assert _hubspot_writes(env) == hubspot_writes + 1
    entries = {e["account_code"]: e for e in env["ledger"].entries(rule="renewal_hubspot")}
    assert entries[mapped["code"]]["actions"][0]["status"] == "done"
    assert f"hubspot companies {company_id}: set ['description']" in entries[mapped["code"]]["actions"][0]["detail"]
    skipped = entries[unmapped["code"]]
    assert skipped["status"] == "done" and skipped["actions"][0]["status"] == "skipped"
    assert "no external mapping" in skipped["actions"][0]["detail"]

    _run(rules=["renewal_hubspot"], accounts=[mapped["code"], unmapped["code"]])
    assert _hubspot_writes(env) == hubspot_writes + 1


def test_contract_ended_switches_to_the_configured_plan_from_the_contract_end_once(env: dict[str, Any]) -> None:
    account = _accounts(env)[0]
    last_day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=5)
    _end_contract(env, account, last_day)
    ended_at = f"{last_day + dt.timedelta(days=1)}T00:00:00"

    _run(rules=["ended_downgrade"], accounts=[account["code"]])

    plans = _plans_of(env, account["id"])
    assert [p[0] for p in plans] == ["prepaid_usd", "starter_usd"]
    (_, _, old_end), (_, new_start, new_end) = plans
    assert (old_end or "").startswith(ended_at) and new_start.startswith(ended_at) and new_end is None

    writes = _writes(env)
    _run(rules=["ended_downgrade"], accounts=[account["code"]])
    assert _writes(env) == writes and _plans_of(env, account["id"]) == plans


def test_dry_run_lists_the_firing_and_its_actions_and_writes_nothing(
        env: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    hook = env["hook"]
    account = _accounts(env)[0]
    balance = _deplete(env, account)
    key = _credit_key(env, "low_top_up", balance)
    writes = _writes(env)

    with caplog.at_level(logging.INFO):
        run = _run(rules=["low_top_up"], accounts=[account["code"]], dry_run=True)

    summary = run.get_task_instance("summary").xcom_pull(task_ids="summary")
    assert summary["dry_run"] is True and summary["firings"] == 1 and summary["would_fire"] == [key]
    assert summary["plan"] == [{"key": key, "account": account["code"], "status": "would_fire",
                                "actions": ["top_up_balance: 250.0"]}]
    # the evaluate task's log has the same line for every firing (the result lists the first 200)
    assert f"DRY RUN would_fire {key} account={account['code']} actions=['top_up_balance: 250.0']" in caplog.text
    assert _writes(env) == writes
    assert hook.get_balance(balance["id"])["amount"] == pytest.approx(40)
    assert list(env["ledger"].entries()) == []


def test_apply_task_logs_each_firing_key_and_action_outcome(
        env: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    account = _accounts(env)[0]
    balance = _deplete(env, account)
    key = _credit_key(env, "low_top_up", balance)

    with caplog.at_level(logging.INFO):
        _run(rules=["low_top_up"], accounts=[account["code"]])

    lines = [r.getMessage() for r in caplog.records if r.name == "m3sh.automation.actions"]
    assert any(line.startswith(f"{key}: action 0 top_up_balance: 250.0 -> done balance {balance['id']}: 40 -> 290")
               for line in lines), lines


def test_runs_at_other_logical_dates_act_once(env: dict[str, Any]) -> None:
    """A backfill re-runs the DAG for past logical dates: the ledger keeps it from acting again."""
    hook = env["hook"]
    account = _accounts(env)[0]
    balance = _deplete(env, account)
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    conf = {"rules": ["low_top_up"], "accounts": [account["code"]]}

    first = _dag().test(logical_date=today - dt.timedelta(days=1), run_conf=conf)
    writes = _writes(env)
    second = _dag().test(logical_date=today - dt.timedelta(days=2), run_conf=conf)

    assert (first.state, second.state) == ("success", "success") and first.run_id != second.run_id
    assert _writes(env) == writes
    assert len(_top_ups(env, balance)) == 1
    assert hook.get_balance(balance["id"])["amount"] == pytest.approx(40 + TOP_UP)
