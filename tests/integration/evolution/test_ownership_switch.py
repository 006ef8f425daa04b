"""Headless or source of truth: switching a field's ownership in m3sh.yaml takes effect on the next
run, without a migration. ``name: m3ter_wins`` keeps a name edited in m3ter and writes it to the CRM
(the m3ter -> CRM step); back to ``crm_wins``, the CRM's value wins again: a rename in Salesforce
reaches m3ter."""

from __future__ import annotations

from typing import Any

import pytest

from m3sh.sandbox.seed import demo_company

from .conftest import crm_sync

pytestmark = [pytest.mark.sandbox, pytest.mark.dagrun]


def _sf_name(sf_id: str) -> str:
    from m3sh.hooks.salesforce import SalesforceSync

    return str(SalesforceSync().get_record("Account", sf_id, ["Name"])["Name"])


def _set_name_owner(owner: str) -> Any:
    def change(d: dict[str, Any]) -> None:
        d["crm"]["ownership"]["fields"]["name"] = owner

    return change


def test_switching_name_ownership_takes_effect_on_the_next_run(stack: Any) -> None:
    from m3sh.hooks.m3ter import M3terHook

    # a customer m3ter already knows (created before m3sh), also in Salesforce under the same name
    c = next(c for c in demo_company().customers if c.crm == "salesforce" and c.in_m3ter)
    hook = M3terHook()
    account = hook.find_account(c.key)
    assert account["name"] == c.name
    hook.update_account(account["id"], {"name": "Named by Finance"}, current=account)

    cfg = stack.edit(_set_name_owner("m3ter_wins"))  # m3ter becomes the source of truth for names
    assert cfg.crm.ownership.owner_of("name") == "m3ter_wins"
    assert crm_sync(accounts=[c.domain]).state == "success"
    linked = hook.find_account(c.key)
    assert linked["name"] == "Named by Finance"
    mappings = hook.list_external_mappings_of("Account", account["id"])
    assert [m["externalId"] for m in mappings] == [c.salesforce_id]  # the sync did run for it (and linked it)
    assert _sf_name(c.salesforce_id) == "Named by Finance"  # m3ter owns the name: the CRM shows m3ter's

    cfg = stack.edit(_set_name_owner("crm_wins"))  # and back: the CRM owns names again
    assert cfg.crm.ownership.owner_of("name") == "crm_wins"
    stack.sandbox.admin("salesforce", "set_fields", "POST", sobject="Account", id=c.salesforce_id,
                        fields={"Name": "Renamed in Salesforce"})
    assert crm_sync(accounts=[c.domain]).state == "success"
    after = hook.find_account(c.key)
    assert after["name"] == "Renamed in Salesforce" and after["id"] == account["id"]
    assert _sf_name(c.salesforce_id) == "Renamed in Salesforce"
