"""The plan-automation operators in a user's own DAG, with no m3sh.yaml: evaluate -> apply (mapped) ->
summary with one inline rule (balance under 100 -> top up, set a field, notify Slack), run with
``dag.test()`` against the sandbox. A preview changes nothing; the first run acts once (m3ter
transactions and custom field, the Slack sink, the S3 ledger); the second acts on nothing.

As in tests/integration/test_operators_in_user_dag.py, the config loader is replaced by a guard,
``M3SH_CONFIG`` points at a missing file and the DAG folder is an empty one of the user's.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from m3sh.operators import M3terApplyFiringsOperator, M3terFiringsSummaryOperator, M3terRulesEvaluateOperator
from m3sh.storage import Storage
from tests.integration.test_sensors_sandbox import _register

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

BUCKET = "m3sh-archive"
TOP_UP = 75.0  # 40 + 75 lifts the balance over the rule's 100
RULE = {"name": "user_low_balance", "when": {"balance_below": {"amount": 100}},
        "actions": [{"top_up_balance": TOP_UP}, {"set_custom_fields": {"lifecycle": "topped_up"}},
                    {"notify": "ops"}]}


def _user_dag(tag: str, prefix: str) -> Any:
    from airflow.sdk import DAG, task

    from m3sh.automation.run import chunks_of

    with DAG(f"user_rules_{tag}", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
             params={"account": "", "dry_run": False}) as dag:
        evaluation = M3terRulesEvaluateOperator(
            task_id="evaluate", rules=[RULE], accounts=["{{ params.account }}"], bucket=BUCKET, prefix=prefix,
            preview="{{ params.dry_run | tojson }}", firings_per_task=1)
        applied = M3terApplyFiringsOperator.partial(
            task_id="apply", rules=[RULE], bucket=BUCKET, prefix=prefix,
            notifiers=[{"name": "ops", "type": "slack_webhook", "conn_id": "m3sh_slack"}],
        ).expand(firings=task(chunks_of)(evaluation.output))
        M3terFiringsSummaryOperator(task_id="summary", evaluation=evaluation.output, outcomes=applied.output,
                                    trigger_rule="all_done")
    return dag


def test_a_users_rule_acts_once_across_runs_without_m3sh_yaml(
        fresh_sandbox: Any, airflow_db: Path, no_m3sh_yaml: mock.Mock) -> None:
    from m3sh.automation.actions import describe
    from m3sh.automation.ledger import Ledger
    from m3sh.config import Action
    from m3sh.hooks.m3ter import M3terHook

    hook = M3terHook()
    account = sorted(hook.list_accounts(), key=lambda a: a["code"])[0]
    code = str(account["code"])
    balance = next(hook.list_balances(account_id=account["id"]))
    hook.create_balance_transaction(balance["id"], {"amount": -(balance["amount"] - 40), "description": "usage"})
    tag = uuid.uuid4().hex[:8]
    prefix = f"user-rules-{tag}/"
    dag = _user_dag(tag, prefix)
    _register(dag)
    ledger = Ledger(Storage("aws_default", BUCKET, prefix))

    def writes() -> int:
        return int(fresh_sandbox.stats("m3ter")["counts"].get("writes", 0))

    def slack() -> list[str]:
        return [m["text"] for m in fresh_sandbox.state("platform")["slack"] if code in (m.get("text") or "")]

    def run(dry_run: bool = False) -> dict[str, Any]:
        # explicit conf each time: dag.test() keeps the previous run's params on the DAG object
        dag_run = dag.test(run_conf={"account": code, "dry_run": dry_run})
        states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
        assert dag_run.state == "success", states
        return {t: dag_run.get_task_instance(t).xcom_pull(task_ids=t) for t in ("evaluate", "summary")}

    before = writes()
    preview = run(dry_run=True)
    assert writes() == before and slack() == [] and list(ledger.entries()) == []
    key = f"user_low_balance|{account['id']}|balance:{balance['id']}|credits={balance['amount'] + 0:g}"
    assert preview["evaluate"]["would_fire"] == [key]
    assert preview["summary"]["plan"] == [{"key": key, "account": code, "status": "would_fire",
                                           "actions": [describe(Action.model_validate(a)) for a in RULE["actions"]]}]
    assert preview["summary"]["would_fire"] == [key]

    first = run()
    assert [f["key"] for chunk in first["evaluate"]["chunks"] for f in chunk] == [key]
    assert (first["summary"]["firings"], first["summary"]["fired"], first["summary"]["failed_keys"]) == (1, 1, [])
    top_ups = [t for t in hook.list_balance_transactions(balance["id"])
               if str(t.get("description", "")).startswith("m3sh top_up")]
    assert [t["amount"] for t in top_ups] == [TOP_UP]
    assert hook.get_balance(balance["id"])["amount"] == pytest.approx(40 + TOP_UP)
    assert hook.get_account(account["id"])["customFields"]["lifecycle"] == "topped_up"
    assert len(slack()) == 1
    entry = ledger.get(key)
    assert entry is not None and entry["status"] == "done" and entry["attempts"] == 1
    assert [a["status"] for a in entry["actions"]] == ["done", "done", "done"]

    # the next pass: the firing is final in the ledger and the balance is over 100 again; nothing is written
    assert ledger.final_keys([key]) == {key}
    after = writes()
    second = run()
    assert second["evaluate"]["chunks"] == [] and second["summary"]["firings"] == 0
    assert writes() == after and len(slack()) == 1
    assert ledger.get(key)["attempts"] == 1  # type: ignore[index]
    assert no_m3sh_yaml.call_count == 0
