"""``m3sh_analytics_export`` end to end: demo month in the sandbox -> Parquet tables in S3.

Seed: a CRM sync (so accounts, plans and external mappings exist), measurements submitted straight
to m3ter for one day of the demo month, and bills for the month from the m3ter emulator's billing
run. Then whole ``dag.test()`` runs export the usage day and the bill day. Everything is checked
against m3ter's public API; the README example in docs/analytics.md is executed verbatim.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from m3sh.sandbox.seed import demo_company

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]

DOCS = Path(__file__).resolve().parents[3] / "docs" / "analytics.md"


def _customers() -> list[Any]:
    """A mix of Salesforce-only, HubSpot-only and both-CRM customers (prepaid ones are already in m3ter)."""
    cs = [c for c in demo_company().customers if not c.in_m3ter]
    return ([c for c in cs if c.crm == "salesforce"][:8] + [c for c in cs if c.crm == "hubspot"][:8]
            + [c for c in cs if c.crm == "both"][:4])


@pytest.fixture(scope="module")
def seeded(sandbox: Any, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One seeded sandbox for the module: the export runs only read m3ter, so tests can share it."""
    from m3sh.config import DEFAULT_CONFIG_PATH
    from m3sh.dagkit.crm_sync import build_crm_sync_dag
    from m3sh.hooks.m3ter import M3terHook

    sandbox.reset("demo")
    path = tmp_path_factory.mktemp("analytics") / "m3sh.yaml"
    path.write_text(DEFAULT_CONFIG_PATH.read_text()
                    + "\ndag_defaults: {retries: 1, retry_delay_s: 0.1, max_retry_delay_s: 1}\n")
    mp = pytest.MonkeyPatch()
    mp.setenv("M3SH_CONFIG", str(path))
    customers = _customers()
    run = build_crm_sync_dag().test(run_conf={"full_resync": True, "accounts": [c.domain for c in customers]})
    assert run.state == "success"

    company = demo_company()
    month_start = company.anchor
    month_end = (month_start + dt.timedelta(days=32)).replace(day=1)
    usage_day = month_start + dt.timedelta(days=9)
    hook = M3terHook()
    expected: dict[tuple[str, str], float] = {}
    measurements = []
    for i, c in enumerate(customers):
        for hour in (3, 15):
            for meter, q in (("api_calls", 100 * (i + 1) + hour), ("storage_gb", 1.5 * (i + 1))):
                ts = dt.datetime.combine(usage_day, dt.time(hour), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                measurements.append({"uid": f"an-{c.key}-{meter}-{hour}"[:50], "account": c.key, "meter": meter,
                                     "ts": ts, "measure": {"quantity": q}, "where": {"region": "us-east-1"}})
                expected[(c.key, meter)] = expected.get((c.key, meter), 0.0) + q
    # a measurement the day before and after must not leak into the day's partition
    for other in (usage_day - dt.timedelta(days=1), usage_day + dt.timedelta(days=1)):
        measurements.append({"uid": f"an-edge-{other}", "account": customers[0].key, "meter": "api_calls",
                             "ts": f"{other}T23:59:59Z" if other < usage_day else f"{other}T00:00:00Z",
                             "measure": {"quantity": 1}})
    hook.submit_measurements(measurements)
    sandbox.admin("m3ter", "run_billing", "POST",
                  lastDateInBillingPeriod=(month_end - dt.timedelta(days=1)).isoformat())
    try:
        yield {"sandbox": sandbox, "hook": hook, "customers": customers, "usage_day": usage_day,
               "bill_day": month_end, "month_start": month_start, "expected_usage": expected}
    finally:
        mp.undo()


def _export(day: dt.date, **conf: Any) -> Any:
    from m3sh.dagkit.analytics_export import build_analytics_export_dag

    # a manual run at logical date T exports the data interval [T - 1 day, T)
    run_at = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), dt.UTC)
    return build_analytics_export_dag().test(logical_date=run_at, run_conf=conf or None)


def _reader() -> Any:
    from m3sh.analytics.reader import AnalyticsReader
    from m3sh.config import get_config

    return AnalyticsReader.from_config(get_config())


def _all_keys(prefix: str = "") -> list[str]:
    return [o["Key"] for o in _reader().storage.list_keys(_reader().storage.key(prefix))]


def test_usage_day_matches_m3ter(seeded: dict[str, Any]) -> None:
    day = seeded["usage_day"]
    run = _export(day)
    assert run.state == "success"
    usage = _reader().partition("usage_daily", day)
    assert usage is not None
    got = {(r["account_code"], r["meter_code"]): r for r in usage.to_pylist()}
    assert set(got) == set(seeded["expected_usage"])  # nothing from the neighbouring days
    for key, total in seeded["expected_usage"].items():
        assert got[key]["value_sum"] == pytest.approx(total), key
        assert got[key]["measurement_count"] == 2 and got[key]["measure"] == "quantity"
    # and the same as m3ter's own answer for that day
    hook = seeded["hook"]
    meter_id = next(m["id"] for m in hook.list_meters() if m["code"] == "api_calls")
    m3 = hook.query_usage({"startDate": f"{day}T00:00:00Z", "endDate": f"{day + dt.timedelta(days=1)}T00:00:00Z",
                           "meterIds": [meter_id], "groups": [{"groupType": "ACCOUNT"}],
                           "aggregations": [{"meterId": meter_id, "fieldCode": "quantity", "fieldType": "MEASURE",
                                             "function": "SUM"}]})["data"]
    assert {r["accountCode"]: r["quantity_sum"] for r in m3} == {
        k[0]: v["value_sum"] for k, v in got.items() if k[1] == "api_calls"}

    # snapshot tables of the day agree with m3ter too
    accounts = list(hook.list_accounts())
    assert _reader().partition("accounts", day).num_rows == len(accounts)
    start = dt.datetime.combine(day, dt.time(0), dt.UTC)
    end = start + dt.timedelta(days=1)

    def active(e: dict[str, Any]) -> bool:
        s = dt.datetime.fromisoformat(e["startDate"].replace("Z", "+00:00"))
        f = dt.datetime.fromisoformat(e["endDate"].replace("Z", "+00:00")) if e.get("endDate") else None
        return s < end and (f is None or f > start)

    assert _reader().partition("account_plans", day).num_rows == sum(
        1 for ap in hook.list_account_plans() if active(ap))
    balances = [b for b in hook.list_balances() if active(b)]
    assert balances and _reader().partition("balances", day).num_rows == len(balances)
    mappings = list(hook.list_external_mappings())
    links = [r for r in _reader().partition("account_links", day).to_pylist()
             if r["origin"] == "m3ter_external_mapping"]
    assert len(links) == len(mappings) > 0
    # every day has a manifest per table, and no staging is left behind
    for table in ("usage_daily", "bills", "bill_line_items", "balances", "balance_transactions", "account_plans",
                  "accounts", "account_links", "bill_links"):
        manifest = _reader().manifest(table, day)
        assert manifest is not None, table
        assert manifest["schema_version"] == 1 and manifest["source_run_id"] == run.run_id
    assert not [k for k in _all_keys() if "_staging" in k]


def test_data_export_source_gives_the_same_usage_table(seeded: dict[str, Any], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``analytics.source: data_export``: ad-hoc export job -> download -> the same rows as the API path."""
    import os

    day = seeded["usage_day"]
    via_api = _reader().partition("usage_daily", day)
    if via_api is None:
        assert _export(day, tables=["usage_daily"]).state == "success"
        via_api = _reader().partition("usage_daily", day)
    text = Path(os.environ["M3SH_CONFIG"]).read_text()
    assert "\n  source: api " in text
    path = tmp_path / "m3sh.yaml"
    path.write_text(text.replace("\n  source: api ", "\n  source: data_export "))
    monkeypatch.setenv("M3SH_CONFIG", str(path))
    before = seeded["sandbox"].stats("m3ter")["counts"]
    assert _export(day, tables=["usage_daily"]).state == "success"
    counts = seeded["sandbox"].stats("m3ter")["counts"]
    assert counts.get("POST /organizations/{id}/dataexports/adhoc", 0) == before.get(
        "POST /organizations/{id}/dataexports/adhoc", 0) + 1
    assert counts.get("POST /organizations/{id}/usage/query", 0) == before.get(
        "POST /organizations/{id}/usage/query", 0)  # the usage query was not used
    assert _reader().manifest("usage_daily", day)["source"] == "data_export"
    assert _reader().partition("usage_daily", day).equals(via_api)


def test_bill_day_matches_m3ter_and_rerun_is_identical(seeded: dict[str, Any]) -> None:
    from m3sh.analytics.schemas import spec
    from m3sh.config import get_config
    from m3sh.invoicing.ledger import S3Ledger
    from m3sh.storage import Storage

    day = seeded["bill_day"]
    bills = [b for b in seeded["hook"].list_bills() if b["billDate"] == day.isoformat()]
    # what m3sh_invoice_sync records when it delivers a bill to NetSuite: the ERP ids the tables carry
    ledger = S3Ledger(Storage.from_config(get_config().storage))
    sent = bills[0]
    ledger.put("netsuite_us", sent["id"], {"bill_id": sent["id"], "destination": "netsuite_us", "remote_id": "9001",
                                           "total": sent["billTotal"], "currency": sent["currency"],
                                           "account_id": sent["accountId"], "delivered_at": "2026-11-02T00:00:00Z"})
    ledger.put("netsuite_us", f"customer:{sent['accountId']}", {"account_id": sent["accountId"], "remote_id": "77"})
    tables = ["bills", "bill_line_items", "bill_links", "accounts", "account_links", "balances"]
    assert _export(day, tables=tables).state == "success"
    reader = _reader()
    assert reader.partition("bill_links", day).select(["bill_id", "destination", "remote_id"]).to_pylist() == [
        {"bill_id": sent["id"], "destination": "netsuite_us", "remote_id": "9001"}]
    erp = [r for r in reader.partition("account_links", day).to_pylist() if r["origin"] == "m3sh_invoicing_ledger"]
    assert [(r["account_id"], r["system"], r["system_type"], r["external_id"]) for r in erp] == [
        (sent["accountId"], "netsuite_us", "netsuite", "77")]
    assert len(bills) > len(seeded["customers"])  # the synced customers and the prepaid ones already in m3ter
    exported = reader.partition("bills", day)
    assert exported.num_rows == len(bills)
    assert exported.schema.remove_metadata().equals(
        spec("bills").schema.append(pa.field("date", pa.date32())).remove_metadata())
    assert sum(exported.column("bill_total").to_pylist()) == pytest.approx(sum(b["billTotal"] for b in bills))
    lines = reader.partition("bill_line_items", day)
    assert lines.num_rows == sum(len(b["lineItems"]) for b in bills)
    before = {t: (reader.manifest(t, day), reader.partition(t, day)) for t in ("bills", "bill_line_items",
                                                                              "accounts", "balances")}
    for t, (manifest, _) in before.items():
        assert manifest["rows"] == before[t][1].num_rows

    # re-running the day replaces it with identical data: same counts, equal tables, one file, no staging
    assert _export(day, tables=tables).state == "success"
    for t, (manifest, table) in before.items():
        again = reader.manifest(t, day)
        assert again["rows"] == manifest["rows"] and again["files"][0]["key"] == manifest["files"][0]["key"]
        assert reader.partition(t, day).equals(table), t
        assert [k.rsplit("/", 1)[-1] for k in _all_keys(f"{t}/date={day}/")] == ["_manifest.json", "part-0.parquet"]
    assert not [k for k in _all_keys() if "_staging" in k]

    # a dry run writes nothing
    marker = reader.storage.get_json(reader.store.run_marker_key(day))
    assert _export(day, dry_run=True, tables=["bills"]).state == "success"
    assert reader.storage.get_json(reader.store.run_marker_key(day)) == marker


def test_failed_table_commits_nothing(seeded: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """One table failing leaves every committed partition of the day untouched and no staging."""
    from m3sh.analytics.extract import DayExtract

    day = seeded["usage_day"] + dt.timedelta(days=2)
    assert _export(day, tables=["accounts", "account_plans"]).state == "success"
    before = _reader().manifest("accounts", day)

    def broken(self: DayExtract) -> Any:
        raise RuntimeError("m3ter went away (injected)")

    monkeypatch.setattr(DayExtract, "table_account_plans", broken)
    run = _export(day, tables=["accounts", "account_plans"])
    assert run.state == "failed"
    assert _reader().manifest("accounts", day) == before
    assert not [k for k in _all_keys() if "_staging" in k]


def test_readme_example_revenue_by_crm_source_and_product(seeded: dict[str, Any]) -> None:
    """The snippet in docs/analytics.md, executed verbatim, against m3ter's own bills."""
    _export(seeded["bill_day"], tables=["bill_line_items", "accounts"])
    snippet = re.search(r"<!-- example:start -->\s*```python\n(.*?)```", DOCS.read_text(), re.S)
    assert snippet, "docs/analytics.md lost its example"
    scope: dict[str, Any] = {}
    exec(compile(snippet.group(1), str(DOCS), "exec"), scope)  # noqa: S102 - our own documentation
    result = scope["revenue"]
    got = {(r["crm_source"], r["product_code"], r["currency"]): r["revenue"] for r in result.to_pylist()}

    # expected straight from m3ter: bills of last month's service period, by the account's primary CRM
    hook = seeded["hook"]
    accounts = {a["id"]: a for a in hook.list_accounts()}
    sf = {m["m3terId"] for m in hook.list_external_mappings()
          if m["externalSystem"] == "salesforce"}
    hs = {m["m3terId"] for m in hook.list_external_mappings()
          if m["externalSystem"] == "hubspot"}
    expected: dict[tuple[str, str, str], float] = {}
    for b in hook.list_bills():
        for li in b["lineItems"]:
            if li["lineItemType"] == "BALANCE_CONSUMED" or not li["servicePeriodStartDate"].startswith(
                    seeded["month_start"].strftime("%Y-%m")):
                continue
            acc = b["accountId"]
            fallback = str(accounts[acc]["customFields"].get("crm_source") or "none")
            crm = "salesforce" if acc in sf else "hubspot" if acc in hs else (
                "salesforce" if "salesforce" in fallback else fallback)
            key = (crm, li["productCode"], li["currency"])
            expected[key] = expected.get(key, 0.0) + li["subtotal"]
    assert {k for k, v in expected.items() if v} == {k for k, v in got.items() if v}
    for k, v in expected.items():
        assert got.get(k, 0.0) == pytest.approx(v, abs=0.01), k
    assert {k[0] for k in got} >= {"salesforce", "hubspot"}


def test_documented_schemas_match_the_code() -> None:
    """docs/analytics.md carries the generated schema reference; regenerate it when a schema changes."""
    from m3sh.analytics.schemas import schema_markdown

    text = DOCS.read_text()
    documented = text.split("<!-- schemas:start -->\n", 1)[1].split("<!-- schemas:end -->", 1)[0]
    assert documented == schema_markdown()
