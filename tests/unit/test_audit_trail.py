"""The audit trail reader (:mod:`m3sh.automation.audit`) over a ledger written through the real
:class:`~m3sh.automation.ledger.Ledger` against moto: order, filters, exact totals, paging, the
CSV rows, and what is scrubbed. (The 5,000-firing run through the UI is in
``tests/integration/test_ui_view.py``.)"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from m3sh.automation.audit import AuditFilter, AuditQueryError, AuditTrail, csv_safe, scrub
from m3sh.automation.ledger import Ledger
from m3sh.automation.rules import Firing
from m3sh.storage import Storage

START = dt.datetime(2026, 9, 25, 6, 0, tzinfo=dt.UTC)
RULES = ("prepaid_low", "usage_cap", "renewal_due")
OUTCOMES = ("done", "done", "failed", "claimed", "done", "abandoned")


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    """One moto bucket for the module (writing through the ledger is the slow part: done once)."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="ledger")
        yield client


def _storage(s3: Any, prefix: str) -> Storage:
    s = Storage("aws_default", "ledger", prefix)
    s.__dict__["client"] = s3
    return s


def write_firing(storage: Storage, n: int, at: dt.datetime, *, outcome: str, rule: str, account: str,
                 error: str = "switch_plan: RuntimeError: boom") -> Firing:
    """One firing through the real ledger API, ending in ``outcome``."""
    firing = Firing(rule, "balance_below", f"id-{account}", "balance", f"bal-{n}", f"credits={n}",
                    at.isoformat(), account)
    ledger = Ledger(storage, max_attempts=1, clock=lambda: at)
    claim = ledger.claim(firing, f"run-{n}")
    claim.entry["actions"] = [{"index": 0, "kind": "switch_plan", "status": "failed" if outcome != "done" else "done",
                               "detail": error if outcome != "done" else "growth"}]
    ledger.update(claim)
    if outcome == "claimed":
        return firing
    ledger.finish(claim, "done" if outcome == "done" else "failed", None if outcome == "done" else error)
    if outcome == "abandoned":
        assert not ledger.claim(firing, "run-again").acquired
    return firing


@pytest.fixture(scope="module")
def storage(s3: Any) -> Storage:
    return _storage(s3, "hist/")


@pytest.fixture(scope="module")
def history(storage: Storage) -> list[dict[str, Any]]:
    """90 firings, one every 13 hours from 2026-09-25 (three months), mixed rules, accounts, outcomes."""
    written = []
    for n in range(90):
        at = START + dt.timedelta(hours=13 * n, microseconds=n)
        rule, account, outcome = RULES[n % 3], f"acct-{n % 7}.example", OUTCOMES[n % 6]
        f = write_firing(storage, n, at, outcome=outcome, rule=rule, account=account)
        written.append({"key": f.key, "at": at, "rule": rule, "account": account, "outcome": outcome})
    return sorted(written, key=lambda w: w["at"], reverse=True)


def test_page_one_is_the_newest_and_totals_are_exact(storage: Storage, history: list[dict[str, Any]]) -> None:
    page = AuditTrail(storage).page(AuditFilter(), 1, page_size=40)
    assert page.total == 90 and page.pages == 3
    assert page.by_status == dict(Counter(w["outcome"] for w in history))
    assert [e["key"] for e in page.entries] == [w["key"] for w in history[:40]]
    newest = page.entries[0]
    assert newest["fired_at"].startswith(history[0]["at"].strftime("%Y-%m-%dT%H:%M"))
    assert newest["status"] == history[0]["outcome"] and newest["account"] == history[0]["account"]
    failed = next(e for e in page.entries if e["status"] == "failed")
    assert failed["error"] == "switch_plan: RuntimeError: boom"  # from the history step, not a top-level field
    last = AuditTrail(storage).page(AuditFilter(), 3, page_size=40)
    assert [e["key"] for e in last.entries] == [w["key"] for w in history[80:]]  # reaches the oldest


@pytest.mark.parametrize("params", [
    {"rule": "usage_cap"}, {"account": "ACCT-3.example"}, {"account": "id-acct-3.example"}, {"outcome": "failed"},
    {"from": "2026-10-10", "to": "2026-11-03"}, {"to": "2026-09-30"}, {"from": "2026-11-08"},
    {"rule": "prepaid_low", "outcome": "done", "from": "2026-10-01"},
])
def test_each_filter_selects_exactly_the_matching_firings(storage: Storage, history: list[dict[str, Any]],
                                                          params: dict[str, str]) -> None:
    def keep(w: dict[str, Any], skip_outcome: bool = False) -> bool:
        day = w["at"].date().isoformat()
        return ((not params.get("rule") or w["rule"] == params["rule"])
                and (not params.get("account") or params["account"].lower() in (w["account"], f"id-{w['account']}"))
                and (skip_outcome or not params.get("outcome") or w["outcome"] == params["outcome"])
                and (not params.get("from") or day >= params["from"]) and (not params.get("to") or day <= params["to"]))

    want = [w["key"] for w in history if keep(w)]
    assert want, "the case selects something"
    trail = AuditTrail(storage)
    flt = AuditFilter.from_params(params)
    pages = [trail.page(flt, 1, page_size=20)]
    while pages[-1].page < pages[-1].pages:  # page through to the oldest
        pages.append(trail.page(flt, pages[-1].page + 1, page_size=20))
    assert [e["key"] for p in pages for e in p.entries] == want
    assert pages[0].total == len(want)
    # totals per outcome: every firing the other filters select
    assert pages[0].by_status == dict(Counter(w["outcome"] for w in history if keep(w, skip_outcome=True)))


def test_a_date_bound_is_a_seek_not_a_scan(storage: Storage, history: list[dict[str, Any]]) -> None:
    flt = AuditFilter.from_params({"from": "2026-10-05", "to": "2026-10-06"})
    trail = AuditTrail(storage)
    rows = list(trail.rows(flt))
    assert [r.firing_key for r in rows] == [w["key"] for w in history
                                            if "2026-10-05" <= w["at"].date().isoformat() <= "2026-10-06"]
    # listing October starts at the bound and stops at the first older key: one request, whatever the month holds
    with trail.count_requests() as requests:
        listed = list(trail.ledger.index_rows("2026-10", before=flt.before, since=flt.since))
    assert len(listed) == len(rows) and requests == [1]
    # a page view: the months, one listing per month touched, one read per row shown
    with trail.count_requests() as requests:
        page = trail.page(flt, backfill=False)
    assert requests == [1 + 1 + page.total] and page.s3_requests == requests[0]


def test_bad_parameters_name_the_parameter_and_value() -> None:
    for params, name in (({"outcome": "weird"}, "outcome"), ({"from": "2026-13-01"}, "from"),
                         ({"from": "2026-11-02", "to": "2026-11-01"}, "to")):
        with pytest.raises(AuditQueryError) as exc:
            AuditFilter.from_params(params)
        assert exc.value.param == name and repr(params[name]) in str(exc.value)
    assert AuditFilter.from_params({"rule": " ", "outcome": "DONE"}) == AuditFilter(outcome="done")


def test_csv_rows_quote_neutralise_formulas_and_carry_no_secrets(s3: Any) -> None:
    storage = _storage(s3, "csv/")
    nasty = ('notify: HTTPError: 403 for url https://hooks.slack.com/services/T000/B000/XXXXSECRET?token=abc, '
             'header "Authorization: Bearer sk_live_0123456789", password=hunter2\nsecond line')
    write_firing(storage, 1, START, outcome="failed", rule="prepaid_low", account="=cmd|' /C calc'!A0", error=nasty)
    write_firing(storage, 2, START + dt.timedelta(hours=1), outcome="done", rule="prepaid_low", account="plain.example")
    out = io.StringIO()
    csv.writer(out).writerows(AuditTrail(storage).csv_rows(AuditFilter(), details=True))
    text = out.getvalue()
    for secret in ("XXXXSECRET", "T000", "token=abc", "sk_live_0123456789", "hunter2"):
        assert secret not in text, secret
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["account_code"] for r in rows] == ["plain.example", "'=cmd|' /C calc'!A0"]
    bad = rows[1]
    assert bad["outcome"] == "failed" and "https://hooks.slack.com/***" in bad["error"]
    assert "\nsecond line" in bad["error"] and "Authorization: ***" in bad["error"] and "password=***" in bad["error"]
    assert bad["actions"].startswith("switch_plan: failed (notify: HTTPError")
    # without details: the index's columns only, and no read of the entries
    trail = AuditTrail(storage)
    with trail.count_requests() as requests:
        plain = list(trail.csv_rows(AuditFilter()))
    assert plain[0][-2:] == ["outcome", "firing_key"] and [r[7] for r in plain[1:]] == ["done", "failed"]
    assert requests == [2]  # the months, then the one month


def test_scrub_and_csv_safe_leave_ordinary_text_alone() -> None:
    text = "balance bal-1: 0 -> 500 (transaction tx-9); attached growth_usd at 2026-11-01T00:00:00Z"
    assert scrub(text) == text
    assert scrub("see https://example.com") == "see https://example.com"
    assert scrub("at https://user:pw@example.com/x") == "at https://example.com/***"
    assert scrub("sent with Bearer abcdefghijkl") == "sent with Bearer ***"
    assert csv_safe("-12.5") == "-12.5" and csv_safe("@SUM(A1)") == "'@SUM(A1)" and csv_safe(None) == ""


def test_a_page_view_indexes_an_older_ledger_a_bounded_batch_at_a_time(s3: Any) -> None:
    storage = _storage(s3, "legacy/")
    for n in range(5):  # as m3sh wrote entries before the index existed
        at = f"2026-10-0{n + 1}T09:00:00.000000Z"
        key = f"prepaid_low|id-{n}|balance:bal-{n}|credits=1"
        storage.put_json(Ledger(storage).object_key(key), {"key": key, "status": "done", "first_seen": at,
                                                           "claimed_at": at, "account_code": f"c{n}"})
    trail = AuditTrail(storage, backfill_limit=2)
    first = trail.page(AuditFilter())
    assert first.total == 2 and first.notes == [
        "Indexed 2 ledger entries written before the audit index existed.",
        "3 older ledger entries are not listed yet: 2 are indexed per page view, or all at once with "
        "`m3sh triggers backfill-index`."]
    assert [trail.page(AuditFilter()).total for _ in range(2)] == [4, 5]
    with trail.count_requests() as requests:
        done = AuditTrail(storage).page(AuditFilter())  # complete: remembered, nothing more is checked
    assert done.total == 5 and done.notes == [] and requests == [1 + 1 + 5]
