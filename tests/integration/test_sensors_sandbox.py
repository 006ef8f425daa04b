"""The three m3ter rule sensors and their triggers against the sandbox (issue #7).

Each sensor is driven the way Airflow drives it: ``execute()`` (the worker's first poke, then
``TaskDeferred`` or the classic poke loop of ``BaseSensorOperator``), the trigger rebuilt from its
serialized kwargs as the triggerer does, and ``execute_complete`` with the trigger's event. One
``dag.test()`` run exercises the same sensors with a real task context, XCom and inline triggerer.

Conditions are made true through public APIs only: measurements (usage), the emulator's drawdown
(balance), a contract's ``endDate`` (contract end). Every test writes its ledger under its own S3
prefix, so "already handled" firings are the ones the test marked, never another test's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from m3sh.automation.ledger import Ledger
from m3sh.hooks.m3ter import M3terHook
from m3sh.sensors.m3ter import (
    M3terBalanceSensor,
    M3terContractEndSensor,
    M3terRuleSensor,
    M3terUsageLimitSensor,
)
from m3sh.triggers.m3ter import (
    M3terBalanceTrigger,
    M3terContractEndTrigger,
    M3terRuleTrigger,
    M3terUsageLimitTrigger,
)

pytestmark = pytest.mark.sandbox

HEAVY_USAGE = 200_000  # api_calls over the demo config's heavy_starter limit (150,000 a month)
EVENT_DEADLINE_S = 60.0


@dataclass
class Env:
    """The sandbox, a sync m3ter hook and the ledger of this test's private config."""

    sb: Any
    hook: M3terHook
    ledger: Ledger


@pytest.fixture
def env(fresh_sandbox: Any, m3sh_config: Callable[..., Path]) -> Env:
    """Demo seed, and the demo config with a private storage prefix (an empty ledger)."""
    from m3sh.config import load_config
    from m3sh.storage import Storage

    path = m3sh_config({"  prefix: m3sh/\n": f"  prefix: t-{uuid.uuid4().hex[:8]}/\n"})
    return Env(fresh_sandbox, M3terHook(), Ledger(Storage.from_config(load_config(path).storage)))


# -- making one account's condition true (returns the account code) ------------------------------
def _by_code(items: Any) -> list[dict[str, Any]]:
    return sorted(items, key=lambda e: str(e["code"]))


def _deplete_balance(env: Env) -> str:
    """Draw the first prepaid balance down to 40 (under prepaid_depleted's 100)."""
    balance = _by_code(env.hook.list_balances())[0]
    code = str(env.hook.get_account(balance["accountId"])["code"])
    env.sb.admin("m3ter", "drawdown", "POST", accountCode=code, amount=balance["amount"] - 40)
    return code


def _submit_heavy_usage(env: Env, code: str, quantity: int = HEAVY_USAGE) -> None:
    """api_calls for ``code`` inside the current calendar month (the rules' billing period)."""
    now = dt.datetime.now(dt.UTC)
    ts = max(now - dt.timedelta(minutes=5), now.replace(day=1, hour=0, minute=0, second=1, microsecond=0))
    env.hook.submit_measurements([{"uid": f"heavy-{code}-{uuid.uuid4().hex[:6]}", "meter": "api_calls",
                                   "account": code, "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                   "measure": {"quantity": quantity}}])


def _exceed_usage(env: Env) -> str:
    code = str(_by_code(env.hook.list_accounts())[0]["code"])
    _submit_heavy_usage(env, code)
    return code


def _far_contracts(env: Env) -> list[dict[str, Any]]:
    """Contracts whose last day is more than 60 days away (renewal_due does not see them)."""
    horizon = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=60)
    return [c for c in _by_code(env.hook.list_contracts())
            if dt.date.fromisoformat(str(c["endDate"])[:10]) > horizon]


def _end_contract_soon(env: Env) -> str:
    """Move a far contract's last day to 10 days from today (inside renewal_due's 30)."""
    contract = _far_contracts(env)[0]
    end = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=10)
    env.hook.update_contract(contract["id"], {"endDate": end.isoformat()})
    return str(env.hook.get_account(contract["accountId"])["code"])


def _mark_current_firings_done(env: Env, rule: str) -> list[str]:
    """Act on whatever ``rule`` finds in the seed (as m3sh_plan_triggers would): the ledger says
    done, so the sensors must neither return these firings nor let their trigger report them."""
    from m3sh.automation.evaluate import Evaluator
    from m3sh.automation.rules import select_rules
    from m3sh.config import get_config

    firings = Evaluator(env.hook).run(select_rules(get_config().triggers, [rule])).firings
    for firing in firings:
        claim = env.ledger.claim(firing, run_id="test-sensors")
        assert claim.acquired
        env.ledger.finish(claim, "done")
    return sorted(f.key for f in firings)


def _events(trigger: M3terRuleTrigger) -> list[dict[str, Any]]:
    """Every event of a whole ``run()`` (the triggerer reads until the generator ends)."""
    async def collect() -> list[dict[str, Any]]:
        return [dict(e.payload) async for e in trigger.run()]

    return asyncio.run(asyncio.wait_for(collect(), EVENT_DEADLINE_S))


@dataclass(frozen=True)
class Case:
    """One sensor, its trigger, the demo config rule it waits for and how to make that rule fire."""

    sensor: type[M3terRuleSensor]
    trigger: type[M3terRuleTrigger]
    rule: str
    prepare: Callable[[Env], str]
    seed_fires: bool  # the demo seed fires the rule already (those firings get marked handled)


CASES = [
    pytest.param(Case(M3terBalanceSensor, M3terBalanceTrigger, "prepaid_depleted", _deplete_balance, False),
                 id="balance"),
    pytest.param(Case(M3terUsageLimitSensor, M3terUsageLimitTrigger, "heavy_starter", _exceed_usage, False),
                 id="usage"),
    pytest.param(Case(M3terContractEndSensor, M3terContractEndTrigger, "renewal_due", _end_contract_soon, True),
                 id="contract"),
]


@pytest.mark.parametrize("case", CASES)
def test_deferrable_sensor_defers_with_primitive_kwargs_then_its_trigger_reports_the_new_firing(
        env: Env, case: Case) -> None:
    """Nothing new at the first poke: the worker slot is released (TaskDeferred) with JSON-only
    kwargs; the trigger rebuilt from them reports exactly the firing made afterwards, and the
    resumed sensor returns it."""
    from airflow.sdk.exceptions import TaskDeferred

    handled = _mark_current_firings_done(env, case.rule)
    assert bool(handled) is case.seed_fires  # the contract case proves handled keys travel to the trigger
    sensor = case.sensor(task_id=f"wait_{case.rule}", rules=[case.rule], deferrable=True, poll_interval=0.2,
                         timeout=300)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context={})  # type: ignore[arg-type]
    assert type(deferred.value.trigger) is case.trigger
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == dt.timedelta(seconds=300)
    path, kwargs = deferred.value.trigger.serialize()
    assert path == f"m3sh.triggers.m3ter.{case.trigger.__name__}"
    assert json.loads(json.dumps(kwargs)) == kwargs  # primitives only: the triggerer stores them as JSON
    assert [r["name"] for r in kwargs["rules"]] == [case.rule]
    assert {k: v for k, v in kwargs.items() if k != "rules"} == {
        "m3ter_conn_id": "m3ter_default", "poll_interval": 0.2, "exclude_keys": handled, "accounts": []}

    code = case.prepare(env)
    events = _events(case.trigger(**json.loads(json.dumps(kwargs))))
    assert len(events) == 1 and events[0]["status"] == "success", events
    firings = events[0]["firings"]
    assert [(f["rule"], f["account_code"]) for f in firings] == [(case.rule, code)]
    assert not {f["key"] for f in firings} & set(handled)
    assert sensor.execute_complete({}, events[0]) == firings  # type: ignore[arg-type]


@pytest.mark.parametrize("case", CASES)
def test_deferrable_sensor_returns_the_new_firings_of_its_first_poke_without_deferring(env: Env, case: Case) -> None:
    """Deferring costs a triggerer round trip: when the condition already holds the sensor succeeds
    on the worker, returning (XCom) only firings the ledger has not handled."""
    handled = _mark_current_firings_done(env, case.rule)
    code = case.prepare(env)
    sensor = case.sensor(task_id=f"wait_{case.rule}", rules=[case.rule], deferrable=True, poll_interval=0.2)
    firings = sensor.execute(context={})  # type: ignore[arg-type]  # no TaskDeferred
    assert [(f["rule"], f["account_code"]) for f in firings] == [(case.rule, code)]
    assert not {f["key"] for f in firings} & set(handled)
    assert set(firings[0]) == {"key", "rule", "account_id", "account_code", "entity_id", "detail"}


@pytest.mark.parametrize("case", CASES)
def test_poke_mode_times_out_while_nothing_fires_then_returns_the_firings(env: Env, case: Case) -> None:
    """With ``deferrable=False`` the classic ``BaseSensorOperator.execute`` loop runs the same poke:
    not done (timeout, or skip with soft_fail) while nothing new fires, the firings once it does."""
    from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

    _mark_current_firings_done(env, case.rule)
    sensor = case.sensor(task_id=f"poke_{case.rule}", rules=[case.rule], deferrable=False, poll_interval=0.1,
                         timeout=0)
    assert sensor.poke_interval == 0.1
    poked = sensor.poke({})  # type: ignore[arg-type]
    assert poked.is_done is False and poked.xcom_value == []
    with pytest.raises(AirflowSensorTimeout):  # timeout 0: one poke, no sleep, then the timeout
        sensor.execute(context={})  # type: ignore[arg-type]
    soft = case.sensor(task_id=f"soft_{case.rule}", rules=[case.rule], deferrable=False, timeout=0,
                       soft_fail=True)
    with pytest.raises(AirflowSkipException):
        soft.execute(context={})  # type: ignore[arg-type]

    code = case.prepare(env)
    firings = sensor.execute(context={})  # type: ignore[arg-type]
    assert [(f["rule"], f["account_code"]) for f in firings] == [(case.rule, code)]
    assert sensor.poke({}).xcom_value == firings  # type: ignore[arg-type]


def test_usage_limit_trigger_against_the_sandbox_reports_only_the_heavy_account(env: Env) -> None:
    """The async usage path (meter by code, usage query, account codes) on the emulator: one
    account over the limit gives exactly one event with exactly that account's firing; an account
    under it stays out."""
    rule = {"name": "heavy", "when": {"usage_over_limit": {"meter": "api_calls", "limit": 150_000}},
            "actions": [{"switch_plan": "growth_usd"}]}
    first, second = _by_code(env.hook.list_accounts())[:2]
    _submit_heavy_usage(env, first["code"])
    _submit_heavy_usage(env, second["code"], quantity=1_000)
    events = _events(M3terUsageLimitTrigger(rules=[rule], poll_interval=0))
    assert len(events) == 1 and events[0]["status"] == "success", events
    (firing,) = events[0]["firings"]
    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    assert firing["key"] == f"heavy|{first['id']}|meter:api_calls|period={period}"
    assert (firing["rule"], firing["account_id"], firing["account_code"], firing["entity_id"]) == (
        "heavy", first["id"], first["code"], "api_calls")
    assert firing["detail"]["limit"] == 150_000 and firing["detail"]["usage"] >= HEAVY_USAGE


def _register(dag: Any) -> None:
    """``dag.test()`` only runs DAGs a bundle has serialized; this one is built here, in no bundle
    file, so write it to the metadata DB under the first bundle the way the DAG processor does."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    bundle = next(iter(manager.get_all_dag_bundles())).name
    with create_session() as session:
        update_dag_parsing_results_in_db(bundle, None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(),
                                         session=session)


def _usage_queries(env: Env) -> int:
    return int(env.sb.requests_to("m3ter", "POST", "/usage/query"))


@pytest.mark.dagrun
def test_sensors_in_a_dag_run_poke_defer_and_push_their_firings(env: Env, airflow_db: Path) -> None:
    """``dag.test()`` runs each sensor as the scheduler would (real context, XCom, inline triggerer):
    poke-mode sensors succeed or skip; the deferrable usage sensor defers, its trigger polls the
    emulator until usage arrives, and execute_complete pushes the firing."""
    from airflow.sdk import DAG

    balance_code = _deplete_balance(env)
    contract_code = _end_contract_soon(env)
    quiet_code = str(env.hook.get_account(_far_contracts(env)[0]["accountId"])["code"])
    heavy_code = str(_by_code(env.hook.list_accounts())[-1]["code"])
    with DAG(f"m3sh_test_rule_sensors_{uuid.uuid4().hex[:6]}", schedule=None,
             start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) as dag:
        M3terBalanceSensor(task_id="balance", rules=["prepaid_depleted"], accounts=[balance_code], deferrable=False)
        M3terContractEndSensor(task_id="contract", rules=["renewal_due"], accounts=[contract_code],
                               deferrable=False)
        M3terContractEndSensor(task_id="quiet", rules=["renewal_due"], accounts=[quiet_code], deferrable=False,
                               timeout=0, soft_fail=True)
        M3terUsageLimitSensor(task_id="usage", rules=["heavy_starter"], accounts=[heavy_code], deferrable=True,
                              poll_interval=0.2, timeout=120)

    # Submit the usage only once the deferred sensor's trigger has polled the emulator at least
    # once (its first poke and one trigger pass = two usage queries); submit at the deadline anyway
    # so a missed signal fails the assertions below instead of hanging the DAG run.
    _register(dag)
    before = _usage_queries(env)
    seen_trigger_pass, stop = threading.Event(), threading.Event()

    def submit_when_deferred() -> None:
        deadline = time.monotonic() + EVENT_DEADLINE_S
        while time.monotonic() < deadline and not stop.is_set():
            if _usage_queries(env) >= before + 2:
                seen_trigger_pass.set()
                break
            stop.wait(0.1)  # poll interval of this deadline-bounded poll, not a synchronisation
        if not stop.is_set():
            _submit_heavy_usage(env, heavy_code)

    helper = threading.Thread(target=submit_when_deferred, daemon=True)
    helper.start()
    try:
        run = dag.test()
    finally:
        stop.set()
        helper.join(timeout=EVENT_DEADLINE_S)
    assert seen_trigger_pass.is_set(), "the usage sensor never deferred to a polling trigger"

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"balance": "success", "contract": "success", "quiet": "skipped", "usage": "success"}

    def pushed(task_id: str) -> list[dict[str, Any]]:
        value: list[dict[str, Any]] = run.get_task_instance(task_id).xcom_pull(task_ids=task_id)
        return value

    assert [(f["rule"], f["account_code"]) for f in pushed("balance")] == [("prepaid_depleted", balance_code)]
    assert [(f["rule"], f["account_code"]) for f in pushed("contract")] == [("renewal_due", contract_code)]
    usage = pushed("usage")
    assert [(f["rule"], f["account_code"]) for f in usage] == [("heavy_starter", heavy_code)]
    assert re.fullmatch(r"heavy_starter\|[^|]+\|meter:api_calls\|period=\d{4}-\d{2}", usage[0]["key"])
    assert _usage_queries(env) >= before + 3  # first poke, a pass without the usage, the pass that fired
