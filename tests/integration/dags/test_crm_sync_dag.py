"""``m3sh_crm_sync`` end to end: Salesforce + HubSpot demo CRMs -> m3ter, via whole ``dag.test()`` runs.

Checked through the emulators' public APIs: m3ter accounts/contracts/account plans/external
mappings, CRM write-backs (SOQL and HubSpot reads), and request stats for "a re-run writes nothing".
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from m3sh.sandbox.seed import demo_company

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]


@pytest.fixture
def crm_env(fresh_sandbox: Any, airflow_db: Path, m3sh_config: Any) -> Any:
    m3sh_config()
    return fresh_sandbox


def _run(**conf: Any) -> Any:
    from m3sh.dagkit.crm_sync import build_crm_sync_dag

    return build_crm_sync_dag().test(run_conf=conf)


def _writes(sandbox: Any, name: str) -> int:
    """Mutating requests an emulator received (the emulator's own count: POSTs that only read —
    search, batch read, login, token, usage query — are not writes)."""
    return int(sandbox.stats(name)["counts"].get("writes", 0))


def _m3ter() -> Any:
    from m3sh.hooks.m3ter import M3terHook

    return M3terHook()


def test_full_sync_then_rerun_writes_nothing(crm_env: Any) -> None:
    company = demo_company()
    run = _run(full_resync=True)
    assert run.state == "success"
    hook = _m3ter()
    accounts = {a["code"]: a for a in hook.list_accounts()}
    # every demo customer exactly once, customers present in both CRMs included
    assert set(accounts) == {c.key for c in company.customers}
    both = [c for c in company.customers if c.crm == "both"]
    sources = {c.key: accounts[c.key]["customFields"].get("crm_source") for c in both}
    wrong = {k: v for k, v in sources.items() if v != "hubspot,salesforce"}
    assert both and not wrong, wrong
    # pre-existing prepaid accounts kept their identity (m3ter owns it) and were linked, not duplicated
    prepaid = [c for c in company.customers if c.in_m3ter]
    assert all(accounts[c.key]["emailAddress"] == c.email for c in prepaid)
    contracts = {c["code"]: c for c in hook.list_contracts()}
    for c in company.customers:
        code = f"{c.key}-c{c.contract_start:%Y%m%d}"
        assert code in contracts, code
        assert contracts[code]["endDate"][:10] == c.contract_end.isoformat()
    plans = {p["id"]: p["code"] for p in hook.list_plans()}
    active = {}
    for ap in hook.list_account_plans():
        active.setdefault(ap["accountId"], set()).add(plans[ap["planId"]])
    for c in company.customers:
        assert c.plan_code in active[accounts[c.key]["id"]], c.key
    mappings = list(hook.list_external_mappings())
    n_records = sum(2 if c.crm == "both" else 1 for c in company.customers)
    assert len(mappings) == n_records

    # CRM records now carry the m3ter id
    from m3sh.hooks.hubspot import HubSpotHook
    from m3sh.hooks.salesforce import SalesforceSync

    sf_rows = list(SalesforceSync().query("SELECT Id, AccountNumber, M3ter_Account_Id__c FROM Account", "Account"))
    assert sf_rows and all(r["M3ter_Account_Id__c"] == accounts[r["AccountNumber"]]["id"] for r in sf_rows)
    hs = list(HubSpotHook().iter_objects("companies", ["m3ter_account_code", "m3ter_account_id"]))
    assert hs and all(r["properties"]["m3ter_account_id"] == accounts[r["properties"]["m3ter_account_code"]]["id"]
                      for r in hs)

    # a second run with no upstream change writes nothing anywhere
    before = {n: _writes(crm_env, n) for n in ("m3ter", "salesforce", "hubspot")}
    assert _run(full_resync=True).state == "success"
    after = {n: _writes(crm_env, n) for n in ("m3ter", "salesforce", "hubspot")}
    assert after == before


def test_dry_run_writes_nothing_and_reports_the_diff(crm_env: Any) -> None:
    before = {n: _writes(crm_env, n) for n in ("m3ter", "salesforce", "hubspot")}
    run = _run(full_resync=True, dry_run=True)
    assert run.state == "success"
    assert {n: _writes(crm_env, n) for n in ("m3ter", "salesforce", "hubspot")} == before
    assert len(list(_m3ter().list_accounts())) == sum(1 for c in demo_company().customers if c.in_m3ter)
    # the diff report is in S3 and lists the creates
    from m3sh.config import get_config
    from m3sh.storage import Storage

    storage = Storage.from_config(get_config().storage)
    reports = [o["Key"] for o in storage.list_keys(storage.key("reports", "m3sh_crm_sync"))]
    report = storage.get_json(sorted(reports)[-1])
    assert report["dry_run"] is True
    assert report["counts"]["account_create"] == len(demo_company().customers) - sum(
        1 for c in demo_company().customers if c.in_m3ter)


def test_backfill_window_touches_only_records_changed_in_it(crm_env: Any) -> None:
    """A run for a past hour re-syncs what changed in that hour and nothing else."""
    assert _run(full_resync=True).state == "success"
    hook = _m3ter()
    sf_only = [c for c in demo_company().customers if c.crm == "salesforce" and not c.in_m3ter]
    inside, outside = sf_only[0], sf_only[1]
    # a past hour after the DAG start_date (earlier logical dates get no task instances)
    window_end = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).replace(minute=0, second=0, microsecond=0)

    def edit(customer: Any, name: str, when: dt.datetime) -> None:
        crm_env.admin("salesforce", "set_fields", "POST", sobject="Account", id=customer.salesforce_id,
                      fields={"Name": name, "SystemModstamp": when.strftime("%Y-%m-%dT%H:%M:%S.000+0000")})

    edit(inside, "Renamed Inside", window_end - dt.timedelta(minutes=20))
    edit(outside, "Renamed Outside", window_end + dt.timedelta(minutes=20))
    before = _writes(crm_env, "m3ter")
    from m3sh.dagkit.crm_sync import build_crm_sync_dag

    # a manual run with logical date T covers the data interval [T - 1h, T)
    run = build_crm_sync_dag().test(logical_date=window_end)
    assert run.state == "success"
    assert hook.find_account(inside.key)["name"] == "Renamed Inside"
    assert hook.find_account(outside.key)["name"] == outside.name
    assert _writes(crm_env, "m3ter") - before == 2  # that account and its contract (named after it), nothing else
