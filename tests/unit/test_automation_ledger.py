"""The S3 ledger (conditional puts against moto) and the exactly-once firing engine."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from m3sh.automation.actions import Outcome, apply_firing, plan_actions
from m3sh.automation.ledger import Ledger, index_meta_key, index_prefix, latest_index_rows, parse_index_key
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


# ---------------------------------------------------------------------------------- the audit index
def _firing(n: int, rule: str = "low") -> Firing:
    return Firing(rule, "balance_below", f"acc-{n}", "balance", f"bal-{n}", "credits=500", "2026-11-20T00:00:00Z",
                  f"code-{n}")


def _clock(at: dt.datetime) -> Any:
    return lambda: at


def _index_keys(storage: Storage) -> list[str]:
    return [o["Key"] for o in storage.list_keys(index_prefix(storage.prefix))]


def _latest(ledger: Ledger) -> list[Any]:
    return [r for m in ledger.index_months() for r in latest_index_rows(ledger.index_rows(m))]


T0 = dt.datetime(2026, 11, 20, 10, 0, 0, 123456, tzinfo=dt.UTC)


def test_every_status_change_moves_the_firings_one_index_key_to_its_latest_state(storage: Storage) -> None:
    ledger = Ledger(storage, max_attempts=3, clock=_clock(T0))
    claim = ledger.claim(FIRING, "run-1")
    (key,) = _index_keys(storage)
    row = parse_index_key(storage.prefix, key)
    assert row is not None
    assert (row.fired_at, row.firing_key, row.rev, row.status) == (T0, FIRING.key, 1, "claimed")
    assert (row.rule, row.account_id, row.account_code, row.entity, row.crossing) == (
        "low", "acc-1", "acme", ("balance", "bal-1"), "credits=500")
    assert key.startswith("m3sh/triggers/index/2026-11/")
    assert row.ledger_key(storage.prefix) == ledger.object_key(FIRING.key)

    ledger.finish(claim, "failed", "switch_plan: boom")
    retry = Ledger(storage, clock=_clock(T0 + dt.timedelta(hours=1))).claim(FIRING, "run-2")  # failed -> claimed
    assert retry.acquired
    ledger.update(retry)  # an action's progress is no status change: the key stays
    assert [parse_index_key(storage.prefix, k).status for k in _index_keys(storage)] == ["claimed"]  # type: ignore[union-attr]
    ledger.finish(retry, "done")
    (key,) = _index_keys(storage)
    row = parse_index_key(storage.prefix, key)
    assert row is not None and (row.status, row.rev, row.fired_at) == ("done", 4, T0)  # it keeps its place in time
    assert ledger.get(FIRING.key)["rev"] == 4  # type: ignore[index]


def test_abandoning_reindexes_and_the_index_lists_newest_first_across_months(storage: Storage) -> None:
    times = [dt.datetime(2026, 9, 30, 23, 59, 59, tzinfo=dt.UTC), dt.datetime(2026, 10, 1, tzinfo=dt.UTC),
             dt.datetime(2026, 10, 15, 8, tzinfo=dt.UTC), dt.datetime(2026, 11, 2, tzinfo=dt.UTC)]
    for n, at in enumerate(times):
        led = Ledger(storage, max_attempts=1, clock=_clock(at))
        led.finish(led.claim(_firing(n), "r1"), "failed", "x")
    led = Ledger(storage, max_attempts=1, clock=_clock(times[0]))
    assert not led.claim(_firing(0), "r2").acquired  # failed with no attempts left -> abandoned
    ledger = Ledger(storage)
    assert ledger.index_months() == ["2026-11", "2026-10", "2026-09"]
    rows = _latest(ledger)
    assert [r.fired_at for r in rows] == sorted(times, reverse=True)
    assert [r.status for r in rows] == ["failed", "failed", "failed", "abandoned"]
    assert len(_index_keys(storage)) == 4  # the superseded "failed" key of the abandoned firing is gone
    # bounds: listing starts after `before` and stops at `since`, within the month
    oct_rows = list(ledger.index_rows("2026-10", before=times[2], since=times[1]))
    assert [r.fired_at for r in oct_rows] == [times[1]]


def test_a_lost_index_write_is_outranked_then_repaired(storage: Storage) -> None:
    ledger = Ledger(storage, clock=_clock(T0))
    claim = ledger.claim(FIRING, "run-1")
    claimed_key = _index_keys(storage)[0]
    ledger.finish(claim, "done")
    storage.put_bytes(claimed_key, b"")  # as if the delete of the old key had been lost
    assert len(_index_keys(storage)) == 2
    (row,) = _latest(ledger)
    assert row.status == "done"  # the higher rev wins
    # a worker killed between the final ledger put and its index write: no "done" key, no marker
    done_key = next(k for k in _index_keys(storage) if k != claimed_key)
    storage.delete(done_key)
    storage.delete(ledger._final_marker_key(FIRING.key))
    assert [r.status for r in _latest(ledger)] == ["claimed"]
    assert not ledger.claim(FIRING, "run-2").acquired  # the next pass finds it done and repairs index + marker
    assert [r.status for r in _latest(ledger)] == ["done"]
    assert ledger.final_keys([FIRING.key]) == {FIRING.key}
    result = ledger.backfill_index()
    assert result["superseded_removed"] == 1 and result["indexed"] == 0 and _index_keys(storage) == [done_key]


def test_concurrent_workers_on_the_same_firings_leave_one_index_row_each(storage: Storage,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    # moto's in-process backend is not safe within one request (a read racing an overwrite of the
    # same key hits a closed temp file); S3 requests are atomic, so each request runs alone here
    # while the workers still interleave between requests (claim, read, conditional put, index).
    lock = threading.Lock()
    call = storage.client._make_api_call

    def atomic(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return call(*args, **kwargs)

    monkeypatch.setattr(storage.client, "_make_api_call", atomic)
    firings = [_firing(n) for n in range(8)]

    def worker(w: int) -> int:
        ledger = Ledger(storage)
        acquired = 0
        for f in firings:
            c = ledger.claim(f, f"run-{w}")
            if c.acquired:
                acquired += 1
                ledger.finish(c, "done")
        return acquired

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(worker, range(4))) == len(firings)  # each firing acted on once
    rows = _latest(Ledger(storage))
    assert sorted(r.firing_key for r in rows) == sorted(f.key for f in firings)
    assert {r.status for r in rows} == {"done"} and len(_index_keys(storage)) == len(firings)


def test_backfill_indexes_a_ledger_written_before_the_index_existed(storage: Storage) -> None:
    legacy = []
    for n in range(5):  # entries as the previous m3sh wrote them: no rev, no index key
        f = _firing(n)
        entry = {"key": f.key, "rule": f.rule, "kind": f.kind, "account_id": f.account_id,
                 "account_code": f.account_code, "status": "done" if n else "failed", "attempts": 1,
                 "claimed_by": "old-run", "claimed_at": f"2026-10-0{n + 1}T09:00:00.000000Z",
                 "first_seen": f"2026-10-0{n + 1}T09:00:00.000000Z", "actions": [], "history": []}
        storage.put_json(Ledger(storage).object_key(f.key), entry)
        legacy.append(f)
    storage.put_json(Ledger(storage).prefix + "low/not-an-entry.json", {"hello": 1})
    ledger = Ledger(storage)
    assert _latest(ledger) == []
    first = ledger.backfill_index(limit=3)
    assert (first["indexed"], first["remaining"]) == (3, 3)  # 5 entries + 1 stray object, 3 done
    assert storage.get_json(index_meta_key(storage.prefix)) is None
    second = ledger.backfill_index()
    assert (second["indexed"], second["unreadable"], second["remaining"]) == (2, 1, 0)
    assert storage.get_json(index_meta_key(storage.prefix))["complete"] is True  # type: ignore[index]
    rows = _latest(ledger)
    assert [r.firing_key for r in rows] == [f.key for f in reversed(legacy)]  # newest first
    assert [r.status for r in rows] == ["done"] * 4 + ["failed"]
    assert ledger.backfill_index()["indexed"] == 0  # idempotent
    # the new code carries on from the backfilled key: retrying the failed legacy entry replaces it
    retry = Ledger(storage, max_attempts=3).claim(legacy[0], "new-run")
    assert retry.acquired
    Ledger(storage).finish(retry, "done")
    assert [r.status for r in _latest(ledger)] == ["done"] * 5 and len(_index_keys(storage)) == 5


def test_verify_repairs_an_index_that_lags_its_entry(storage: Storage) -> None:
    ledger = Ledger(storage, clock=_clock(T0))
    claim = ledger.claim(FIRING, "run-1")
    claimed_key = _index_keys(storage)[0]
    ledger.finish(claim, "done")
    (done_key,) = _index_keys(storage)
    storage.delete(done_key)
    storage.put_bytes(claimed_key, b"")  # the index still says "claimed": both writes after the put were lost
    assert ledger.backfill_index()["repaired"] == 0  # without verify the firing counts as indexed
    assert ledger.backfill_index(verify=True)["repaired"] == 1
    assert _index_keys(storage) == [done_key]
