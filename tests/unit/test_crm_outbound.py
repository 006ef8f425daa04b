"""The m3ter -> CRM rules (m3sh.crm.outbound) on their own: what is written, what is a conflict."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from m3sh.crm.outbound import (
    current_plan,
    decide,
    fingerprint,
    in_window,
    linked_contracts,
    norm,
    salesforce_contract_end,
    salesforce_contract_term,
    salesforce_contract_update,
)

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


# ------------------------------------------------------------------------------------ contract dates
@pytest.mark.parametrize(("start", "term", "end"), [
    ("2025-03-01", 5, "2025-07-31"),   # Salesforce Help 000384288's example
    ("2016-12-01", 1, "2016-12-31"),
    ("2016-11-30", 1, "2016-12-29"),
    ("2026-01-01", 24, "2027-12-31"),
    ("2024-01-31", 1, "2024-02-28"),   # Feb 29 (the month's last day) less one day
])
def test_salesforce_end_date_and_the_term_that_yields_it(start: str, term: int, end: str) -> None:
    s, e = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    assert salesforce_contract_end(s, term) == e
    assert salesforce_contract_term(s, e) == term


def test_an_end_date_no_whole_term_yields_has_no_term() -> None:
    assert salesforce_contract_term(dt.date(2026, 1, 1), dt.date(2026, 12, 15)) is None
    assert salesforce_contract_term(dt.date(2026, 1, 1), dt.date(2025, 12, 31)) is None  # before the start


def test_salesforce_contract_update_writes_the_term_not_end_date() -> None:
    current = {"StartDate": "2026-01-01", "ContractTerm": 12}
    assert salesforce_contract_update(current, {"EndDate": "2027-12-31"}) == {"ContractTerm": 24}
    # a new start date as well: the term counts from it
    assert salesforce_contract_update(current, {"StartDate": "2026-02-01", "EndDate": "2027-01-31T00:00:00Z"}) == {
        "StartDate": "2026-02-01", "ContractTerm": 12}
    assert salesforce_contract_update(current, {"StartDate": "2026-03-01"}) == {"StartDate": "2026-03-01"}
    with pytest.raises(ValueError, match=r"end date 2026-12-15 cannot be written: Salesforce computes "
                                         r"Contract.EndDate as StartDate \(2026-01-01\)"):
        salesforce_contract_update(current, {"EndDate": "2026-12-15"})


def test_linked_contracts_are_the_source_s_latest_created_per_crm_record() -> None:
    def c(code: str, link: str, created: str) -> dict[str, Any]:
        return {"id": code, "code": code, "customFields": {"crm_contract": link}, "dtCreated": created}

    got = linked_contracts([c("a-c20250101", "salesforce:800A", "2025-01-01T00:00:00Z"),
                            c("a-c20260101", "salesforce:800A", "2026-01-01T00:00:00Z"),
                            c("b-c20260101", "hubspot:77", "2026-01-01T00:00:00Z"),
                            {"id": "x", "code": "x", "customFields": {}}], "salesforce")
    assert {k: v["code"] for k, v in got.items()} == {"800A": "a-c20260101"}


def test_dates_compare_by_day_and_the_window_is_half_open() -> None:
    assert norm("end_date", "2026-12-31T00:00:00Z") == norm("end_date", "2026-12-31") == "2026-12-31"
    window = (dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, 11, tzinfo=dt.UTC))
    assert in_window("2026-11-01T10:00:00Z", window) and in_window("2026-11-01T10:59:59.999Z", window)
    assert not in_window("2026-11-01T11:00:00Z", window) and not in_window(None, window)
    assert not in_window("2026-11-01T10:30:00Z", None)


# ------------------------------------------------------------------- one run, with in-memory systems
SF_ACC = {"A": "001A", "B": "001B"}
SF_CONTRACT = {"A": "800A", "B": "800B"}


class _M3ter:
    def __init__(self) -> None:
        old = "2026-10-01T00:00:00Z"
        self.accounts = {k: {"id": f"acc-{k}", "code": k.lower(), "name": f"Acme {k}", "dtLastModified": old}
                         for k in SF_ACC}
        self.contracts = {k: {"id": f"con-{k}", "code": f"{k.lower()}-c20260101", "accountId": f"acc-{k}",
                              "startDate": "2026-01-01", "endDate": "2026-12-31", "dtCreated": old,
                              "dtLastModified": old, "customFields": {"crm_contract": f"salesforce:{SF_CONTRACT[k]}"}}
                          for k in SF_ACC}

    def list_accounts(self) -> list[dict[str, Any]]:
        return list(self.accounts.values())

    def list_plans(self) -> list[dict[str, Any]]:
        return []

    def list_account_plans(self, include_all: bool = False) -> list[dict[str, Any]]:
        return []

    def list_external_mappings(self) -> list[dict[str, Any]]:
        return [{"m3terEntity": "Account", "m3terId": f"acc-{k}", "externalSystem": "salesforce",
                 "externalTable": "Account", "externalId": sf_id} for k, sf_id in SF_ACC.items()]

    def list_contracts(self) -> list[dict[str, Any]]:
        return list(self.contracts.values())


class _Salesforce:
    """The Accounts and Contracts the run reads, and the PATCHes it sends."""

    def __init__(self) -> None:
        self.accounts = {sf_id: {"Id": sf_id, "Name": f"Acme {k}"} for k, sf_id in SF_ACC.items()}
        self.contracts = {c: {"Id": c, "StartDate": "2026-01-01", "ContractTerm": 12, "EndDate": "2026-12-31"}
                          for c in SF_CONTRACT.values()}
        self.patches: list[tuple[str, str, dict[str, Any]]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import m3sh.crm.salesforce as sf_mod

        def read(table: dict[str, dict[str, Any]]) -> Any:
            return lambda source, ids, fields: {i: (dict(table[i]), "2026-10-01T00:00:00.000+0000")
                                                for i in ids if i in table}

        def update(sobject: str, table: dict[str, dict[str, Any]]) -> Any:
            def go(source: Any, updates: dict[str, dict[str, Any]]) -> dict[str, str]:
                for rid, fields in updates.items():
                    self.patches.append((sobject, rid, dict(fields)))
                    table[rid].update(fields)
                    if "ContractTerm" in fields:  # what Salesforce computes
                        table[rid]["EndDate"] = salesforce_contract_end(
                            dt.date.fromisoformat(table[rid]["StartDate"]), int(fields["ContractTerm"])).isoformat()
                return {}
            return go

        monkeypatch.setattr(sf_mod, "read_accounts_salesforce", read(self.accounts))
        monkeypatch.setattr(sf_mod, "read_contracts_salesforce", read(self.contracts))
        monkeypatch.setattr(sf_mod, "update_accounts_salesforce", update("Account", self.accounts))
        monkeypatch.setattr(sf_mod, "update_contracts_salesforce", update("Contract", self.contracts))


@pytest.fixture
def systems(monkeypatch: pytest.MonkeyPatch) -> tuple[_M3ter, _Salesforce, Any, Any]:
    from m3sh.config import CrmSource, CrmSyncConfig, FieldOwnership, M3shConfig

    sf = _Salesforce()
    sf.install(monkeypatch)
    source = CrmSource(name="salesforce", type="salesforce", conn_id="sf", account_fields={"name": "Name"})
    cfg = M3shConfig(crm=CrmSyncConfig(sources=[source], ownership=FieldOwnership(
        fields={"name": "m3ter_wins"}, contract_fields={"end_date": "m3ter_wins"})))
    return _M3ter(), sf, cfg, source


def _to_crm(systems: tuple[_M3ter, _Salesforce, Any, Any], storage: Any, run: str, **kw: Any) -> dict[str, Any]:
    from m3sh.crm.outbound import to_crm

    m3ter, _, cfg, source = systems
    dry_run = bool(kw.pop("dry_run", False))
    result = to_crm(m3ter, cfg, source, storage, dag_id="m3sh_crm_sync", run_id=run,  # type: ignore[arg-type]
                    dry_run=dry_run, **kw)
    return dict(storage.get_json(result["report_key"]))


def test_an_end_date_extended_in_m3ter_reaches_the_salesforce_contract_once(systems: Any) -> None:
    from tests.unit.test_invoice_operators import MemoryStorage

    m3ter, sf, _, _ = systems
    storage = MemoryStorage()
    first = _to_crm(systems, storage, "r1")
    assert (first["counts"]["crm_writes"], first["counts"]["candidates"]) == (0, 4)  # 2 Accounts + 2 Contracts
    m3ter.contracts["A"]["endDate"] = "2027-12-31"  # renewed for a year in m3ter

    dry = _to_crm(systems, storage, "r2", dry_run=True)
    assert dry["writes"] == [{"record": "800A", "object": "Contract", "account": "a", "contract": "a-c20260101",
                              "fields": {"EndDate": {"before": "2026-12-31", "after": "2027-12-31"}}}]
    assert sf.patches == []

    run = _to_crm(systems, storage, "r3")
    assert (run["counts"]["crm_writes"], run["counts"]["candidates"]) == (1, 1)  # fingerprint: only 800A
    assert sf.patches == [("Contract", "800A", {"ContractTerm": 24})]
    assert sf.contracts["800A"]["EndDate"] == "2027-12-31"
    assert _to_crm(systems, storage, "r4")["counts"]["candidates"] == 0
    assert _to_crm(systems, storage, "r5", full_resync=True)["counts"]["crm_writes"] == 0
    assert len(sf.patches) == 1


def test_an_end_date_salesforce_cannot_compute_fails_that_record_and_keeps_its_state(systems: Any) -> None:
    from tests.unit.test_invoice_operators import MemoryStorage

    m3ter, sf, _, _ = systems
    storage = MemoryStorage()
    _to_crm(systems, storage, "r1")
    m3ter.contracts["B"]["endDate"] = "2027-03-15"
    run = _to_crm(systems, storage, "r2")
    [error] = run["errors"]
    assert error["record"] == "800B"
    assert "Contract 800B: m3ter's end date 2027-03-15 cannot be written" in error["detail"]
    assert sf.patches == []
    assert _to_crm(systems, storage, "r3")["counts"]["candidates"] == 1  # compared again next run


def test_a_backfill_re_applies_exactly_the_records_m3ter_changed_in_its_window(systems: Any) -> None:
    from tests.unit.test_invoice_operators import MemoryStorage

    m3ter, sf, _, _ = systems
    storage = MemoryStorage()
    _to_crm(systems, storage, "r1")
    # Both CRMs hold m3ter's values and the fingerprints are current; then the CRM drifts on both
    # records (changes the incremental run would not see without a CRM extract).
    sf.accounts["001A"]["Name"] = sf.accounts["001B"]["Name"] = "Edited In Salesforce"
    sf.contracts["800A"]["ContractTerm"], sf.contracts["800A"]["EndDate"] = 6, "2026-06-30"
    sf.contracts["800B"]["ContractTerm"], sf.contracts["800B"]["EndDate"] = 6, "2026-06-30"
    window = (dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, 11, tzinfo=dt.UTC))
    m3ter.accounts["A"]["dtLastModified"] = "2026-11-01T10:15:00Z"  # account A changed in the window
    m3ter.contracts["B"]["dtLastModified"] = "2026-11-01T10:45:00Z"  # contract B changed in the window
    m3ter.contracts["A"]["dtLastModified"] = "2026-11-01T11:00:00Z"  # after it: not this window's

    run = _to_crm(systems, storage, "backfill", window=window)
    assert run["counts"]["candidates"] == 2
    assert sorted((o, r) for o, r, _ in sf.patches) == [("Account", "001A"), ("Contract", "800B")]
    assert sf.accounts["001A"]["Name"] == "Acme A" and sf.contracts["800B"]["EndDate"] == "2026-12-31"
    assert sf.accounts["001B"]["Name"] == "Edited In Salesforce"  # not changed in m3ter in the window
    # the same window again writes nothing; an empty window selects nothing
    assert _to_crm(systems, storage, "again", window=window)["counts"]["crm_writes"] == 0
    empty = (dt.datetime(2026, 10, 2, tzinfo=dt.UTC), dt.datetime(2026, 10, 3, tzinfo=dt.UTC))
    assert _to_crm(systems, storage, "empty", window=empty)["counts"]["candidates"] == 0
