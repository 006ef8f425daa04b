"""A user's own DAG built from m3sh.operators and the stand-alone sensors, with no m3sh.yaml.

The DAG is what a team that already runs Airflow would write: sensors with inline conditions
(balance under an amount, contract ending, usage over a limit) and plan actions (top up, switch
plan, set a custom field) for one account given as a param, plus S3 usage files -> m3ter. It runs
twice with ``dag.test()`` against the sandbox; the effects are read back through m3ter's API and
S3: the plan switched once, the balance topped up exactly once across both runs, the custom field
set, every valid usage row landed once and the bad row dead-lettered with its reason.

The config loader is replaced by a guard and ``M3SH_CONFIG`` points at a missing file, so any read
of m3sh.yaml, in this process or another, fails the run.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from m3sh.hooks.m3ter import M3terHook
from m3sh.operators import (
    M3terBalanceOperator,
    M3terSetCustomFieldsOperator,
    M3terSwitchPlanOperator,
    S3UsageToM3terOperator,
)
from m3sh.sandbox.aws_seed import s3_client
from m3sh.sensors.m3ter import M3terBalanceSensor, M3terContractEndSensor, M3terUsageLimitSensor
from tests.integration.test_sensors_sandbox import _register

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

BUCKET = "m3sh-usage"
TOP_UP = 50.0  # 40 + 50 stays under the sensor's 100, so the sensor holds on the re-run too
TARGET_PLAN = "growth_usd"
MEASUREMENTS = "POST /organizations/{id}/measurements"




def _user_dag(tag: str, usage_prefix: str, state_prefix: str) -> Any:
    """The DAG a user writes (see docs/operators.md), for the account in ``params.account``."""
    from airflow.sdk import DAG

    account = "{{ params.account }}"
    with DAG(f"user_billing_{tag}", schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
             params={"account": ""}) as dag:
        low = M3terBalanceSensor(task_id="balance_low", below_amount=100, accounts=[account], deferrable=True,
                                 poll_interval=1, timeout=120)
        renewal = M3terContractEndSensor(task_id="contract_ending", days_before_end=36_500, accounts=[account],
                                         deferrable=False, poke_interval=1, timeout=60)
        top_up = M3terBalanceOperator(task_id="top_up", account_code=account, top_up=TOP_UP,
                                      idempotency_key="low-balance-grant-{{ params.account }}")
        upgrade = M3terSwitchPlanOperator(task_id="upgrade", account_code=account, plan_code=TARGET_PLAN)
        tag_it = M3terSetCustomFieldsOperator(task_id="tag", account_code=account,
                                              fields={"tax_code": "renewal-{{ params.account }}"})
        usage = S3UsageToM3terOperator(
            task_id="usage_to_m3ter", bucket=BUCKET, prefix=usage_prefix, state_prefix=state_prefix,
            meters=[{"code": "api_calls", "measures": {"quantity": "quantity"}, "dimensions": {"region": "region"}}])
        heavy = M3terUsageLimitSensor(task_id="usage_over", meter="api_calls", limit=500, accounts=[account],
                                      deferrable=False, poke_interval=1, timeout=60)
        low >> [top_up, upgrade]
        renewal >> tag_it
        usage >> heavy
    return dag


def _usage_file(account: str) -> tuple[bytes, float]:
    """CSV rows inside the current calendar month (the usage sensor's period); row 4 names an
    account m3ter does not have."""
    now = dt.datetime.now(dt.UTC)
    ts = max(now - dt.timedelta(minutes=10), now.replace(day=1, hour=0, minute=0, second=1, microsecond=0))
    stamp = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = [f"u{i},{account},api_calls,{stamp},{q},eu-west-1" for i, q in enumerate((300, 200, 150))]
    rows.append(f"u9,ghost-account,api_calls,{stamp},7,eu-west-1")
    return ("event_id,account,meter,ts,quantity,region\n" + "\n".join(rows) + "\n").encode(), 650.0


def _usage_of(hook: M3terHook, account: str) -> tuple[int, float]:
    meter_id = next(m["id"] for m in hook.list_meters() if m["code"] == "api_calls")
    body = {"startDate": "2000-01-01T00:00:00Z", "endDate": "2100-01-01T00:00:00Z", "meterIds": [meter_id],
            "groups": [{"groupType": "ACCOUNT"}],
            "aggregations": [{"meterId": meter_id, "fieldCode": "quantity", "fieldType": "MEASURE", "function": f}
                             for f in ("SUM", "COUNT")]}
    row = next((r for r in hook.query_usage(body)["data"] if r.get("accountCode") == account), {})
    return int(row.get("quantity_count", 0)), float(row.get("quantity_sum", 0))


def _plan_now(hook: M3terHook, account_id: str, plans: dict[str, str]) -> list[str]:
    from m3sh.automation.rules import active_at

    now = dt.datetime.now(dt.UTC)
    return [plans[ap["planId"]] for ap in hook.list_account_plans(account_id=account_id, include_all=True)
            if active_at(ap, now)]


def test_a_users_dag_acts_once_across_two_runs_without_m3sh_yaml(
        fresh_sandbox: Any, airflow_db: Path, no_m3sh_yaml: mock.Mock) -> None:
    hook = M3terHook()
    plans = {p["id"]: p["code"] for p in hook.list_plans()}
    account = sorted(hook.list_accounts(), key=lambda a: a["code"])[0]
    code = str(account["code"])
    assert TARGET_PLAN not in _plan_now(hook, account["id"], plans)
    balance = next(hook.list_balances(account_id=account["id"]))
    hook.create_balance_transaction(balance["id"], {"amount": -(balance["amount"] - 40), "description": "usage"})

    tag = uuid.uuid4().hex[:8]
    usage_prefix, state_prefix = f"usage/user-dag-{tag}/", f"user-dag-state-{tag}/"
    data, usage_sum = _usage_file(code)
    s3 = s3_client(fresh_sandbox.url("moto"))
    s3.put_object(Bucket=BUCKET, Key=usage_prefix + "hour-01.csv", Body=data)
    dag = _user_dag(tag, usage_prefix, state_prefix)
    _register(dag)

    def run() -> dict[str, Any]:
        dag_run = dag.test(run_conf={"account": code})
        states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
        assert states == dict.fromkeys(
            ("balance_low", "contract_ending", "top_up", "upgrade", "tag", "usage_to_m3ter", "usage_over"),
            "success"), states
        return {t: dag_run.get_task_instance(t).xcom_pull(task_ids=t) for t in states}

    first = run()
    assert [f["account_code"] for f in first["balance_low"]] == [code]
    assert [f["account_code"] for f in first["contract_ending"]] == [code]
    assert [f["account_code"] for f in first["usage_over"]] == [code]
    assert first["top_up"]["status"] == first["upgrade"]["status"] == first["tag"]["status"] == "done"
    assert first["usage_to_m3ter"] | {"files_detail": None, "dead_letter_uris": None} == {
        "rows_read": 4, "accepted": 3, "rejected": 1, "batches_sent": 1, "feed": "usage_to_m3ter", "files": 1,
        "skipped": 0, "failed": [], "files_detail": None, "dead_letter_uris": None}

    top_ups = [t for t in hook.list_balance_transactions(balance["id"])
               if t.get("description") == f"m3sh top_up low-balance-grant-{code}"]
    assert [t["amount"] for t in top_ups] == [TOP_UP]
    assert hook.get_balance(balance["id"])["amount"] == pytest.approx(40 + TOP_UP)
    assert _plan_now(hook, account["id"], plans) == [TARGET_PLAN]
    assert hook.get_account(account["id"])["customFields"]["tax_code"] == f"renewal-{code}"
    assert _usage_of(hook, code) == (3, usage_sum)
    dead_key = f"{state_prefix}dead-letter/usage/usage_to_m3ter/{usage_prefix}hour-01.csv.jsonl"
    assert first["usage_to_m3ter"]["dead_letter_uris"] == [f"s3://{BUCKET}/{dead_key}"]
    dead = [json.loads(line) for line in s3.get_object(Bucket=BUCKET, Key=dead_key)["Body"].read().splitlines()]
    assert [(d["line"], d["field"], d["row"]["account"]) for d in dead] == [(5, "account", "ghost-account")]
    assert "ghost-account" in dead[0]["reason"] and dead[0]["file"].endswith("hour-01.csv")

    # The re-run: every write is found done (idempotency key, current plan, field values, manifest).
    plan_count = len(list(hook.list_account_plans(account_id=account["id"], include_all=True)))
    sent = fresh_sandbox.stats("m3ter")["counts"].get(MEASUREMENTS, 0)
    second = run()
    assert second["top_up"]["status"] == second["upgrade"]["status"] == second["tag"]["status"] == "unchanged"
    assert {k: second["usage_to_m3ter"][k] for k in ("files", "skipped", "rows_read", "accepted", "batches_sent")} \
        == {"files": 1, "skipped": 1, "rows_read": 0, "accepted": 0, "batches_sent": 0}
    assert fresh_sandbox.stats("m3ter")["counts"].get(MEASUREMENTS, 0) == sent
    assert _usage_of(hook, code) == (3, usage_sum)
    assert len([t for t in hook.list_balance_transactions(balance["id"])
                if str(t.get("description", "")).startswith("m3sh top_up")]) == 1
    assert hook.get_balance(balance["id"])["amount"] == pytest.approx(40 + TOP_UP)
    assert len(list(hook.list_account_plans(account_id=account["id"], include_all=True))) == plan_count
    assert no_m3sh_yaml.call_count == 0


def test_an_inline_sensor_defers_and_its_trigger_reports_the_account_once_usage_arrives(
        fresh_sandbox: Any, no_m3sh_yaml: mock.Mock) -> None:
    """The deferrable path without m3sh.yaml: nothing holds at the first poke, so the sensor defers
    with JSON kwargs carrying its inline condition; the trigger rebuilt from them (as the triggerer
    does) polls the emulator and reports the account whose usage crossed the limit."""
    from airflow.sdk.exceptions import TaskDeferred

    from m3sh.triggers.m3ter import M3terUsageLimitTrigger
    from tests.integration.test_sensors_sandbox import Env, _events, _submit_heavy_usage

    hook = M3terHook()
    code = str(sorted(hook.list_accounts(), key=lambda a: a["code"])[0]["code"])
    sensor = M3terUsageLimitSensor(task_id="usage_over", meter="api_calls", limit=150_000, accounts=[code],
                                   deferrable=True, poll_interval=0.2, timeout=300)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context={})  # type: ignore[arg-type]
    path, kwargs = deferred.value.trigger.serialize()
    assert path == "m3sh.triggers.m3ter.M3terUsageLimitTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs and kwargs["exclude_keys"] == []
    _submit_heavy_usage(Env(fresh_sandbox, hook, None), code)  # type: ignore[arg-type]
    events = _events(M3terUsageLimitTrigger(**json.loads(json.dumps(kwargs))))
    assert len(events) == 1 and events[0]["status"] == "success", events
    assert [(f["rule"], f["account_code"]) for f in events[0]["firings"]] == [("usage_over", code)]
    assert sensor.execute_complete({}, events[0]) == events[0]["firings"]  # type: ignore[arg-type]
    assert no_m3sh_yaml.call_count == 0
