"""Remove a component: a CRM source disabled (or deleted) in m3sh.yaml is no longer read or written,
the DAG says so in a clear log line, and nothing else fails."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from m3sh.sandbox.seed import demo_company

from .conftest import crm_sync, request_count

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]


def _pick() -> tuple[list[Any], list[Any]]:
    cs = demo_company().customers
    return ([c for c in cs if c.crm == "salesforce" and not c.in_m3ter][:3],
            [c for c in cs if c.crm == "hubspot" and c.in_m3ter][:2])


def test_disabled_then_deleted_crm_source_is_left_alone(stack: Any, caplog: pytest.LogCaptureFixture,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from m3sh.dagkit.crm_sync import build_crm_sync_dag
    from m3sh.hooks.m3ter import M3terHook

    sf_only, hs_only = _pick()  # HubSpot customers already in m3ter (history that must survive)
    domains = [c.domain for c in sf_only + hs_only]
    hook = M3terHook()
    hs_before = {c.key: hook.find_account(c.key) for c in hs_only}
    assert all(hs_before.values())

    # disable HubSpot
    cfg = stack.edit(lambda d: next(s for s in d["crm"]["sources"] if s["name"] == "hubspot").update(enabled=False))
    assert not next(s for s in cfg.crm.sources if s.name == "hubspot").enabled
    with caplog.at_level(logging.INFO, logger="m3sh.dagkit.crm_sync"):
        dag = build_crm_sync_dag()
    # Airflow configures logging (structlog to stdout, root handlers replaced) the first time a DAG
    # is built in a process: caplog sees the record only if that happened earlier in the session.
    logged = caplog.text + capsys.readouterr().out
    assert "CRM source hubspot is disabled in m3sh.yaml: not read or written" in logged
    assert not {"extract_hubspot", "write_back_hubspot"} & set(dag.task_ids)
    stack.sandbox.admin("hubspot", "stats", "DELETE")
    # Salesforce keeps flowing; HubSpot is not touched, and its accounts stay in m3ter unchanged
    assert crm_sync(accounts=domains).state == "success"
    assert request_count(stack.sandbox, "hubspot") == 0
    assert all(hook.find_account(c.key) for c in sf_only)
    assert {c.key: hook.find_account(c.key) for c in hs_only} == hs_before  # m3sh never deletes in m3ter

    # delete it from the file altogether; a Salesforce change still flows
    def delete(d: dict[str, Any]) -> None:
        d["crm"]["sources"] = [s for s in d["crm"]["sources"] if s["name"] != "hubspot"]

    cfg = stack.edit(delete)
    assert [s.name for s in cfg.crm.sources] == ["salesforce"]
    stack.sandbox.admin("salesforce", "set_fields", "POST", sobject="Account", id=sf_only[0].salesforce_id,
                        fields={"Name": "Renamed After Removal"})
    assert crm_sync(accounts=domains).state == "success"
    assert request_count(stack.sandbox, "hubspot") == 0
    assert hook.find_account(sf_only[0].key)["name"] == "Renamed After Removal"
    assert {c.key: hook.find_account(c.key) for c in hs_only} == hs_before
