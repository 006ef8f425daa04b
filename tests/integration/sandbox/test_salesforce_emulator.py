"""The Salesforce emulator, judged by the official client: Airflow's SalesforceHook + simple-salesforce.

Everything goes through ``m3sh.hooks.salesforce.salesforce_hook()`` (the unmodified provider hook
with a redirecting requests session), so a passing test means the real client accepted the wire
format: SOAP login, query paging, describe, CRUD/upsert status codes and the error array.
"""

# SOQL in these tests is built from fixed test values, not user input.
# ruff: noqa: S608

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import requests
from simple_salesforce import exceptions as sf_exc

from m3sh.hooks.salesforce import salesforce_hook
from m3sh.sandbox import credentials as cred
from m3sh.sandbox.seed import PLANS, demo_company

pytestmark = pytest.mark.sandbox


@pytest.fixture
def sb(fresh_sandbox: Any) -> Any:
    return fresh_sandbox


@pytest.fixture
def hook(sb: Any) -> Any:
    return salesforce_hook()


@pytest.fixture
def sf(hook: Any) -> Any:
    return hook.get_conn()


def _parse_ts(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")


def _error_code(exc: sf_exc.SalesforceError) -> str:
    return str(exc.content[0]["errorCode"])


# ---------------------------------------------------------------------------------- auth
def test_soap_login_gives_instance_and_test_connection_passes(hook: Any, sb: Any) -> None:
    assert hook.test_connection() == (True, "Connection successfully tested")
    sf = hook.get_conn()
    assert sf.sf_instance == "northwind.my.salesforce.com"
    assert sf.session_id.startswith("00D")
    # Sforce-Limit-Info is parsed by the client into api_usage (describe above counted too)
    sf.query("SELECT Id FROM Product2")
    assert sf.api_usage["api-usage"].total == 15000
    assert sf.api_usage["api-usage"].used == 2
    assert sb.state("salesforce")["sessions"] == 1


@pytest.mark.parametrize("field", ["password", "security_token", "login"])
def test_wrong_credentials_are_rejected_as_invalid_login(sb: Any, monkeypatch: pytest.MonkeyPatch,
                                                        field: str) -> None:
    conn = {"conn_type": "salesforce", "login": cred.SALESFORCE_USERNAME, "password": cred.SALESFORCE_PASSWORD,
            "extra": {"security_token": cred.SALESFORCE_SECURITY_TOKEN, "version": "59.0",
                      "sandbox_hosts": sb.sf_hosts()}}
    if field == "security_token":
        conn["extra"]["security_token"] = "wrong-token"  # type: ignore[index]
    else:
        conn[field] = "wrong-" + str(conn[field])
    monkeypatch.setenv("AIRFLOW_CONN_SF_BAD", json.dumps(conn))
    with pytest.raises(sf_exc.SalesforceAuthenticationFailed) as info:
        salesforce_hook("sf_bad").get_conn()
    assert info.value.code == "INVALID_LOGIN"
    assert salesforce_hook("sf_bad").test_connection()[0] is False
    assert sb.state("salesforce")["sessions"] == 0


def test_login_host_serves_login_only(sb: Any) -> None:
    """Production's shape: REST calls go to the instance the login response names, not the login host."""
    r = requests.get(f"{sb.url('salesforce')}/services/data/v59.0/query/", params={"q": "SELECT Id FROM Account"},
                     timeout=10)
    assert r.status_code == 404 and r.json()[0]["errorCode"] == "NOT_FOUND"
    assert "serverUrl" in r.json()[0]["message"]


def test_rest_calls_need_a_session(sb: Any) -> None:
    r = requests.get(f"{sb.url('salesforce_instance')}/services/data/v59.0/query/",
                     params={"q": "SELECT Id FROM Account"}, headers={"Authorization": "Bearer 00Dforged!token"},
                     timeout=10)
    assert r.status_code == 401
    assert r.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID", "fields": []}]


def test_expired_session_is_renewed_transparently_by_the_client(sf: Any, sb: Any) -> None:
    first = sf.session_id
    sb.admin("salesforce", "expire_sessions", "POST")
    assert sf.query("SELECT COUNT() FROM Product2")["totalSize"] == len(PLANS)
    assert sf.session_id != first


def test_daily_api_limit_refuses_with_403(sf: Any, sb: Any) -> None:
    sf.query("SELECT Id FROM Product2")
    used = sf.api_usage["api-usage"].used
    sb.admin("salesforce", "daily_limit", "POST", max=used + 2)
    sf.query("SELECT Id FROM Product2")
    sf.query("SELECT Id FROM Product2")
    assert sf.api_usage["api-usage"].used == used + 2
    with pytest.raises(sf_exc.SalesforceRefusedRequest) as info:
        sf.query("SELECT Id FROM Product2")
    assert _error_code(info.value) == "REQUEST_LIMIT_EXCEEDED"
    # switching documented limits off lifts it (sandbox convenience for demos)
    sb.admin("salesforce", "limits", "POST", enabled=False)
    assert sf.query("SELECT Id FROM Product2")["totalSize"] == len(PLANS)


def test_limits_resource(sf: Any) -> None:
    limits = sf.limits()
    assert limits["DailyApiRequests"]["Max"] == 15000
    assert 0 < limits["DailyApiRequests"]["Remaining"] < 15000


# ------------------------------------------------------------------------------- queries
def test_make_query_follows_next_records_url_across_pages(hook: Any, sb: Any) -> None:
    sb.admin("salesforce", "insert", "POST", sobject="Account",
             records=[{"Name": f"Bulk {i:03d}"} for i in range(250)])
    n_accounts = len(demo_company().by_crm("salesforce")) + 250
    result = hook.make_query("SELECT Id, Name FROM Account ORDER BY Name, Id",
                             query_params={"headers": {"Sforce-Query-Options": "batchSize=200"}})
    assert result["totalSize"] == n_accounts
    ids = [r["Id"] for r in result["records"]]
    assert len(set(ids)) == n_accounts
    names = [r["Name"].lower() for r in result["records"]]
    assert names == sorted(names)
    more = [e for e in sb.stats("salesforce")["recent"] if "/query/01g" in e["path"]]
    assert len(more) == 2  # 200 + 200 + rest: two follow-up pages
    assert all(e["status"] == 200 for e in more)


def test_query_page_shape_and_default_batch(sf: Any) -> None:
    first = sf.query("SELECT Id FROM Account")
    assert first["done"] is True and "nextRecordsUrl" not in first
    assert first["totalSize"] == len(demo_company().by_crm("salesforce"))
    rec = first["records"][0]
    assert rec["attributes"] == {"type": "Account", "url": f"/services/data/v59.0/sobjects/Account/{rec['Id']}"}
    page = sf.query("SELECT Id FROM Account", headers={"Sforce-Query-Options": "batchSize=200"})
    assert page["done"] is True  # fewer than 200 demo accounts
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.query_more("01gDOESNOTEXIST00-200", identifier_is_url=False)
    assert _error_code(info.value) == "INVALID_QUERY_LOCATOR"


def test_soql_filters_ordering_limit_and_relationships(sf: Any) -> None:
    customers = demo_company().by_crm("salesforce")
    eur = [c for c in customers if c.currency == "EUR"]
    r = sf.query("SELECT Id FROM Account WHERE CurrencyIsoCode = 'EUR'")
    assert {x["Id"] for x in r["records"]} == {c.salesforce_id for c in eur}
    r = sf.query("SELECT COUNT() FROM Account WHERE CurrencyIsoCode IN ('EUR', 'GBP') AND BillingCountry != 'US'")
    assert r["totalSize"] == len(eur)
    r = sf.query("SELECT COUNT() FROM Account WHERE NOT (CurrencyIsoCode = 'eur')")  # text compare ignores case
    assert r["totalSize"] == len(customers) - len(eur)
    with_po = [c for c in customers if c.po_number]
    r = sf.query("SELECT COUNT() FROM Opportunity WHERE PO_Number__c != null AND StageName = 'Closed Won'")
    assert r["totalSize"] == len(with_po)
    r = sf.query("SELECT Name FROM Account WHERE Name LIKE 'acme%' ORDER BY Name DESC LIMIT 2 OFFSET 1")
    acme = sorted((c.name for c in customers if c.name.lower().startswith("acme")), key=str.lower, reverse=True)
    assert [x["Name"] for x in r["records"]] == acme[1:3]
    # a relationship path in SELECT and WHERE; nested the way the REST API nests it
    r = sf.query("SELECT Id, ProductCode, Opportunity.Account.Name, Opportunity.PO_Number__c "
                 "FROM OpportunityLineItem WHERE Product2.ProductCode LIKE '%\\_eur'")
    assert r["totalSize"] == len(eur)
    names = {x["Opportunity"]["Account"]["Name"] for x in r["records"]}
    assert names == {c.name for c in eur}
    assert all(x["ProductCode"].endswith("_eur") for x in r["records"])
    assert r["records"][0]["Opportunity"]["attributes"]["type"] == "Opportunity"
    r = sf.query("SELECT AccountId, Account.Owner.Name FROM Contract WHERE Status = 'Activated' "
                 "AND (EndDate < TODAY OR EndDate = NEXT_N_DAYS:29)")
    today = dt.datetime.now(dt.UTC).date()
    expected = {c.salesforce_id for c in customers
                if c.contract_end < today or today < c.contract_end <= today + dt.timedelta(days=29)}
    assert {x["AccountId"] for x in r["records"]} == expected
    owners = {c.salesforce_id: c.owner for c in customers}
    assert all(x["Account"]["Owner"]["Name"] == owners[x["AccountId"]] for x in r["records"])


def test_datetime_and_date_literals(sf: Any) -> None:
    customers = demo_company().by_crm("salesforce")
    stamps = sorted({c.modified_at for c in customers})
    cut = stamps[len(stamps) // 2]
    lit = cut.strftime("%Y-%m-%dT%H:%M:%SZ")
    r = sf.query(f"SELECT COUNT() FROM Account WHERE SystemModstamp >= {lit}")
    assert r["totalSize"] == sum(1 for c in customers if c.modified_at >= cut)
    alt = cut.strftime("%Y-%m-%dT%H:%M:%S+0000")
    assert sf.query(f"SELECT COUNT() FROM Account WHERE SystemModstamp < {alt}")["totalSize"] == sum(
        1 for c in customers if c.modified_at < cut)
    day = sorted(c.contract_start for c in customers)[10]
    r = sf.query(f"SELECT COUNT() FROM Contract WHERE StartDate <= {day.isoformat()}")
    assert r["totalSize"] == sum(1 for c in customers if c.contract_start <= day)


@pytest.mark.parametrize(("soql", "code"), [
    ("SELECT Id FROM", "MALFORMED_QUERY"),
    ("SELECT Id FROM Account WHERE", "MALFORMED_QUERY"),
    ("SELEC Id FROM Account", "MALFORMED_QUERY"),
    ("SELECT Id FROM Account WHERE Name = 'a' AND Name = 'b' OR Name = 'c'", "MALFORMED_QUERY"),
    ("SELECT Id FROM Account LIMIT x", "MALFORMED_QUERY"),
    ("SELECT Id, (SELECT Id FROM Contacts) FROM Account", "MALFORMED_QUERY"),
    ("SELECT Id FROM Accountz", "INVALID_TYPE"),
    ("SELECT Id, Nonexistent__c FROM Account", "INVALID_FIELD"),
    ("SELECT Id FROM Account ORDER BY Bogus", "INVALID_FIELD"),
    ("SELECT Id, Bogus__r.Name FROM Invoice__c", "INVALID_FIELD"),
    ("SELECT Id FROM Account WHERE SystemModstamp > '2026-01-01T00:00:00Z'", "INVALID_QUERY_FILTER_OPERATOR"),
    ("SELECT Id FROM Contract WHERE StartDate > 2026-01-01T00:00:00Z", "INVALID_QUERY_FILTER_OPERATOR"),
    ("SELECT Id FROM Opportunity WHERE Amount = '5'", "INVALID_QUERY_FILTER_OPERATOR"),
])
def test_invalid_soql_is_a_malformed_request(hook: Any, soql: str, code: str) -> None:
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        hook.make_query(soql)
    assert info.value.status == 400
    assert _error_code(info.value) == code


# ----------------------------------------------------------------------- describe, CRUD
def test_describe_and_available_fields(hook: Any, sf: Any) -> None:
    fields = hook.get_available_fields("Account")
    for name in ("Id", "Name", "Website", "Billing_Email__c", "M3ter_Account_Id__c", "SystemModstamp"):
        assert name in fields
    desc = hook.describe_object("Invoice__c")
    assert desc["keyPrefix"] == "a0X" and desc["custom"] is True
    by_name = {f["name"]: f for f in desc["fields"]}
    assert by_name["M3ter_Bill_Id__c"]["externalId"] is True
    assert by_name["Account__c"]["type"] == "reference"
    assert by_name["Account__c"]["referenceTo"] == ["Account"]
    assert by_name["Invoice_Date__c"]["type"] == "date"
    assert by_name["Amount__c"]["type"] == "currency"
    assert by_name["SystemModstamp"]["updateable"] is False
    names = {o["name"] for o in sf.describe()["sobjects"]}
    assert {"Account", "Contract", "Opportunity", "OpportunityLineItem", "Product2", "Invoice__c"} <= names
    with pytest.raises(sf_exc.SalesforceResourceNotFound):
        hook.describe_object("NoSuchThing__c")


def test_crud_round_trip_bumps_system_modstamp(sf: Any, sb: Any) -> None:
    created = sf.Account.create({"Name": "Zeta Corp", "Website": "zeta.example", "CurrencyIsoCode": "USD"})
    assert created["success"] is True and created["errors"] == []
    acc_id = created["id"]
    assert acc_id.startswith("001") and len(acc_id) == 18
    rec = sf.Account.get(acc_id)
    assert rec["Name"] == "Zeta Corp" and rec["attributes"]["type"] == "Account"
    before = _parse_ts(rec["SystemModstamp"])

    assert sf.Account.update(acc_id, {"Billing_Email__c": "ap@zeta.example"}) == 204
    after = sf.Account.get(acc_id)
    assert after["Billing_Email__c"] == "ap@zeta.example"
    assert _parse_ts(after["SystemModstamp"]) >= before
    assert after["LastModifiedDate"] == after["SystemModstamp"]

    assert sf.Account.delete(acc_id) == 204
    with pytest.raises(sf_exc.SalesforceResourceNotFound):
        sf.Account.get(acc_id)
    assert sf.query(f"SELECT COUNT() FROM Account WHERE Id = '{acc_id}'")["totalSize"] == 0
    deleted = sf.query_all(f"SELECT Id, IsDeleted FROM Account WHERE Id = '{acc_id}'", include_deleted=True)
    assert deleted["records"][0]["IsDeleted"] is True
    rest_writes = [(e["method"], e["status"]) for e in sb.stats("salesforce")["recent"]
                   if e["path"].startswith("/services/data/") and e["method"] != "GET"]
    assert rest_writes == [("POST", 201), ("PATCH", 204), ("DELETE", 204)]


def test_writes_are_validated(sf: Any) -> None:
    acc_id = demo_company().by_crm("salesforce")[0].salesforce_id
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.Account.update(acc_id, {"Not_A_Field__c": 1})
    assert _error_code(info.value) == "INVALID_FIELD"
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.Account.update(acc_id, {"SystemModstamp": "2020-01-01T00:00:00Z"})
    assert _error_code(info.value) == "INVALID_FIELD_FOR_INSERT_UPDATE"
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.Opportunity.create({"Name": "No stage"})
    assert _error_code(info.value) == "REQUIRED_FIELD_MISSING"
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.Contract.create({"AccountId": "006000000000000AAA"})
    assert _error_code(info.value) == "FIELD_INTEGRITY_EXCEPTION"
    with pytest.raises(sf_exc.SalesforceResourceNotFound):
        sf.Account.update("001000000000000AAA", {"Name": "x"})


def test_contract_end_date_is_computed_from_start_date_and_term(sf: Any) -> None:
    """The object reference: Contract.EndDate is read-only, calculated from StartDate and
    ContractTerm; the day less is Salesforce Help 000384288's example (March 1 + 5 -> July 31)."""
    acc_id = demo_company().by_crm("salesforce")[0].salesforce_id
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.Contract.create({"AccountId": acc_id, "StartDate": "2025-03-01", "EndDate": "2025-08-30"})
    assert _error_code(info.value) == "INVALID_FIELD_FOR_INSERT_UPDATE"
    cid = sf.Contract.create({"AccountId": acc_id, "StartDate": "2025-03-01", "ContractTerm": 5})["id"]
    assert sf.Contract.get(cid)["EndDate"] == "2025-07-31"
    sf.Contract.update(cid, {"ContractTerm": 12})
    assert sf.Contract.get(cid)["EndDate"] == "2026-02-28"
    sf.Contract.update(cid, {"StartDate": "2024-01-31", "ContractTerm": 1})  # Jan 31 + 1 month: Feb 29
    assert sf.Contract.get(cid)["EndDate"] == "2024-02-28"
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.Contract.update(cid, {"EndDate": "2026-12-31"})
    assert _error_code(info.value) == "INVALID_FIELD_FOR_INSERT_UPDATE"
    described = {f["name"]: f for f in sf.Contract.describe()["fields"]}
    assert (described["EndDate"]["createable"], described["EndDate"]["updateable"]) == (False, False)
    assert described["ContractTerm"]["updateable"] and described["StartDate"]["updateable"]


def test_field_history_rows_record_each_tracked_change_and_are_read_only(sf: Any) -> None:
    """Field History Tracking as the object reference describes it: a row per changed tracked field
    per save (Field, OldValue, NewValue, CreatedDate, CreatedById = the writing user), a "created"
    row on insert, nothing for an unchanged value or an untracked field; OpportunityFieldHistory and
    Invoice__History (ParentId) likewise; queryable, not writable, OldValue/NewValue not filterable."""
    from m3sh.sandbox.salesforce.auth import USER_ID

    acc_id = demo_company().by_crm("salesforce")[0].salesforce_id
    name = sf.Account.get(acc_id)["Name"]
    sf.Account.update(acc_id, {"Name": "History One", "M3ter_Plan__c": "growth_usd", "Phone": "555"})
    sf.Account.update(acc_id, {"Name": "History One"})  # unchanged: no row
    sf.Account.update(acc_id, {"Name": "History Two"})
    rows = sf.query_all("SELECT Field, OldValue, NewValue, CreatedDate, CreatedById, AccountId FROM AccountHistory "
                        f"WHERE AccountId = '{acc_id}' ORDER BY CreatedDate, Field")["records"]
    assert [(r["Field"], r["OldValue"], r["NewValue"]) for r in rows] == [
        ("M3ter_Plan__c", None, "growth_usd"), ("Name", name, "History One"), ("Name", "History One", "History Two")]
    assert {r["CreatedById"] for r in rows} == {USER_ID} and {r["AccountId"] for r in rows} == {acc_id}
    named = sf.query(f"SELECT NewValue FROM AccountHistory WHERE AccountId = '{acc_id}' AND Field = 'Name'")
    assert named["totalSize"] == 2

    opp = sf.Opportunity.create({"Name": "H", "StageName": "Prospecting", "CloseDate": "2026-01-01"})["id"]
    sf.Opportunity.update(opp, {"StageName": "Closed Won"})
    opp_rows = sf.query(f"SELECT Field, NewValue FROM OpportunityFieldHistory WHERE OpportunityId = '{opp}'")
    assert [(r["Field"], r["NewValue"]) for r in opp_rows["records"]] == [
        ("created", None), ("StageName", "Closed Won")]
    sf.Invoice__c.upsert("M3ter_Bill_Id__c/bill-h", {"Account__c": acc_id, "Status__c": "Posted"})
    sf.Invoice__c.upsert("M3ter_Bill_Id__c/bill-h", {"Status__c": "Paid", "Amount_Remaining__c": 0})
    # (text sorts fold case, so "created" sorts between the two)
    inv_rows = sf.query("SELECT ParentId, Field, OldValue, NewValue FROM Invoice__History ORDER BY Field")["records"]
    assert [(r["Field"], r["OldValue"], r["NewValue"]) for r in inv_rows] == [
        ("Amount_Remaining__c", None, 0), ("created", None, None), ("Status__c", "Posted", "Paid")]

    described = sf.AccountHistory.describe()
    fields = {f["name"]: f for f in described["fields"]}
    assert not described["createable"] and not fields["NewValue"]["filterable"] and fields["Field"]["filterable"]
    assert "Name" in {p["value"] for p in fields["Field"]["picklistValues"]}
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.AccountHistory.create({"AccountId": acc_id, "Field": "Name"})
    assert _error_code(info.value) == "INVALID_TYPE_FOR_OPERATION"
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.query("SELECT Id FROM AccountHistory WHERE NewValue = 'History Two'")
    assert _error_code(info.value) == "INVALID_FIELD"


def test_upsert_by_external_id_is_idempotent(sf: Any, sb: Any) -> None:
    acc_id = demo_company().by_crm("salesforce")[0].salesforce_id
    body = {"Account__c": acc_id, "Amount__c": 120.5, "Currency__c": "USD", "Status__c": "Posted",
            "Invoice_Date__c": "2026-01-31"}
    assert sf.Invoice__c.upsert("M3ter_Bill_Id__c/bill-xyz", body) == 201
    assert sf.Invoice__c.upsert("M3ter_Bill_Id__c/bill-xyz", {**body, "Amount__c": 130.0}) == 200
    invoices = sb.state("salesforce")["objects"]["Invoice__c"]
    assert len(invoices) == 1
    inv = invoices[0]
    assert inv["M3ter_Bill_Id__c"] == "bill-xyz" and inv["Amount__c"] == 130.0
    assert inv["Id"].startswith("a0X")
    got = sf.Invoice__c.get_by_custom_id("M3ter_Bill_Id__c", "bill-xyz")
    assert got["Id"] == inv["Id"]
    r = sf.query("SELECT Name, Account__r.Name FROM Invoice__c WHERE M3ter_Bill_Id__c = 'bill-xyz'")
    assert r["records"][0]["Account__r"]["Name"] == demo_company().by_crm("salesforce")[0].name
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.Invoice__c.upsert("Amount__c/5", {"Currency__c": "USD"})  # not an external id field
    assert _error_code(info.value) == "INVALID_FIELD"


def test_replication_updated_and_deleted_resources(sf: Any, sb: Any) -> None:
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(days=2)
    customers = demo_company().by_crm("salesforce")
    floor = start.replace(second=0, microsecond=0)
    expected = {c.salesforce_id for c in customers if c.modified_at >= floor}
    assert set(sf.Account.updated(start, now)["ids"]) == expected
    gone = customers[0].salesforce_id
    sf.Account.delete(gone)
    five_min_ago = (now - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    sb.admin("salesforce", "set_fields", "POST", sobject="Account", id=gone, fields={"SystemModstamp": five_min_ago})
    deleted = sf.Account.deleted(now - dt.timedelta(hours=1), now)
    assert [d["id"] for d in deleted["deletedRecords"]] == [gone]
    assert gone not in sf.Account.updated(now - dt.timedelta(hours=1), now)["ids"]
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.Account.updated(now - dt.timedelta(days=40), now)
    assert _error_code(info.value) == "INVALID_REPLICATION_DATE"


# ------------------------------------------------------------------------------ seed
def test_demo_seed_matches_the_demo_company(sf: Any) -> None:
    customers = {c.salesforce_id: c for c in demo_company().by_crm("salesforce")}
    accounts = sf.query_all("SELECT Id, Name, Website, Billing_Email__c, BillingCountry, CurrencyIsoCode, "
                            "Owner_Name__c, SystemModstamp FROM Account")["records"]
    assert {a["Id"] for a in accounts} == set(customers)
    for a in accounts:
        c = customers[a["Id"]]
        assert (a["Name"], a["Website"], a["Billing_Email__c"], a["Owner_Name__c"]) == (
            c.name, c.domain, c.email, c.owner)
        assert (a["BillingCountry"], a["CurrencyIsoCode"]) == (c.country, c.currency)
        assert _parse_ts(a["SystemModstamp"]) == c.modified_at
    contracts = sf.query_all("SELECT AccountId, StartDate, EndDate, Status FROM Contract")["records"]
    assert len(contracts) == len(customers)
    for k in contracts:
        c = customers[k["AccountId"]]
        assert (k["StartDate"], k["EndDate"], k["Status"]) == (
            c.contract_start.isoformat(), c.contract_end.isoformat(), "Activated")
    lines = sf.query_all("SELECT ProductCode, Opportunity.AccountId, Opportunity.StageName, "
                         "Opportunity.PO_Number__c FROM OpportunityLineItem")["records"]
    assert len(lines) == len(customers)
    for li in lines:
        c = customers[li["Opportunity"]["AccountId"]]
        assert li["ProductCode"] == c.plan_code
        assert li["Opportunity"]["StageName"] == "Closed Won"
        assert li["Opportunity"]["PO_Number__c"] == c.po_number
    products = sf.query_all("SELECT ProductCode FROM Product2")["records"]
    assert sorted(p["ProductCode"] for p in products) == sorted(PLANS)


def test_injected_faults_use_salesforce_error_shape(sf: Any, sb: Any) -> None:
    sb.faults("salesforce", fail_next=1, error_status=503, path_regex="/query")
    with pytest.raises(sf_exc.SalesforceGeneralError) as info:
        sf.query("SELECT Id FROM Product2")
    assert info.value.status == 503
    assert _error_code(info.value) == "SERVER_UNAVAILABLE"
    assert sf.query("SELECT COUNT() FROM Product2")["totalSize"] == len(PLANS)


def test_a_second_org_has_its_own_user_instance_host_and_records(sb: Any) -> None:
    """Two orgs, as after an acquisition: each integration user logs in at the same login host and is
    sent to its own org's instance; records, ids and sessions stay in their org."""
    sb.admin("salesforce", "insert", "POST", sobject="Account", org="acme",
             records=[{"Name": "Acme Only", "Website": "acme-only.example"}])
    acme = salesforce_hook("salesforce_acme").get_conn()
    assert acme.sf_instance == cred.SALESFORCE2_INSTANCE_HOST
    assert [r["Name"] for r in acme.query_all("SELECT Name FROM Account")["records"]] == ["Acme Only"]
    northwind = salesforce_hook().get_conn()
    assert northwind.sf_instance == cred.SALESFORCE_INSTANCE_HOST
    names = {r["Name"] for r in northwind.query_all("SELECT Name FROM Account")["records"]}
    assert names and "Acme Only" not in names
    # a session of one org is no session at the other's instance
    hosts = sb.endpoints.connections()["salesforce_acme"]["extra"]["sandbox_hosts"]
    r = requests.get(f"{hosts[cred.SALESFORCE2_INSTANCE_HOST]}/services/data/v62.0/limits",
                     headers={"Authorization": f"Bearer {northwind.session_id}"}, timeout=30)
    assert r.status_code == 401 and r.json()[0]["errorCode"] == "INVALID_SESSION_ID"
    state = sb.state("salesforce")
    assert [a["Name"] for a in state["orgs"]["acme"]["objects"]["Account"]] == ["Acme Only"]
    assert "Acme Only" not in {a["Name"] for a in state["objects"]["Account"]}


# ------------------------------------------------------------------------ strictness (issue 20)
def _refusal(exc: sf_exc.SalesforceError) -> dict[str, Any]:
    """The single error of Salesforce's error list, checked for its shape."""
    assert isinstance(exc.content, list) and len(exc.content) == 1
    error: dict[str, Any] = exc.content[0]
    assert set(error) == {"message", "errorCode", "fields"}
    return error


@pytest.mark.parametrize(("soql", "named"), [
    ("SELECT MAX(Amount) FROM Opportunity", "function MAX()"),
    ("SELECT Id FROM Account WHERE CALENDAR_YEAR(CreatedDate) = 2026", "function CALENDAR_YEAR()"),
    ("SELECT FIELDS(STANDARD) FROM Account LIMIT 200", "function FIELDS()"),
    ("SELECT Id, toLabel(Industry) FROM Account", "function toLabel()"),
    ("SELECT Id FROM Account ORDER BY FORMAT(Name)", "function FORMAT()"),
    ("SELECT TYPEOF Owner WHEN User THEN Name END FROM Account", "TYPEOF"),
    ("SELECT a.Id FROM Account a", "alias of the object in FROM ('a')"),
    ("SELECT Id FROM Account USING SCOPE mine", "USING SCOPE"),
    ("SELECT Id FROM Account LIMIT 5 FOR VIEW", "FOR (FOR VIEW"),
    ("SELECT Id FROM Account UPDATE TRACKING", "UPDATE (FOR VIEW"),
    ("SELECT Id FROM Contract WHERE EndDate = THIS_YEAR", "date literal THIS_YEAR"),
    ("SELECT Id FROM Contract WHERE EndDate = LAST_N_MONTHS:3", "date literal LAST_N_MONTHS:n"),
    ("SELECT Id, Name, id FROM Account", "duplicate field selected: Id"),
    ("SELECT COUNT(Id), COUNT(Name) FROM Account", "more than one aggregate"),
    ("SELECT COUNT(Id) FROM Account ORDER BY Name", "Ordered field must be grouped or aggregated: Name"),
    ("SELECT Id FROM Account GROUP BY Id", "GROUP"),
    ("SELECT Id FROM Account WHERE Id IN (SELECT AccountId FROM Contract)", "semi-join"),
])
def test_soql_the_parser_lacks_is_a_malformed_query_naming_the_token(sf: Any, soql: str, named: str) -> None:
    """Never a silently different answer: each unsupported construct is refused by name."""
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.query(soql)
    assert info.value.status == 400
    error = _refusal(info.value)
    assert error["errorCode"] == "MALFORMED_QUERY"
    assert named in error["message"]
    assert error["message"].startswith(f"\n{soql}\n")  # Salesforce's query-caret-reason form


def test_aggregate_limit_counts_result_rows_not_records(sf: Any) -> None:
    n = len(demo_company().by_crm("salesforce"))
    r = sf.query("SELECT COUNT(Id) FROM Account LIMIT 1")
    assert r["totalSize"] == 1 and r["records"][0]["expr0"] == n
    assert sf.query("SELECT COUNT(Id) n FROM Account LIMIT 1 OFFSET 1")["records"] == []


@pytest.mark.parametrize(("path", "params", "refused"), [
    ("query/", {"q": "SELECT Id FROM Account", "batchSize": "200"}, "batchSize"),
    ("queryAll/", {"q": "SELECT Id FROM Account", "includeDeleted": "true"}, "includeDeleted"),
    ("sobjects/Account/describe", {"ifModifiedSince": "x"}, "ifModifiedSince"),
    ("sobjects/Account/updated", {"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z",
                                  "limit": "5"}, "limit"),
    ("limits", {"verbose": "1"}, "verbose"),
])
def test_query_parameters_a_route_does_not_implement_are_refused(sf: Any, path: str, params: dict[str, str],
                                                                refused: str) -> None:
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.restful(path, params=params)
    assert info.value.status == 400
    error = _refusal(info.value)
    assert error["errorCode"] == "INVALID_OPERATION" and error["fields"] == [refused]
    assert f"Query parameter '{refused}' is not implemented by the m3sh sandbox" in error["message"]


def test_query_all_next_pages_take_the_repeated_q_a_published_tap_sends(sf: Any, sb: Any) -> None:
    """tap-salesforce (REST) re-sends ``params={"q": ...}`` with every nextRecordsUrl of a queryAll;
    the locator picks the page and the repeated ``q`` is ignored. Any other parameter is refused."""
    sb.admin("salesforce", "insert", "POST", sobject="Account",
             records=[{"Name": f"Paged {i:03d}"} for i in range(210)])
    soql = "SELECT Id FROM Account"
    headers = {"Sforce-Query-Options": "batchSize=200"}
    page = sf.restful("queryAll", params={"q": soql}, headers=headers)
    ids = [r["Id"] for r in page["records"]]
    nxt = page["nextRecordsUrl"]
    assert "/queryAll/01g" in nxt
    locator = nxt.rsplit("/", 1)[1]
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.restful(f"queryAll/{locator}", params={"q": soql, "batchSize": "200"})
    assert _refusal(info.value)["fields"] == ["batchSize"]
    rest = sf.restful(f"queryAll/{locator}", params={"q": soql})
    ids += [r["Id"] for r in rest["records"]]
    assert rest["done"] is True and len(ids) == len(set(ids)) == page["totalSize"]


def test_documented_but_unimplemented_parameters_say_so(sf: Any) -> None:
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.restful("query/", params={"explain": "SELECT Id FROM Account"})
    error = _refusal(info.value)
    assert error["fields"] == ["explain"]
    assert "documented by Salesforce but not implemented by the m3sh sandbox" in error["message"]


def test_record_reads_take_fields_by_id_and_by_external_id(sf: Any) -> None:
    acc_id = demo_company().by_crm("salesforce")[0].salesforce_id
    rec = sf.Account.get(acc_id, params={"fields": "Name,Website"})
    assert set(rec) == {"attributes", "Name", "Website"}
    sf.Invoice__c.upsert("M3ter_Bill_Id__c/bill-f", {"Account__c": acc_id, "Amount__c": 1.0})
    got = sf.Invoice__c.get_by_custom_id("M3ter_Bill_Id__c", "bill-f", params={"fields": "Amount__c"})
    assert set(got) == {"attributes", "Amount__c"} and got["Amount__c"] == 1.0
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.Account.get(acc_id, params={"fields": "Name", "expand": "Owner"})
    assert _refusal(info.value)["fields"] == ["expand"]


def test_unknown_fields_in_write_bodies_are_invalid_field(sf: Any) -> None:
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.Account.create({"Name": "Bogus Ltd", "Bogus__c": 1})
    assert info.value.status == 400
    assert _refusal(info.value) == {"message": "No such column 'Bogus__c' on sobject of type Account",
                                    "errorCode": "INVALID_FIELD", "fields": ["Bogus__c"]}
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
        sf.Invoice__c.upsert("M3ter_Bill_Id__c/bill-g", {"Amount": 1.0})
    assert _refusal(info.value)["message"] == "No such column 'Amount' on sobject of type Invoice__c"
    with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:  # documented, not modelled: says so
        sf.Contract.create({"Account": {"M3ter_Account_Id__c": "acc-1"}, "StartDate": "2026-01-01"})
    error = _refusal(info.value)
    assert error["errorCode"] == "INVALID_FIELD" and error["fields"] == ["Account"]
    assert "not implemented by the m3sh sandbox" in error["message"]


@pytest.mark.parametrize(("method", "path"), [("POST", "composite/sobjects"), ("POST", "jobs/ingest"),
                                              ("GET", "search/"), ("GET", "tooling/query/")])
def test_real_resources_the_sandbox_lacks_say_so(sf: Any, method: str, path: str) -> None:
    with pytest.raises(sf_exc.SalesforceResourceNotFound) as info:
        sf.restful(path, method=method)
    error = _refusal(info.value)
    assert error["errorCode"] == "NOT_FOUND"
    resource = path.partition("/")[0]
    assert f"'{resource}' exists in Salesforce but is not implemented by the m3sh sandbox" in error["message"]


@pytest.mark.parametrize("path", ["sobjects/Account/listviews", "sobjects/Account/describe/layouts",
                                  "sobjects/Account/quickActions"])
def test_sobject_sub_resources_the_sandbox_lacks_say_so(sf: Any, path: str) -> None:
    """Not taken for a record id or an external-id field ("does not exist")."""
    with pytest.raises(sf_exc.SalesforceResourceNotFound) as info:
        sf.restful(path)
    assert f"'{path}' exists in Salesforce but is not implemented" in _refusal(info.value)["message"]


def test_malformed_or_non_object_bodies_are_json_parser_errors(sf: Any) -> None:
    for raw in ('{"Name": "Broken', '[{"Name": "A list"}]'):
        with pytest.raises(sf_exc.SalesforceMalformedRequest) as info:
            sf.restful("sobjects/Account", method="POST", data=raw)
        assert info.value.status == 400
        assert _refusal(info.value)["errorCode"] == "JSON_PARSER_ERROR"
    assert sf.query("SELECT COUNT() FROM Account WHERE Name = 'A list'")["totalSize"] == 0
