"""CRM -> m3ter in a user's own DAG, built from m3sh.operators.crm, with no m3sh.yaml, against the sandbox.

* the three step operators (extract per CRM -> one sync -> write-back per CRM) for a handful of
  demo customers from both CRMs: one m3ter account per customer (one for a customer in both),
  its contract, plan and a mapping per CRM record, the m3ter id written back into Salesforce and
  HubSpot; the re-run writes nothing anywhere;
* ``SalesforceToM3terOperator`` in one task with templated ``accounts``/``full_resync``/``preview``:
  a preview writes nothing and reports the diff, a sync writes, a re-run writes nothing, and a
  backfill of a past hour re-syncs only the record changed in that hour (the data interval comes
  from the context);
* ``HubSpotToM3terOperator`` given a ``CrmSource`` in an unscheduled DAG (a run without a data
  interval reads every record);
* a failed m3ter write (a plan m3ter lacks) fails the task naming each, after the rest is written.

Writes are read back through the emulators' APIs; "writes nothing" is the emulators' own count
of mutating requests. As in tests/integration/test_operators_in_user_dag.py, the config loader is
replaced by a guard, ``M3SH_CONFIG`` points at a missing file and the DAG folder is the user's.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from m3sh.config import CrmSource
from m3sh.operators import (
    CrmExtractOperator,
    CrmToM3terSyncOperator,
    CrmWriteBackOperator,
    HubSpotToM3terOperator,
    SalesforceToM3terOperator,
)
from m3sh.sandbox.seed import DemoCustomer, demo_company
from m3sh.storage import Storage
from tests.integration.test_sensors_sandbox import _register

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

BUCKET = "m3sh-archive"
SYSTEMS = ("m3ter", "salesforce", "hubspot")
PLANS = {"plan_map": {c: c for c in ("starter_usd", "growth_usd", "enterprise_usd", "prepaid_usd", "starter_eur",
                                     "growth_eur", "enterprise_eur")}, "default_plan": "starter_usd"}
SF_FIELDS = {"name": "Name", "domain": "Website", "email": "Billing_Email__c", "currency": "CurrencyIsoCode",
             "country": "BillingCountry", "owner": "Owner_Name__c"}
HS_FIELDS = {"name": "name", "domain": "domain", "email": "billing_email", "currency": "billing_currency",
             "country": "country", "owner": "hubspot_owner_id"}
SALESFORCE = CrmSource(name="salesforce", type="salesforce", conn_id="salesforce_default", priority=10,
                       account_fields=SF_FIELDS, write_back_field="M3ter_Account_Id__c")
HUBSPOT = CrmSource(name="hubspot", type="hubspot", conn_id="hubspot_default", priority=20,
                    account_fields=HS_FIELDS, write_back_field="m3ter_account_id")
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _writes(sandbox: Any) -> dict[str, int]:
    """Mutating requests each emulator received (its own count)."""
    return {n: int(sandbox.stats(n)["counts"].get("writes", 0)) for n in SYSTEMS}


def _pick(crm: str, n: int, in_m3ter: bool = False) -> list[DemoCustomer]:
    return [c for c in demo_company().customers if c.crm == crm and c.in_m3ter == in_m3ter][:n]


def _runner(build: Callable[[], Any], tasks: tuple[str, ...]) -> Callable[..., dict[str, Any]]:
    """Runs with ``dag.test()``, each of a DAG built afresh: ``dag.test()`` renders templated fields
    into its task objects, so a second run of one DAG object would see the first run's values."""

    def run(**kw: Any) -> dict[str, Any]:
        dag = build()
        _register(dag)
        dag_run = dag.test(**kw)
        states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
        assert states == dict.fromkeys(tasks, "success"), states
        return {t: dag_run.get_task_instance(t).xcom_pull(task_ids=t) for t in tasks}

    return run


def _m3ter() -> Any:
    from m3sh.hooks.m3ter import M3terHook

    return M3terHook()


def _salesforce_ids(ids: list[str]) -> dict[str, Any]:
    from m3sh.hooks.salesforce import SalesforceSync

    rows = SalesforceSync().query("SELECT Id, M3ter_Account_Id__c FROM Account", "Account")
    return {r["Id"]: r["M3ter_Account_Id__c"] for r in rows if r["Id"] in ids}


def _hubspot_ids(ids: list[str]) -> dict[str, Any]:
    from m3sh.hooks.hubspot import HubSpotHook

    rows = HubSpotHook().batch_read("companies", ids, ["m3ter_account_id"])
    return {cid: (r.get("properties") or {}).get("m3ter_account_id") for cid, r in rows.items()}


def test_step_operators_sync_two_crms_into_m3ter_and_back_then_a_rerun_writes_nothing(
        fresh_sandbox: Any, airflow_db: Path, no_m3sh_yaml: mock.Mock) -> None:
    from airflow.sdk import DAG

    customers = _pick("salesforce", 2) + _pick("hubspot", 2) + _pick("both", 2) + _pick("hubspot", 1, in_m3ter=True)
    assert len(customers) == 7
    tag = uuid.uuid4().hex[:8]
    prefix = f"user-crm-{tag}/"
    storage = {"bucket": BUCKET, "prefix": prefix}
    dag_id = f"user_crm_{tag}"

    def build() -> DAG:
        """What a user writes: extract each CRM, one sync, write back into each."""
        with DAG(dag_id, schedule=None, start_date=START, params={"accounts": [c.domain for c in customers]}) as dag:
            staged = [CrmExtractOperator(task_id=f"extract_{s.name}", source=s.model_dump(), full_resync=True,
                                         accounts="{{ params.accounts | tojson }}", plan_map=PLANS["plan_map"],
                                         **storage).output for s in (SALESFORCE, HUBSPOT)]
            synced = CrmToM3terSyncOperator(task_id="sync", staged=staged, sources=[SALESFORCE, HUBSPOT], **PLANS,
                                            **storage).output
            for s in (SALESFORCE, HUBSPOT):
                CrmWriteBackOperator(task_id=f"write_back_{s.name}", synced=synced, source=s, **storage)
        return dag

    run = _runner(build, ("extract_salesforce", "extract_hubspot", "sync", "write_back_salesforce",
                          "write_back_hubspot"))

    first = run()
    n_sf = sum(1 for c in customers if c.crm in ("salesforce", "both"))
    n_hs = sum(1 for c in customers if c.crm in ("hubspot", "both"))
    assert first["extract_salesforce"]["records"] == n_sf and first["extract_hubspot"]["records"] == n_hs
    assert first["extract_salesforce"]["key"].startswith(f"{prefix}staging/{dag_id}/")
    counts = first["sync"]["counts"]
    assert counts["customers"] == len(customers) and "account_error" not in counts, counts
    assert counts["account_create"] == len(customers) - 1  # the prepaid customer's account already existed
    assert first["write_back_salesforce"] == {"source": "salesforce", "written": n_sf}
    assert first["write_back_hubspot"] == {"source": "hubspot", "written": n_hs}

    hook = _m3ter()
    accounts = {a["code"]: a for a in hook.list_accounts()}
    ids = {c.key: accounts[c.key]["id"] for c in customers}  # one account per customer, by its code
    for c in customers:
        assert accounts[c.key]["customFields"]["crm_source"] == {
            "both": "hubspot,salesforce", "salesforce": "salesforce", "hubspot": "hubspot"}[c.crm], c.key
    contracts = {x["code"] for x in hook.list_contracts()}
    assert {f"{c.key}-c{c.contract_start:%Y%m%d}" for c in customers} <= contracts
    mappings = {(m["externalSystem"], m["externalId"]): m["m3terId"] for m in hook.list_external_mappings()}
    for c in customers:
        if c.salesforce_id:
            assert mappings[("salesforce", c.salesforce_id)] == ids[c.key]
        if c.hubspot_id:
            assert mappings[("hubspot", c.hubspot_id)] == ids[c.key]
    assert _salesforce_ids([c.salesforce_id for c in customers if c.salesforce_id]) == {
        c.salesforce_id: ids[c.key] for c in customers if c.salesforce_id}
    assert _hubspot_ids([c.hubspot_id for c in customers if c.hubspot_id]) == {
        c.hubspot_id: ids[c.key] for c in customers if c.hubspot_id}
    report = Storage("aws_default", BUCKET, prefix).get_json(first["sync"]["report_key"])
    assert report["sources"] == {"salesforce": n_sf, "hubspot": n_hs} and report["dry_run"] is False

    before = _writes(fresh_sandbox)
    second = run()
    assert _writes(fresh_sandbox) == before
    assert second["sync"]["counts"] == {"customers": len(customers), "m3ter_writes": 0, "write_backs": 0}
    assert second["write_back_salesforce"]["written"] == second["write_back_hubspot"]["written"] == 0
    assert no_m3sh_yaml.call_count == 0


def test_salesforce_operator_previews_syncs_reruns_and_backfills_one_hour_in_one_task(
        fresh_sandbox: Any, airflow_db: Path, no_m3sh_yaml: mock.Mock) -> None:
    from airflow.sdk import DAG

    from m3sh.compat import CronDataIntervalTimetable

    customers = _pick("salesforce", 3)
    domains = [c.domain for c in customers]
    tag = uuid.uuid4().hex[:8]
    prefix = f"user-sf-{tag}/"
    now = dt.datetime.now(dt.UTC)

    def build() -> DAG:
        with DAG(f"user_sf_{tag}", schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
                 start_date=now - dt.timedelta(days=30), catchup=False,
                 params={"accounts": [], "full_resync": False, "preview": False}) as dag:
            SalesforceToM3terOperator(task_id="salesforce_to_m3ter", salesforce_conn_id="salesforce_default",
                                      account_fields=SF_FIELDS, write_back_field="M3ter_Account_Id__c", **PLANS,
                                      accounts="{{ params.accounts | tojson }}",
                                      full_resync="{{ params.full_resync | tojson }}",
                                      preview="{{ params.preview | tojson }}", bucket=BUCKET, prefix=prefix)
        return dag

    run = _runner(build, ("salesforce_to_m3ter",))
    hook = _m3ter()

    before = _writes(fresh_sandbox)
    preview = run(run_conf={"accounts": domains, "full_resync": True, "preview": True})["salesforce_to_m3ter"]
    assert _writes(fresh_sandbox) == before
    assert preview["records"] == 3 and preview["written"] == 0
    assert preview["counts"]["account_create"] == 3 and preview["counts"]["m3ter_writes"] == 0
    assert not any(hook.find_account(c.key) for c in customers)
    report = Storage("aws_default", BUCKET, prefix).get_json(preview["report_key"])
    assert report["dry_run"] is True and {c["code"] for c in report["changes"] if c["entity"] == "account"} == {
        c.key for c in customers}

    synced = run(run_conf={"accounts": domains, "full_resync": True})["salesforce_to_m3ter"]
    assert synced["records"] == 3 and synced["written"] == 3 and synced["counts"]["account_create"] == 3
    ids = {c.key: hook.find_account(c.key)["id"] for c in customers}
    assert _salesforce_ids([str(c.salesforce_id) for c in customers]) == {
        c.salesforce_id: ids[c.key] for c in customers}

    before = _writes(fresh_sandbox)
    again = run(run_conf={"accounts": domains, "full_resync": True})["salesforce_to_m3ter"]
    assert _writes(fresh_sandbox) == before
    assert again["counts"] == {"customers": 3, "m3ter_writes": 0, "write_backs": 0} and again["written"] == 0

    # A past hour: only the account renamed inside it is read and written.
    window_end = (now - dt.timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    inside, outside = customers[0], customers[1]
    for c, name, when in ((inside, "Renamed Inside", window_end - dt.timedelta(minutes=20)),
                          (outside, "Renamed Outside", window_end + dt.timedelta(minutes=20))):
        fresh_sandbox.admin("salesforce", "set_fields", "POST", sobject="Account", id=c.salesforce_id,
                            fields={"Name": name, "SystemModstamp": when.strftime("%Y-%m-%dT%H:%M:%S.000+0000")})
    # Only this test's accounts: the demo seed's own modification times (relative to when the seed was
    # made) put a random other account in about one past hour in three.
    hour = run(logical_date=window_end, run_conf={"accounts": domains})["salesforce_to_m3ter"]
    assert hour["records"] == 1 and hour["counts"]["account_update"] == 1, hour
    assert hook.find_account(inside.key)["name"] == "Renamed Inside"
    assert hook.find_account(outside.key)["name"] == outside.name
    assert no_m3sh_yaml.call_count == 0


def test_hubspot_operator_given_a_source_syncs_every_record_of_an_unscheduled_run_once(
        fresh_sandbox: Any, airflow_db: Path, no_m3sh_yaml: mock.Mock) -> None:
    from airflow.sdk import DAG

    customers = _pick("hubspot", 2)
    tag = uuid.uuid4().hex[:8]

    def build() -> DAG:
        with DAG(f"user_hs_{tag}", schedule=None, start_date=START) as dag:
            HubSpotToM3terOperator(task_id="hubspot_to_m3ter", source=HUBSPOT, **PLANS,
                                   accounts=[c.domain for c in customers], bucket=BUCKET, prefix=f"user-hs-{tag}/")
        return dag

    run = _runner(build, ("hubspot_to_m3ter",))

    first = run()["hubspot_to_m3ter"]
    assert first["records"] == 2 and first["written"] == 2 and first["counts"]["account_create"] == 2, first
    hook = _m3ter()
    ids = {c.key: hook.find_account(c.key)["id"] for c in customers}
    assert _hubspot_ids([str(c.hubspot_id) for c in customers]) == {c.hubspot_id: ids[c.key] for c in customers}
    plans = {p["id"]: p["code"] for p in hook.list_plans()}
    for c in customers:
        assert c.plan_code in {plans[ap["planId"]] for ap in hook.list_account_plans(account_id=ids[c.key])}

    before = _writes(fresh_sandbox)
    second = run()["hubspot_to_m3ter"]
    assert _writes(fresh_sandbox) == before
    assert second["counts"] == {"customers": 2, "m3ter_writes": 0, "write_backs": 0} and second["written"] == 0
    assert no_m3sh_yaml.call_count == 0


def test_a_failed_m3ter_write_fails_the_task_by_name_after_the_rest_is_written(
        fresh_sandbox: Any, no_m3sh_yaml: mock.Mock) -> None:
    """A plan missing in m3ter fails each customer's account plan; the accounts, contracts, mappings
    and write-backs still happen, and the task fails naming each failed write."""
    from m3sh.dagkit.errors import RunFailed

    customers = _pick("salesforce", 2)
    op = SalesforceToM3terOperator(task_id="sf", account_fields=SF_FIELDS, write_back_field="M3ter_Account_Id__c",
                                   default_plan="no_such_plan", accounts=[c.domain for c in customers],
                                   full_resync=True, bucket=BUCKET, prefix=f"user-sf-fail-{uuid.uuid4().hex[:8]}/")
    with pytest.raises(RunFailed, match=r"^sf: 2 m3ter write\(s\) failed: account_plan .*plan 'no_such_plan'") as err:
        op.execute({"run_id": "manual__fail"})  # type: ignore[arg-type]
    assert sorted(err.value.records) == sorted(c.key for c in customers)
    hook = _m3ter()
    ids = {c.key: hook.find_account(c.key)["id"] for c in customers}
    assert _salesforce_ids([str(c.salesforce_id) for c in customers]) == {
        c.salesforce_id: ids[c.key] for c in customers}
    assert no_m3sh_yaml.call_count == 0
