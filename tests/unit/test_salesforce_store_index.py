# ruff: noqa: S608 - SOQL text built from ids the in-process store just generated
"""The Salesforce emulator's hash indexes (Id, lookups, external ids) must follow every write:
a record re-parented by update or the set_fields back door is found by ``AccountId IN``, a
15-char id still resolves, and an external id moved by update is found at its new value only."""

from __future__ import annotations

from m3sh.sandbox.salesforce.schema import OBJECTS
from m3sh.sandbox.salesforce.store import Store

ACCOUNT, CONTRACT = OBJECTS["Account"], OBJECTS["Contract"]


def _ids(store: Store, soql: str) -> list[str]:
    return [r["Id"] for r in store.run_query(soql, "59.0", False, None)["records"]]


def test_lookup_index_follows_update_and_set_fields() -> None:
    store = Store()
    a, b = (store.create(ACCOUNT, {"Name": n})["Id"] for n in ("A", "B"))
    c1 = store.create(CONTRACT, {"AccountId": a})["Id"]
    c2 = store.create(CONTRACT, {"AccountId": a[:15]})["Id"]  # 15-char form of the same id
    assert _ids(store, f"SELECT Id FROM Contract WHERE AccountId IN ('{a}')") == [c1, c2]

    store.update(CONTRACT, store.records["Contract"][c1], {"AccountId": b})
    store.set_fields(CONTRACT, store.records["Contract"][c2], {"accountid": b[:15]})
    assert _ids(store, f"SELECT Id FROM Contract WHERE AccountId = '{a}'") == []
    assert _ids(store, f"SELECT Id FROM Contract WHERE AccountId IN ('{b[:15]}', 'nope') ORDER BY Id DESC") == \
        sorted([c1, c2], reverse=True)
    assert store.find(ACCOUNT, b[:15]) is store.records["Account"][b]


def test_external_id_index_follows_update_and_ignores_deleted() -> None:
    store = Store()
    rec, created = store.upsert(ACCOUNT, "M3ter_Account_Id__c", "M3-1", {"Name": "One"})
    assert created
    assert store.upsert(ACCOUNT, "M3ter_Account_Id__c", "m3-1", {"Name": "Uno"}) == (rec, False)  # case-insensitive

    store.update(ACCOUNT, rec, {"M3ter_Account_Id__c": "M3-2"})
    assert store.find_by_field(ACCOUNT, ACCOUNT.fields["M3ter_Account_Id__c"], "M3-1") == []
    assert _ids(store, "SELECT Id FROM Account WHERE M3ter_Account_Id__c = 'm3-2'") == [rec["Id"]]

    store.delete(ACCOUNT, rec)
    again, created = store.upsert(ACCOUNT, "M3ter_Account_Id__c", "M3-2", {"Name": "Two"})
    assert created and again["Id"] != rec["Id"]
    all_rows = store.run_query("SELECT Id FROM Account WHERE M3ter_Account_Id__c = 'M3-2'", "59.0", True, None)
    assert [r["Id"] for r in all_rows["records"]] == [rec["Id"], again["Id"]]  # queryAll: insertion order
