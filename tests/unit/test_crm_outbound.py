"""The m3ter -> CRM rules (m3sh.crm.outbound) on their own: what is written, what is a conflict."""

from __future__ import annotations

import datetime as dt

import pytest

from m3sh.crm.outbound import current_plan, decide, fingerprint, norm

PREV = {"m3ter": "Acme", "crm": "Acme"}


@pytest.mark.parametrize(("fld", "a", "b"), [
    ("domain", "https://www.Acme.com/about", "acme.com"),
    ("email", " Billing@Acme.com", "billing@acme.com"),
    ("currency", "usd", "USD"),
    ("name", "Acme ", "Acme"),
])
def test_values_that_mean_the_same_compare_equal(fld: str, a: str, b: str) -> None:
    assert norm(fld, a) == norm(fld, b)
    assert decide(fld, "m3ter_wins", m3ter_before=b, m3ter_now=b, crm=a, previous=None).write is None


def test_m3ter_wins_writes_m3ter_changes_and_never_clears_the_crm() -> None:
    d = decide("name", "m3ter_wins", m3ter_before="Acme 2", m3ter_now="Acme 2", crm="Acme", previous=PREV)
    assert (d.write, d.conflict, d.m3ter_changed, d.crm_changed) == ("Acme 2", False, True, False)
    assert decide("name", "m3ter_wins", m3ter_before=None, m3ter_now=None, crm="Acme", previous=PREV).write is None


def test_both_sides_changed_is_a_conflict_decided_by_the_rule() -> None:
    kw = {"m3ter_before": "From m3ter", "m3ter_now": "From m3ter", "crm": "From CRM", "previous": PREV}
    wins = decide("name", "m3ter_wins", **kw)  # type: ignore[arg-type]
    assert wins.conflict and wins.write == "From m3ter"
    crm = decide("name", "crm_wins", **kw)  # type: ignore[arg-type]
    assert crm.conflict and crm.write is None
    fill = decide("name", "fill_missing", **kw)  # type: ignore[arg-type]
    assert fill.conflict and fill.write is None


def test_crm_wins_conflict_uses_m3ter_value_before_the_crm_to_m3ter_step() -> None:
    """The CRM -> m3ter step already copied the CRM's value into m3ter: only the value before it
    shows m3ter had changed too."""
    d = decide("name", "crm_wins", m3ter_before="From m3ter", m3ter_now="From CRM", crm="From CRM", previous=PREV)
    assert d.conflict and d.write is None


def test_same_change_on_both_sides_or_no_history_is_no_conflict() -> None:
    assert not decide("name", "m3ter_wins", m3ter_before="X", m3ter_now="X", crm="X", previous=PREV).conflict
    first = decide("name", "m3ter_wins", m3ter_before="X", m3ter_now="X", crm="Y", previous=None)
    assert not first.conflict and first.write == "X"


def test_fill_missing_writes_only_where_the_crm_is_empty() -> None:
    assert decide("email", "fill_missing", m3ter_before="a@x.io", m3ter_now="a@x.io", crm="", previous=None).write \
        == "a@x.io"
    assert decide("email", "fill_missing", m3ter_before="a@x.io", m3ter_now="a@x.io", crm="b@x.io",
                  previous=None).write is None


def test_current_plan_is_the_latest_started_active_one() -> None:
    now = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC)
    codes = {"p1": "starter", "p2": "enterprise", "p3": "future"}
    aps = [{"planId": "p1", "startDate": "2026-01-01T00:00:00Z", "endDate": "2026-12-02T10:00:00Z"},
           {"planId": "p2", "startDate": "2026-12-02T10:00:00Z"},
           {"planId": "p3", "startDate": "2027-01-01T00:00:00Z"}]
    assert current_plan(aps, codes, now) == "enterprise"
    assert current_plan(aps[:1], codes, now) is None


def test_fingerprint_moves_with_any_tracked_value_only() -> None:
    base = fingerprint("a1", {"name": "Acme", "plan": "starter"})
    assert fingerprint("a1", {"plan": "starter", "name": "Acme "}) == base
    assert fingerprint("a1", {"name": "Acme", "plan": "enterprise"}) != base
    assert fingerprint("a2", {"name": "Acme", "plan": "starter"}) != base
