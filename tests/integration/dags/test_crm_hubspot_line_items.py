"""HubSpot line items choose the m3ter plan in ``m3sh_crm_sync`` (issue #5).

One whole ``dag.test()`` run, then the DAG's sync path called directly (Airflow adds seconds per
task). Every run covers a past hour that holds no demo record, so it syncs only the records the
test moved into it instead of the whole demo portal.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from m3sh.crm.sync import CrmToM3ter, M3terIndex, SyncReport
from m3sh.mapping.crm import deal_product, mapped_line_item_products
from m3sh.sandbox.hubspot.demo import COMPANY_ID_BASE, DEAL_ID_BASE, LINE_ITEM_ID_BASE
from m3sh.sandbox.seed import DemoCustomer, demo_company
from tests.integration.dags.test_crm_sync_dag import _writes

USD_PLANS = ["starter_usd", "growth_usd", "enterprise_usd"]
# A start_date before the test windows, which lie before every demo record's last-modified time.
EARLY_START = "\ndag_defaults: {retries: 1, retry_delay_s: 0.1, max_retry_delay_s: 1, start_date: 2025-01-01}\n"
WINDOW_1 = dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)  # logical date T covers [T - 1h, T)
WINDOW_2 = dt.datetime(2025, 3, 2, 12, tzinfo=dt.UTC)
SYSTEMS = ("m3ter", "salesforce", "hubspot")


def test_deal_product_precedence() -> None:
    """Mapped line item (SKU, product id, name, first line item first) > deal plan_code > unmapped SKU."""
    plan_map = {"sku-growth": "growth_usd", "5000000003": "enterprise_usd", "Starter": "starter_usd"}
    fee = {"hs_sku": "onboarding_fee", "name": "Onboarding"}
    assert mapped_line_item_products([fee, {"hs_sku": "x", "hs_product_id": "5000000003"},
                                      {"hs_sku": "sku-growth"}, {"name": "Starter"}], plan_map) \
        == ["5000000003", "sku-growth", "Starter"]
    deal = {"plan_code": "legacy"}
    assert deal_product(deal, [fee, {"hs_sku": "sku-growth"}], plan_map) == "sku-growth"
    assert deal_product(deal, [fee], plan_map) == "legacy"
    assert deal_product({}, [fee], plan_map) == "onboarding_fee"
    assert deal_product({"plan_code": ""}, [], plan_map) is None


def _hubspot_only(n: int) -> list[DemoCustomer]:
    return [c for c in demo_company().customers
            if c.crm == "hubspot" and not c.in_m3ter and c.plan_code in USD_PLANS][:n]


def _deal(c: DemoCustomer) -> str:
    return str(DEAL_ID_BASE + int(c.hubspot_id or 0) - COMPANY_ID_BASE)


def _item(c: DemoCustomer) -> str:
    return str(LINE_ITEM_ID_BASE + int(c.hubspot_id or 0) - COMPANY_ID_BASE)


def _others(c: DemoCustomer) -> list[str]:
    return [p for p in USD_PLANS if p != c.plan_code]


def _run(logical_date: dt.datetime) -> dict[str, Any]:
    """One DAG run for the hour before ``logical_date``; returns its sync report from S3."""
    from m3sh.config import get_config
    from m3sh.dagkit.crm_sync import DAG_ID, build_crm_sync_dag
    from m3sh.storage import Storage

    run = build_crm_sync_dag().test(logical_date=logical_date)
    assert run.state == "success"
    storage = Storage.from_config(get_config().storage)
    report: dict[str, Any] = storage.get_json(storage.key("reports", DAG_ID, f"{run.run_id}.json"))
    return report


def _sync(logical_date: dt.datetime) -> SyncReport:
    """What ``sync_to_m3ter`` does for the HubSpot records of the hour before ``logical_date``."""
    from m3sh.config import get_config
    from m3sh.crm.hubspot import extract_hubspot
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.mapping.crm import dedupe

    cfg = get_config()
    source = next(s for s in cfg.crm.sources if s.type == "hubspot")
    start = logical_date - dt.timedelta(hours=1, minutes=cfg.crm.lookback_minutes)
    records = extract_hubspot(source, start, logical_date, plan_map=cfg.crm.plan_map)
    hook = M3terHook(cfg.m3ter.conn_id)
    index = M3terIndex(hook)
    customers = dedupe(records, list(cfg.crm.match_keys), cfg.m3ter.account_code_from,
                       existing_codes=index.match_codes())
    return CrmToM3ter(hook, cfg, index).apply(customers)


def _plans_of(code: str) -> set[str]:
    from m3sh.hooks.m3ter import M3terHook

    hook = M3terHook()
    account = hook.find_account(code)
    assert account is not None, f"no m3ter account {code}"
    plans = {p["id"]: p["code"] for p in hook.list_plans()}
    return {plans[ap["planId"]] for ap in hook.list_account_plans(account_id=account["id"])}


def _move(sandbox: Any, object_type: str, ids: list[str], when: dt.datetime) -> None:
    sandbox.admin("hubspot", "set_modified", "POST", object_type=object_type, ids=ids,
                  modified_at=when.strftime("%Y-%m-%dT%H:%M:%S.000Z"))


@pytest.mark.sandbox
@pytest.mark.dagrun
def test_line_items_choose_the_plan_and_a_line_item_edit_resyncs_its_deal(
        fresh_sandbox: Any, airflow_db: Any, m3sh_config: Any) -> None:
    from m3sh.hooks.hubspot import HubSpotHook

    m3sh_config(extra=EARLY_START)
    x, y = _hubspot_only(2)
    hs = HubSpotHook()
    # X: its line item now sells another plan while the deal's plan_code property still names the
    # old one (the line item wins). Only the line item is in the window: neither X's deal nor its
    # company changed, so only the line-item search can bring X into this incremental run.
    # Y: its only line item is a set-up fee (not in crm.plan_map), so the deal property decides;
    # the deal is in the window, the line item is not (it is read by id in a batch read).
    assert hs.batch_update("line_items", [{"id": _item(x), "properties": {"hs_sku": _others(x)[0]}},
                                          {"id": _item(y), "properties": {"hs_sku": "onboarding_fee"}}]).ok
    assert hs.batch_update("deals", [{"id": _deal(y), "properties": {"plan_code": _others(y)[0]}}]).ok
    _move(fresh_sandbox, "line_items", [_item(x)], WINDOW_1 - dt.timedelta(minutes=20))
    _move(fresh_sandbox, "deals", [_deal(y)], WINDOW_1 - dt.timedelta(minutes=20))
    fresh_sandbox.admin("hubspot", "stats", "DELETE")

    report = _run(WINDOW_1)
    assert report["sources"] == {"salesforce": 0, "hubspot": 2}
    assert _plans_of(x.key) == {_others(x)[0]}
    assert _plans_of(y.key) == {_others(y)[0]}
    counts = fresh_sandbox.stats("hubspot")["counts"]
    assert counts.get("POST /crm/v3/objects/line_items/search", 0) >= 1
    assert counts.get("POST /crm/v3/objects/line_items/batch/read", 0) == 1  # Y's line item
    per_record = [k for k in counts if k.startswith("GET /crm/v3/objects/")]
    assert not per_record, per_record  # searches and batch reads only, never one call per deal

    # the same window again (through the DAG's sync path, without Airflow's per-task overhead):
    # nothing changed upstream, so nothing is written anywhere
    before = {n: _writes(fresh_sandbox, n) for n in SYSTEMS}
    again = _sync(WINDOW_1)
    assert again.customers == 2 and again.m3ter_writes == 0 and not again.write_backs
    assert {n: _writes(fresh_sandbox, n) for n in SYSTEMS} == before

    # X's line item switches to a third plan's SKU: detected; m3ter owns plan history, so it is a
    # conflict in the report (never a silent overwrite) and nothing is written to m3ter
    third = _others(x)[1]
    assert hs.batch_update("line_items", [{"id": _item(x), "properties": {"hs_sku": third}}]).ok
    _move(fresh_sandbox, "line_items", [_item(x)], WINDOW_2 - dt.timedelta(minutes=20))
    before = {n: _writes(fresh_sandbox, n) for n in SYSTEMS}
    switched = _sync(WINDOW_2)
    assert switched.customers == 1
    plan_changes = [(c.code, c.action, c.after) for c in switched.changes if c.entity == "account_plan"]
    assert plan_changes == [(x.key, "conflict", {"plan": third})]
    assert switched.m3ter_writes == 0
    assert _plans_of(x.key) == {_others(x)[0]}
    assert {n: _writes(fresh_sandbox, n) for n in SYSTEMS} == before
