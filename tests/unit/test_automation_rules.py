"""Pure rule evaluation: thresholds, crossings, periods, contract windows and deterministic keys."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from m3sh.automation import rules as R
from m3sh.config import TriggerRule

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)


def rule(when: dict[str, Any], name: str = "r", **extra: Any) -> TriggerRule:
    return TriggerRule.model_validate({"name": name, "when": when, "actions": [{"reset_balance_to": 0}], **extra})


def bal(bid: str, amount: float, **extra: Any) -> dict[str, Any]:
    return {"id": bid, "accountId": f"acc-{bid}", "code": f"prepaid-{bid}", "amount": amount,
            "startDate": "2026-01-01T00:00:00Z", "endDate": "2027-01-01T00:00:00Z", "version": 3, **extra}


def test_absolute_threshold_fires_below_only_and_key_names_the_crossing() -> None:
    r = rule({"balance_below": {"amount": 100}})
    balances = [bal("a", 99.99), bal("b", 100), bal("c", 5, endDate="2026-11-01T00:00:00Z")]  # c has expired
    cands = R.balance_candidates(r, balances, NOW)
    assert [b["id"] for b in cands] == ["a"]
    (f,) = R.balance_firings(r, cands, {"a": 1000.0}, NOW)
    assert f.key == "r|acc-a|balance:a|credits=1000"
    assert f.detail["threshold"] == 100 and f.event_time == "2026-11-20T12:00:00Z"


def test_key_is_stable_across_passes_and_changes_with_a_top_up() -> None:
    r = rule({"balance_below": {"amount": 100}})
    first = R.balance_firings(r, [bal("a", 40)], {"a": 500.0}, NOW)[0].key
    later = R.balance_firings(r, [bal("a", 0)], {"a": 500.0}, NOW + dt.timedelta(hours=3))[0].key
    after_top_up = R.balance_firings(r, [bal("a", 10)], {"a": 1500.0}, NOW)[0].key
    assert first == later != after_top_up


def test_percent_of_original_needs_the_credit_and_uses_it() -> None:
    r = rule({"balance_below": {"percent_of_original": 10}})
    cands = R.balance_candidates(r, [bal("a", 90), bal("b", 110)], NOW)
    assert len(cands) == 2  # every in-scope balance: the threshold depends on its credit
    fired = R.balance_firings(r, cands, {"a": 1000.0, "b": 1000.0}, NOW)
    assert [f.entity_id for f in fired] == ["a"]
    assert R.balance_firings(r, cands, {}, NOW) == []  # unknown original: never guess


def test_balance_code_and_product_filters() -> None:
    r = rule({"balance_below": {"amount": 100, "balance_codes": ["prepaid-a*"], "product_codes": ["api"]}})
    balances = [bal("a1", 1, productIds=["p-api"]), bal("a2", 1, productIds=["p-other"]), bal("a3", 1),
                bal("b1", 1)]
    assert [b["id"] for b in R.balance_candidates(r, balances, NOW, {"p-api"})] == ["a1", "a3"]


def test_usage_over_limit_per_account_and_period() -> None:
    r = rule({"usage_over_limit": {"meter": "api_calls", "limit": 1000}})
    body = R.usage_query_body(r, "m-1", NOW)
    assert body["startDate"] == "2026-11-01T00:00:00Z" and body["endDate"] == "2026-12-01T00:00:00Z"
    assert body["groups"] == [{"groupType": "ACCOUNT"}] and body["aggregations"][0]["function"] == "SUM"
    rows = [{"accountId": "x", "accountCode": "xco", "quantity_sum": 1001},
            {"accountId": "y", "accountCode": "yco", "quantity_sum": 1000}]
    (f,) = R.usage_firings(r, rows, NOW)
    assert f.key == "r|x|meter:api_calls|period=2026-11" and f.account_code == "xco"


def test_billing_period_wraps_december() -> None:
    assert R.billing_period(dt.datetime(2026, 12, 31, tzinfo=dt.UTC))[1] == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def test_contract_windows_renewals_and_event_time() -> None:
    ending = rule({"contract_ending_within_days": 30})
    ended = rule({"contract_ended": True}, name="e")
    contracts = [
        {"id": "c1", "accountId": "a1", "startDate": "2025-01-01", "endDate": "2026-11-30"},  # 10 days left
        {"id": "c2", "accountId": "a2", "startDate": "2025-01-01", "endDate": "2027-03-01"},  # too far
        {"id": "c3", "accountId": "a3", "startDate": "2025-01-01", "endDate": "2026-11-10"},  # ended
        {"id": "c4", "accountId": "a4", "startDate": "2025-01-01", "endDate": "2026-11-25"},  # renewed already
        {"id": "c5", "accountId": "a4", "startDate": "2026-11-26", "endDate": "2027-11-25"},
    ]
    (f,) = R.contract_firings(ending, contracts, NOW)
    assert f.key == "r|a1|contract:c1|end=2026-11-30"
    assert f.event_time == "2026-12-01T00:00:00Z" and f.detail["days_left"] == 10
    assert [x.entity_id for x in R.contract_firings(ended, contracts, NOW)] == ["c3"]


def test_select_rules_and_account_filters() -> None:
    rules = [rule({"balance_below": {"amount": 1}}, name="a", accounts=["acme"]),
             rule({"contract_ended": True}, name="b"), rule({"contract_ended": True}, name="c", enabled=False)]
    assert [r.name for r in R.select_rules(rules)] == ["a", "b"]
    assert [r.name for r in R.select_rules(rules, kinds=["balance_below"])] == ["a"]
    with pytest.raises(ValueError, match="unknown trigger rule"):
        R.select_rules(rules, ["zzz"])
    f1 = R.Firing("a", "balance_below", "1", "balance", "b", "x", "t", "acme")
    f2 = R.Firing("a", "balance_below", "2", "balance", "b", "x", "t", "other")
    f3 = R.Firing("b", "contract_ended", "2", "contract", "c", "x", "t", "other")
    by_name = {r.name: r for r in rules}
    assert R.filter_accounts([f1, f2, f3], by_name) == [f1, f3]
    assert R.filter_accounts([f1, f2, f3], by_name, ["other"]) == [f3]
    assert R.Firing.from_dict(f1.to_dict()) == f1 and R.dedupe([f1, f1, f3]) == [f1, f3]


def test_action_needs_exactly_one_kind() -> None:
    with pytest.raises(ValueError, match="exactly one kind"):
        TriggerRule.model_validate({"name": "x", "when": {"contract_ended": True},
                                    "actions": [{"switch_plan": "a", "reset_balance_to": 0}]})


# ------------------------------------------------------------------------------ open_next_balance
OPEN_NEXT = """
triggers:
  - name: low
    when: {balance_below: {amount: 100}}
    actions:
      - open_next_balance: {}
  - name: renew
    when: {contract_ending_within_days: 30}
    actions:
      - notify: ops
      - open_next_balance: {months: 12}
alerting:
  notifiers: [{name: ops, type: slack_webhook, conn_id: slack}]
"""


def test_open_next_balance_is_rejected_on_rules_without_a_firing_balance() -> None:
    from m3sh.config import parse_config
    from m3sh.exceptions import ConfigError

    with pytest.raises(ConfigError) as exc:
        parse_config(OPEN_NEXT, source="m3sh.yaml")
    (problem,) = str(exc.value).splitlines()[1:]
    assert problem.strip().startswith("m3sh.yaml:11 triggers[1].actions[1].open_next_balance: rule 'renew'")
    assert "only balance_below rules" in problem and "contract_ending" in problem
    # the balance rule alone is fine, and `{}` means every default
    cfg = parse_config(OPEN_NEXT.split("  - name: renew", maxsplit=1)[0])
    spec = cfg.triggers[0].actions[0].open_next_balance
    assert spec is not None and (spec.amount, spec.months, spec.start) == (None, None, "balance_end")


@pytest.mark.parametrize(("code", "why"), [
    ("{series}-next", "must contain {start}"),
    ("{series}-{start:%Y}-{account}", "unknown placeholder(s) ['account']"),
    ("{series}-{start", "not a valid pattern"),
])
def test_open_next_balance_code_pattern_is_checked(code: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        TriggerRule.model_validate({"name": "x", "when": {"balance_below": {"amount": 1}},
                                    "actions": [{"open_next_balance": {"code": code}}]})


def test_open_next_balance_period_code_and_description() -> None:
    from m3sh.automation.actions import describe, next_balance_code, next_period, whole_months
    from m3sh.config import Action, OpenNextBalance

    month = bal("a", 0, startDate="2026-11-01T00:00:00Z", endDate="2026-12-01T00:00:00Z", code="prepaid-a-20261101")
    start, end = next_period(month, OpenNextBalance(), NOW)
    assert (start, end) == (dt.datetime(2026, 12, 1, tzinfo=dt.UTC), dt.datetime(2027, 1, 1, tzinfo=dt.UTC))
    # the period suffix is replaced, not appended, so codes keep their length period after period
    assert next_balance_code(OpenNextBalance(), month, start, end) == "prepaid-a-20261201"
    assert next_balance_code(OpenNextBalance(code="{code}/{start:%Y-%m}/{end:%Y-%m}"), month, start, end) == \
        "prepaid-a-20261101/2026-12/2027-01"
    # from the event time, for 3 months; a month-end start stays on the last day of shorter months
    assert next_period(month, OpenNextBalance(start="event_time", months=3), NOW)[1] == \
        dt.datetime(2027, 2, 20, 12, tzinfo=dt.UTC)
    jan31 = dt.datetime(2027, 1, 31, tzinfo=dt.UTC)
    assert next_period(bal("b", 0, endDate="2027-01-31T00:00:00Z"), OpenNextBalance(months=1), NOW)[1] == \
        dt.datetime(2027, 2, 28, tzinfo=dt.UTC)
    assert whole_months(jan31 - dt.timedelta(days=30), jan31) is None
    # not whole months: the same length in time
    odd = bal("c", 0, startDate="2026-11-05T00:00:00Z", endDate="2026-11-15T00:00:00Z")
    assert next_period(odd, OpenNextBalance(), NOW) == (dt.datetime(2026, 11, 15, tzinfo=dt.UTC),
                                                        dt.datetime(2026, 11, 25, tzinfo=dt.UTC))
    with pytest.raises(ValueError, match="not a valid m3ter balance code"):
        next_balance_code(OpenNextBalance(code="x" * 80 + "{start:%Y}"), month, start, end)
    text = describe(Action(open_next_balance=OpenNextBalance(months=1, amount=500)))
    assert text == ("open_next_balance: at the balance's end, for 1 month(s), credit 500, "
                    "code {series}-{start:%Y%m%d}")


# ------------------------------------------------------------------- webhook-started run scope
class _Event:
    def __init__(self, extra: dict[str, object] | None) -> None:
        self.extra = extra


@pytest.mark.parametrize(("events", "expected"), [
    (None, None),  # scheduled, manual or backfill run
    ({"m3sh://m3ter/notifications": []}, None),
    ({"m3sh://m3ter/notifications": [_Event({"account_id": "a2"}), _Event({"account_id": "a1"}),
                                     _Event({"account_id": "a2"})]}, ["a1", "a2"]),
    # an event without an account (created by hand in the UI) or a malformed one: full pass
    ({"m3sh://m3ter/notifications": [_Event({"account_id": "a1"}), _Event({})]}, None),
    ({"m3sh://m3ter/notifications": [_Event({"account_id": 7})]}, None),
    ({"m3sh://m3ter/notifications": [_Event({"account_id": f"a{i}"}) for i in range(21)]}, None),
])
def test_a_webhook_started_run_narrows_to_the_notified_accounts(events: object, expected: object) -> None:
    from m3sh.dagkit.plan_triggers import notified_account_ids

    assert notified_account_ids(events) == expected


def test_the_run_context_s_triggering_asset_events_are_read_as_airflow_builds_them() -> None:
    """The same accessor and event classes the task runner puts in the context (Airflow 3.3)."""
    from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from m3sh.dagkit.plan_triggers import NOTIFICATIONS_ASSET_URI, notified_account_ids

    def event(extra: dict[str, Any]) -> AssetEventDagRunReferenceResult:
        asset = AssetReferenceAssetEventDagRun(name="m3ter_notifications", uri=NOTIFICATIONS_ASSET_URI, extra={})
        return AssetEventDagRunReferenceResult(
            asset=asset, extra=extra, source_task_id=None, source_dag_id=None, source_run_id=None,
            source_map_index=None, source_aliases=[], timestamp=dt.datetime.now(dt.UTC))

    events = TriggeringAssetEventsAccessor.build([event({"account_id": "acc-2", "event_id": "e1"}),
                                                  event({"account_id": "acc-1", "event_id": "e2"})])
    assert notified_account_ids(events) == ["acc-1", "acc-2"]
    assert notified_account_ids(TriggeringAssetEventsAccessor.build([])) is None
