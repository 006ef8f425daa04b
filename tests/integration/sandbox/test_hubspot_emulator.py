"""The HubSpot emulator judged by the official ``hubspot-api-client`` (unmodified, host pointed at it)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import requests
from hubspot import HubSpot
from hubspot.crm.associations.v4 import BatchInputPublicFetchAssociationsBatchRequest
from hubspot.crm.companies import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    PublicObjectSearchRequest,
    SimplePublicObjectInput,
)
from hubspot.crm.companies.exceptions import ApiException as CompaniesApiException
from hubspot.crm.contacts import SimplePublicObjectInputForCreate as ContactCreate
from hubspot.crm.contacts.exceptions import ApiException as ContactsApiException
from hubspot.crm.deals.exceptions import ApiException as DealsApiException
from hubspot.crm.properties import PropertyCreate
from hubspot.crm.properties.exceptions import ApiException as PropertiesApiException
from urllib3.util import Retry

from m3sh.sandbox import credentials
from m3sh.sandbox.seed import demo_company

pytestmark = pytest.mark.sandbox

HUBSPOT_CUSTOMERS = demo_company().by_crm("hubspot")


@pytest.fixture
def client(fresh_sandbox) -> HubSpot:  # type: ignore[no-untyped-def]
    return HubSpot(access_token=credentials.HUBSPOT_TOKEN, host=fresh_sandbox.url("hubspot"))


def _ms(ts: dt.datetime) -> str:
    return str(int(ts.timestamp() * 1000))


def test_list_pages_of_100_cover_every_demo_company(client: HubSpot) -> None:
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = client.crm.companies.basic_api.get_page(limit=100, after=after, properties=["name", "domain"])
        pages += 1
        seen.extend(r.id for r in page.results)
        if page.paging is None:
            break
        after = page.paging.next.after
    assert sorted(seen) == sorted(c.hubspot_id for c in HUBSPOT_CUSTOMERS)
    assert pages == -(-len(HUBSPOT_CUSTOMERS) // 100)
    with pytest.raises(CompaniesApiException) as err:
        client.crm.companies.basic_api.get_page(limit=101)
    assert err.value.status == 400


def test_demo_seed_tells_the_shared_story(client: HubSpot) -> None:
    customer = HUBSPOT_CUSTOMERS[0]
    company = client.crm.companies.basic_api.get_by_id(
        customer.hubspot_id, properties=["name", "domain", "billing_email", "country", "m3ter_account_id"],
        associations=["deals"],
    )
    assert company.properties["name"] == customer.name
    assert company.properties["billing_email"] == customer.email
    assert company.properties["m3ter_account_id"] is None
    modified = dt.datetime.fromisoformat(company.properties["hs_lastmodifieddate"].replace("Z", "+00:00"))
    assert modified == customer.modified_at
    deal_id = company.associations["deals"].results[0].id
    deal = client.crm.deals.basic_api.get_by_id(
        deal_id, properties=["dealstage", "contract_start", "contract_end", "deal_currency_code"],
        associations=["line_items"],
    )
    assert deal.properties["dealstage"] == "closedwon"
    assert deal.properties["contract_start"] == customer.contract_start.isoformat()
    assert deal.properties["deal_currency_code"] == customer.currency
    item_id = deal.associations["line_items"].results[0].id
    item = client.crm.line_items.basic_api.get_by_id(item_id, properties=["hs_sku", "hs_product_id"])
    assert item.properties["hs_sku"] == customer.plan_code
    product = client.crm.products.basic_api.get_by_id(item.properties["hs_product_id"], properties=["hs_sku"])
    assert product.properties["hs_sku"] == customer.plan_code


def test_search_by_lastmodified_window_matches_the_seed(client: HubSpot) -> None:
    times = sorted(c.modified_at for c in HUBSPOT_CUSTOMERS)
    lo, hi = times[10], times[60]
    expected = {c.hubspot_id for c in HUBSPOT_CUSTOMERS if lo <= c.modified_at < hi}
    found: list[str] = []
    stamps: list[str] = []
    after = None
    while True:
        resp = client.crm.companies.search_api.do_search(public_object_search_request=PublicObjectSearchRequest(
            filter_groups=[{"filters": [
                {"propertyName": "hs_lastmodifieddate", "operator": "GTE", "value": _ms(lo)},
                {"propertyName": "hs_lastmodifieddate", "operator": "LT", "value": _ms(hi)},
            ]}],
            sorts=["hs_lastmodifieddate"], properties=["name"], limit=20, after=after,
        ))
        assert resp.total == len(expected)
        found.extend(r.id for r in resp.results)
        stamps.extend(r.properties["hs_lastmodifieddate"] for r in resp.results)
        if resp.paging is None:
            break
        after = resp.paging.next.after
    assert set(found) == expected and len(found) == len(expected)
    assert stamps == sorted(stamps)


def test_search_operators(fresh_sandbox, client: HubSpot) -> None:  # type: ignore[no-untyped-def]
    fresh_sandbox.admin("hubspot", "limits", "POST", enabled=False)  # >5 searches/s on purpose
    def total(filters: list[dict], groups: int = 1) -> int:
        req = PublicObjectSearchRequest(filter_groups=[{"filters": filters}] * groups, limit=1)
        return client.crm.deals.search_api.do_search(public_object_search_request=req).total

    with_po = sum(1 for c in HUBSPOT_CUSTOMERS if c.po_number)
    assert total([{"propertyName": "po_number", "operator": "HAS_PROPERTY"}]) == with_po
    assert total([{"propertyName": "po_number", "operator": "NOT_HAS_PROPERTY"}]) == len(HUBSPOT_CUSTOMERS) - with_po
    eur = sum(1 for c in HUBSPOT_CUSTOMERS if c.currency == "EUR")
    assert total([{"propertyName": "deal_currency_code", "operator": "EQ", "value": "EUR"}]) == eur
    assert total([{"propertyName": "deal_currency_code", "operator": "NEQ", "value": "EUR"}]) == len(
        HUBSPOT_CUSTOMERS) - eur
    plans = {"starter_usd", "growth_usd"}
    assert total([{"propertyName": "plan_code", "operator": "IN", "values": sorted(plans)}]) == sum(
        1 for c in HUBSPOT_CUSTOMERS if c.plan_code in plans)
    assert total([{"propertyName": "amount", "operator": "BETWEEN", "value": "5000", "highValue": "7000"}]) == sum(
        1 for c in HUBSPOT_CUSTOMERS if c.plan_code.startswith("growth"))
    assert total([{"propertyName": "amount", "operator": "GT", "value": "20000"}]) == sum(
        1 for c in HUBSPOT_CUSTOMERS if c.plan_code.startswith("enterprise"))
    with pytest.raises(DealsApiException) as err:
        client.crm.deals.search_api.do_search(
            public_object_search_request=PublicObjectSearchRequest(filter_groups=[], limit=201))
    assert err.value.status == 400


def test_search_refuses_to_page_past_10000(fresh_sandbox, client: HubSpot) -> None:  # type: ignore[no-untyped-def]
    fresh_sandbox.admin("hubspot", "bulk_create", "POST", object_type="companies", count=10_050,
                        modified_from="2020-01-01T00:00:00Z", modified_to="2020-12-01T00:00:00Z")
    flt = [{"propertyName": "hs_lastmodifieddate", "operator": "LT", "value": _ms(dt.datetime(2021, 1, 1,
                                                                                           tzinfo=dt.UTC))}]

    def page(after: str | None) -> object:
        return client.crm.companies.search_api.do_search(public_object_search_request=PublicObjectSearchRequest(
            filter_groups=[{"filters": flt}], sorts=["hs_lastmodifieddate"], limit=200, after=after))

    last_ok = page("9800")
    assert last_ok.total == 10_050 and len(last_ok.results) == 200
    assert last_ok.paging.next.after == "10000"
    with pytest.raises(CompaniesApiException) as err:
        page("10000")
    assert err.value.status == 400
    body = json.loads(err.value.body)
    assert body["category"] == "VALIDATION_ERROR" and body["status"] == "error" and body["correlationId"]


def test_writes_maintain_lastmodified_dates(client: HubSpot) -> None:
    customer = HUBSPOT_CUSTOMERS[1]
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    updated = client.crm.companies.basic_api.update(
        customer.hubspot_id, SimplePublicObjectInput(properties={"city": "Lisbon"}))
    stamp = dt.datetime.fromisoformat(updated.properties["hs_lastmodifieddate"].replace("Z", "+00:00"))
    assert stamp >= before > customer.modified_at
    assert updated.updated_at >= before
    contact = client.crm.contacts.basic_api.create(ContactCreate(properties={"email": "new@example.com"}))
    assert contact.properties["lastmodifieddate"] and contact.properties["createdate"]
    with pytest.raises(ContactsApiException) as err:  # the unique email clashes
        client.crm.contacts.basic_api.create(ContactCreate(properties={"email": "new@example.com"}))
    assert err.value.status == 409


def test_batch_upsert_reports_partial_failures_as_207(client: HubSpot) -> None:
    api = client.crm.companies.batch_api
    inputs = [
        {"id": "acc-1", "idProperty": "m3ter_account_id", "properties": {"name": "One"}, "objectWriteTraceId": "0"},
        {"id": "acc-2", "idProperty": "m3ter_account_id", "properties": {"nope": "x"}, "objectWriteTraceId": "1"},
        {"id": "acc-3", "idProperty": "m3ter_account_id", "properties": {"name": "Three"}, "objectWriteTraceId": "2"},
    ]
    resp = api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs=inputs))
    assert resp.num_errors == 1 and len(resp.results) == 2
    assert all(r.new for r in resp.results)
    error = resp.errors[0]
    assert error.category == "VALIDATION_ERROR" and "PROPERTY_DOESNT_EXIST" in error.message
    assert error.context["objectWriteTraceId"] == ["1"]
    again = api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs=[inputs[0]]))
    assert type(again).__name__ == "BatchResponseSimplePublicUpsertObject"  # 200, not 207
    assert not again.results[0].new
    assert again.results[0].id == resp.results[0].id
    with pytest.raises(CompaniesApiException) as err:
        api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs=[
            {"id": f"x{i}", "idProperty": "m3ter_account_id", "properties": {}} for i in range(101)]))
    assert err.value.status == 400


def test_associations_v4(client: HubSpot) -> None:
    customer = HUBSPOT_CUSTOMERS[2]
    v4 = client.crm.associations.v4
    deals = v4.basic_api.get_page("companies", customer.hubspot_id, "deals")
    assert len(deals.results) == 1
    assert {t.type_id for t in deals.results[0].association_types} == {342, 6}
    contact = client.crm.contacts.basic_api.create(ContactCreate(properties={"email": "cfo@example.com"}))
    created = v4.basic_api.create_default("contacts", contact.id, "companies", customer.hubspot_id)
    assert created.results[0].association_spec.association_type_id == 279
    batch = v4.batch_api.get_page("companies", "contacts", BatchInputPublicFetchAssociationsBatchRequest(
        inputs=[{"id": customer.hubspot_id}, {"id": HUBSPOT_CUSTOMERS[3].hubspot_id}]))
    by_company = {r._from.id: {str(t.to_object_id) for t in r.to} for r in batch.results}
    assert contact.id in by_company[customer.hubspot_id]
    assert len(by_company[customer.hubspot_id]) == 2  # the seeded billing contact and the new one


def test_properties_api_and_unknown_property_errors(client: HubSpot) -> None:
    props = client.crm.properties.core_api
    assert "m3ter_account_id" in {p.name for p in props.get_all("companies").results}
    customer = HUBSPOT_CUSTOMERS[0]
    with pytest.raises(CompaniesApiException) as err:
        client.crm.companies.basic_api.update(customer.hubspot_id,
                                              SimplePublicObjectInput(properties={"m3ter_tier": "x"}))
    assert err.value.status == 400 and "PROPERTY_DOESNT_EXIST" in json.loads(err.value.body)["message"]
    created = props.create("companies", PropertyCreate(name="m3ter_tier", label="m3ter tier", type="string",
                                                       field_type="text", group_name="m3sh"))
    assert created.name == "m3ter_tier" and not created.hubspot_defined
    updated = client.crm.companies.basic_api.update(customer.hubspot_id,
                                                    SimplePublicObjectInput(properties={"m3ter_tier": "growth"}))
    assert updated.properties["m3ter_tier"] == "growth"
    with pytest.raises(PropertiesApiException) as dup:
        props.create("companies", PropertyCreate(name="m3ter_tier", label="again", type="string",
                                                 field_type="text", group_name="m3sh"))
    assert dup.value.status == 409


def test_bad_or_missing_token_is_401_without_echoing_it(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    bad = "pat-na1-not-the-right-token"
    client = HubSpot(access_token=bad, host=fresh_sandbox.url("hubspot"))
    with pytest.raises(CompaniesApiException) as err:
        client.crm.companies.basic_api.get_page(limit=1)
    assert err.value.status == 401
    body = json.loads(err.value.body)
    assert body["category"] == "INVALID_AUTHENTICATION" and bad not in str(err.value.body)
    missing = requests.get(f"{fresh_sandbox.url('hubspot')}/crm/v3/objects/companies", timeout=5)
    assert missing.status_code == 401 and missing.json()["category"] == "INVALID_AUTHENTICATION"


def test_rate_limit_answers_429_like_hubspot(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    # urllib3's default Retry (used by the client unless told otherwise) silently retries GETs that
    # get a 429 with Retry-After; switch it off to see the raw answer.
    client = HubSpot(access_token=credentials.HUBSPOT_TOKEN, host=fresh_sandbox.url("hubspot"),
                     retry=Retry(total=0, raise_on_status=False))
    fresh_sandbox.admin("hubspot", "rate_limit", "POST", ten_secondly=5, window_s=5)
    api = client.crm.companies.basic_api
    ok = api.get_page_with_http_info(limit=1)
    assert ok[2]["X-HubSpot-RateLimit-Max"] == "5" and ok[2]["X-HubSpot-RateLimit-Remaining"] == "4"
    for _ in range(4):
        api.get_page(limit=1)
    with pytest.raises(CompaniesApiException) as err:
        api.get_page(limit=1)
    assert err.value.status == 429
    body = json.loads(err.value.body)
    assert body["errorType"] == "RATE_LIMIT" and body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert int(err.value.headers["Retry-After"]) >= 1
    # search has its own secondly policy, so it still works while the burst budget is spent
    search = client.crm.companies.search_api
    statuses = []
    for _ in range(7):
        try:
            search.do_search(public_object_search_request=PublicObjectSearchRequest(limit=1))
            statuses.append(200)
        except CompaniesApiException as exc:
            statuses.append(exc.status)
            assert json.loads(exc.body)["message"] == "You have reached your secondly limit."
    assert statuses[0] == 200 and 429 in statuses


def test_get_by_id_property_archive_and_archived_listing(client: HubSpot) -> None:
    customer = HUBSPOT_CUSTOMERS[4]
    api = client.crm.companies.basic_api
    api.update(customer.hubspot_id, SimplePublicObjectInput(properties={"m3ter_account_id": "acc-42"}))
    by_unique = api.get_by_id("acc-42", id_property="m3ter_account_id", properties=["name"])
    assert by_unique.id == customer.hubspot_id
    api.archive(customer.hubspot_id)
    with pytest.raises(CompaniesApiException) as err:
        api.get_by_id(customer.hubspot_id)
    assert err.value.status == 404 and json.loads(err.value.body)["category"] == "OBJECT_NOT_FOUND"
    archived = api.get_page(archived=True, limit=100)
    assert [r.id for r in archived.results] == [customer.hubspot_id] and archived.results[0].archived
    live = client.crm.companies.get_all()
    assert customer.hubspot_id not in {r.id for r in live} and len(live) == len(HUBSPOT_CUSTOMERS) - 1


def _raw(sb, method: str, path: str, body: object = None, invalid: str = "",  # type: ignore[no-untyped-def]
         **params: str) -> requests.Response:
    """A request as any client sends it; ``invalid`` says why the published spec refuses it too (the
    spec guard then lets it reach the emulator, which must refuse it as well)."""
    from m3sh.sandbox.specguard import expect_invalid

    headers = {"Authorization": f"Bearer {credentials.HUBSPOT_TOKEN}", **(expect_invalid(invalid) if invalid else {})}
    return requests.request(method, sb.url("hubspot") + path, json=body, params=params or None, timeout=30,
                            headers=headers)


def test_what_the_emulator_does_not_implement_is_refused_never_ignored(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    """Published connectors sent a top-level ``filters`` (once answered unfiltered: now applied, as the
    live API does) and ``offset`` paging (answered with the first page again): what the emulator does
    not implement is HubSpot's 400, naming what was not understood."""
    search = "/crm/v3/objects/companies/search"
    flt = {"propertyName": "name", "operator": "EQ", "value": HUBSPOT_CUSTOMERS[0].name}
    ok = _raw(fresh_sandbox, "POST", search, {"filterGroups": [{"filters": [flt]}], "limit": 5})
    assert ok.status_code == 200 and ok.json()["total"] >= 1
    assert ok.json()["total"] < len(HUBSPOT_CUSTOMERS)

    # A top-level ``filters`` is HubSpot's undocumented one-group form (HubSpot/hubspot-api-nodejs#491):
    # answered filtered, exactly as the filterGroups form; with filterGroups as well it is refused.
    top_level = _raw(fresh_sandbox, "POST", search, {"filters": [flt], "limit": 5, "after": 0,
                                                     "sorts": [{"propertyName": "name", "direction": "ASCENDING"}]})
    assert top_level.status_code == 200, top_level.text
    assert [r["id"] for r in top_level.json()["results"]] == [r["id"] for r in ok.json()["results"]]
    both = _raw(fresh_sandbox, "POST", search, {"filters": [flt], "filterGroups": [{"filters": [flt]}]})
    assert both.status_code == 400 and both.json()["category"] == "VALIDATION_ERROR"
    assert "either filterGroups or a top-level filters" in str(both.json())
    unknown = _raw(fresh_sandbox, "POST", search, {"filter": [flt], "limit": 5}, invalid="unknown key filter")
    body = unknown.json()
    assert unknown.status_code == 400 and body["category"] == "VALIDATION_ERROR" and body["status"] == "error"
    assert 'Unrecognized field "filter"' in body["message"] and "column 2" in body["message"]
    nested = _raw(fresh_sandbox, "POST", search, {"filterGroups": [{"filters": [{**flt, "negate": True}]}]},
                  invalid="filter key negate")
    assert nested.status_code == 400 and '"negate" (filterGroups.filters)' in nested.json()["message"]

    paged = _raw(fresh_sandbox, "GET", "/crm/v3/objects/line_items", invalid="offset is no parameter of the list",
                 offset="100", limit="10")
    assert paged.status_code == 400 and "'offset'" in paged.json()["message"]
    assert "after" in paged.json()["message"]  # what the endpoint does implement
    # A refused request changed nothing and was answered before the route ran.
    assert fresh_sandbox.requests_to("hubspot", "GET", "/crm/v3/objects/line_items") == 1


def test_line_items_past_one_page_follow_after_and_offset_is_refused_with_why(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    """More than a page of line items (what ``benchmarks.peers --scale`` seeds): the published list
    pages by ``paging.next.after`` and reaches each once; ``offset=100``, what airbyte-source-hubspot
    5.7.0 sends for its second page (``GET /crm/v3/objects/line_item?...&offset=100&limit=100``), is
    refused, saying that HubSpot would answer the first page again (strict.KNOWN_MISUSE names the
    sources)."""
    created: set[str] = set()
    for batch in range(2):  # the demo's line items and 150 more: past one page of 100
        body = {"inputs": [{"properties": {"name": f"extra {batch}-{i}", "quantity": "1", "price": "10"},
                            "associations": []} for i in range(75)]}
        made = _raw(fresh_sandbox, "POST", "/crm/v3/objects/line_items/batch/create", body)
        assert made.status_code == 201, made.text
        created |= {r["id"] for r in made.json()["results"]}
    for path in ("/crm/v3/objects/line_items", "/crm/v3/objects/line_item"):  # the plural and airbyte's singular
        seen: list[str] = []
        pages = 0
        after: str | None = None
        while True:
            cursor = {"after": after} if after else {}
            page = _raw(fresh_sandbox, "GET", path, limit="100", archived="false", **cursor)
            assert page.status_code == 200, page.text
            pages += 1
            seen.extend(r["id"] for r in page.json()["results"])
            after = page.json().get("paging", {}).get("next", {}).get("after")
            if not after:
                break
        assert len(seen) == len(set(seen)) and created <= set(seen) and pages == -(-len(seen) // 100) >= 2

        refused = _raw(fresh_sandbox, "GET", path, invalid="offset is no parameter of the list", archived="false",
                       offset="100", limit="100")
        message = refused.json()["message"]
        assert refused.status_code == 400 and refused.json()["category"] == "VALIDATION_ERROR"
        assert "'offset'" in message and "paging.next.after" in message and "first page again" in message
    # The hint is the list's: elsewhere an unknown offset is refused as unknown only.
    other = _raw(fresh_sandbox, "GET", f"/crm/v3/objects/line_items/{sorted(created)[0]}",
                 invalid="offset is no parameter of a read", offset="1")
    assert other.status_code == 400 and "first page again" not in other.json()["message"]


def test_property_history_is_newest_first_with_the_writers_source(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    """``propertiesWithHistory`` on the v3 reads (get, list, batch read) and the legacy versions: one
    entry per change, newest first, the seeded value last (IMPORT), the private app's writes as
    INTEGRATION with its app id; a write of the current value adds none, a cleared value is ""."""
    company = HUBSPOT_CUSTOMERS[0]
    path = f"/crm/v3/objects/companies/{company.hubspot_id}"
    for name in ("Renamed Once", "Renamed Twice", "Renamed Twice"):
        assert _raw(fresh_sandbox, "PATCH", path, {"properties": {"name": name, "phone": ""}}).status_code == 200
    one = _raw(fresh_sandbox, "GET", path, propertiesWithHistory="name,phone,no_such_property")
    assert one.status_code == 200, one.text
    history = one.json()["propertiesWithHistory"]
    assert list(history) == ["name"]  # never-set and unknown properties are left out, as documented
    assert [(h["value"], h["sourceType"], h.get("sourceId")) for h in history["name"]] == [
        ("Renamed Twice", "INTEGRATION", "3310942"), ("Renamed Once", "INTEGRATION", "3310942"),
        (company.name, "IMPORT", None)]
    stamps = [h["timestamp"] for h in history["name"]]
    assert stamps == sorted(stamps, reverse=True)

    created = _raw(fresh_sandbox, "POST", "/crm/v3/objects/companies", {"properties": {"name": "Fresh", "phone": "1"}})
    new_id = created.json()["id"]
    _raw(fresh_sandbox, "PATCH", f"/crm/v3/objects/companies/{new_id}", {"properties": {"phone": ""}})
    read = _raw(fresh_sandbox, "POST", "/crm/v3/objects/companies/batch/read",
                {"inputs": [{"id": new_id}], "properties": ["name"], "propertiesWithHistory": ["phone"]})
    assert [h["value"] for h in read.json()["results"][0]["propertiesWithHistory"]["phone"]] == ["", "1"]
    page = _raw(fresh_sandbox, "GET", "/crm/v3/objects/companies", limit="100", propertiesWithHistory="name")
    listed = {r["id"]: r for r in page.json()["results"]}
    assert listed[company.hubspot_id]["propertiesWithHistory"]["name"] == history["name"]

    legacy = _legacy_get(fresh_sandbox, "/companies/v2/companies/paged",
                         [("limit", "250"), ("properties", "domain"), ("propertiesWithHistory", "name")])
    [mine] = [c for c in legacy.json()["companies"] if str(c["companyId"]) == company.hubspot_id]
    name = mine["properties"]["name"]
    assert [(v["value"], v["source"]) for v in name["versions"]] == [
        ("Renamed Twice", "INTEGRATION"), ("Renamed Once", "INTEGRATION"), (company.name, "IMPORT")]
    assert name["timestamp"] == name["versions"][0]["timestamp"] and len(mine["properties"]["domain"]["versions"]) == 1


def _legacy_get(sb, path: str, params: list[tuple[str, str]] | None = None) -> requests.Response:  # type: ignore[no-untyped-def]
    return requests.get(sb.url("hubspot") + path, params=params, timeout=30,
                        headers={"Authorization": f"Bearer {credentials.HUBSPOT_TOKEN}"})


def test_legacy_companies_and_deals_paging_covers_the_seed(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    """tap-hubspot's reads (legacy crm-companies-v2 "Get all companies", deals v1 "Get all deals"):
    ``offset`` + ``has-more`` / ``hasMore`` paging reaches every seeded record once, properties as
    ``{value, timestamp, ...}`` with datetimes in epoch ms; limit over 250 is a 400."""
    seen: list[int] = []
    offset = None
    while True:
        params = [("limit", "50"), ("properties", "name"), ("properties", "hs_lastmodifieddate")]
        page = _legacy_get(fresh_sandbox, "/companies/v2/companies/paged",
                           params + ([("offset", str(offset))] if offset is not None else []))
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [c["companyId"] for c in body["companies"]]
        if not body["has-more"]:
            break
        offset = body["offset"]
    assert sorted(seen) == sorted(int(str(c.hubspot_id)) for c in HUBSPOT_CUSTOMERS)
    first = HUBSPOT_CUSTOMERS[0]
    company = _legacy_get(fresh_sandbox, f"/companies/v2/companies/{first.hubspot_id}").json()
    assert company["properties"]["name"]["value"] == first.name
    modified = company["properties"]["hs_lastmodifieddate"]
    assert modified["timestamp"] == int(first.modified_at.timestamp() * 1000) == int(modified["value"])
    assert _raw(fresh_sandbox, "GET", "/companies/v2/companies/paged", invalid="limit above 250",
                limit="251").status_code == 400

    deals = _legacy_get(fresh_sandbox, "/deals/v1/deal/paged",
                        [("limit", "250"), ("includeAllProperties", "true"),
                         ("allPropertiesFetchMode", "latest_version")]).json()
    assert deals["hasMore"] is False and len(deals["deals"]) == len(HUBSPOT_CUSTOMERS)
    assert deals["deals"][0]["properties"]["dealstage"]["value"] == "closedwon"
    missing = _legacy_get(fresh_sandbox, "/companies/v2/companies/1")
    assert missing.status_code == 404 and missing.json()["category"] == "OBJECT_NOT_FOUND"


def test_legacy_properties_schemas_and_unmodelled_types(fresh_sandbox) -> None:  # type: ignore[no-untyped-def]
    """The property lists connectors discover with: legacy v1/v2 and the companies v2 list are one
    array of definitions; a standard type the portal holds no records of (tickets) lists HubSpot's
    common properties; the custom object schemas list (both documented paths) is empty."""
    v1 = _legacy_get(fresh_sandbox, "/properties/v1/deals/properties").json()
    v2 = _legacy_get(fresh_sandbox, "/properties/v2/deal/properties").json()
    assert {p["name"] for p in v1} == {p["name"] for p in v2} >= {"dealstage", "contract_start", "plan_code"}
    companies = _legacy_get(fresh_sandbox, "/companies/v2/properties").json()
    assert {"name", "domain", "m3ter_account_id"} <= {p["name"] for p in companies}
    assert all(isinstance(p["createdAt"], int) for p in companies)
    tickets = _legacy_get(fresh_sandbox, "/properties/v2/tickets/properties").json()
    assert {p["name"] for p in tickets} >= {"hs_object_id", "hs_lastmodifieddate"}
    v3 = _legacy_get(fresh_sandbox, "/crm/v3/properties/tickets").json()["results"]
    assert {p["name"] for p in v3} == {p["name"] for p in tickets}
    for path in ("/crm/v3/schemas", "/crm-object-schemas/v3/schemas"):
        answer = _legacy_get(fresh_sandbox, path)
        assert answer.status_code == 200 and answer.json() == {"results": []}
    unknown = _legacy_get(fresh_sandbox, "/properties/v2/widgets/properties")
    assert unknown.status_code == 400 and unknown.json()["category"] == "VALIDATION_ERROR"
