"""Triggers and deferrable sensors: serialization, one event per run, real deferral.

Trigger runs go against the sandbox's m3ter emulator through the async hook (``run().asend``),
plus one patched run for the polling loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from unittest import mock

import pytest

from m3sh.automation.rules import Firing
from m3sh.config import TriggerRule
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

BALANCE_RULE = {"name": "low", "when": {"balance_below": {"amount": 100}}, "actions": [{"reset_balance_to": 0}]}
CONTRACT_RULE = {"name": "renew", "when": {"contract_ending_within_days": 30},
                 "actions": [{"set_custom_fields": {"renewal_status": "due"}}]}


def _first_event(trigger: M3terRuleTrigger) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        gen = trigger.run()
        event = await gen.asend(None)
        await gen.aclose()
        return dict(event.payload)

    return asyncio.run(go())


@pytest.mark.parametrize("cls", [M3terBalanceTrigger, M3terUsageLimitTrigger, M3terContractEndTrigger])
def test_serialization_round_trips_with_primitive_kwargs(cls: type[M3terRuleTrigger]) -> None:
    rule = TriggerRule.model_validate(BALANCE_RULE).model_dump(mode="json")
    trigger = cls(rules=[rule], m3ter_conn_id="m3ter_x", poll_interval=5, exclude_keys=["k1"], accounts=["acme"])
    path, kwargs = trigger.serialize()
    assert path == f"m3sh.triggers.m3ter.{cls.__name__}"
    assert kwargs == {"rules": [rule], "m3ter_conn_id": "m3ter_x", "poll_interval": 5.0,
                      "exclude_keys": ["k1"], "accounts": ["acme"]}
    import json

    json.dumps(kwargs)  # primitives only: the triggerer stores them as JSON
    again = cls(**kwargs)
    assert again.serialize() == (path, kwargs)


def test_trigger_polls_until_a_new_firing_then_yields_exactly_one_event() -> None:
    from m3sh.automation.evaluate import Evaluation

    old = Firing("low", "balance_below", "a1", "balance", "b1", "credits=500", "2026-01-01T00:00:00Z", "acme")
    new = Firing("low", "balance_below", "a2", "balance", "b2", "credits=900", "2026-01-01T00:00:00Z", "beta")
    results = [Evaluation([old]), Evaluation([old, new])]
    trigger = M3terBalanceTrigger(rules=[BALANCE_RULE], poll_interval=0, exclude_keys=[old.key])

    async def go() -> list[dict[str, Any]]:
        with mock.patch("m3sh.automation.evaluate.aevaluate", side_effect=results) as ev, \
                mock.patch.object(M3terBalanceTrigger, "_hook", return_value=object()):
            events = [dict(e.payload) async for e in trigger.run()]
            assert ev.call_count == 2
            return events

    events = asyncio.run(go())
    assert len(events) == 1
    assert events[0]["status"] == "success"
    assert [f["key"] for f in events[0]["firings"]] == [new.key]


def test_trigger_error_is_one_error_event_not_a_crash() -> None:
    trigger = M3terUsageLimitTrigger(rules=[BALANCE_RULE])  # no usage rule among the rules
    event = _first_event(trigger)
    assert event["status"] == "error" and "usage_over_limit" in event["message"]


@pytest.mark.sandbox
def test_balance_trigger_against_the_sandbox_reports_the_depleted_account(fresh_sandbox: Any) -> None:
    from m3sh.hooks.m3ter import M3terHook

    hook = M3terHook()
    balance = sorted(hook.list_balances(), key=lambda b: b["code"])[0]
    account = hook.get_account(balance["accountId"])
    fresh_sandbox.admin("m3ter", "drawdown", "POST", accountCode=account["code"], amount=balance["amount"] - 40)
    event = _first_event(M3terBalanceTrigger(rules=[BALANCE_RULE], poll_interval=0))
    assert event["status"] == "success"
    assert [(f["account_code"], f["entity_id"]) for f in event["firings"]] == [(account["code"], balance["id"])]
    assert event["firings"][0]["key"] == f"low|{account['id']}|balance:{balance['id']}|credits={balance['amount']:g}"


@pytest.mark.sandbox
def test_contract_end_trigger_against_the_sandbox(fresh_sandbox: Any) -> None:
    from m3sh.hooks.m3ter import M3terHook

    hook = M3terHook()
    contract = sorted(hook.list_contracts(), key=lambda c: c["code"])[0]
    end = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=10)
    hook.update_contract(contract["id"], {"endDate": end.isoformat()})
    event = _first_event(M3terContractEndTrigger(rules=[CONTRACT_RULE], accounts=[contract["code"]]))
    assert event["status"] == "success"
    assert [f["key"] for f in event["firings"]] == [
        f"renew|{contract['accountId']}|contract:{contract['id']}|end={end.isoformat()}"]


@pytest.mark.sandbox
def test_sensor_defers_to_its_trigger_when_nothing_fires_yet(sandbox: Any) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    sandbox.reset("demo")
    sensor = M3terBalanceSensor(task_id="wait_low_balance", rules=["prepaid_depleted"], deferrable=True,
                                poll_interval=30, timeout=600)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context={})  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    assert isinstance(trigger, M3terBalanceTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == dt.timedelta(seconds=600)
    _, kwargs = trigger.serialize()
    assert [r["name"] for r in kwargs["rules"]] == ["prepaid_depleted"] and kwargs["poll_interval"] == 30


@pytest.mark.sandbox
def test_sensor_poke_mode_fallback_and_execute_complete(sandbox: Any) -> None:
    from airflow.sdk.exceptions import AirflowException

    from m3sh.hooks.m3ter import M3terHook

    sandbox.reset("demo")
    sensor = M3terBalanceSensor(task_id="wait", rules=["prepaid_depleted"], deferrable=False, exclude_handled=False)
    assert sensor.poke({}).is_done is False  # type: ignore[arg-type]
    hook = M3terHook()
    balance = sorted(hook.list_balances(), key=lambda b: b["code"])[0]
    code = hook.get_account(balance["accountId"])["code"]
    sandbox.admin("m3ter", "drawdown", "POST", accountCode=code, amount=balance["amount"] - 10)
    poked = sensor.poke({})  # type: ignore[arg-type]
    assert poked.is_done and [f["account_code"] for f in poked.xcom_value] == [code]
    assert sensor.execute_complete({}, {"status": "success", "firings": poked.xcom_value,  # type: ignore[arg-type]
                                        "message": "1 firing"}) == poked.xcom_value
    with pytest.raises(AirflowException, match="trigger failed: boom"):
        sensor.execute_complete({}, {"status": "error", "message": "boom", "firings": []})  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [M3terBalanceSensor, M3terUsageLimitSensor, M3terContractEndSensor])
def test_resuming_with_an_error_event_fails_the_task_with_the_trigger_message(cls: type[M3terRuleSensor]) -> None:
    """The task runner resumes a deferred sensor through ``resume_execution``: an error event (or
    none) must fail the task naming the task and the trigger's reason, and ``soft_fail`` must skip it."""
    from airflow.sdk.exceptions import AirflowException, AirflowSkipException

    sensor = cls(task_id="wait_rule", deferrable=True)
    error = {"status": "error", "message": "APIConnectionError: m3ter unreachable", "firings": []}
    with pytest.raises(AirflowException, match="wait_rule: trigger failed: APIConnectionError: m3ter unreachable"):
        sensor.resume_execution("execute_complete", {"event": error}, context={})
    with pytest.raises(AirflowException, match="wait_rule: trigger failed: no event"):
        sensor.execute_complete({}, None)  # type: ignore[arg-type]
    firings = [{"key": "r|a1|meter:api_calls|period=2026-11", "rule": "r", "account_id": "a1",
                "account_code": "acme", "entity_id": "api_calls", "detail": {"usage": 2.0}}]
    assert sensor.resume_execution("execute_complete", {"event": {"status": "success", "message": "1 firing(s)",
                                                                  "firings": firings}}, context={}) == firings
    soft = cls(task_id="wait_soft", deferrable=True, soft_fail=True)
    with pytest.raises(AirflowSkipException):
        soft.resume_execution("execute_complete", {"event": error}, context={})
