"""Two Salesforce orgs of one company through whole DAG runs (issue #18 item 2).

The sandbox's Salesforce serves two orgs (``salesforce_default``: Northwind's, ``salesforce_acme``:
an acquired company's), each with its own user and instance host. The evolution a user goes
through by config only: one org; a second org added (its customers merged with the first's by the
match keys: an overlapping customer gets ONE m3ter account linked from both); the first org retired
(removed from config) with nothing duplicated and the history (mappings, accounts, contracts) kept.
Plus the migration of an external mapping written by CRM type before mappings named the source.

Both CRMs are emptied first (m3ter keeps the demo seed: plans and the prepaid accounts), so each
org holds only the handful of customers the test puts there and the runs stay short.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

TODAY = dt.date.today()
START = TODAY - dt.timedelta(days=30)  # Contract EndDate: computed from ContractTerm 12
FIRST_SOURCE = """    - name: salesforce
      type: salesforce
      conn_id: salesforce_default
      priority: 10
"""
FIELDS = ("      account_fields: {name: Name, domain: Website, email: Billing_Email__c, currency: CurrencyIsoCode,\n"
          "                       country: BillingCountry, owner: Owner_Name__c}\n"
          "      write_back_field: M3ter_Account_Id__c\n")
SECOND_SOURCE = ("    - name: sf_acme\n      type: salesforce\n      conn_id: salesforce_acme\n      priority: 30\n"
                 + FIELDS)
SF_DESTINATION = "      type: salesforce\n      conn_id: salesforce_default\n    - name: archive"


@pytest.fixture
def orgs(fresh_sandbox: Any, airflow_db: Path) -> Any:
    for crm in ("salesforce", "hubspot"):  # both Salesforce orgs and the HubSpot portal, empty
        fresh_sandbox.admin(crm, "reset", "POST", seed="empty")
    return fresh_sandbox


def _customers(sb: Any, org: str, names: list[str]) -> dict[str, str]:
    """Accounts (domain = ``<name>.example``) with a current contract in one org: name -> Account Id."""
    ids = sb.admin("salesforce", "insert", "POST", org=org, sobject="Account", records=[{
        "Name": name.title(), "Website": f"{name}.example", "Billing_Email__c": f"ap@{name}.example",
        "CurrencyIsoCode": "USD", "BillingCountry": "US", "Owner_Name__c": "Ada", "Type": "Customer"}
        for name in names])["ids"]
    sb.admin("salesforce", "insert", "POST", org=org, sobject="Contract", records=[{
        "AccountId": acc, "Name": f"{name} subscription", "StartDate": START.isoformat(),
        "ContractTerm": 12, "Status": "Draft", "CurrencyIsoCode": "USD"} for name, acc in zip(names, ids, strict=True)])
    return dict(zip(names, ids, strict=True))


def _sync() -> Any:
    from m3sh.dagkit.crm_sync import build_crm_sync_dag

    run = build_crm_sync_dag().test(run_conf={"full_resync": True})
    assert run.state == "success"
    return run


def _m3ter() -> Any:
    from m3sh.hooks.m3ter import M3terHook

    return M3terHook()


def _state() -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]]]:
    hook = _m3ter()
    return ({a["code"]: a for a in hook.list_accounts()}, list(hook.list_external_mappings()),
            {c["code"]: c for c in hook.list_contracts()})


def _links(mappings: list[dict[str, Any]], account_id: str) -> set[tuple[str, str]]:
    return {(m["externalSystem"], m["externalId"]) for m in mappings if m["m3terId"] == account_id}


def _write_back(conn_id: str) -> dict[str, str | None]:
    from m3sh.hooks.salesforce import SalesforceSync

    rows = SalesforceSync(conn_id=conn_id).query("SELECT Id, M3ter_Account_Id__c FROM Account", "Account")
    return {str(r["Id"]): r["M3ter_Account_Id__c"] for r in rows}


def test_second_org_added_merged_by_match_keys_then_first_org_retired(orgs: Any, m3sh_config: Any) -> None:
    # 1. one org, as today
    m3sh_config()
    first = _customers(orgs, "default", ["alpha", "shared"])
    _sync()
    accounts, mappings, contracts = _state()
    shared = accounts["shared"]
    assert _links(mappings, shared["id"]) == {("salesforce", first["shared"])}
    assert f"shared-c{START:%Y%m%d}" in contracts

    # 2. the acquired company's org added by config: its copy of "shared" (same domain and email) joins
    #    the existing account; its own customer gets a new one
    m3sh_config(_config(first=True, second=True))
    second = _customers(orgs, "acme", ["shared", "gamma"])
    assert set(second.values()).isdisjoint(first.values())  # two orgs, two id spaces
    _sync()
    accounts2, mappings2, contracts2 = _state()
    assert set(accounts2) - set(accounts) == {"gamma"}  # no second "shared"
    assert accounts2["shared"]["id"] == shared["id"]
    assert _links(mappings2, shared["id"]) == {("salesforce", first["shared"]), ("sf_acme", second["shared"])}
    assert accounts2["shared"]["customFields"]["crm_source"] == "salesforce,sf_acme"
    assert _links(mappings2, accounts2["gamma"]["id"]) == {("sf_acme", second["gamma"])}
    # each org got the m3ter id written back on its own connection
    assert _write_back("salesforce_acme") == {second["shared"]: shared["id"],
                                              second["gamma"]: accounts2["gamma"]["id"]}
    assert _write_back("salesforce_default")[first["shared"]] == shared["id"]
    assert f"shared-c{START:%Y%m%d}" in contracts2 and f"gamma-c{START:%Y%m%d}" in contracts2
    # a re-run with both orgs writes nothing to m3ter
    orgs.admin("m3ter", "stats", "DELETE")
    _sync()
    assert int(orgs.stats("m3ter")["counts"].get("writes", 0)) == 0

    # 3. the first org retired: removed from config (the survivor says the mappings keyed 'salesforce',
    #    the retired source's own, are not its); a change in the surviving org syncs onto the same account
    m3sh_config(_config(first=False, second=True))
    orgs.admin("salesforce", "set_fields", "POST", org="acme", sobject="Account", id=second["shared"],
               fields={"Owner_Name__c": "Grace"})
    _sync()
    accounts3, mappings3, contracts3 = _state()
    assert set(accounts3) == set(accounts2)  # nothing duplicated, nothing lost
    assert accounts3["shared"]["id"] == shared["id"]
    assert accounts3["shared"]["customFields"].get("crm_owner") == "Grace"
    # history intact: the retired org's links and the contracts are all still there
    assert _links(mappings3, shared["id"]) == _links(mappings2, shared["id"])
    assert len(mappings3) == len(mappings2)
    assert set(contracts3) == set(contracts2)


def _config(first: bool, second: bool) -> dict[str, str]:
    """Demo-config replacements: which Salesforce sources are configured. With several, the Salesforce
    invoice destination names the org it writes to; after the first org (named after its type) is
    retired, the survivor disowns the mappings keyed ``salesforce`` (they are the retired org's)."""
    from m3sh.config import DEFAULT_CONFIG_PATH

    demo = DEFAULT_CONFIG_PATH.read_text()
    first_block = demo[demo.index(FIRST_SOURCE):demo.index("    - name: hubspot\n")]
    survivor = SECOND_SOURCE if first else SECOND_SOURCE.replace("priority: 30\n",
                                                                 "priority: 30\n      legacy_mappings: false\n")
    replace = {first_block: (first_block if first else "") + (survivor if second else "")}
    if second:
        conn, source = ("salesforce_default", "salesforce") if first else ("salesforce_acme", "sf_acme")
        replace[SF_DESTINATION] = SF_DESTINATION.replace("salesforce_default\n",
                                                         f"{conn}\n      crm_source: {source}\n")
    return replace


def test_a_mapping_written_by_crm_type_is_migrated_to_the_source_name(orgs: Any, m3sh_config: Any) -> None:
    """Before mappings named the source, m3sh wrote ``externalSystem = salesforce``. With the org's
    source named ``sf_northwind``, the next sync attributes that mapping to it (the only Salesforce
    source), keeps the account it points at (even though the record's domain now differs) and
    rewrites the same mapping under the source name; a further sync writes nothing."""
    m3sh_config({FIRST_SOURCE: FIRST_SOURCE.replace("name: salesforce", "name: sf_northwind")})
    crm_id = _customers(orgs, "default", ["renamed-co"])["renamed-co"]
    hook = _m3ter()
    account = hook.upsert_account("legacy-co", {"name": "Legacy Co", "emailAddress": "ap@legacy.example",
                                                "currency": "USD"}).entity
    old = hook.create_external_mapping({"externalSystem": "salesforce", "externalTable": "Account",
                                        "externalId": crm_id, "m3terEntity": "Account", "m3terId": account["id"]})
    _sync()
    accounts, mappings, _ = _state()
    assert "renamed-co" not in accounts  # the link kept the customer on its account
    mine = [m for m in mappings if m["externalId"] == crm_id]
    assert [(m["id"], m["externalSystem"], m["m3terId"]) for m in mine] == [(old["id"], "sf_northwind", account["id"])]
    assert _write_back("salesforce_default")[crm_id] == account["id"]
    orgs.admin("m3ter", "stats", "DELETE")
    _sync()
    assert int(orgs.stats("m3ter")["counts"].get("writes", 0)) == 0


ACME_DESTINATION = ("    - name: sf_acme_invoices\n      type: salesforce\n      conn_id: salesforce_acme\n"
                    "      crm_source: sf_acme\n    - name: archive\n      type: s3\n")


def test_two_orgs_through_invoice_sync_and_reconcile(orgs: Any, m3sh_config: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Each customer's invoice lands in its own org (the org of its best-priority link, on that org's
    connection), and m3sh_reconcile checks every org's records on its own connection: clean."""
    from m3sh.hooks.salesforce import SalesforceSync
    from tests.integration.dags.test_invoice_sync_dag import _fast_netsuite, run_sync
    from tests.integration.dags.test_reconcile_dag import latest, run_reconcile

    m3sh_config({**_config(first=True, second=True), "    - name: archive\n      type: s3\n": ACME_DESTINATION,
                 "to: [netsuite_us, salesforce, archive]": "to: [netsuite_us, salesforce, sf_acme_invoices, archive]"})
    _fast_netsuite(orgs, monkeypatch)
    first = _customers(orgs, "default", ["alpha", "shared"])
    second = _customers(orgs, "acme", ["shared", "gamma"])
    _sync()
    hook = _m3ter()
    accounts = {a["code"]: a for a in hook.list_accounts()}
    # the demo's pre-linked prepaid accounts point at CRM records this test emptied: unlink them, so
    # the reconciliation judges only what this test built
    for a in accounts.values():
        if (a.get("customFields") or {}).get("crm_id") and a["code"] not in ("alpha", "shared", "gamma"):
            hook.update_account(a["id"], {"customFields": {"crm_id": "", "crm_source": ""}}, current=a)
    ours = [accounts[c]["id"] for c in ("alpha", "shared", "gamma")]
    bill_ids = list(orgs.admin("m3ter", "run_billing", "POST", accountIds=ours)["billIds"])
    assert len(bill_ids) >= 3
    hook.approve_bills(bill_ids)
    bills = {b: hook.get_bill(b) for b in bill_ids}
    assert run_sync().state == "success"

    def invoices(conn_id: str) -> dict[str, str]:
        rows = SalesforceSync(conn_id=conn_id).query("SELECT M3ter_Bill_Id__c, Account__c FROM Invoice__c",
                                                     "Invoice__c")
        return {str(r["M3ter_Bill_Id__c"]): str(r["Account__c"]) for r in rows}

    code_of = {a["id"]: code for code, a in accounts.items()}
    by_code = {code_of[b["accountId"]]: bill_id for bill_id, b in bills.items()}
    # "shared" is in both orgs; the first org has priority, so its invoice is there, once
    assert invoices("salesforce_default") == {by_code["alpha"]: first["alpha"], by_code["shared"]: first["shared"]}
    assert invoices("salesforce_acme") == {by_code["gamma"]: second["gamma"]}

    assert run_reconcile().state == "success"
    summary, _ = latest()
    assert summary["clean"] is True and summary["findings"] == 0, summary.get("drift")
    # a record deleted in the second org is found missing there, named by its source
    acme = SalesforceSync(conn_id="salesforce_acme")
    acme.hook.get_conn().Account.delete(second["gamma"])
    assert run_reconcile().state == "failed"
    drift = latest()[0]["drift"]
    assert [(d["check"], d["system"], d["account"]) for d in drift if d["check"] == "crm_record_missing"] == [
        ("crm_record_missing", "sf_acme", "gamma")]
