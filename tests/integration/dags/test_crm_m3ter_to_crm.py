"""``m3sh_crm_sync``'s m3ter -> CRM step (``to_crm_<source>``), whole-DAG runs against the sandbox.

m3ter is changed through the hook (an operator renaming an account) and the automation's own plan
switch (what ``m3sh_plan_triggers`` does); the CRMs are read back through their public APIs and
CRM writes are counted through the emulators' request stats, and read back through the CRMs' field
history (Salesforce ``AccountHistory``/``ContractHistory``, HubSpot ``propertiesWithHistory``): one
write of m3sh's is one history entry by its user / private app, and a re-run adds none.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from m3sh.sandbox.seed import demo_company

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

NAME_M3TER_WINS = {"      po_number: m3ter_wins\n": "      po_number: m3ter_wins\n      name: m3ter_wins\n"
                                                   "    contract_fields:\n      end_date: m3ter_wins\n",
                   "  on_failure: [ops_slack, ops_email]\n": "  on_failure: [ops_slack, ops_email]\n"
                                                              "  on_conflict: [ops_slack]\n"}


@pytest.fixture
def crm_env(fresh_sandbox: Any, airflow_db: Path, m3sh_config: Any) -> Any:
    m3sh_config(replace=NAME_M3TER_WINS)
    return fresh_sandbox


def _run(**kw: Any) -> Any:
    from m3sh.dagkit.crm_sync import build_crm_sync_dag

    return build_crm_sync_dag().test(**kw)


def _writes(sandbox: Any, name: str) -> int:
    return int(sandbox.stats(name)["counts"].get("writes", 0))


def _crm_writes(sandbox: Any) -> dict[str, int]:
    return {n: _writes(sandbox, n) for n in ("salesforce", "hubspot")}


def _past_hour(hours_ago: int) -> dt.datetime:
    """A data interval with no CRM change in it (after the DAG's start date): only m3ter changed."""
    return (dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours_ago)).replace(minute=0, second=0, microsecond=0)


def _m3ter() -> Any:
    from m3sh.hooks.m3ter import M3terHook

    return M3terHook()


def _storage() -> Any:
    from m3sh.config import get_config
    from m3sh.storage import Storage

    return Storage.from_config(get_config().storage)


def _sf_account(sf_id: str) -> dict[str, Any]:
    from m3sh.hooks.salesforce import SalesforceSync

    return SalesforceSync().get_record("Account", sf_id, ["Name", "M3ter_Plan__c", "Billing_Email__c"])


def _hs_company(hs_id: str) -> dict[str, Any]:
    from m3sh.hooks.hubspot import HubSpotHook

    return dict(HubSpotHook().batch_read("companies", [hs_id], ["name", "m3ter_plan"])[hs_id]["properties"])


def _sf_history(history_object: str, parent_field: str, record_id: str, field: str) -> list[dict[str, Any]]:
    """Field history rows of one tracked field of one record, oldest first."""
    from m3sh.hooks.salesforce import SalesforceSync, soql_literal

    soql = (f"SELECT Field, OldValue, NewValue, CreatedById FROM {history_object} WHERE {parent_field} = "  # noqa: S608
            f"{soql_literal(record_id)} AND Field = {soql_literal(field)} ORDER BY CreatedDate")  # quoted, escaped
    return [dict(r) for r in SalesforceSync().query(soql, history_object)]


def _hs_history(object_type: str, record_id: str, prop: str) -> list[dict[str, Any]]:
    """A property's history entries written by a private app (INTEGRATION), newest first."""
    from m3sh.hooks.hubspot import HubSpotHook

    rec = HubSpotHook().batch_read(object_type, [record_id], [prop], history=[prop])[record_id]
    return [h for h in (rec.get("properties_with_history") or {}).get(prop, []) if h["source_type"] == "INTEGRATION"]


def _outbound_report(run: Any, source: str) -> dict[str, Any]:
    from m3sh import layout

    storage = _storage()
    report = storage.get_json(layout.crm_outbound_report(storage, "m3sh_crm_sync", run.run_id, source))
    assert report is not None, f"no m3ter -> CRM report of {source} for {run.run_id}"
    return dict(report)


def _sf_contract(account_id: str) -> dict[str, Any]:
    from m3sh.hooks.salesforce import SalesforceSync, soql_literal

    soql = "SELECT Id, StartDate, ContractTerm, EndDate FROM Contract WHERE AccountId = " + soql_literal(  # noqa: S608
        account_id)  # quoted and escaped
    [contract] = SalesforceSync().query(soql, "Contract")
    return dict(contract)


def _hs_deal(deal_id: str) -> dict[str, Any]:
    from m3sh.hooks.hubspot import HubSpotHook

    return dict(HubSpotHook().batch_read("deals", [deal_id], ["contract_end"])[deal_id]["properties"])


def _extend_m3ter_contract(account_code: str, source: str, end: str) -> tuple[str, str]:
    """Set the end date of the m3ter contract linked to ``source``'s record (as an operator renewing
    it in m3ter would); returns (CRM contract record id, the contract's dtLastModified)."""
    hook = _m3ter()
    account = hook.find_account(account_code)
    [contract] = [c for c in hook.list_contracts(account_id=account["id"])
                  if str((c.get("customFields") or {}).get("crm_contract") or "").startswith(f"{source}:")]
    updated = hook.update_contract(contract["id"], {"endDate": end}, current=contract)
    return contract["customFields"]["crm_contract"].split(":", 1)[1], str(updated["dtLastModified"])


def _switch_plan(account: dict[str, Any], plan_code: str) -> None:
    from m3sh.automation.actions import switch_account_plan

    hook = _m3ter()
    at = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    outcome = switch_account_plan(hook, account["id"], hook.find_plan(plan_code), plan_code,
                                  at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert outcome.status not in ("skipped", "unchanged"), outcome


def test_plan_switch_and_rename_reach_both_crms_and_a_rerun_writes_nothing(crm_env: Any) -> None:
    assert _run(run_conf={"full_resync": True}).state == "success"
    customer = next(c for c in demo_company().customers if c.crm == "both")
    assert customer.salesforce_id and customer.hubspot_id
    # the first sync put each account's current plan on both CRMs
    assert _sf_account(customer.salesforce_id)["M3ter_Plan__c"] == customer.plan_code
    assert _hs_company(customer.hubspot_id)["m3ter_plan"] == customer.plan_code

    hook = _m3ter()
    account = hook.find_account(customer.key)
    new_plan = "enterprise_eur" if customer.currency == "EUR" else "enterprise_usd"
    if new_plan == customer.plan_code:
        new_plan = new_plan.replace("enterprise", "growth")
    _switch_plan(account, new_plan)
    hook.update_account(account["id"], {"name": "Renamed In m3ter"}, current=account)
    # contracts renewed in m3ter (end_date: m3ter_wins): a Salesforce Contract a year longer (its
    # EndDate is computed by Salesforce, so m3sh writes ContractTerm), a HubSpot deal to any date
    from m3sh.crm.outbound import salesforce_contract_end

    sf_customer = next(c for c in demo_company().customers if c.crm == "salesforce")
    hs_customer = next(c for c in demo_company().customers if c.crm == "hubspot")
    assert sf_customer.salesforce_id
    sf_before = _sf_contract(sf_customer.salesforce_id)
    sf_end = salesforce_contract_end(dt.date.fromisoformat(sf_before["StartDate"]),
                                     int(sf_before["ContractTerm"]) + 12).isoformat()
    contract_id, _ = _extend_m3ter_contract(sf_customer.key, "salesforce", sf_end)
    assert contract_id == sf_before["Id"]
    deal_id, changed_at = _extend_m3ter_contract(hs_customer.key, "hubspot", "2031-06-15")

    before = _crm_writes(crm_env)
    run = _run(logical_date=_past_hour(30))
    assert run.state == "success"
    sf, hs = _sf_account(customer.salesforce_id), _hs_company(customer.hubspot_id)
    assert (sf["Name"], sf["M3ter_Plan__c"]) == ("Renamed In m3ter", new_plan)
    assert (hs["name"], hs["m3ter_plan"]) == ("Renamed In m3ter", new_plan)
    sf_after = _sf_contract(sf_customer.salesforce_id)
    assert (sf_after["EndDate"], sf_after["ContractTerm"]) == (sf_end, int(sf_before["ContractTerm"]) + 12)
    assert _hs_deal(deal_id)["contract_end"][:10] == "2031-06-15"
    # incremental: the changed records plus those the CRM changed in that past hour (the seed
    # spreads its edits over 20 days) are compared, not every linked record; one write each
    for source in ("salesforce", "hubspot"):
        counts = _outbound_report(run, source)["counts"]
        assert (counts["crm_writes"], counts["conflicts"]) == (2, 0), (source, counts)
        assert 2 <= counts["candidates"] < counts["linked"] / 4, (source, counts)
    assert _crm_writes(crm_env) == {n: before[n] + 2 for n in before}
    # m3ter keeps its name and end dates (m3ter_wins) after the CRM -> m3ter step read the records back
    assert hook.find_account(customer.key)["name"] == "Renamed In m3ter"

    # the CRMs' field history: the rename and the renewals are each one change by m3sh (the
    # integration user on Salesforce, the private app on HubSpot), from the values seeded
    from m3sh.sandbox.salesforce.auth import USER_ID

    def changes() -> dict[str, list[tuple[Any, ...]]]:
        return {
            "sf name": [(h["OldValue"], h["NewValue"], h["CreatedById"])
                        for h in _sf_history("AccountHistory", "AccountId", str(customer.salesforce_id), "Name")],
            "sf term": [(h["OldValue"], h["NewValue"])
                        for h in _sf_history("ContractHistory", "ContractId", contract_id, "ContractTerm")],
            "hs name": [(h["value"],) for h in _hs_history("companies", str(customer.hubspot_id), "name")],
            "hs end": [(h["value"][:10],) for h in _hs_history("deals", deal_id, "contract_end")],
        }

    written = changes()
    assert written == {
        "sf name": [(customer.name, "Renamed In m3ter", USER_ID)],
        "sf term": [(int(sf_before["ContractTerm"]), int(sf_before["ContractTerm"]) + 12)],
        "hs name": [("Renamed In m3ter",)],
        "hs end": [("2031-06-15",)],
    }, written

    # re-runs, incremental and full, write nothing to either CRM: no request, no history entry
    before = _crm_writes(crm_env)
    assert _run(logical_date=_past_hour(29)).state == "success"
    assert _run(run_conf={"full_resync": True}).state == "success"
    assert _crm_writes(crm_env) == before
    assert changes() == written

    # A backfill (m3ter_backfill, as a run of type backfill does): the deal drifts in HubSpot behind
    # m3sh's back (its modification time too old for any extract window), so an incremental run
    # would not see it; a backfill of the hour m3ter renewed the contract in re-applies that
    # contract's end date, though its fingerprint is unchanged, and nothing else (a window with no
    # m3ter change selects nothing: tests/unit/test_crm_outbound.py).
    from m3sh.hooks.hubspot import HubSpotHook

    assert not HubSpotHook().batch_update("deals", [{"id": deal_id, "properties": {"contract_end": "2027-01-01"}}]
                                          ).failed
    crm_env.admin("hubspot", "set_modified", "POST", object_type="deals", ids=[deal_id],
                  modified_at="2020-01-01T00:00:00Z")
    hour = dt.datetime.fromisoformat(changed_at.replace("Z", "+00:00")).replace(minute=0, second=0, microsecond=0)
    window = _run(logical_date=hour + dt.timedelta(hours=1), run_conf={"m3ter_backfill": True})
    assert window.state == "success"
    report = _outbound_report(window, "hubspot")
    assert [w["record"] for w in report["writes"]] == [deal_id], report["writes"]
    # every record m3ter touched in that hour (this fresh sandbox made them all then) is compared;
    # only the drifted deal differs, so it is the one write
    assert report["counts"]["crm_writes"] == 1 and report["counts"]["candidates"] > 1
    assert _hs_deal(deal_id)["contract_end"][:10] == "2031-06-15"


def test_field_edited_in_m3ter_and_salesforce_is_one_conflict_resolved_by_the_rule(crm_env: Any) -> None:
    assert _run(run_conf={"full_resync": True}).state == "success"
    customer = next(c for c in demo_company().customers if c.crm == "salesforce" and not c.in_m3ter)
    assert customer.salesforce_id
    hook = _m3ter()
    account = hook.find_account(customer.key)
    hook.update_account(account["id"], {"name": "Name From m3ter"}, current=account)
    edited_at = dt.datetime.now(dt.UTC)
    crm_env.admin("salesforce", "set_fields", "POST", sobject="Account", id=customer.salesforce_id,
                  fields={"Name": "Name From Salesforce",
                          "SystemModstamp": edited_at.strftime("%Y-%m-%dT%H:%M:%S.000+0000")})

    run = _run()
    assert run.state == "success"
    # name: m3ter_wins -> m3ter's value on the Account, m3ter unchanged
    assert _sf_account(customer.salesforce_id)["Name"] == "Name From m3ter"
    assert hook.find_account(customer.key)["name"] == "Name From m3ter"
    report = _outbound_report(run, "salesforce")
    assert report["counts"]["conflicts"] == 1
    assert _outbound_report(run, "hubspot")["counts"]["conflicts"] == 0
    from m3sh import layout

    storage = _storage()
    stored = storage.get_json(layout.crm_conflicts(storage, "salesforce", run.run_id))
    assert stored is not None
    [conflict] = stored["conflicts"]
    assert {k: conflict[k] for k in ("record", "account", "field", "crm_field", "m3ter_value", "crm_value",
                                     "rule", "written")} == {
        "record": customer.salesforce_id, "account": customer.key, "field": "name", "crm_field": "Name",
        "m3ter_value": "Name From m3ter", "crm_value": "Name From Salesforce", "rule": "m3ter_wins",
        "written": "Name From m3ter"}
    assert conflict["previous"]["m3ter"] == conflict["previous"]["crm"] == customer.name
    assert conflict["m3ter_changed_at"] and conflict["crm_changed_at"]
    assert conflict["decision"].startswith("m3ter_wins")

    # on the m3sh page, read from S3 as the plugin does
    from m3sh.config import get_config
    from m3sh.web.ui import Section, StatusReader, render_page

    section = StatusReader(get_config(), storage).crm()
    [shown] = section.data["conflicts"]
    assert (shown["record"], shown["field"], shown["run_id"]) == (customer.salesforce_id, "name", run.run_id)
    [summary] = [r for r in section.data["runs"] if r["run_id"] == run.run_id]
    assert summary["conflicts"] == 1  # counted in the run's row too
    empty = Section(error="not read by this test")
    page = render_page({"crm": section, **dict.fromkeys(("usage", "invoices", "triggers", "reconcile"), empty)},
                       empty, user="test")
    assert "Name From Salesforce" in page and "Name From m3ter" in page and "m3ter_wins: m3ter&#x27;s value" in page

    # alerted once (alerting.on_conflict), naming the record and field
    [alert] = [m["text"] for m in crm_env.state("platform")["slack"]]
    assert "m3sh CRM conflicts: m3sh_crm_sync.to_crm_salesforce" in alert
    assert f"salesforce {customer.salesforce_id} ({customer.key}) name: m3ter_wins" in alert

    # resolved: the next run finds no conflict and writes nothing
    before = _crm_writes(crm_env)
    rerun = _run()
    assert rerun.state == "success"
    assert _outbound_report(rerun, "salesforce")["counts"]["conflicts"] == 0
    assert _crm_writes(crm_env) == before
    assert len(crm_env.state("platform")["slack"]) == 1


def test_fill_missing_fills_only_an_empty_crm_field_and_dry_run_reports_the_diff(crm_env: Any) -> None:
    """``email: fill_missing`` (the demo config): m3ter's billing email fills an Account that has
    none; an Account with its own value keeps it. A dry run first shows exactly that write."""
    assert _run(run_conf={"full_resync": True}).state == "success"
    sf_only = [c for c in demo_company().customers if c.crm == "salesforce" and not c.in_m3ter]
    emptied, kept = sf_only[0], sf_only[1]
    assert emptied.salesforce_id and kept.salesforce_id
    crm_env.admin("salesforce", "set_fields", "POST", sobject="Account", id=emptied.salesforce_id,
                  fields={"Billing_Email__c": None})
    hook = _m3ter()
    other = hook.find_account(kept.key)
    hook.update_account(other["id"], {"emailAddress": "finance@changed-in-m3ter.example"}, current=other)

    before = _crm_writes(crm_env)
    # full_resync: the Account was emptied just now, after the data interval of a run started now
    dry = _run(run_conf={"dry_run": True, "full_resync": True})
    assert dry.state == "success"
    assert _crm_writes(crm_env) == before
    writes = _outbound_report(dry, "salesforce")["writes"]
    assert writes == [{"record": emptied.salesforce_id, "account": emptied.key,
                       "fields": {"Billing_Email__c": {"before": None, "after": emptied.email}}}]

    assert _run(run_conf={"full_resync": True}).state == "success"
    assert _sf_account(emptied.salesforce_id)["Billing_Email__c"] == emptied.email
    assert _sf_account(kept.salesforce_id)["Billing_Email__c"] == kept.email
    assert hook.find_account(kept.key)["emailAddress"] == "finance@changed-in-m3ter.example"


@pytest.fixture
def crm_wins_env(fresh_sandbox: Any, airflow_db: Path, m3sh_config: Any) -> Any:
    m3sh_config()  # the demo config: name is crm_wins (the default)
    return fresh_sandbox


def test_crm_wins_conflict_is_recorded_though_the_crm_to_m3ter_step_overwrote_m3ter(crm_wins_env: Any) -> None:
    """With ``crm_wins`` the CRM -> m3ter step replaces m3ter's edit before ``to_crm`` runs; the
    conflict is still found (from that step's report of m3ter's value before it wrote)."""
    assert _run(run_conf={"full_resync": True}).state == "success"
    customer = next(c for c in demo_company().customers if c.crm == "salesforce" and not c.in_m3ter)
    assert customer.salesforce_id
    hook = _m3ter()
    account = hook.find_account(customer.key)
    hook.update_account(account["id"], {"name": "Edited In m3ter"}, current=account)
    crm_wins_env.admin("salesforce", "set_fields", "POST", sobject="Account", id=customer.salesforce_id,
                       fields={"Name": "Edited In Salesforce"})

    before = _writes(crm_wins_env, "salesforce")
    run = _run(run_conf={"full_resync": True})
    assert run.state == "success"
    assert hook.find_account(customer.key)["name"] == "Edited In Salesforce"
    assert _sf_account(customer.salesforce_id)["Name"] == "Edited In Salesforce"
    assert _writes(crm_wins_env, "salesforce") == before  # the CRM keeps its value: nothing written to it
    [conflict] = _outbound_report(run, "salesforce")["conflicts"]
    assert (conflict["field"], conflict["m3ter_value"], conflict["crm_value"], conflict["rule"], conflict["written"]) \
        == ("name", "Edited In m3ter", "Edited In Salesforce", "crm_wins", None)
