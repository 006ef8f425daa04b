"""The S3 ledger (conditional puts against moto) and the exactly-once firing engine."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from m3sh.automation.actions import Outcome, apply_firing, plan_actions
from m3sh.automation.ledger import Ledger
from m3sh.automation.rules import Firing
from m3sh.config import TriggerRule
from m3sh.storage import Storage

RULE = TriggerRule.model_validate({"name": "low", "when": {"balance_below": {"amount": 100}}, "actions": [
    {"switch_plan": "growth"}, {"reset_balance_to": 0}, {"set_custom_fields": {"x": "y"}}]})
FIRING = Firing("low", "balance_below", "acc-1", "balance", "bal-1", "credits=500", "2026-11-20T00:00:00Z", "acme")


@pytest.fixture
def storage() -> Iterator[Storage]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="ledger")
        s = Storage("aws_default", "ledger", "m3sh/")
        s.__dict__["client"] = client
        yield s


class FakeRunner:
    def __init__(self, fail_on: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail_on = fail_on or set()

    def run(self, firing: Firing, action: Any, rule: TriggerRule) -> Outcome:
        self.calls.append(action.kind)
        if action.kind in self.fail_on:
            raise RuntimeError(f"{action.kind} broke")
        return Outcome("done", "ok")


def test_claim_is_exclusive_and_final_states_are_never_reclaimed(storage: Storage) -> None:
    ledger = Ledger(storage)
    first = ledger.claim(FIRING, "run-1")
    assert first.acquired
    other = ledger.claim(FIRING, "run-2")
    assert not other.acquired and "in progress" in other.reason
    ledger.finish(first, "done")
    again = ledger.claim(FIRING, "run-3")
    assert not again.acquired and again.reason.startswith("already done")
    assert ledger.get(FIRING.key)["status"] == "done"  # type: ignore[index]
    assert [e["key"] for e in ledger.entries(rule="low")] == [FIRING.key]


def test_a_dead_workers_claim_is_taken_over_after_the_lease(storage: Storage) -> None:
    ledger = Ledger(storage, lease_s=0)
    assert ledger.claim(FIRING, "run-1").acquired
    taken = ledger.claim(FIRING, "run-2")
    assert taken.acquired and taken.entry["attempts"] == 2


def test_engine_runs_actions_in_order_once_and_resumes_after_a_failure(storage: Storage) -> None:
    ledger = Ledger(storage)
    broken = FakeRunner(fail_on={"reset_balance_to"})
    out = apply_firing(FIRING, RULE, broken, ledger, "run-1")  # type: ignore[arg-type]
    assert out["status"] == "failed" and broken.calls == ["switch_plan", "reset_balance_to"]
    entry = ledger.get(FIRING.key)
    assert entry is not None and entry["status"] == "failed"
    # the next pass resumes at the failed action; the plan switch is not repeated
    fixed = FakeRunner()
    out = apply_firing(FIRING, RULE, fixed, ledger, "run-2")  # type: ignore[arg-type]
    assert out["status"] == "fired" and fixed.calls == ["reset_balance_to", "set_custom_fields"]
    entry = ledger.get(FIRING.key)
    assert entry is not None and entry["status"] == "done" and entry["attempts"] == 2
    assert [a["status"] for a in sorted(entry["actions"], key=lambda a: a["index"])] == ["done"] * 3
    # and from then on nothing runs again
    idle = FakeRunner()
    assert apply_firing(FIRING, RULE, idle, ledger, "run-3")["status"] == "skipped"  # type: ignore[arg-type]
    assert idle.calls == []


def test_resumed_firing_keeps_the_first_event_time(storage: Storage) -> None:
    ledger = Ledger(storage)
    apply_firing(FIRING, RULE, FakeRunner(fail_on={"switch_plan"}), ledger, "run-1")  # type: ignore[arg-type]
    seen: list[str] = []

    class Spy(FakeRunner):
        def run(self, firing: Firing, action: Any, rule: TriggerRule) -> Outcome:
            seen.append(firing.event_time)
            return super().run(firing, action, rule)

    moved = Firing.from_dict({**FIRING.to_dict(), "event_time": "2026-11-21T09:00:00Z"})
    apply_firing(moved, RULE, Spy(), ledger, "run-2")  # type: ignore[arg-type]
    assert set(seen) == {FIRING.event_time}


def test_gives_up_after_max_attempts(storage: Storage) -> None:
    ledger = Ledger(storage, max_attempts=2)
    runner = FakeRunner(fail_on={"switch_plan"})
    assert apply_firing(FIRING, RULE, runner, ledger, "r1")["status"] == "failed"  # type: ignore[arg-type]
    assert apply_firing(FIRING, RULE, runner, ledger, "r2")["status"] == "failed"  # type: ignore[arg-type]
    out = apply_firing(FIRING, RULE, runner, ledger, "r3")  # type: ignore[arg-type]
    assert out["status"] == "skipped" and "abandoned" in out["reason"]
    assert runner.calls == ["switch_plan", "switch_plan"]


def test_dry_run_plan_reports_without_writing(storage: Storage) -> None:
    plan = plan_actions(FIRING, RULE, None)
    assert plan["status"] == "would_fire" and plan["actions"][0] == "switch_plan: growth"
    assert plan_actions(FIRING, RULE, {"status": "done"})["status"] == "already_done"
    assert list(Ledger(storage).entries()) == []
    assert dt.datetime.fromisoformat(FIRING.event_time.replace("Z", "+00:00")).tzinfo is not None


def test_final_keys_come_from_one_listing_of_markers_and_only_final_states_get_one(storage: Storage) -> None:
    ledger = Ledger(storage, max_attempts=1)
    done, failing, pending = (Firing("low", "balance_below", f"acc-{n}", "balance", f"bal-{n}", "credits=500",
                                     "2026-11-20T00:00:00Z", f"c{n}") for n in (1, 2, 3))
    other_rule = Firing("other", "balance_below", "acc-1", "balance", "bal-1", "credits=500",
                        "2026-11-20T00:00:00Z", "c1")
    keys = [done.key, failing.key, pending.key, other_rule.key]
    assert ledger.final_keys(keys) == set()

    assert apply_firing(done, RULE, FakeRunner(), ledger, "r1")["status"] == "fired"  # type: ignore[arg-type]
    runner = FakeRunner(fail_on={"switch_plan"})
    assert apply_firing(failing, RULE, runner, ledger, "r1")["status"] == "failed"  # type: ignore[arg-type]
    ledger.claim(pending, "r1")  # claimed, still running
    assert ledger.final_keys(keys) == {done.key}  # failed and claimed are not final
    assert "abandoned" in apply_firing(failing, RULE, runner, ledger, "r2")["reason"]  # type: ignore[arg-type]
    assert ledger.final_keys(keys) == {done.key, failing.key}
    # the markers live outside the ledger entries: listing entries still shows exactly the firings
    assert sorted(e["key"] for e in ledger.entries(rule="low")) == sorted([done.key, failing.key, pending.key])


def test_an_entry_finished_before_markers_existed_gets_its_marker_on_the_next_claim(storage: Storage) -> None:
    ledger = Ledger(storage)
    claim = ledger.claim(FIRING, "run-1")
    ledger.finish(claim, "done")
    storage.delete(ledger._final_marker_key(FIRING.key))  # as an older m3sh left it
    assert ledger.final_keys([FIRING.key]) == set()
    assert not ledger.claim(FIRING, "run-2").acquired
    assert ledger.final_keys([FIRING.key]) == {FIRING.key}
