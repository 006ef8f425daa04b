"""The m3ter emulator's store indexes and ordered pagination must give the same answers as the
scans they replace: the index follows replace/delete/re-insert, dict order stays creation order,
and a list request narrowed through an index returns exactly what the full filter returns."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import QueryParams

from m3sh.sandbox.m3ter.app import M3terEmulator
from m3sh.sandbox.m3ter.routes_config import KIND_BY_NAME, _candidates
from m3sh.sandbox.m3ter.store import Store, paginate


def _account(store: Store, code: str, **extra: Any) -> dict[str, Any]:
    return store.insert("accounts", {"code": code, "name": code, "emailAddress": f"{code}@x.example", **extra})


def test_code_index_follows_replace_delete_and_reinsert() -> None:
    store = Store()
    a, b = _account(store, "a"), _account(store, "b")
    store.replace("accounts", a["id"], {"code": "a2", "name": "A", "emailAddress": "a@x.example", "version": 1})
    assert store.find("accounts", "code", "a") is None
    assert store.find("accounts", "code", "a2") is store.coll("accounts")[a["id"]]
    store.delete("accounts", b["id"])
    assert store.find("accounts", "code", "b") is None

    again = store.insert("accounts", {"code": "c", "name": "c"}, entity_id=a["id"])  # same id, new entity
    assert store.find("accounts", "code", "a2") is None
    assert list(store.coll("accounts").values()) == [again]
    # duplicate codes (bulk seed / ingest skeletons can make them): the oldest wins, as a scan would
    first, _ = _account(store, "dup"), _account(store, "dup")
    assert store.find("accounts", "code", "dup") is first
    assert store.find("accounts", "purchaseOrderNumber", None) is again  # unindexed/None: the scan


def test_collection_order_is_creation_order_after_replace_and_reinsert() -> None:
    store = Store()
    ids = [_account(store, f"c{i}")["id"] for i in range(5)]
    store.replace("accounts", ids[1], {"code": "c1", "name": "x", "emailAddress": "x@x.example", "version": 1})
    store.insert("accounts", {"code": "c2b", "name": "x"}, entity_id=ids[2])
    seqs = [e["_seq"] for e in store.coll("accounts").values()]
    assert seqs == sorted(seqs)
    assert list(store.coll("accounts"))[-1] == ids[2]


def _walk(items: list[dict[str, Any]], size: int, ordered: bool, extra: str = "") -> list[list[str]]:
    pages, token = [], ""
    while True:
        body = paginate(items, QueryParams(f"pageSize={size}{token}{extra}"), 200, in_seq_order=ordered)
        pages.append([e["id"] for e in body["data"]])
        if "nextToken" not in body:
            return pages
        token = f"&nextToken={body['nextToken']}"


def test_ordered_pagination_matches_the_sorting_one() -> None:
    store = Store()
    for i in range(23):
        _account(store, f"p{i}")
    items = [e for e in store.coll("accounts").values() if e["_seq"] % 3]  # a filtered copy, in order
    for size in (1, 5, 7, 15, 16, 200):
        assert _walk(items, size, True) == _walk(items, size, False)
    pages = _walk(items, 5, True)
    assert [i for p in pages for i in p] == [e["id"] for e in reversed(items)]
    assert _walk([], 5, True) == [[]]


def test_narrowed_list_candidates_keep_the_filter_result() -> None:
    emu = M3terEmulator()
    store = emu.store
    acc = [_account(store, f"n{i}") for i in range(3)]
    for i, a in enumerate(acc * 2):
        store.insert("contracts", {"code": f"k{i}", "name": "k", "accountId": a["id"]})
    store.insert("contracts", {"code": "odd", "name": "k", "accountId": f"{acc[0]['id']},{acc[1]['id']}"})
    contracts, accounts = KIND_BY_NAME["contracts"], KIND_BY_NAME["accounts"]
    queries = [
        f"accountId={acc[0]['id']}",
        f"accountId={acc[0]['id']},{acc[2]['id']}&codes=k0,k5,k3",
        f"ids={next(iter(store.coll('contracts')))}&ids=nope&accountId={acc[1]['id']}",
        "codes=k1&codes=k1",
        "",
    ]
    for raw in queries:
        query = QueryParams(raw)
        assert contracts.filters is not None
        full = contracts.filters(emu, list(store.coll("contracts").values()), query)
        narrowed = contracts.filters(emu, _candidates(emu, contracts, query), query)
        assert narrowed == full, raw
    assert [e["code"] for e in _candidates(emu, accounts, QueryParams("codes=n2,n0"))] == ["n0", "n2"]
