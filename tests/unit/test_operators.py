"""m3sh.operators and the stand-alone sensors without m3sh.yaml: template fields, argument
validation with clear errors, idempotent writes against an in-memory hook, the deferrable path's
trigger serialization, and the provider metadata that lists them.

No sandbox here (``tests/integration/test_operators_in_user_dag.py`` runs them in a DAG against it).
Every test runs with the config loader made to raise, so reading m3sh.yaml would fail it.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from m3sh.automation.evaluate import Evaluation
from m3sh.automation.rules import Firing, iso_instant
from m3sh.operators import (
    M3terBalanceOperator,
    M3terSetCustomFieldsOperator,
    M3terSwitchPlanOperator,
    S3UsageToM3terOperator,
)
from m3sh.operators.m3ter import DEFAULT_IDEMPOTENCY_KEY
from m3sh.sensors.m3ter import M3terBalanceSensor, M3terContractEndSensor, M3terUsageLimitSensor
from m3sh.triggers.m3ter import M3terBalanceTrigger, M3terContractEndTrigger, M3terUsageLimitTrigger

pytestmark = pytest.mark.usefixtures("no_m3sh_yaml")  # operators must work without it

METERS = [{"code": "api_calls", "measures": {"quantity": "quantity"}}]




# ---------------------------------------------------------------------------------- template fields
@pytest.mark.parametrize(("op", "fields"), [
    (M3terSwitchPlanOperator(task_id="t", account_code="a", plan_code="p"),
     ("m3ter_conn_id", "account_code", "plan_code", "at")),
    (M3terBalanceOperator(task_id="t", account_code="a", top_up=5),
     ("m3ter_conn_id", "account_code", "balance_code", "idempotency_key")),
    (M3terSetCustomFieldsOperator(task_id="t", account_code="a", fields={"tier": "gold"}),
     ("m3ter_conn_id", "account_code", "fields", "entity_code")),
    (S3UsageToM3terOperator(task_id="t", bucket="b", prefix="p/", meters=METERS),
     ("m3ter_conn_id", "bucket", "keys", "prefix", "state_bucket", "state_prefix")),
    (M3terBalanceSensor(task_id="t", below_amount=1), ("rules", "accounts", "m3ter_conn_id")),
], ids=["switch_plan", "balance", "custom_fields", "usage", "sensor"])
def test_template_fields(op: Any, fields: tuple[str, ...]) -> None:
    assert tuple(op.template_fields) == fields


def test_templated_arguments_render_from_the_context() -> None:
    op = M3terBalanceOperator(task_id="credit", account_code="{{ params.account }}", top_up=5,
                              m3ter_conn_id="{{ params.conn }}")
    assert op.idempotency_key == DEFAULT_IDEMPOTENCY_KEY
    context = {"params": {"account": "acme", "conn": "m3ter_eu"}, "run_id": "manual__1",
               "ti": SimpleNamespace(task_id="credit", map_index=-1)}
    op.render_template_fields(context)  # type: ignore[arg-type]
    assert (op.account_code, op.m3ter_conn_id) == ("acme", "m3ter_eu")
    # Same run and task instance on every try: a retry reuses the key and so finds its own transaction.
    assert op.idempotency_key == "manual__1|credit|-1"


# ----------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(("make", "message"), [
    (lambda: M3terBalanceOperator(task_id="b", account_code="a"), "b: give exactly one of reset_to or top_up"),
    (lambda: M3terBalanceOperator(task_id="b", account_code="a", reset_to=0, top_up=1), "exactly one of reset_to"),
    (lambda: M3terBalanceOperator(task_id="b", account_code="a", top_up=0), "b: top_up must be > 0, got 0"),
    (lambda: M3terBalanceOperator(task_id="b", account_code="a", reset_to=-1), "reset_to must be >= 0"),
    (lambda: M3terSetCustomFieldsOperator(task_id="c", account_code="a", fields={}), "c: fields must be a non-empty"),
    (lambda: M3terSetCustomFieldsOperator(task_id="c", account_code="a", fields={"x": 1}, entity="meter"),  # type: ignore[arg-type]
     "c: entity must be one of"),
    (lambda: M3terSetCustomFieldsOperator(task_id="c", account_code="a", fields={"x": 1}, entity="balance"),
     "c: entity='balance' needs entity_code"),
    (lambda: M3terSetCustomFieldsOperator(task_id="c", account_code="a", fields={"x": [1], "y": True}),  # type: ignore[dict-item]
     "c: custom field values must be strings or numbers; not ['x', 'y']"),
    (lambda: S3UsageToM3terOperator(task_id="u", bucket="b", prefix="p/"), "u: give the inline mapping"),
    (lambda: S3UsageToM3terOperator(task_id="u", bucket="b", meters=METERS), "u: give keys=[...] or prefix="),
    (lambda: S3UsageToM3terOperator(task_id="u", bucket="b", prefix="", meters=[{"code": "api_calls"}]),
     "u: invalid meters[0] (measures: Field required)"),
    (lambda: S3UsageToM3terOperator(task_id="u", bucket="b", prefix="", meters=[]), "u: meters is empty"),
    (lambda: S3UsageToM3terOperator(task_id="u", bucket="b", prefix="", meters=METERS, batch_size=5000),
     "u: batch_size must be 1..1000"),
    (lambda: M3terBalanceSensor(task_id="s"), None),  # rule names (all balance rules): valid, config read later
    (lambda: M3terBalanceSensor(task_id="s", below_amount=1, below_percent=5),
     "s: invalid sensor condition (when.balance_below: Value error, give exactly one of 'amount' or "
     "'percent_of_original')"),
    (lambda: M3terBalanceSensor(task_id="s", below_percent=150),
     "s: invalid sensor condition (when.balance_below.percent_of_original: Input should be less than or equal"),
    (lambda: M3terBalanceSensor(task_id="s", balance_code="prepaid-*"), "s: balance_code/product_codes need"),
    (lambda: M3terBalanceSensor(task_id="s", below_amount=1, rules=["low"]), "s: give rule names (rules=) or"),
    (lambda: M3terUsageLimitSensor(task_id="s", meter="api_calls"), "s: an inline usage condition needs both"),
    (lambda: M3terUsageLimitSensor(task_id="s", meter="api_calls", limit=1, aggregation="AVG"),  # type: ignore[arg-type]
     "s: invalid sensor condition (when.usage_over_limit.aggregation: Input should be 'SUM', 'COUNT' or 'MAX')"),
    (lambda: M3terContractEndSensor(task_id="s", days_before_end=3, ended=True), "s: give days_before_end or"),
    (lambda: M3terContractEndSensor(task_id="s", days_before_end=-1),
     "s: invalid sensor condition (when.contract_ending_within_days: Input should be greater than or equal to 0)"),
    (lambda: M3terContractEndSensor(task_id="s", days_before_end=30, rule_name="bad name"),
     "s: invalid sensor condition (name: String should match pattern"),
])
def test_bad_arguments_fail_at_parse_time_naming_task_and_argument(make: Any, message: str | None) -> None:
    if message is None:
        assert make().inline_rule is None
        return
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value).startswith(message) or message in str(err.value), str(err.value)


# -------------------------------------------------------------------- operators on an in-memory m3ter
class FakeM3ter:
    """The m3ter reads and writes the operators use, in memory (each write is recorded)."""

    def __init__(self) -> None:
        start = "2026-01-01T00:00:00Z"
        self.accounts = {"acc-1": {"id": "acc-1", "code": "acme", "customFields": {"tier": "gold"}, "version": 1}}
        self.plans = {"starter": {"id": "plan-s", "code": "starter", "productId": "prod"},
                      "growth": {"id": "plan-g", "code": "growth", "productId": "prod"}}
        self.account_plans = [{"id": "ap-1", "accountId": "acc-1", "planId": "plan-s", "productId": "prod",
                               "startDate": start, "customFields": {}}]
        self.balances = [{"id": "bal-1", "code": "prepaid", "accountId": "acc-1", "amount": 40.0,
                          "startDate": start, "endDate": "2100-01-01T00:00:00Z", "customFields": {}}]
        self.transactions: list[dict[str, Any]] = []
        self.writes: list[tuple[str, Any]] = []

    def find_account(self, code: str) -> dict[str, Any] | None:
        return next((a for a in self.accounts.values() if a["code"] == code), None)

    def find_plan(self, code: str) -> dict[str, Any] | None:
        return self.plans.get(code)

    def list_account_plans(self, *, account_id: str | None = None, include_all: bool = False) -> list[dict[str, Any]]:
        return [dict(ap) for ap in self.account_plans if ap["accountId"] == account_id]

    def update_account_plan(self, ap_id: str, changes: dict[str, Any], current: Any = None) -> dict[str, Any]:
        self.writes.append(("update_account_plan", changes))
        ap = next(a for a in self.account_plans if a["id"] == ap_id)
        ap.update(changes)
        return ap

    def create_account_plan(self, body: dict[str, Any], find_existing: Any = None) -> dict[str, Any]:
        self.writes.append(("create_account_plan", body))
        ap = {"id": f"ap-{len(self.account_plans) + 1}", "productId": "prod", **body}
        self.account_plans.append(ap)
        return ap

    def list_balances(self, *, account_id: str | None = None) -> list[dict[str, Any]]:
        return [dict(b) for b in self.balances if b["accountId"] == account_id]

    def list_balance_transactions(self, balance_id: str) -> list[dict[str, Any]]:
        return [t for t in self.transactions if t["balanceId"] == balance_id]

    def find_transaction_type(self, code: str) -> dict[str, Any] | None:
        return {"id": f"tt-{code}"}

    def create_balance_transaction(self, balance_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("create_balance_transaction", body))
        tx = {"id": f"tx-{len(self.transactions) + 1}", "balanceId": balance_id, **body}
        self.transactions.append(tx)
        next(b for b in self.balances if b["id"] == balance_id)["amount"] += body["amount"]
        return tx

    def update_account(self, account_id: str, changes: dict[str, Any], current: Any = None) -> dict[str, Any]:
        self.writes.append(("update_account", changes))
        account = self.accounts[account_id]
        account["customFields"] = {**account["customFields"], **changes["customFields"]}
        return account


@pytest.fixture
def m3ter() -> FakeM3ter:
    return FakeM3ter()


def _with_hook(op: Any, hook: FakeM3ter) -> Any:
    op.__dict__["hook"] = hook  # fills the cached_property, as the first access would
    return op


def test_switch_plan_attaches_once_then_reports_unchanged(m3ter: FakeM3ter) -> None:
    at = iso_instant(dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    op = _with_hook(M3terSwitchPlanOperator(task_id="upgrade", account_code="acme", plan_code="growth", at=at), m3ter)
    first = op.execute({})
    assert first["status"] == "done" and first["plan_id"] == "plan-g" and first["at"] == at
    assert [w[0] for w in m3ter.writes] == ["update_account_plan", "create_account_plan"]
    assert m3ter.writes[0][1] == {"endDate": at}
    assert m3ter.writes[1][1] == {"accountId": "acc-1", "planId": "plan-g", "startDate": at}
    again = op.execute({})
    assert again["status"] == "unchanged" and len(m3ter.writes) == 2
    json.dumps(again)  # JSON-safe: pushed to XCom


def test_switch_plan_names_an_unknown_account_or_plan(m3ter: FakeM3ter) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="upgrade: m3ter has no plan with code 'platinum'"):
        _with_hook(M3terSwitchPlanOperator(task_id="upgrade", account_code="acme", plan_code="platinum"),
                   m3ter).execute({})
    with pytest.raises(AirflowFailException, match="upgrade: m3ter has no account with code 'nobody'"):
        _with_hook(M3terSwitchPlanOperator(task_id="upgrade", account_code="nobody", plan_code="growth"),
                   m3ter).execute({})
    with pytest.raises(AirflowFailException, match="upgrade: at='next tuesday' is not an ISO-8601"):
        _with_hook(M3terSwitchPlanOperator(task_id="upgrade", account_code="acme", plan_code="growth",
                                           at="next tuesday"), m3ter).execute({})
    assert m3ter.writes == []


def test_balance_top_up_happens_once_per_idempotency_key(m3ter: FakeM3ter) -> None:
    op = _with_hook(M3terBalanceOperator(task_id="credit", account_code="acme", top_up=100,
                                         idempotency_key="welcome-acme"), m3ter)
    first = op.execute({})
    assert first["status"] == "done" and first["balance_id"] == "bal-1"
    assert op.execute({})["status"] == "unchanged"  # a retry with the same key
    assert [w[1] for w in m3ter.writes] == [{"amount": 100.0, "description": "m3sh top_up welcome-acme",
                                              "transactionTypeId": "tt-top_up"}]
    assert m3ter.balances[0]["amount"] == 140.0
    op.idempotency_key = "second-grant"
    assert op.execute({})["status"] == "done" and m3ter.balances[0]["amount"] == 240.0


def test_balance_reset_writes_the_difference_and_nothing_when_already_there(m3ter: FakeM3ter) -> None:
    reset = _with_hook(M3terBalanceOperator(task_id="reset", account_code="acme", reset_to=40,
                                            balance_code="prepaid", idempotency_key="k1"), m3ter)
    assert reset.execute({})["status"] == "unchanged" and m3ter.writes == []
    reset.reset_to, reset.idempotency_key = 10.0, "k2"
    assert reset.execute({})["status"] == "done"
    assert m3ter.writes == [("create_balance_transaction", {"amount": -30.0, "description": "m3sh reset k2"})]
    from airflow.sdk.exceptions import AirflowFailException

    reset.balance_code = "postpaid"
    with pytest.raises(AirflowFailException, match="reset: account 'acme' has no balance with code 'postpaid'"):
        reset.execute({})


def test_custom_fields_write_only_the_differing_ones(m3ter: FakeM3ter) -> None:
    op = _with_hook(M3terSetCustomFieldsOperator(task_id="tag", account_code="acme",
                                                 fields={"tier": "gold", "segment": "smb"}), m3ter)
    assert op.execute({})["status"] == "done"
    assert m3ter.writes == [("update_account", {"customFields": {"segment": "smb"}})]
    assert op.execute({})["status"] == "unchanged" and len(m3ter.writes) == 1


# ------------------------------------------------------------------------ sensors: deferrable path
@pytest.mark.parametrize(("sensor", "trigger_class", "when"), [
    (M3terBalanceSensor(task_id="low", below_amount=100, balance_code="prepaid-*", deferrable=True,
                        poll_interval=5, accounts=["acme"]),
     M3terBalanceTrigger, {"balance_below": {"amount": 100.0, "balance_codes": ["prepaid-*"]}}),
    (M3terUsageLimitSensor(task_id="heavy", meter="api_calls", limit=1000, deferrable=True, poll_interval=5,
                           accounts=["acme"]),
     M3terUsageLimitTrigger,
     {"usage_over_limit": {"meter": "api_calls", "limit": 1000.0, "aggregation": "SUM", "field": "quantity"}}),
    (M3terContractEndSensor(task_id="renewal", days_before_end=30, deferrable=True, poll_interval=5,
                            accounts=["acme"]),
     M3terContractEndTrigger, {"contract_ending_within_days": 30}),
], ids=["balance", "usage", "contract"])
def test_inline_sensor_defers_with_json_kwargs_that_rebuild_its_condition(
        sensor: Any, trigger_class: type, when: dict[str, Any]) -> None:
    """Nothing holds at the first poke: the sensor defers to its trigger with primitive kwargs that
    carry the inline condition, the default connection and no handled keys (no ledger, no config)."""
    from airflow.sdk.exceptions import TaskDeferred

    with mock.patch("m3sh.automation.evaluate.Evaluator.run", return_value=Evaluation([])) as run, \
            mock.patch("m3sh.storage.Storage", side_effect=AssertionError("no ledger without one given")), \
            pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context={})
    assert run.call_args.kwargs["accounts"] == ["acme"]
    trigger = deferred.value.trigger
    assert type(trigger) is trigger_class and deferred.value.method_name == "execute_complete"
    path, kwargs = trigger.serialize()
    assert path == f"m3sh.triggers.m3ter.{trigger_class.__name__}"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert {k: v for k, v in kwargs.items() if k != "rules"} == {
        "m3ter_conn_id": "m3ter_default", "poll_interval": 5.0, "exclude_keys": [], "accounts": ["acme"]}
    (rule,) = type(trigger)(**json.loads(json.dumps(kwargs))).parsed_rules()  # as the triggerer rebuilds it
    assert rule.name == sensor.task_id and rule.actions == []
    assert rule.when.model_dump(mode="json", exclude_none=True) == when

def _firing(key_suffix: str) -> Firing:
    return Firing(rule="low", kind="balance_below", account_id="acc-1", entity="balance", entity_id="bal-1",
                  crossing=key_suffix, event_time="2026-06-01T00:00:00Z", account_code="acme")


def test_inline_sensor_with_a_ledger_leaves_out_handled_firings_and_without_one_reports_them() -> None:
    handled, new = _firing("credits=100"), _firing("credits=200")
    ledger = mock.Mock()
    ledger.get.side_effect = lambda key: {"status": "done"} if key == handled.key else None
    with mock.patch("m3sh.automation.evaluate.Evaluator.run", return_value=Evaluation([handled, new])):
        with_ledger = M3terBalanceSensor(task_id="low", below_amount=100, ledger=ledger).poke({})  # type: ignore[arg-type]
        without = M3terBalanceSensor(task_id="low", below_amount=100).poke({})  # type: ignore[arg-type]
    assert [f["key"] for f in with_ledger.xcom_value] == [new.key]
    assert [f["key"] for f in without.xcom_value] == [handled.key, new.key]
    assert with_ledger.is_done and without.is_done


# ---------------------------------------------------------------------------------- provider info
def test_provider_info_lists_every_module_in_the_official_format() -> None:
    from m3sh.provider import get_provider_info

    info = get_provider_info()
    names = {i["integration-name"] for i in info["integrations"]}
    assert names == {"m3ter", "HubSpot", "NetSuite"}
    modules = {kind: [m for entry in info[kind] for m in entry["python-modules"]]
               for kind in ("hooks", "operators", "sensors", "triggers")}
    assert modules == {
        "hooks": ["m3sh.hooks.m3ter", "m3sh.hooks.hubspot", "m3sh.hooks.netsuite"],
        "operators": ["m3sh.operators.m3ter", "m3sh.operators.usage", "m3sh.operators.invoicing",
                      "m3sh.operators.analytics", "m3sh.operators.usage_feeds", "m3sh.operators.automation",
                      "m3sh.operators.crm", "m3sh.operators.reconcile"],
        "sensors": ["m3sh.sensors.m3ter"], "triggers": ["m3sh.triggers.m3ter", "m3sh.triggers.m3ter_uploads"]}
    for kind in modules:
        assert all(entry["integration-name"] in names for entry in info[kind])
    for module in (m for ms in modules.values() for m in ms):
        importlib.import_module(module)
    for path in info["notifications"]:
        module, _, cls = path.rpartition(".")
        assert hasattr(importlib.import_module(module), cls), path
    assert {c["connection-type"] for c in info["connection-types"]} == {"m3ter", "hubspot", "netsuite"}
