"""``m3sh_plan_triggers`` end to end against the sandbox, with whole ``dag.test()`` runs.

Everything is asserted through public APIs: m3ter account plans, balances, transactions and
custom fields; the Salesforce record; the Slack sink; the S3 ledger. "Exactly once" is asserted
as: a second pass and a re-run write nothing to m3ter (emulator write counter) and the ledger
entry keeps its single attempt.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

RULES = """
triggers:
  - name: prepaid_depleted
    when: {balance_below: {amount: 100}}
    actions:
      - switch_plan: growth_usd
      - reset_balance_to: 0
      - set_custom_fields: {lifecycle: converted_from_prepaid}
      - notify: ops_slack
  - name: renewal_due
    when: {contract_ending_within_days: 30}
    actions:
      - switch_plan: enterprise_usd
      - set_custom_fields: {renewal_status: due}
      - update_crm_fields: {salesforce.Description: "Renewal due (m3sh)", hubspot.description: "Renewal due"}
  - name: heavy_starter
    when: {usage_over_limit: {meter: api_calls, limit: 150000}}
    actions:
      - switch_plan: growth_usd
"""


def _config(tmp_path: Path, prefix: str) -> Path:
    from m3sh.config import DEFAULT_CONFIG_PATH

    text = DEFAULT_CONFIG_PATH.read_text()
    head, rest = text.split("\ntriggers:\n", 1)
    tail = rest[rest.index("\nalerting:\n"):]
    text = head + "\n" + RULES + tail
    text = text.replace("  prefix: m3sh/\n", f"  prefix: {prefix}\n", 1)
    text += "\ndag_defaults: {retries: 0, retry_delay_s: 0.1, max_retry_delay_s: 1}\n"
    path = tmp_path / "m3sh.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def env(fresh_sandbox: Any, airflow_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from m3sh.automation.ledger import Ledger
    from m3sh.config import load_config
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage

    path = _config(tmp_path, f"t-{uuid.uuid4().hex[:8]}/")
    monkeypatch.setenv("M3SH_CONFIG", str(path))
    cfg = load_config(path)
    hook = M3terHook()
    plans = {p["id"]: p["code"] for p in hook.list_plans()}
    return {"sb": fresh_sandbox, "hook": hook, "cfg": cfg, "plans": plans,
            "ledger": Ledger(Storage.from_config(cfg.storage))}


def _dag() -> Any:
    from m3sh.dagkit.plan_triggers import build_plan_triggers_dag

    return build_plan_triggers_dag()


def _run(**conf: Any) -> Any:
    run = _dag().test(run_conf=conf or None)
    assert run.state == "success", f"DAG run ended {run.state}"
    return run


def _plans_of(env: dict[str, Any], account_id: str) -> list[tuple[str, str, str | None]]:
    aps = env["hook"].list_account_plans(account_id=account_id, include_all=True)
    rows = [(env["plans"][ap["planId"]], ap["startDate"], ap.get("endDate")) for ap in aps]
    return sorted(rows, key=lambda r: r[1])


def _writes(env: dict[str, Any]) -> int:
    """Data writes m3ter received (the emulator's own count: the usage query and the token are reads)."""
    return int(env["sb"].stats("m3ter")["counts"].get("writes", 0))


def _prepaid(env: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    horizon = (dt.datetime.now(dt.UTC) + dt.timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
    balances = sorted(env["hook"].list_balances(end_date_start=horizon), key=lambda b: b["code"])
    balance = balances[0]
    return env["hook"].get_account(balance["accountId"]), balance


def test_usage_depletes_prepaid_balance_then_plan_switch_reset_and_field_exactly_once(env: dict[str, Any]) -> None:
    hook, sb = env["hook"], env["sb"]
    account, balance = _prepaid(env)
    # usage at the prepaid plan's 0.002/call that leaves 40 of the credit, drawn down by the emulator
    calls = int((balance["amount"] - 40) / 0.002)
    ts = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    hook.submit_measurements([{"uid": f"deplete-{account['code']}", "meter": "api_calls", "account": account["code"],
                               "ts": ts, "measure": {"quantity": calls}}])
    sb.admin("m3ter", "drawdown", "POST", accountCode=account["code"])
    assert hook.get_balance(balance["id"])["amount"] == pytest.approx(40, abs=0.01)

    _run(rules=["prepaid_depleted"])

    plans = _plans_of(env, account["id"])
    assert [p[0] for p in plans] == ["prepaid_usd", "growth_usd"]
    (_, _, old_end), (_, new_start, new_end) = plans
    assert old_end == new_start  # the old plan ends exactly where the new one starts
    assert new_end is not None  # the contract term is kept
    assert hook.get_balance(balance["id"])["amount"] == pytest.approx(0)
    assert hook.get_account(account["id"])["customFields"]["lifecycle"] == "converted_from_prepaid"
    slack = [m for m in sb.state("platform")["slack"] if account["code"] in (m.get("text") or "")]
    assert len(slack) == 1
    key = f"prepaid_depleted|{account['id']}|balance:{balance['id']}|credits={balance['amount'] + 0:g}"
    entry = env["ledger"].get(key)
    assert entry is not None and entry["status"] == "done" and entry["attempts"] == 1
    assert [a["status"] for a in entry["actions"]] == ["done", "done", "done", "done"]

    # a second pass (all rules) and a manual re-run of the balance rule act on nothing: the done
    # key is dropped at evaluation (its ledger marker), not even re-claimed
    assert env["ledger"].final_keys([key]) == {key}
    writes = _writes(env)
    second = _run(rules=["prepaid_depleted"])
    _run(rules=["prepaid_depleted"], accounts=[account["code"]])
    assert _writes(env) == writes
    evaluation = second.get_task_instance("evaluate").xcom_pull(task_ids="evaluate")
    assert key not in {f["key"] for chunk in evaluation["chunks"] for f in chunk}, evaluation
    assert _plans_of(env, account["id"]) == plans
    txs = list(hook.list_balance_transactions(balance['id']))
    assert sum(1 for t in txs if str(t.get("description", "")).startswith("m3sh reset")) == 1
    assert len([m for m in sb.state("platform")["slack"] if account["code"] in (m.get("text") or "")]) == 1
    assert env["ledger"].get(key)["attempts"] == 1  # type: ignore[index]


def test_contract_ending_in_10_days_gets_renewal_plan_custom_field_and_crm_field(env: dict[str, Any]) -> None:
    from m3sh.hooks.salesforce import SalesforceSync

    hook = env["hook"]
    accounts = {a["id"]: a for a in hook.list_accounts()}
    account = next(a for a in sorted(accounts.values(), key=lambda a: a["code"])
                   if a["customFields"].get("crm_source") in ("salesforce", "both"))
    contract = next(hook.list_contracts(account_id=account["id"]))
    end = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=10)
    hook.update_contract(contract["id"], {"endDate": end.isoformat()})
    # the link m3sh_crm_sync writes between the m3ter account and its Salesforce Account
    sf_id = account["customFields"]["crm_id"]
    hook.create_external_mapping({"externalSystem": "salesforce", "externalTable": "Account", "externalId": sf_id,
                                     "m3terEntity": "Account", "m3terId": account["id"]})

    _run(rules=["renewal_due"], accounts=[account["code"]])

    renewal_start = f"{(end + dt.timedelta(days=1)).isoformat()}T00:00:00"
    plans = _plans_of(env, account["id"])
    assert plans[-1][0] == "enterprise_usd" and plans[-1][1].startswith(renewal_start)
    assert plans[-2][2] is not None and plans[-2][2].startswith(renewal_start)
    assert hook.get_account(account["id"])["customFields"]["renewal_status"] == "due"
    record = SalesforceSync().get_record("Account", sf_id, fields=["Description"])
    assert record["Description"] == "Renewal due (m3sh)"

    writes = _writes(env)
    _run(rules=["renewal_due"], accounts=[account["code"]])
    assert _writes(env) == writes and _plans_of(env, account["id"]) == plans


def test_usage_over_limit_upgrades_and_dry_run_changes_nothing(env: dict[str, Any]) -> None:
    hook = env["hook"]
    account, _ = _prepaid(env)
    now = dt.datetime.now(dt.UTC)
    ts = max(now - dt.timedelta(minutes=5), now.replace(day=1, hour=0, minute=0, second=1))
    hook.submit_measurements([{"uid": f"heavy-{account['code']}", "meter": "api_calls", "account": account["code"],
                               "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "measure": {"quantity": 200_000}}])

    writes = _writes(env)
    _run(rules=["heavy_starter"], dry_run=True)
    assert _writes(env) == writes
    assert [p[0] for p in _plans_of(env, account["id"])] == ["prepaid_usd"]
    assert list(env["ledger"].entries()) == []

    _run(rules=["heavy_starter"])
    assert [p[0] for p in _plans_of(env, account["id"])] == ["prepaid_usd", "growth_usd"]
    entries = list(env["ledger"].entries(rule="heavy_starter"))
    assert [(e["account_code"], e["status"]) for e in entries] == [(account["code"], "done")]
    assert entries[0]["key"].endswith(f"|meter:api_calls|period={now:%Y-%m}")

