"""m3sh's Salesforce helper (``salesforce_hook`` + ``SalesforceSync``) against the sandbox emulator."""

# SOQL in these tests is built from fixed test values, not user input.
# ruff: noqa: S608

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import pytest
from airflow.providers.salesforce.hooks.salesforce import SalesforceHook

from m3sh.exceptions import ExternalApiError, RetryableError
from m3sh.hooks.salesforce import (
    API_VERSION,
    SalesforceAuthError,
    SalesforceLimitError,
    SalesforceNotFoundError,
    SalesforceSync,
    SalesforceUnavailableError,
    SalesforceValidationError,
    salesforce_hook,
    soql_datetime,
    soql_literal,
)
from m3sh.sandbox import credentials as cred
from m3sh.sandbox.seed import demo_company

pytestmark = pytest.mark.sandbox

UTC = dt.UTC


@pytest.fixture
def sb(fresh_sandbox: Any) -> Any:
    return fresh_sandbox


@pytest.fixture
def sync(sb: Any) -> SalesforceSync:
    return SalesforceSync()


def _sf_customers() -> list[Any]:
    return demo_company().by_crm("salesforce")


# ------------------------------------------------------------------------------ wiring
def _is_the_provider_hook_with_the_version_pin(hook: SalesforceHook) -> bool:
    """The provider's hook; its one m3sh change is the default API version (``_get_field``)."""
    own = [n for n in vars(type(hook)) if not n.startswith("__")]
    return type(hook).__mro__[1] is SalesforceHook and own == ["_get_field"]


def test_sandbox_extra_routes_the_unmodified_provider_hook(sb: Any) -> None:
    hook = salesforce_hook()
    assert _is_the_provider_hook_with_the_version_pin(hook)
    assert hook.session is not None
    conn = hook.get_conn()
    assert conn.sf_instance == "northwind.my.salesforce.com"
    assert conn.sf_version == API_VERSION  # the sandbox connection names none, as production's


def test_without_sandbox_extra_the_hook_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "salesforce", "login": "someone@example.com", "password": "pw",
            "extra": {"security_token": "tok"}}
    monkeypatch.setenv("AIRFLOW_CONN_SF_REAL", json.dumps(conn))
    hook = salesforce_hook("sf_real")
    assert _is_the_provider_hook_with_the_version_pin(hook)
    assert hook.session is None
    assert hook.conn_id == "sf_real"
    assert hook._get_field({}, "version") == API_VERSION
    assert hook._get_field({"version": "62.0"}, "version") == "62.0"  # a connection's own version wins


# ------------------------------------------------------------------------ incremental
def test_query_modified_returns_exactly_the_seeded_window(sync: SalesforceSync) -> None:
    stamps = sorted({c.modified_at for c in _sf_customers()})
    start, end = stamps[5], stamps[25]  # hour-aligned stamps: boundaries hit real records
    got = list(sync.query_modified("Account", ["Name", "Website"], start, end))
    expected = {c.salesforce_id for c in _sf_customers() if start <= c.modified_at < end}
    assert {r["Id"] for r in got} == expected
    assert len(got) == len(expected)
    assert any(c.modified_at == start for c in _sf_customers())  # start is inclusive ...
    assert all(c.modified_at != end for c in _sf_customers() if c.salesforce_id in expected)  # end is not
    keys = [(r["SystemModstamp"], r["Id"]) for r in got]
    assert keys == sorted(keys)
    assert set(got[0]) == {"Id", "Name", "Website", "SystemModstamp"}  # attributes stripped


def test_query_modified_sees_changes_made_through_the_api(sync: SalesforceSync) -> None:
    t0 = dt.datetime.now(UTC) - dt.timedelta(seconds=1)
    changed = [c.salesforce_id for c in _sf_customers()[:3]]
    for acc_id in changed:
        sync.update_record("Account", acc_id, {"Billing_Email__c": f"ap+{acc_id}@example.com"})
    t1 = dt.datetime.now(UTC) + dt.timedelta(seconds=1)
    got = list(sync.query_modified("Account", ["Billing_Email__c"], t0, t1))
    assert [r["Id"] for r in got] == changed  # ordered by SystemModstamp (write order)
    assert all(r["Billing_Email__c"] == f"ap+{r['Id']}@example.com" for r in got)
    # the previous window no longer contains them; the seeded rest still does
    before = {r["Id"] for r in sync.query_modified("Account", [], t0 - dt.timedelta(days=60), t0)}
    assert before == {c.salesforce_id for c in _sf_customers()} - set(changed)


def test_query_modified_extra_where_and_relationship_fields(sync: SalesforceSync) -> None:
    start, end = dt.datetime(2000, 1, 1, tzinfo=UTC), dt.datetime.now(UTC)
    eur = {c.salesforce_id for c in _sf_customers() if c.currency == "EUR"}
    got = list(sync.query_modified("Contract", ["AccountId", "Account.Name", "EndDate"], start, end,
                                   extra_where=f"CurrencyIsoCode = {soql_literal('EUR')}"))
    assert {r["AccountId"] for r in got} == eur
    assert "attributes" not in got[0]["Account"]
    assert got[0]["Account"]["Name"]


def test_query_modified_can_include_deletions(sync: SalesforceSync) -> None:
    t0 = dt.datetime.now(UTC) - dt.timedelta(seconds=1)
    gone = _sf_customers()[4].salesforce_id
    sync.client.Account.delete(gone)
    t1 = dt.datetime.now(UTC) + dt.timedelta(seconds=1)
    assert list(sync.query_modified("Account", ["IsDeleted"], t0, t1)) == []
    got = list(sync.query_modified("Account", ["IsDeleted"], t0, t1, include_deleted=True))
    assert [(r["Id"], r["IsDeleted"]) for r in got] == [(gone, True)]


def test_query_modified_pages_across_next_records_url(sb: Any) -> None:
    acc_id = _sf_customers()[0].salesforce_id
    t0 = dt.datetime.now(UTC) - dt.timedelta(seconds=1)
    sb.admin("salesforce", "insert", "POST", sobject="Invoice__c",
             records=[{"M3ter_Bill_Id__c": f"bill-{i:04d}", "Account__c": acc_id, "Amount__c": i}
                      for i in range(450)])
    sb.admin("salesforce", "stats", "DELETE")
    sync = SalesforceSync(batch_size=200)
    got = list(sync.query_modified("Invoice__c", ["M3ter_Bill_Id__c"], t0,
                                   dt.datetime.now(UTC) + dt.timedelta(seconds=1)))
    assert sorted(r["M3ter_Bill_Id__c"] for r in got) == [f"bill-{i:04d}" for i in range(450)]
    assert len({r["Id"] for r in got}) == 450
    recent = sb.stats("salesforce")["recent"]
    pages = [e["path"] for e in recent if e["path"].startswith("/services/data/v59.0/query")]
    assert len(pages) == 3  # query + two nextRecordsUrl follow-ups
    assert pages[1].startswith("/services/data/v59.0/query/01g") and pages[1].endswith("-200")


def test_query_modified_rejects_naive_or_empty_windows(sync: SalesforceSync) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        list(sync.query_modified("Account", [], dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2)))
    now = dt.datetime.now(UTC)
    with pytest.raises(ValueError, match="empty window"):
        list(sync.query_modified("Account", [], now, now))
    with pytest.raises(ValueError, match="names"):
        list(sync.query_modified("Account", ["Name FROM Contact --"], now, now + dt.timedelta(hours=1)))


def test_soql_literals() -> None:
    assert soql_literal("O'Brien \\ co") == "'O\\'Brien \\\\ co'"
    assert soql_literal(None) == "null"
    assert soql_literal(True) == "true"
    assert soql_literal(dt.date(2026, 1, 31)) == "2026-01-31"
    aware = dt.datetime(2026, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert soql_datetime(aware) == "2026-01-01T00:00:00Z"


def test_quoted_names_survive_a_round_trip(sync: SalesforceSync) -> None:
    acc_id = _sf_customers()[0].salesforce_id
    name = "O'Brien & Sons"
    sync.update_record("Account", acc_id, {"Name": name})
    got = list(sync.query(f"SELECT Id FROM Account WHERE Name = {soql_literal(name)}"))
    assert [r["Id"] for r in got] == [acc_id]


# ------------------------------------------------------------------------------ writes
def test_update_record_is_visible_in_a_follow_up_query(sync: SalesforceSync, sb: Any) -> None:
    acc_id = _sf_customers()[1].salesforce_id
    sync.update_record("Account", acc_id, {"M3ter_Account_Id__c": "m3-acc-1"})
    got = list(sync.query(f"SELECT Id, M3ter_Account_Id__c FROM Account WHERE Id = {soql_literal(acc_id)}"))
    assert got == [{"Id": acc_id, "M3ter_Account_Id__c": "m3-acc-1"}]
    assert sync.get_record("Account", acc_id)["M3ter_Account_Id__c"] == "m3-acc-1"
    assert sync.get_record("Account", acc_id, ["Name"]) == {"Name": _sf_customers()[1].name}
    patches = [e for e in sb.stats("salesforce")["recent"] if e["method"] == "PATCH"]
    assert len(patches) == 1


def test_upsert_by_external_id_creates_once_then_updates(sync: SalesforceSync, sb: Any) -> None:
    acc_id = _sf_customers()[0].salesforce_id
    bill = "bill/2026-01 #7"  # needs URL quoting in the path
    first = sync.upsert_by_external_id("Invoice__c", "M3ter_Bill_Id__c", bill,
                                       {"Account__c": acc_id, "Amount__c": 10.0, "Status__c": "Posted"})
    second = sync.upsert_by_external_id("Invoice__c", "M3ter_Bill_Id__c", bill, {"Amount__c": 11.0})
    assert first.created is True and second.created is False
    assert first.id == second.id and first.id is not None and first.id.startswith("a0X")
    invoices = sb.state("salesforce")["objects"]["Invoice__c"]
    assert [(i["M3ter_Bill_Id__c"], i["Amount__c"], i["Status__c"]) for i in invoices] == [(bill, 11.0, "Posted")]
    assert sync.create_record("Contact", {"LastName": "Ledger", "AccountId": acc_id}).startswith("003")


# ------------------------------------------------------------------------------ errors
def test_errors_name_the_record_and_salesforce_error_code(sync: SalesforceSync) -> None:
    missing = "001000000000000AAA"
    with pytest.raises(SalesforceNotFoundError) as nf:
        sync.update_record("Account", missing, {"Name": "x"})
    assert nf.value.error_code == "NOT_FOUND" and nf.value.record_id == missing
    assert "Account" in str(nf.value) and missing in str(nf.value) and "NOT_FOUND" in str(nf.value)
    assert isinstance(nf.value, ExternalApiError) and not nf.value.retryable

    acc_id = _sf_customers()[0].salesforce_id
    with pytest.raises(SalesforceValidationError) as bad:
        sync.update_record("Account", acc_id, {"No_Such__c": 1})
    assert bad.value.error_code == "INVALID_FIELD" and acc_id in str(bad.value)

    with pytest.raises(SalesforceNotFoundError):
        sync.get_record("Account", missing)
    with pytest.raises(SalesforceValidationError) as soql:
        list(sync.query("SELECT Id FROM Account WHERE", sobject="Account"))
    assert soql.value.error_code == "MALFORMED_QUERY"
    with pytest.raises(SalesforceValidationError) as dup:
        sync.update_record("Account", _sf_customers()[1].salesforce_id, {"M3ter_Account_Id__c": "same"})
        sync.update_record("Account", _sf_customers()[2].salesforce_id, {"M3ter_Account_Id__c": "same"})
    assert dup.value.error_code == "DUPLICATE_VALUE"


def test_daily_limit_and_server_errors_are_classified(sync: SalesforceSync, sb: Any) -> None:
    list(sync.query("SELECT Id FROM Product2"))  # logs in
    sb.admin("salesforce", "daily_limit", "POST", max=1, used=1)
    with pytest.raises(SalesforceLimitError) as lim:
        sync.update_record("Account", _sf_customers()[0].salesforce_id, {"Name": "x"})
    assert lim.value.error_code == "REQUEST_LIMIT_EXCEEDED" and lim.value.status == 403
    assert not lim.value.retryable
    sb.admin("salesforce", "daily_limit", "POST", max=15000, used=0)
    sb.faults("salesforce", fail_next=1, error_status=500)
    with pytest.raises(SalesforceUnavailableError) as err:
        sync.get_record("Account", _sf_customers()[0].salesforce_id)
    assert isinstance(err.value, RetryableError) and err.value.retryable


def test_bad_credentials_are_an_auth_error(sb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {"conn_type": "salesforce", "login": cred.SALESFORCE_USERNAME, "password": "not-the-password",
            "extra": {"security_token": cred.SALESFORCE_SECURITY_TOKEN, "sandbox_hosts": sb.sf_hosts()}}
    monkeypatch.setenv("AIRFLOW_CONN_SF_WRONG", json.dumps(conn))
    with pytest.raises(SalesforceAuthError) as info:
        list(SalesforceSync(conn_id="sf_wrong").query("SELECT Id FROM Account"))
    assert info.value.error_code == "INVALID_LOGIN"
    assert "not-the-password" not in str(info.value)


def test_no_secret_reaches_logs_or_output(sb: Any, caplog: pytest.LogCaptureFixture,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "requests", "simple_salesforce", "airflow", "m3sh"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    sync = SalesforceSync(batch_size=200)
    hook = sync.hook
    hook.make_query("SELECT Id, Name FROM Account LIMIT 5")
    list(sync.query_modified("Account", ["Name"], dt.datetime(2000, 1, 1, tzinfo=UTC), dt.datetime.now(UTC)))
    sync.update_record("Account", _sf_customers()[0].salesforce_id, {"Name": "Renamed"})
    sb.admin("salesforce", "expire_sessions", "POST")  # forces a re-login mid-run
    sync.upsert_by_external_id("Invoice__c", "M3ter_Bill_Id__c", "b-1", {"Amount__c": 1.0})
    errors = []
    for call in (lambda: sync.update_record("Account", "001000000000000AAA", {"Name": "x"}),
                 lambda: sync.update_record("Account", _sf_customers()[0].salesforce_id, {"Bad__c": 1})):
        try:
            call()
        except ExternalApiError as exc:
            errors.append(str(exc))
    conn = {"conn_type": "salesforce", "login": cred.SALESFORCE_USERNAME, "password": "wrong-pass-x",
            "extra": {"security_token": cred.SALESFORCE_SECURITY_TOKEN, "sandbox_hosts": sb.sf_hosts()}}
    monkeypatch.setenv("AIRFLOW_CONN_SF_WRONG2", json.dumps(conn))
    try:
        list(SalesforceSync(conn_id="sf_wrong2").query("SELECT Id FROM Account"))
    except SalesforceAuthError as exc:
        errors.append(str(exc))
    assert len(errors) == 3
    session_id = hook.get_conn().session_id
    out = capsys.readouterr()
    text = "\n".join([caplog.text, out.out, out.err, *errors])
    assert "/services/data/v59.0/query" in caplog.text  # DEBUG logging really was on
    for secret in (cred.SALESFORCE_PASSWORD, cred.SALESFORCE_SECURITY_TOKEN, session_id, "wrong-pass-x"):
        assert secret not in text
