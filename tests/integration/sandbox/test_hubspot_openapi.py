"""A wide sample of the HubSpot emulator's answers, each judged by the spec guard.

test_hubspot_emulator.py judges the emulator through the official client, which deserialises
leniently (an int where a string is declared passes). The spec guard (``m3sh.sandbox.specguard``)
judges every request and answer of the suite against HubSpot's own OpenAPI documents (status, body,
declared headers, properties the schemas do not declare). This sample makes the emulator give every
answer it implements, batch 207s with partial errors and the 400/401/404/409/429 error bodies
included, and checks from the guard's records that each document's emulated operations were
judged, printing the coverage per document.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from m3sh.sandbox import credentials as cred
from m3sh.sandbox import specguard
from m3sh.sandbox.seed import demo_company
from tests.spec_coverage import GuardRecords

pytestmark = pytest.mark.sandbox

DOCS = ("companies", "deals", "lineItems", "products", "objects", "associations-v4")
CUSTOMERS = demo_company().by_crm("hubspot")

# Operations the emulator deliberately does not implement (m3sh never merges records or manages
# association labels), so they are excluded from the coverage minimum.
NOT_EMULATED = {
    "POST /crm/v3/objects/companies/merge",
    "POST /crm/v3/objects/0-3/merge",
    "POST /crm/v4/associations/usage/high-usage-report/{userId}",
    "POST /crm/v4/associations/{fromObjectType}/{toObjectType}/batch/labels/archive",
}


def _operations(name: str) -> set[str]:
    spec = json.loads((specguard.spec_dir() / "hubspot" / f"{name}.json").read_text())
    return {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops if m in specguard.METHODS}


class Checker:
    """Calls the emulator with ``requests``; the guard judges each call (a 501 is its refusal)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {cred.HUBSPOT_TOKEN}"
        self.calls = 0
        self.expected_docs: dict[int, tuple[str, ...]] = {}  # call number -> documents it belongs to

    def call(self, docs: tuple[str, ...], method: str, path: str, expect: int, **kw: Any) -> Any:
        resp = self.session.request(method, self.url + path, timeout=10, **kw)
        self.calls += 1
        self.expected_docs[self.calls] = docs
        assert resp.status_code == expect, f"{method} {path}: {resp.status_code} {resp.text[:400]}"
        assert resp.status_code != 204 or not resp.content, f"{method} {path}: 204 with a body"
        if resp.content:
            assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
        return resp.json() if resp.content else None


@dataclass(frozen=True)
class Kind:
    """One object type as a document writes it, with values valid for the emulated portal."""

    docs: tuple[str, ...]
    path: str              # /crm/v3/objects/<type as the document spells it>
    seeded_id: str         # a record of the demo seed
    create: dict[str, str]
    update: dict[str, str]
    lastmod: str           # the change-cursor property searched on
    upsert_by: str         # a property with unique values (idProperty of batch upsert)
    upsert_value: str      # a value of upsert_by that does not exist yet (upsert creates)
    association: str | None = None  # a type to request associations for on reads


def _kinds() -> list[Kind]:
    c = CUSTOMERS[0]
    # Every specific call is also validated against objects.json, whose {objectType} paths cover them.
    return [
        Kind(("companies", "objects"), "/crm/v3/objects/companies", str(c.hubspot_id),
             {"name": "OA Company", "domain": "oa.example", "m3ter_account_id": "oa-acc-1"},
             {"name": "OA Company 2"}, "hs_lastmodifieddate", "m3ter_account_id", "oa-acc-2", "deals"),
        Kind(("deals", "objects"), "/crm/v3/objects/0-3", str(7_000_000_000 + _index(c)),
             {"dealname": "OA deal", "amount": "100.50", "pipeline": "default", "dealstage": "appointmentscheduled"},
             {"amount": "200"}, "hs_lastmodifieddate", "hs_object_id", "", "companies"),
        Kind(("lineItems", "objects"), "/crm/v3/objects/line_items", str(6_000_000_000 + _index(c)),
             {"name": "OA item", "quantity": "2", "price": "10"}, {"quantity": "3"},
             "hs_lastmodifieddate", "hs_object_id", "", "deals"),
        Kind(("products", "objects"), "/crm/v3/objects/products", "",
             {"name": "OA product", "price": "5", "hs_sku": "oa-sku"}, {"price": "6"},
             "hs_lastmodifieddate", "hs_object_id", ""),
        Kind(("objects",), "/crm/v3/objects/contacts", str(4_000_000_000 + _index(c)),
             {"firstname": "Oa", "lastname": "Tester", "email": "oa@x.example"}, {"jobtitle": "CFO"},
             "lastmodifieddate", "email", "oa-new@x.example", "companies"),
    ]


def _index(customer: Any) -> int:
    return int(customer.hubspot_id) - 9_000_000_000


def _variant(props: dict[str, str], tag: str) -> dict[str, str]:
    """Another record's values: text gets a suffix (unique properties stay unique), numbers stay."""
    return {n: v if v.replace(".", "", 1).isdigit() else f"{v}-{tag}" for n, v in props.items()}


def _exercise_objects(c: Checker, k: Kind) -> list[str]:
    """Every v3 object operation the emulator serves, with its success, 207 and error answers."""
    call = c.call
    first = call(k.docs, "GET", k.path, 200, params={"limit": 2})
    assert len(first["results"]) == 2 and first["paging"]["next"]["after"]
    call(k.docs, "GET", k.path, 200, params={"limit": 2, "after": first["paging"]["next"]["after"]})
    seeded = k.seeded_id or first["results"][0]["id"]
    read_params: dict[str, Any] = {"properties": list(k.create)}
    if k.association:
        read_params["associations"] = [k.association]
    call(k.docs, "GET", k.path, 200, params={"limit": 100, **read_params})
    got = call(k.docs, "GET", f"{k.path}/{seeded}", 200, params=read_params)
    if k.association:
        assert got["associations"][k.association]["results"], f"seeded {k.path}/{seeded} has no associations"

    created = call(k.docs, "POST", k.path, 201, json={"properties": k.create})
    new_id = created["id"]
    call(k.docs, "PATCH", f"{k.path}/{new_id}", 200, json={"properties": k.update})
    call(k.docs, "GET", f"{k.path}/{new_id}", 200)

    call(k.docs, "POST", f"{k.path}/batch/read", 200,
         json={"inputs": [{"id": seeded}, {"id": new_id}], "properties": list(k.create), "propertiesWithHistory": []})
    partial = call(k.docs, "POST", f"{k.path}/batch/read", 207,
                   json={"inputs": [{"id": seeded}, {"id": "1"}], "properties": [], "propertiesWithHistory": []})
    assert partial["numErrors"] == 1 and len(partial["results"]) == 1

    unique = _variant(k.create, "b")
    batch = call(k.docs, "POST", f"{k.path}/batch/create", 201,
                 json={"inputs": [{"properties": unique, "objectWriteTraceId": "t1", "associations": []}]})
    batch_id = batch["results"][0]["id"]
    mixed = call(k.docs, "POST", f"{k.path}/batch/create", 207, json={"inputs": [
        {"properties": _variant(k.create, "c"), "associations": []},
        {"properties": {"no_such_property": "x"}, "objectWriteTraceId": "bad", "associations": []}]})
    assert mixed["numErrors"] == 1 and mixed["errors"][0]["context"]["objectWriteTraceId"] == ["bad"]
    extra_id = mixed["results"][0]["id"]

    call(k.docs, "POST", f"{k.path}/batch/update", 200,
         json={"inputs": [{"id": batch_id, "properties": k.update}]})
    call(k.docs, "POST", f"{k.path}/batch/update", 207, json={"inputs": [
        {"id": batch_id, "properties": k.update}, {"id": "1", "properties": k.update}]})

    # Types without a unique custom property upsert an existing record by hs_object_id.
    upsert = {"id": k.upsert_value or new_id, "idProperty": k.upsert_by, "properties": k.update}
    up = call(k.docs, "POST", f"{k.path}/batch/upsert", 200, json={"inputs": [upsert]})
    assert up["results"][0]["new"] is bool(k.upsert_value)
    up207 = call(k.docs, "POST", f"{k.path}/batch/upsert", 207, json={"inputs": [
        upsert, {"id": f"{k.upsert_value}-x" if k.upsert_value else batch_id, "idProperty": k.upsert_by,
                 "properties": {"no_such_property": "x"}}]})
    assert up207["numErrors"] == 1 and up207["results"][0]["new"] is False

    since = int((dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).timestamp() * 1000)
    found = call(k.docs, "POST", f"{k.path}/search", 200, json={
        "filterGroups": [{"filters": [{"propertyName": k.lastmod, "operator": "GTE", "value": str(since)}]}],
        "sorts": [k.lastmod], "properties": list(k.create), "limit": 2, "after": "0"})
    assert found["total"] >= 3 and found["paging"]["next"]["after"]
    call(k.docs, "POST", f"{k.path}/search", 200, json={
        "filterGroups": [{"filters": [{"propertyName": k.lastmod, "operator": "GTE", "value": str(since)}]}],
        "sorts": [k.lastmod], "properties": [], "limit": 2, "after": found["paging"]["next"]["after"]})

    # Errors: the documents declare them as the ``default`` response with the ``Error`` schema.
    call(k.docs, "GET", f"{k.path}/1", 404)
    call(k.docs, "PATCH", f"{k.path}/1", 404, json={"properties": k.update})
    bad = call(k.docs, "POST", k.path, 400, json={"properties": {"no_such_property": "x"}})
    assert "PROPERTY_DOESNT_EXIST" in bad["message"]
    call(k.docs, "POST", f"{k.path}/search", 400, json={
        "filterGroups": [{"filters": [{"propertyName": "no_such_property", "operator": "EQ", "value": "x"}]}]})

    call(k.docs, "DELETE", f"{k.path}/{new_id}", 204)
    call(k.docs, "GET", f"{k.path}/{new_id}", 200, params={"archived": "true"})
    call(k.docs, "POST", f"{k.path}/batch/archive", 204, json={"inputs": [{"id": batch_id}, {"id": extra_id}]})
    return [new_id, batch_id]


def _exercise_associations(c: Checker) -> None:
    """The v4 association operations the emulator serves (api-notes A.8), on fresh records."""
    v4 = ("associations-v4",)
    company = str(CUSTOMERS[1].hubspot_id)
    deal = c.call(("deals",), "POST", "/crm/v3/objects/0-3", 201, json={"properties": {"dealname": "A deal"}})["id"]
    item = c.call(("lineItems",), "POST", "/crm/v3/objects/line_items", 201,
                  json={"properties": {"name": "A item", "quantity": "1", "price": "1"}})["id"]
    lonely = c.call(("companies",), "POST", "/crm/v3/objects/companies", 201,
                    json={"properties": {"name": "No deals"}})["id"]

    made = c.call(v4, "PUT", f"/crm/v4/objects/deals/{deal}/associations/default/companies/{company}", 200)
    assert {r["associationSpec"]["associationTypeId"] for r in made["results"]} == {341, 342}
    pair = c.call(v4, "PUT", f"/crm/v4/objects/0-3/{deal}/associations/companies/{company}", 201,
                  json=[{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 5}])
    assert pair["labels"] == ["Primary"] and pair["toObjectId"] == company

    # the company now has the seeded deal and the new one: page through them one at a time
    page = c.call(v4, "GET", f"/crm/v4/objects/companies/{company}/associations/deals", 200, params={"limit": 1})
    assert page["paging"]["next"]["after"]
    page2 = c.call(v4, "GET", f"/crm/v4/objects/companies/{company}/associations/deals", 200,
                   params={"limit": 1, "after": page["paging"]["next"]["after"]})
    assert {page["results"][0]["toObjectId"], page2["results"][0]["toObjectId"]} >= {deal}

    c.call(v4, "POST", "/crm/v4/associations/companies/deals/batch/read", 200,
           json={"inputs": [{"id": company}]})
    none = c.call(v4, "POST", "/crm/v4/associations/companies/deals/batch/read", 207,
                  json={"inputs": [{"id": company}, {"id": lonely}]})
    assert none["errors"][0]["subCategory"] == "crm.associations.NO_ASSOCIATIONS_FOUND"

    c.call(v4, "POST", "/crm/v4/associations/line_items/deals/batch/associate/default", 200,
           json={"inputs": [{"from": {"id": item}, "to": {"id": deal}}]})
    types = [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 5}]
    c.call(v4, "POST", "/crm/v4/associations/deals/companies/batch/create", 201,
           json={"inputs": [{"from": {"id": deal}, "to": {"id": lonely}, "types": types}]})
    c.call(v4, "POST", "/crm/v4/associations/deals/companies/batch/create", 207, json={"inputs": [
        {"from": {"id": deal}, "to": {"id": lonely}, "types": types},
        {"from": {"id": deal}, "to": {"id": "1"}, "types": types}]})
    c.call(v4, "POST", "/crm/v4/associations/deals/companies/batch/archive", 204,
           json={"inputs": [{"from": {"id": deal}, "to": [{"id": lonely}]}]})
    c.call(v4, "DELETE", f"/crm/v4/objects/deals/{deal}/associations/companies/{company}", 204)
    c.call(v4, "PUT", f"/crm/v4/objects/deals/{deal}/associations/default/companies/1", 404)
    c.call(v4, "GET", f"/crm/v4/objects/companies/{company}/associations/deals", 400, params={"limit": 501})


def _exercise_auth_conflict_and_limits(c: Checker, sb: Any) -> None:
    """401 (missing/bad token), 409 (duplicate unique value) and 429 (burst and search policies)."""
    docs = ("companies", "objects")
    existing = c.call(docs, "POST", "/crm/v3/objects/companies", 201,
                      json={"properties": {"name": "Unique", "m3ter_account_id": "oa-dup"}})
    dup = c.call(docs, "POST", "/crm/v3/objects/companies", 409,
                 json={"properties": {"name": "Dup", "m3ter_account_id": "oa-dup"}})
    assert dup["context"]["id"] == [existing["id"]]
    c.call(docs, "GET", "/crm/v3/objects/companies", 401, headers={"Authorization": "Bearer pat-na1-wrong"})
    c.call(docs, "GET", "/crm/v3/objects/companies", 401, headers={"Authorization": ""})

    sb.admin("hubspot", "limits", "POST", enabled=True)
    sb.admin("hubspot", "rate_limit", "POST", ten_secondly=1, window_s=60, search_per_s=1)
    c.call(docs, "GET", "/crm/v3/objects/companies", 200, params={"limit": 1})
    burst = c.call(docs, "GET", "/crm/v3/objects/companies", 429, params={"limit": 1})
    assert burst["policyName"] == "TEN_SECONDLY_ROLLING"
    c.call(docs, "POST", "/crm/v3/objects/companies/search", 200, json={"limit": 1})
    secondly = c.call(docs, "POST", "/crm/v3/objects/companies/search", 429, json={"limit": 1})
    assert secondly["policyName"] == "SECONDLY"


def test_responses_match_the_openapi_documents(sb: Any, capsys: Any) -> None:
    records = GuardRecords("hubspot")
    c = Checker(sb.url("hubspot"))
    for kind in _kinds():
        _exercise_objects(c, kind)
    _exercise_associations(c)
    _exercise_auth_conflict_and_limits(c, sb)

    entries = records.wait_for(c.calls)
    assert [e for e in entries if e["outcome"] not in ("validated", "unauthenticated")] == []
    covered: dict[str, dict[str, set[int]]] = {name: {} for name in DOCS}
    for n, e in enumerate(entries, start=1):
        judged_by = {k.split(":", 1)[0] for k in e["ops"]}
        assert set(c.expected_docs[n]) <= judged_by, f"call {n} was judged by {judged_by}"
        for key in e["ops"]:
            name, op = key.split(":", 1)
            if name in covered:
                covered[name].setdefault(op, set()).add(e["status"])
    with capsys.disabled():
        print()
        for name in DOCS:
            print(f"HubSpot {name}.json operations validated by the spec guard: "
                  f"{len(covered[name])} of {len(_operations(name))}")
            for op, statuses in sorted(covered[name].items(), key=lambda o: (o[0].split(" ")[1], o[0])):
                print(f"  {op}  {sorted(statuses)}")
    for name in DOCS:
        emulated = _operations(name) - NOT_EMULATED
        assert set(covered[name]) == emulated, f"{name}.json: not covered {sorted(emulated - set(covered[name]))}"
    statuses = {s for ops in covered.values() for ss in ops.values() for s in ss}
    assert {200, 201, 204, 207, 400, 401, 404, 409, 429} <= statuses


@pytest.fixture
def sb(fresh_sandbox: Any) -> Iterator[Any]:
    """The demo portal with rate limits off (the sample makes ~200 calls); the 429 part turns them on."""
    fresh_sandbox.admin("hubspot", "limits", "POST", enabled=False)
    try:
        yield fresh_sandbox
    finally:
        fresh_sandbox.reset("demo")  # restores the documented limits for whoever runs next
