"""The NetSuite emulator judged by the client real integrations use: requests + requests-oauthlib TBA."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from requests_oauthlib import OAuth1

from m3sh.sandbox.credentials import NETSUITE, NetSuiteCredentials
from m3sh.sandbox.runner import SandboxError
from m3sh.sandbox.seed import NETSUITE_ITEMS

pytestmark = pytest.mark.sandbox

US, EU = NETSUITE["default"], NETSUITE["eu"]


def oauth(creds: NetSuiteCredentials, **kw: Any) -> OAuth1:
    return OAuth1(creds.consumer_key, creds.consumer_secret, creds.token_id, creds.token_secret,
                  realm=creds.account_id, signature_method=kw.pop("signature_method", "HMAC-SHA256"), **kw)


class Client:
    """A thin TBA client, as the Airbyte/jacobsvante integrations build it."""

    def __init__(self, base: str, creds: NetSuiteCredentials, **session_headers: str) -> None:
        self.base = base + "/services/rest"
        self.session = requests.Session()
        self.session.auth = oauth(creds)
        self.session.headers.update(session_headers)

    def req(self, method: str, path: str, **kw: Any) -> requests.Response:
        return self.session.request(method, self.base + path, timeout=10, **kw)

    def create(self, record_type: str, body: dict[str, Any]) -> str:
        r = self.req("POST", f"/record/v1/{record_type}", json=body)
        assert r.status_code == 204, r.text
        assert r.content == b""
        return r.headers["Location"].rsplit("/", 1)[1]

    def suiteql(self, q: str, **params: Any) -> requests.Response:
        return self.req("POST", "/query/v1/suiteql", params=params, json={"q": q},
                        headers={"Prefer": "transient"})


def error_of(r: requests.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) >= {"type", "title", "status", "o:errorDetails"}
    assert body["status"] == r.status_code
    detail: dict[str, Any] = body["o:errorDetails"][0]
    return detail


@pytest.fixture
def ns(fresh_sandbox: Any) -> Iterator[Client]:
    yield Client(fresh_sandbox.url("netsuite"), US)


@pytest.fixture
def ns_eu(fresh_sandbox: Any) -> Client:
    return Client(fresh_sandbox.url("netsuite_eu"), EU)


def new_customer(c: Client, eid: str = "CUST-1", **extra: Any) -> str:
    return c.create("customer", {"companyName": f"Customer {eid}", "externalId": eid, "email": "a@x.example",
                                 **extra})


def invoice_body(customer_id: str, **extra: Any) -> dict[str, Any]:
    return {"entity": {"id": customer_id}, "tranDate": "2030-01-31",
            "item": {"items": [{"item": {"id": NETSUITE_ITEMS["usage"]}, "quantity": 3, "rate": 12.5,
                                "description": "API calls"},
                               {"item": {"id": NETSUITE_ITEMS["standing_charge"]}, "amount": 49}]}, **extra}


# -- authentication ------------------------------------------------------------------------------
def test_signed_requests_pass_and_unsigned_fail(ns: Client, fresh_sandbox: Any) -> None:
    assert ns.req("GET", "/record/v1/subsidiary/1").status_code == 200
    r = requests.get(ns.base + "/record/v1/subsidiary/1", timeout=10)
    assert r.status_code == 401
    assert error_of(r)["o:errorCode"] == "INVALID_LOGIN"


def test_tampered_signature_is_rejected(ns: Client, fresh_sandbox: Any) -> None:
    prepared = ns.session.prepare_request(requests.Request("GET", ns.base + "/record/v1/subsidiary/1"))
    header = prepared.headers["Authorization"]
    header = header.decode() if isinstance(header, bytes) else header
    sig = re.search(r'oauth_signature="([^"]+)"', header)
    assert sig
    forged = sig.group(1)[:-4] + ("AAAA" if not sig.group(1)[:-4].endswith("AAAA") else "BBBB")
    prepared.headers["Authorization"] = header.replace(sig.group(1), forged)
    r = ns.session.send(prepared, timeout=10)
    assert r.status_code == 401
    assert error_of(r)["o:errorCode"] == "INVALID_LOGIN"
    assert fresh_sandbox.state("netsuite")["auth_failures"][-1]["reason"] == "signature mismatch"


def test_signature_covers_query_parameters(ns: Client, fresh_sandbox: Any) -> None:
    prepared = ns.session.prepare_request(
        requests.Request("GET", ns.base + "/record/v1/customer", params={"limit": 5}))
    assert prepared.url is not None
    prepared.url = prepared.url.replace("limit=5", "limit=6")
    assert ns.session.send(prepared, timeout=10).status_code == 401


def test_replayed_nonce_is_rejected(ns: Client, fresh_sandbox: Any) -> None:
    prepared = ns.session.prepare_request(requests.Request("GET", ns.base + "/record/v1/subsidiary/1"))
    assert ns.session.send(prepared, timeout=10).status_code == 200
    r = ns.session.send(prepared, timeout=10)
    assert r.status_code == 401
    assert fresh_sandbox.state("netsuite")["auth_failures"][-1]["reason"] == "nonce already used"


@pytest.mark.parametrize("skew_s", [-600, 600])
def test_stale_or_future_timestamp_is_rejected(ns: Client, fresh_sandbox: Any, skew_s: int) -> None:
    auth = oauth(US, timestamp=str(int(time.time()) + skew_s))
    r = requests.get(ns.base + "/record/v1/subsidiary/1", auth=auth, timeout=10)
    assert r.status_code == 401
    assert "window" in fresh_sandbox.state("netsuite")["auth_failures"][-1]["reason"]


def test_wrong_method_key_or_realm_is_rejected(ns: Client, fresh_sandbox: Any) -> None:
    url = ns.base + "/record/v1/subsidiary/1"
    assert requests.get(url, auth=oauth(US, signature_method="HMAC-SHA1"), timeout=10).status_code == 401
    other_key = NetSuiteCredentials(US.account_id, "not-a-key", US.consumer_secret, US.token_id,
                                    US.token_secret)
    assert requests.get(url, auth=oauth(other_key), timeout=10).status_code == 401
    # US credentials presented for the EU account: the EU account does not know this token.
    crossed = NetSuiteCredentials(EU.account_id, US.consumer_key, US.consumer_secret, US.token_id,
                                  US.token_secret)
    assert requests.get(url, auth=oauth(crossed), timeout=10).status_code == 401


def test_each_account_has_its_own_host(fresh_sandbox: Any) -> None:
    """As ``<account>.suitetalk.api.netsuite.com`` in production, each account has its own host (port):
    a request signed for another account's realm is refused there, whichever host it reached."""
    eu = Client(fresh_sandbox.url("netsuite_eu"), EU)
    r = eu.req("GET", "/record/v1/subsidiary/1")
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "Northwind Cloud EU BV"
    us_at_eu_host = Client(fresh_sandbox.url("netsuite_eu"), US)
    assert us_at_eu_host.req("GET", "/record/v1/subsidiary/1").status_code == 401
    eu_at_us_host = Client(fresh_sandbox.url("netsuite"), EU)
    assert eu_at_us_host.req("GET", "/record/v1/subsidiary/1").status_code == 401
    failures = fresh_sandbox.state("netsuite")["auth_failures"]
    assert any("does not match host account" in f["reason"] for f in failures)


def test_host_header_names_the_account_for_links(fresh_sandbox: Any) -> None:
    """Record links are built from the host the client addressed (NetSuite's own host in production)."""
    eu = Client(fresh_sandbox.url("netsuite_eu"), EU, Host="1234567-eu.suitetalk.api.netsuite.com")
    r = eu.req("GET", "/record/v1/subsidiary/1")
    assert r.status_code == 200, r.text
    assert r.json()["links"][0]["href"].startswith("http://1234567-eu.suitetalk.api.netsuite.com/")


# -- records -------------------------------------------------------------------------------------
def test_customer_crud_by_internal_and_external_id(ns: Client) -> None:
    cid = new_customer(ns, "CUST-42")
    r = ns.req("GET", f"/record/v1/customer/{cid}")
    assert r.status_code == 200
    rec = r.json()
    assert rec["id"] == cid and rec["externalId"] == "CUST-42"
    assert rec["subsidiary"]["id"] == "1" and rec["currency"]["refName"] == "USD"
    assert ns.req("GET", "/record/v1/customer/eid:CUST-42").json()["id"] == cid

    r = ns.req("PATCH", f"/record/v1/customer/{cid}", json={"email": "new@x.example"})
    assert r.status_code == 204
    assert ns.req("GET", "/record/v1/customer/eid:CUST-42").json()["email"] == "new@x.example"

    assert ns.req("DELETE", f"/record/v1/customer/{cid}").status_code == 204
    r = ns.req("GET", f"/record/v1/customer/{cid}")
    assert r.status_code == 404
    assert error_of(r)["o:errorCode"] == "NONEXISTENT_ID"


def test_duplicate_external_id_on_create_is_a_user_error(ns: Client) -> None:
    new_customer(ns, "DUP")
    r = ns.req("POST", "/record/v1/customer", json={"companyName": "Again", "externalId": "DUP"})
    assert r.status_code == 400
    assert error_of(r)["o:errorCode"] == "USER_ERROR"


def test_invoice_totals_lines_and_references(ns: Client) -> None:
    cid = new_customer(ns)
    iid = ns.create("invoice", invoice_body(cid, externalId="BILL-1", otherRefNum="PO-1"))
    brief = ns.req("GET", f"/record/v1/invoice/{iid}").json()
    assert set(brief["item"]) == {"links"}  # sublists only expand on request
    inv = ns.req("GET", f"/record/v1/invoice/{iid}", params={"expandSubResources": "true"}).json()
    assert inv["total"] == 86.5 and inv["amountRemaining"] == 86.5
    assert inv["entity"]["id"] == cid and inv["currency"]["refName"] == "USD"
    assert inv["status"] == {"id": "A", "refName": "Open"}
    assert [ln["amount"] for ln in inv["item"]["items"]] == [37.5, 49.0]
    assert inv["tranId"].startswith("INV")

    r = ns.req("POST", "/record/v1/invoice", json=invoice_body("999999"))
    assert r.status_code == 400
    detail = error_of(r)
    assert detail["o:errorCode"] == "INVALID_KEY_OR_REF" and detail["o:errorPath"] == "entity"

    body = invoice_body(cid)
    body["item"]["items"][0]["item"] = {"id": "424242"}
    assert error_of(ns.req("POST", "/record/v1/invoice", json=body))["o:errorCode"] == "INVALID_KEY_OR_REF"
    r = ns.req("POST", "/record/v1/invoice", json=invoice_body(cid, currency={"refName": "EUR"}))
    assert error_of(r)["o:errorPath"] == "currency"
    r = ns.req("POST", "/record/v1/invoice", json=invoice_body(cid, bogusField=1))
    assert error_of(r)["o:errorCode"] == "NONEXISTENT_FIELD"


def test_upsert_is_idempotent(ns: Client) -> None:
    cid = new_customer(ns)
    path = "/record/v1/invoice/eid:m3ter-bill-abc"
    first = ns.req("PUT", path, params={"replace": "item"}, json=invoice_body(cid))
    second = ns.req("PUT", path, params={"replace": "item"}, json=invoice_body(cid, memo="again"))
    assert first.status_code == second.status_code == 204
    assert first.headers["Location"] == second.headers["Location"]
    rows = ns.suiteql("SELECT COUNT(*) AS n, SUM(foreigntotal) AS total FROM transaction "
                      "WHERE externalid = 'm3ter-bill-abc'").json()["items"]
    assert rows == [{"links": [], "n": "1", "total": "86.5"}]
    # Without replace=item NetSuite adds the lines again: the reason the hook always sends it.
    ns.req("PUT", path, json=invoice_body(cid))
    inv = ns.req("GET", path, params={"expandSubResources": "true"}).json()
    assert inv["item"]["count"] == 4 and inv["total"] == 173.0


def test_closed_period_blocks_transactions(ns: Client, fresh_sandbox: Any) -> None:
    cid = new_customer(ns)
    fresh_sandbox.admin("netsuite", "close_period", "POST", account=US.account_id, before="2030-02-01")
    r = ns.req("PUT", "/record/v1/invoice/eid:OLD", json=invoice_body(cid))
    assert r.status_code == 400
    detail = error_of(r)
    assert detail["o:errorCode"] == "USER_ERROR"
    assert detail["detail"].startswith("The accounting period is closed")
    r = ns.req("PUT", "/record/v1/invoice/eid:NEW", json=invoice_body(cid, tranDate="2030-02-01"))
    assert r.status_code == 204
    # The EU account's periods are its own.
    eu = Client(fresh_sandbox.url("netsuite_eu"), EU)
    eu_cid = new_customer(eu)
    assert eu.req("PUT", "/record/v1/invoice/eid:OLD", json=invoice_body(eu_cid)).status_code == 204


# -- SuiteQL -------------------------------------------------------------------------------------
def test_suiteql_paging_and_prefer_header(ns: Client) -> None:
    for i in range(7):
        new_customer(ns, f"C{i}")
    seen: list[str] = []
    offset, pages = 0, []
    while True:
        page = ns.suiteql("SELECT id, externalid FROM customer ORDER BY id", limit=3, offset=offset).json()
        pages.append((page["count"], page["hasMore"], page["totalResults"]))
        seen += [row["externalid"] for row in page["items"]]
        if not page["hasMore"]:
            break
        assert any(link["rel"] == "next" for link in page["links"])
        offset += page["count"]
    assert pages == [(3, True, 7), (3, True, 7), (1, False, 7)]
    assert seen == [f"C{i}" for i in range(7)]

    r = ns.req("POST", "/query/v1/suiteql", json={"q": "SELECT id FROM customer"})
    assert r.status_code == 400 and error_of(r)["o:errorHeader"] == "Prefer"
    r = ns.suiteql("SELECT id FROM customer", limit=1001)
    assert r.status_code == 400 and error_of(r)["o:errorQueryParam"] == "limit"
    r = ns.suiteql("DELETE FROM customer")
    assert r.status_code == 400
    r = ns.suiteql("SELECT nosuchcolumn FROM customer")
    assert r.status_code == 400 and "nosuchcolumn" in error_of(r)["detail"]


def test_suiteql_transaction_table_for_reconciliation(ns: Client) -> None:
    cid = new_customer(ns)
    ns.req("PUT", "/record/v1/invoice/eid:B1", params={"replace": "item"}, json=invoice_body(cid))
    ns.req("PUT", "/record/v1/invoice/eid:B2", params={"replace": "item"},
           json=invoice_body(cid, tranDate="2030-02-28"))
    ns.req("PUT", "/record/v1/creditMemo/eid:CM1", params={"replace": "item"}, json=invoice_body(cid))
    rows = ns.suiteql(
        "SELECT t.externalid, t.type, TO_CHAR(t.trandate, 'YYYY-MM-DD') AS d, t.foreigntotal, "
        "BUILTIN.DF(t.currency) AS cur FROM transaction t WHERE t.type IN ('CustInvc', 'CustCred') "
        "AND t.trandate >= TO_DATE('2030-01-01', 'YYYY-MM-DD') ORDER BY t.externalid").json()["items"]
    assert [(r["externalid"], r["type"], r["d"], r["foreigntotal"], r["cur"]) for r in rows] == [
        ("B1", "CustInvc", "2030-01-31", "86.5", "USD"),
        ("B2", "CustInvc", "2030-02-28", "86.5", "USD"),
        ("CM1", "CustCred", "2030-01-31", "-86.5", "USD"),
    ]
    grouped = ns.suiteql("SELECT type, COUNT(*) AS n FROM transaction GROUP BY type ORDER BY type").json()
    assert [(r["type"], r["n"]) for r in grouped["items"]] == [("CustCred", "1"), ("CustInvc", "2")]
    only_jan = ns.suiteql(
        "SELECT id FROM transaction WHERE type = 'CustInvc' AND trandate < '2030-02-01'").json()
    assert only_jan["totalResults"] == 1


def test_payments_applied_to_an_invoice_show_in_the_record_and_in_suiteql(ns: Client, fresh_sandbox: Any) -> None:
    """``pay_invoice``: a customer payment applied in part, then in full. The invoice record's
    ``amountPaid``/``amountRemaining``/``status`` and SuiteQL's ``foreignamountpaid``/
    ``foreignamountunpaid``/``status`` (letter, and ``CustInvc:B`` through BUILTIN.CF) follow, and
    ``lastmodifieddate`` moves, to the second, so an incremental read finds the invoice again."""
    cid = new_customer(ns)
    ns.req("PUT", "/record/v1/invoice/eid:PAY-1", params={"replace": "item"},
           json=invoice_body(cid, dueDate="2030-03-02"))
    query = ("SELECT t.externalid, t.foreigntotal, t.foreignamountpaid, t.foreignamountunpaid, t.status, "
             "BUILTIN.CF(t.status) AS cf, BUILTIN.DF(t.status) AS df, TO_CHAR(t.duedate, 'YYYY-MM-DD') AS due, "
             "TO_CHAR(t.lastmodifieddate, 'YYYY-MM-DD HH24:MI:SS') AS modified FROM transaction t "
             "WHERE t.type = 'CustInvc' AND t.externalid = 'PAY-1'")

    def row() -> dict[str, Any]:
        (found,) = ns.suiteql(query).json()["items"]
        return dict(found)

    before = row()
    assert {k: before[k] for k in ("foreigntotal", "foreignamountpaid", "foreignamountunpaid", "status", "cf",
                                   "df", "due")} == {
        "foreigntotal": "86.5", "foreignamountpaid": "0", "foreignamountunpaid": "86.5", "status": "A",
        "cf": "CustInvc:A", "df": "Invoice : Open", "due": "2030-03-02"}
    paid = fresh_sandbox.admin("netsuite", "pay_invoice", "POST", account=US.account_id, invoice="eid:PAY-1",
                               amount=46.5, date="2030-02-10")
    assert paid["amountRemaining"] == 40.0 and paid["status"] == "Open"
    part = row()
    assert (part["foreignamountpaid"], part["foreignamountunpaid"], part["cf"]) == ("46.5", "40", "CustInvc:A")
    assert part["modified"] >= before["modified"]  # whole seconds: maybe the same one
    since = f"TO_DATE('{part['modified']}', 'YYYY-MM-DD HH24:MI:SS')"
    changed = ns.suiteql("SELECT externalid FROM transaction "  # noqa: S608
                         f"WHERE type = 'CustInvc' AND lastmodifieddate >= {since}").json()["items"]
    assert [r["externalid"] for r in changed] == ["PAY-1"]
    assert ns.suiteql(f"SELECT id FROM transaction WHERE lastmodifieddate > {since}").json()["items"] == []  # noqa: S608

    fresh_sandbox.admin("netsuite", "pay_invoice", "POST", account=US.account_id, invoice="eid:PAY-1")
    full = row()
    assert (full["foreignamountpaid"], full["foreignamountunpaid"], full["status"], full["cf"], full["df"]) == (
        "86.5", "0", "B", "CustInvc:B", "Invoice : Paid In Full")
    inv = ns.req("GET", "/record/v1/invoice/eid:PAY-1").json()
    assert (inv["amountPaid"], inv["amountRemaining"], inv["status"]) == (
        86.5, 0.0, {"id": "B", "refName": "Paid In Full"})
    payments = ns.suiteql("SELECT type, foreigntotal FROM transaction WHERE type = 'CustPymt' ORDER BY id").json()
    assert [(r["type"], r["foreigntotal"]) for r in payments["items"]] == [("CustPymt", "46.5"), ("CustPymt", "40")]
    # Payments are NetSuite's to record: read-only over REST, refused beyond what remains.
    assert ns.req("POST", "/record/v1/customerPayment", json={"customer": {"id": cid}}).status_code == 403
    with pytest.raises(SandboxError, match="already paid in full"):
        fresh_sandbox.admin("netsuite", "pay_invoice", "POST", account=US.account_id, invoice="eid:PAY-1")
    # An edit of the invoice (a re-upsert) keeps the payments applied.
    ns.req("PUT", "/record/v1/invoice/eid:PAY-1", params={"replace": "item"},
           json=invoice_body(cid, dueDate="2030-03-02", memo="edited"))
    assert row()["cf"] == "CustInvc:B"
    r = ns.suiteql("SELECT foreignamountremaining FROM transaction")
    assert r.status_code == 400  # not a column of the Records Catalog's transaction record


# -- accounts, governance, faults ----------------------------------------------------------------
def test_accounts_are_isolated(ns: Client, ns_eu: Client, fresh_sandbox: Any) -> None:
    us_id = new_customer(ns, "SAME")
    eu_id = new_customer(ns_eu, "SAME")
    assert ns.req("GET", "/record/v1/customer/eid:SAME").json()["currency"]["refName"] == "USD"
    assert ns_eu.req("GET", "/record/v1/customer/eid:SAME").json()["currency"]["refName"] == "EUR"
    ns.req("PATCH", f"/record/v1/customer/{us_id}", json={"email": "us@x.example"})
    assert ns_eu.req("GET", f"/record/v1/customer/{eu_id}").json()["email"] == "a@x.example"
    state = fresh_sandbox.state("netsuite")["accounts"]
    assert state["1234567"]["counts"]["customer"] == 1 and state["1234567_EU"]["counts"]["customer"] == 1
    assert state["1234567_EU"]["subsidiaries"][0]["name"] == "Northwind Cloud EU BV"


def test_concurrency_limit_rejects_unthrottled_clients(fresh_sandbox: Any) -> None:
    fresh_sandbox.admin("netsuite", "concurrency", "POST", account=US.account_id, limit=2)
    fresh_sandbox.admin("netsuite", "latency", "POST", account=US.account_id, ms=150)
    statuses: list[int] = []
    errors: list[str] = []

    def call() -> None:
        c = Client(fresh_sandbox.url("netsuite"), US)
        r = c.req("GET", "/record/v1/subsidiary/1")
        statuses.append(r.status_code)
        if r.status_code == 429:
            errors.append(error_of(r)["o:errorCode"])

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gov = fresh_sandbox.state("netsuite")["accounts"]["1234567"]["governance"]
    assert statuses.count(429) >= 1 and statuses.count(200) >= 2
    assert set(errors) == {"CONCURRENCY_LIMIT_EXCEEDED"}
    assert gov["max_in_flight"] == 2 and gov["rejected_429"] == statuses.count(429)
    # The other account has its own budget.
    assert fresh_sandbox.state("netsuite")["accounts"]["1234567_EU"]["governance"]["rejected_429"] == 0


def test_injected_faults_use_netsuite_error_shape(ns: Client, fresh_sandbox: Any) -> None:
    fresh_sandbox.faults("netsuite", fail_next=1, error_status=503)
    r = ns.req("GET", "/record/v1/subsidiary/1")
    assert r.status_code == 503 and error_of(r)["o:errorCode"] == "SERVICE_UNAVAILABLE"
    fresh_sandbox.faults("netsuite", burst_429=1)
    r = ns.req("GET", "/record/v1/subsidiary/1")
    assert r.status_code == 429 and error_of(r)["o:errorCode"] == "CONCURRENCY_LIMIT_EXCEEDED"


def test_demo_seed_has_reference_data_only(fresh_sandbox: Any) -> None:
    state = fresh_sandbox.state("netsuite")["accounts"]
    for acct in state.values():
        assert {i["id"] for i in acct["items"]} == set(NETSUITE_ITEMS.values())
        assert acct["customers"] == [] and acct["invoices"] == []
    assert state["1234567"]["subsidiaries"][0]["currency"]["refName"] == "USD"


# -- strictness (issue 20): what the emulator does not implement is refused, never ignored -------
def test_unknown_and_unimplemented_query_parameters_are_invalid_parameter(ns: Client) -> None:
    cid = new_customer(ns)
    cases = [
        ("GET", f"/record/v1/customer/{cid}", {"expandSubResources": "true", "expand": "addressBook"}, "expand",
         "Invalid query parameter name: expand"),
        ("GET", f"/record/v1/customer/{cid}", {"simpleEnumFormat": "true"}, "simpleEnumFormat",
         "simpleEnumFormat is documented by NetSuite but not implemented by the m3sh sandbox"),
        ("GET", "/record/v1/customer", {"limit": 5, "q": 'email START_WITH "a"'}, "q",
         "The operator START_WITH is documented by NetSuite but not implemented by the m3sh sandbox"),
        ("GET", "/record/v1/customer", {"pageSize": 5}, "pageSize", "Invalid query parameter name: pageSize"),
        ("PATCH", f"/record/v1/customer/{cid}", {"replaceSelectedFields": "true"}, "replaceSelectedFields",
         "replaceSelectedFields is documented by NetSuite but not implemented"),
        ("PUT", "/record/v1/customer/eid:CUST-1", {"upsert": "true"}, "upsert",
         "Invalid query parameter name: upsert"),
        ("GET", "/record/v1/metadata-catalog", {"select": "customer"}, "select",
         "metadata-catalog's select is documented by NetSuite but not implemented"),
    ]
    for method, path, params, name, detail in cases:
        body = {"email": "b@x.example"} if method in ("PATCH", "PUT") else None
        r = ns.req(method, path, params=params, json=body)
        assert r.status_code == 400, (method, path, r.text)
        err = error_of(r)
        assert err["o:errorCode"] == "INVALID_PARAMETER" and err["o:errorQueryParam"] == name
        assert detail in err["detail"]
    r = ns.suiteql("SELECT id FROM customer", limit=5, page=2)
    assert r.status_code == 400 and error_of(r)["o:errorQueryParam"] == "page"
    # nothing was written by the refused PATCH/PUT
    assert ns.req("GET", f"/record/v1/customer/{cid}").json()["email"] == "a@x.example"


def test_headers_the_emulator_cannot_honour_are_invalid_header(ns: Client) -> None:
    r = ns.req("POST", "/record/v1/customer", json={"companyName": "Async"}, headers={"Prefer": "respond-async"})
    assert r.status_code == 400
    err = error_of(r)
    assert err["o:errorCode"] == "INVALID_HEADER" and err["o:errorHeader"] == "Prefer"
    assert "respond-async" in err["detail"] and "not implemented by the m3sh sandbox" in err["detail"]
    r = ns.req("POST", "/query/v1/suiteql", json={"q": "SELECT id FROM customer"},
               headers={"Prefer": "transient, respond-async"})
    assert error_of(r)["o:errorHeader"] == "Prefer"
    r = ns.req("POST", "/record/v1/customer", json={"companyName": "X", "bogus": 1},
               headers={"X-NetSuite-PropertyNameValidation": "Lenient"})
    assert r.status_code == 400
    assert error_of(r) == {"detail": "Invalid value 'Lenient' for the header X-NetSuite-PropertyNameValidation. "
                                     "Provide one of: Error, Warning, Ignore.",
                           "o:errorCode": "INVALID_HEADER", "o:errorHeader": "X-NetSuite-PropertyNameValidation"}
    assert fresh_state_customers(ns) == 0


def fresh_state_customers(c: Client) -> int:
    return int(c.suiteql("SELECT COUNT(*) AS n FROM customer").json()["items"][0]["n"])


def test_unknown_keys_in_references_sublists_and_suiteql_bodies_are_refused(ns: Client) -> None:
    cid = new_customer(ns)
    cases: list[tuple[dict[str, Any], str]] = [
        (invoice_body(cid, entity={"id": cid, "name": "Customer"}), "entity.name"),
        ({**invoice_body(cid), "item": {"items": invoice_body(cid)["item"]["items"], "replaceAll": True}},
         "item.replaceAll"),
        (invoice_body(cid, subsidiary={"internalId": "1"}), "subsidiary.internalId"),
    ]
    body = invoice_body(cid)
    body["item"]["items"][0]["item"] = {"id": NETSUITE_ITEMS["usage"], "type": "serviceSaleItem"}
    cases.append((body, "item.items[0].item.type"))
    for payload, path in cases:
        r = ns.req("PUT", "/record/v1/invoice/eid:STRICT", params={"replace": "item"}, json=payload)
        assert r.status_code == 400, path
        err = error_of(r)
        assert err["o:errorCode"] == "NONEXISTENT_FIELD" and err["o:errorPath"] == path
    r = ns.req("POST", "/record/v1/creditMemo", json=invoice_body(cid, apply={"items": [{"doc": {"id": "1"}}]}))
    assert r.status_code == 400
    err = error_of(r)
    assert err["o:errorCode"] == "USER_ERROR" and err["o:errorPath"] == "apply"
    assert "not implemented by the m3sh sandbox" in err["detail"]
    r = ns.req("POST", "/query/v1/suiteql", json={"q": "SELECT id FROM customer", "params": [1]},
               headers={"Prefer": "transient"})
    assert r.status_code == 400
    assert error_of(r)["o:errorCode"] == "NONEXISTENT_FIELD" and error_of(r)["o:errorPath"] == "params"
    assert ns.suiteql("SELECT COUNT(*) AS n FROM transaction").json()["items"][0]["n"] == "0"


def test_item_sublist_sub_resource_and_unimplemented_transform(ns: Client) -> None:
    cid = new_customer(ns)
    iid = ns.create("invoice", invoice_body(cid))
    link = ns.req("GET", f"/record/v1/invoice/{iid}").json()["item"]["links"][0]["href"]
    assert link.endswith(f"/record/v1/invoice/{iid}/item")
    sub = ns.req("GET", f"/record/v1/invoice/{iid}/item")
    assert sub.status_code == 200
    page = sub.json()
    assert page["count"] == page["totalResults"] == 2 and page["hasMore"] is False
    assert [ln["amount"] for ln in page["items"]] == [37.5, 49.0]
    r = ns.req("POST", f"/record/v1/invoice/{iid}/!transform/creditMemo", json={})
    assert r.status_code == 400
    err = error_of(r)
    assert err["o:urlPath"] == f"/services/rest/record/v1/invoice/{iid}/!transform/creditMemo"
    assert "not implemented by the m3sh sandbox" in err["detail"]
    r = ns.req("GET", f"/record/v1/customer/{cid}/addressBook")
    assert r.status_code == 404 and "not implemented by the m3sh sandbox" in error_of(r)["detail"]
    r = ns.req("GET", "/record/v1/metadata-catalog/customer", headers={"Accept": "application/swagger+json"})
    assert r.status_code == 400 and "not implemented by the m3sh sandbox" in error_of(r)["detail"]
    assert error_of(r)["o:errorHeader"] == "Accept"
    assert error_of(r)["o:urlPath"] == "/services/rest/record/v1/metadata-catalog/customer"


@pytest.mark.parametrize(("sql", "named"), [
    ("SELECT t.id FROM transaction t INNER JOIN transactionline l ON l.transaction = t.id", "INNER"),
    ("SELECT id FROM transaction UNION SELECT id FROM customer", "UNION"),
    ("SELECT NVL(memo, 'none') AS m FROM transaction", "The function NVL"),
    ("SELECT id FROM customer WHERE id = 0 AND COALESCE(email, 'x') = 'x'", "The function COALESCE"),
    ("SELECT BUILTIN.CONSOLIDATE(foreigntotal) FROM transaction", "The function BUILTIN.CONSOLIDATE"),
    ("SELECT CASE WHEN isinactive = 'T' THEN 1 END FROM customer", "CASE"),
    ("SELECT id || '-' || entityid FROM customer", "The operator '||'"),
    ("SELECT foreigntotal * 2 AS twice FROM transaction", "The operator '*'"),
    ("SELECT TOP 5 id FROM customer", "TOP"),
    ("SELECT id FROM customer ORDER BY id FETCH FIRST 5 ROWS ONLY", "FETCH"),
    ("SELECT type, COUNT(*) FROM transaction GROUP BY type HAVING COUNT(*) > 1", "HAVING"),
    ("SELECT id FROM customer WHERE id IN (SELECT entity FROM transaction)", "Subqueries"),
    ("SELECT type, memo, COUNT(*) FROM transaction GROUP BY type", "not a GROUP BY expression: memo"),
    ("SELECT id, COUNT(*) FROM customer", "not a GROUP BY expression: id"),
    ("SELECT type, COUNT(*) AS n FROM transaction GROUP BY type ORDER BY memo", "ORDER BY memo"),
])
def test_suiteql_the_engine_lacks_is_refused_by_name(ns: Client, sql: str, named: str) -> None:
    """Refused even on empty tables: the check is at parse time, not when a row is evaluated."""
    r = ns.suiteql(sql)
    assert r.status_code == 400
    err = error_of(r)
    assert err["o:errorCode"] == "INVALID_PARAMETER" and err["o:errorQueryParam"] == "q"
    assert err["detail"].startswith("Invalid search query.")
    assert named in err["detail"]


def test_suiteql_nulls_follow_three_valued_logic(ns: Client) -> None:
    with_email = new_customer(ns, "E1")
    ns.create("customer", {"companyName": "No email", "externalId": "E2"})

    def ids(where: str) -> list[str]:
        sql = f"SELECT externalid FROM customer WHERE {where} ORDER BY id"  # noqa: S608 -- fixed test values
        return [r["externalid"] for r in ns.suiteql(sql).json()["items"]]

    assert ids("NOT (email = 'z@x.example')") == ["E1"]  # NULL email: unknown, so not kept
    assert ids("email NOT IN ('z@x.example')") == ["E1"]
    assert ids("NOT email LIKE 'z%'") == ["E1"]
    assert ids("email IS NULL OR NOT (email = 'a@x.example')") == ["E2"]
    assert ids("NOT (email = 'a@x.example' AND id > 0)") == []
    assert with_email


def test_read_and_write_parameter_values_are_checked(ns: Client) -> None:
    cid = new_customer(ns)
    r = ns.req("GET", f"/record/v1/customer/{cid}", params={"fields": "companyName,emial"})
    assert r.status_code == 400
    err = error_of(r)
    assert err["o:errorQueryParam"] == "fields" and "'emial'" in err["detail"]
    got = ns.req("GET", f"/record/v1/customer/{cid}", params={"fields": "companyName,email"}).json()
    assert set(got) == {"links", "id", "companyName", "email"}
    sub = ns.req("GET", "/record/v1/subsidiary/1", params={"fields": "name"}).json()
    assert set(sub) == {"links", "id", "name"}
    r = ns.req("GET", f"/record/v1/customer/{cid}", params={"expandSubResources": "yes"})
    assert error_of(r)["o:errorQueryParam"] == "expandSubResources"
    r = ns.req("PUT", "/record/v1/invoice/eid:P1", params={"replace": "item,lines"}, json=invoice_body(cid))
    assert r.status_code == 400
    err = error_of(r)
    assert err["o:errorCode"] == "INVALID_PARAMETER" and err["o:errorQueryParam"] == "replace"
    assert "'lines'" in err["detail"]
    assert ns.req("GET", "/record/v1/invoice/eid:P1").status_code == 404


# -- what airbyte-source-netsuite reads (issue 20): JSON Schema metadata and q-filtered collections -
def test_metadata_catalog_serves_json_schema_of_record_types(ns: Client) -> None:
    """NetSuite's "Working with JSON Schema Metadata": Accept application/schema+json gives a Draft 6 schema
    of the record's fields; the ``$ref``s it contains are served too."""
    schema_json = {"Accept": "application/schema+json"}
    r = ns.req("GET", "/record/v1/metadata-catalog/invoice", headers=schema_json)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/schema+json")
    schema = r.json()
    assert schema["$schema"] == "https://json-schema.org/draft-06/hyper-schema#" and schema["type"] == "object"
    props = schema["properties"]
    assert props["lastModifiedDate"] == {"title": "Last Modified Date", "type": "string", "format": "date-time",
                                         "nullable": True}
    assert props["tranDate"]["format"] == "date" and props["total"]["type"] == "number"
    assert "lastModifiedDate" in schema["x-ns-filterable"]
    refs = {props["links"]["items"]["$ref"], props["entity"]["$ref"]}
    for ref in refs:
        shared = ns.session.get(ns.base.removesuffix("/services/rest") + ref, headers=schema_json, timeout=10)
        assert shared.status_code == 200 and "properties" in shared.json(), ref
    customer = ns.req("GET", "/record/v1/metadata-catalog/customer", headers=schema_json).json()
    assert {"companyName", "email", "lastModifiedDate", "dateCreated"} <= set(customer["properties"])
    r = ns.req("GET", "/record/v1/metadata-catalog/salesOrder", headers=schema_json)
    assert r.status_code == 404 and error_of(r)["o:urlPath"].endswith("/metadata-catalog/salesOrder")
    r = ns.req("GET", "/record/v1/metadata-catalog/customer", headers={"Accept": "text/html"})
    assert r.status_code == 400 and error_of(r)["o:errorCode"] == "INVALID_HEADER"


def test_q_filters_the_collection_by_date_and_pages_keep_the_filter(ns: Client, fresh_sandbox: Any) -> None:
    """NetSuite's "Record Collection Filtering": date operators against bare dates in the account's format
    (M/D/YYYY; midnight UTC: modelled), AND/OR/() and the filter kept in the paging links."""
    today = time.strftime("%m/%d/%Y", time.gmtime())  # before the writes: their instants are later
    tomorrow = time.strftime("%m/%d/%Y", time.gmtime(time.time() + 86400))
    ids = [new_customer(ns, f"Q-{n}") for n in range(3)]

    def listed(q: str, **params: Any) -> dict[str, Any]:
        r = ns.req("GET", "/record/v1/customer", params={"q": q, **params})
        assert r.status_code == 200, r.text
        page: dict[str, Any] = r.json()
        return page

    assert [i["id"] for i in listed(f'lastModifiedDate AFTER "{today}"')["items"]] == ids
    assert listed(f'lastModifiedDate ON "{today}" AND lastModifiedDate BEFORE "{tomorrow}"')["totalResults"] == 3
    assert listed(f'lastModifiedDate AFTER "{tomorrow}"')["totalResults"] == 0
    assert listed(f'lastModifiedDate ON_OR_AFTER "{tomorrow}" OR (dateCreated BEFORE "{tomorrow}" AND '
                  'lastModifiedDate EMPTY_NOT)')["totalResults"] == 3
    assert listed("lastModifiedDate BEFORE \"1/1/2015\"")["totalResults"] == 0
    page = listed(f'lastModifiedDate AFTER "{today}"', limit=2)
    assert page["hasMore"] is True and page["count"] == 2
    nxt = next(link["href"] for link in page["links"] if link["rel"] == "next")
    assert "q=lastModifiedDate+AFTER" in nxt and "offset=2" in nxt
    assert [i["id"] for i in listed(f'lastModifiedDate AFTER "{today}"', limit=2, offset=2)["items"]] == ids[2:]
    cid = new_customer(ns, "INV-CUST")
    ns.create("invoice", invoice_body(cid, tranDate="2030-01-31"))
    r = ns.req("GET", "/record/v1/invoice", params={"q": 'tranDate ON_OR_AFTER "1/31/2030"'})
    assert r.status_code == 200 and r.json()["totalResults"] == 1
    for q, detail in [
        ('lastModifiedDate AFTER "2026-01-01"', "not a date in the account's date format (M/D/YYYY)"),
        ('lastModifiedDate AFTER "01/01/2026 10:00 am"', "not a date in the account's date format"),
        ('email IS "a@x.example"', "The operator IS is documented by NetSuite but not implemented"),
        ('lastModifiedDate LATER "1/1/2026"', "Unknown operator 'LATER'"),
        ('companyName EMPTY', "The field 'companyName' cannot be filtered"),
        ('lastModifiedDate AFTER "1/1/2026" AND', "The filter ends unexpectedly"),
        ('(lastModifiedDate AFTER "1/1/2026"', "ends unexpectedly"),
        ("lastModifiedDate AFTER 1/1/2026", "Unexpected character '1'"),
    ]:
        r = ns.req("GET", "/record/v1/customer", params={"q": q})
        assert r.status_code == 400, (q, r.text)
        err = error_of(r)
        assert err["o:errorCode"] == "INVALID_PARAMETER" and err["o:errorQueryParam"] == "q", q
        assert detail in err["detail"], (q, err["detail"])
