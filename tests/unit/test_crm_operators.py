"""The CRM operators without m3sh.yaml, without systems: parse-time errors naming task and argument,
template fields, the sync window, and a DAG file that stays cheap to parse.

The sandbox runs of the same operators in users' DAGs are tests/integration/test_crm_operators.py.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from m3sh.config import CrmSource, CrmSyncConfig, M3shConfig, StorageConfig
from m3sh.crm.run import EPOCH, window
from m3sh.operators import (
    CrmExtractOperator,
    CrmToM3terSyncOperator,
    CrmWriteBackOperator,
    HubSpotToM3terOperator,
    SalesforceToM3terOperator,
)

pytestmark = pytest.mark.usefixtures("no_m3sh_yaml")  # operators must work without it

SF = CrmSource(name="sf", type="salesforce", conn_id="salesforce_default", write_back_field="M3ter_Account_Id__c")
CFG = M3shConfig(crm=CrmSyncConfig(sources=[SF], plan_map={"GOLD": "gold"}), storage=StorageConfig(bucket="cfg"))




@pytest.mark.parametrize(("make", "message"), [
    (lambda: CrmExtractOperator(task_id="x", source=SF), r"x: give bucket=\.\.\. \(where CRM records are staged\)"),
    (lambda: CrmExtractOperator(task_id="x", source="sf", bucket="b"), "x: source 'sf' is a name"),
    (lambda: CrmExtractOperator(task_id="x", source="nope", config=CFG), r"known: \['sf'\]"),
    (lambda: CrmExtractOperator(task_id="x", source={"name": "sf", "type": "pipedrive", "conn_id": "c"},
                                bucket="b"), "x: invalid CRM source .*type"),
    (lambda: CrmExtractOperator(task_id="x", source=SF, config=CFG, plan_map={"A": "a"}),
     r"x: give config=... or the inline arguments \['plan_map'\], not both"),
    (lambda: CrmToM3terSyncOperator(task_id="x", staged=[], bucket="b"), "x: give sources=\\[...\\]"),
    (lambda: CrmToM3terSyncOperator(task_id="x", staged=[], sources=[SF], match_keys=["phone"], bucket="b"),
     "x: invalid CRM sync arguments .*match_keys"),
    (lambda: CrmToM3terSyncOperator(task_id="x", staged=[], sources=[SF], config=CFG),
     r"not both"),
    (lambda: CrmWriteBackOperator(task_id="x", synced={}, source=7, bucket="b"),  # type: ignore[arg-type]
     "x: source must be a CrmSource, mapping or name; got int"),
    (lambda: SalesforceToM3terOperator(task_id="x", source=SF, write_back_field="F", bucket="b"),
     r"x: give source=... or the inline source arguments \['write_back_field'\], not both"),
    (lambda: HubSpotToM3terOperator(task_id="x", source=SF, bucket="b"),
     "x: source 'sf' is a salesforce source; this operator reads hubspot"),
    (lambda: SalesforceToM3terOperator(task_id="x", account_fields={"nmae": "Name"}, bucket="b"),
     "x: invalid CRM source .*did you mean 'name'"),
])
def test_bad_arguments_fail_at_parse_time_naming_task_and_argument(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_template_fields_and_settings_from_inline_arguments_or_config() -> None:
    assert set(CrmExtractOperator.template_fields) == {"accounts", "full_resync"}
    assert set(CrmToM3terSyncOperator.template_fields) == {"m3ter_conn_id", "staged", "preview"}
    assert set(CrmWriteBackOperator.template_fields) == {"synced"}
    assert set(SalesforceToM3terOperator.template_fields) == {"m3ter_conn_id", "accounts", "full_resync", "preview"}
    one = SalesforceToM3terOperator(task_id="one", salesforce_conn_id="sf_prod", account_fields={"name": "Name"},
                                    plan_map={"GOLD": "gold"}, account_code_from="crm_id", bucket="b")
    assert (one.source.name, one.source.type, one.source.conn_id) == ("salesforce", "salesforce", "sf_prod")
    assert one.settings.crm.sources == [one.source] and one.settings.m3ter.account_code_from == "crm_id"
    assert one.settings.crm.plan_map == {"GOLD": "gold"} and one.m3ter_conn_id == "m3ter_default"
    hs = HubSpotToM3terOperator(task_id="hs", source={"name": "portal", "type": "hubspot", "conn_id": "hs"},
                                config=CFG)
    # a source the config lacks joins the sync's sources (its priority and links are needed)
    assert [s.name for s in hs.settings.crm.sources] == ["sf", "portal"]
    assert hs.settings.crm.plan_map == {"GOLD": "gold"}
    assert hs._storage().bucket == "cfg"
    sync = CrmToM3terSyncOperator(task_id="sync", staged=[], config=CFG)
    assert sync.settings is CFG and sync.m3ter_conn_id == CFG.m3ter.conn_id


def test_sync_refuses_staged_records_of_a_source_it_was_not_given() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    sync = CrmToM3terSyncOperator(task_id="sync", staged={"source": "hubspot", "key": "k", "records": 1},
                                  sources=[SF], bucket="b")
    with pytest.raises(AirflowFailException, match=r"sync: records of source\(s\) \['hubspot'\] are staged but "
                                                   r"sources lists only \['sf'\]"):
        sync._refs()
    sync.staged = [{"key": "k"}]
    with pytest.raises(AirflowFailException, match="staged must be what CrmExtractOperator returned"):
        sync._refs()


def test_window_is_the_data_interval_widened_or_everything() -> None:
    now = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
    start, end = now - dt.timedelta(hours=1), now
    assert window(start, end, full_resync=False, lookback_minutes=5, now=now) == (
        start - dt.timedelta(minutes=5), end)
    everything = (EPOCH, now + dt.timedelta(minutes=1))
    assert window(start, end, full_resync=True, lookback_minutes=5, now=now) == everything
    assert window(None, None, full_resync=False, lookback_minutes=5, now=now) == everything
    assert window(end, end, full_resync=False, lookback_minutes=5, now=now) == everything  # unscheduled DAG's run


def test_the_crm_dag_module_imports_without_the_m3ter_sdk_or_simple_salesforce() -> None:
    """m3sh_crm_sync's DAG file imports these operators on every parse; the SDKs load only in tasks."""
    heavy = {"m3ter", "m3sh.hooks.m3ter", "simple_salesforce", "m3sh.hooks.salesforce", "m3sh.hooks.hubspot",
             "m3sh.crm.sync"}
    code = f"import sys, m3sh.dagkit.crm_sync; print(sorted(set({sorted(heavy)!r}) & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
