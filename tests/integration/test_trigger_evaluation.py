"""Evaluation passes of ``percent_of_original`` rules against the m3ter emulator.

Such a rule makes every balance in scope a candidate, and a balance's original credit needs one
transaction-summary call. The worker pass (:class:`Evaluator`, S3 cache) and the triggerer pass
(:func:`aevaluate`, the trigger's in-memory cache) must agree on the firings, and both must pay
for a balance's credit once per balance version, not once per pass: a trigger polls for hours.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import pytest

from m3sh.config import TriggerRule

pytestmark = pytest.mark.sandbox

RULE = TriggerRule.model_validate({"name": "half_spent", "when": {"balance_below": {"percent_of_original": 50}},
                                   "actions": [{"reset_balance_to": 0}]})


def _summary_calls(sandbox: Any) -> int:
    return int(sandbox.requests_to("m3ter", "GET", "/transactions/summary"))


def test_percent_rule_passes_agree_and_look_each_credit_up_once_per_balance_version(fresh_sandbox: Any) -> None:
    from m3sh.automation.evaluate import CreditsCache, Evaluator, aevaluate
    from m3sh.config import StorageConfig
    from m3sh.hooks.m3ter import M3terAsyncHook, M3terHook
    from m3sh.storage import Storage

    hook = M3terHook()
    now = dt.datetime.now(dt.UTC).isoformat()
    # in scope: the balances running now (an ended or future period cannot fire)
    balances = sorted((b for b in hook.list_balances() if b["startDate"] <= now < b["endDate"]),
                      key=lambda b: b["code"])
    assert len(balances) >= 2, "the demo seed has running prepaid balances"
    spent, other = balances[0], balances[1]
    code = hook.get_account(spent["accountId"])["code"]
    fresh_sandbox.admin("m3ter", "drawdown", "POST", accountCode=code, amount=float(spent["amount"]) * 0.6)

    cache = CreditsCache(None)  # the trigger's: in memory, across its polls
    ahook = M3terAsyncHook()

    def async_pass() -> Any:
        return asyncio.run(aevaluate(ahook, [RULE], credit_cache=cache))

    before = _summary_calls(fresh_sandbox)
    first = async_pass()
    keys = [f.key for f in first.firings]
    assert [f.entity_id for f in first.firings] == [spent["id"]], keys
    assert first.counts["credit_lookups"] == len(balances)
    assert _summary_calls(fresh_sandbox) - before == len(balances)

    second = async_pass()
    assert [f.key for f in second.firings] == keys
    assert second.counts["credit_lookups"] == 0
    assert _summary_calls(fresh_sandbox) - before == len(balances)

    # A top-up changes one balance's version (and its original): only that one is looked up again.
    hook.create_balance_transaction(other["id"], {"amount": 10, "description": f"test top-up {uuid.uuid4().hex}"})
    third = async_pass()
    assert third.counts["credit_lookups"] == 1
    assert [f.key for f in third.firings] == keys

    # The worker pass (S3 cache) reaches the same firings.
    storage = Storage.from_config(StorageConfig(prefix=f"t-{uuid.uuid4().hex[:8]}/"))
    worker = Evaluator(hook, CreditsCache(storage).load()).run([RULE])
    assert [f.key for f in worker.firings] == keys
    assert worker.counts["credit_lookups"] == len(balances)
    assert Evaluator(hook, CreditsCache(storage).load()).run([RULE]).counts["credit_lookups"] == 0


def test_product_filter_limits_a_rule_to_balances_drawing_down_for_its_products(fresh_sandbox: Any) -> None:
    """``product_codes`` are resolved to m3ter product ids once per pass (both passes); a balance
    restricted to another product is out of scope, one without products covers every product."""
    from m3sh.automation.evaluate import Evaluator, aevaluate
    from m3sh.hooks.m3ter import M3terAsyncHook, M3terHook
    from m3sh.sandbox.seed import PRODUCT_CODE

    hook = M3terHook()
    now = dt.datetime.now(dt.UTC).isoformat()
    running = sorted((b for b in hook.list_balances() if b["startDate"] <= now < b["endDate"]),
                     key=lambda b: b["code"])
    api_only, addon_only, unrestricted = running[:3]
    api = hook.find_product(PRODUCT_CODE)
    addon = hook.upsert_product("storage_addon", {"name": "Storage add-on"}).entity
    assert api is not None and addon is not None
    hook.update_balance(api_only["id"], {"productIds": [api["id"]]}, current=api_only)
    hook.update_balance(addon_only["id"], {"productIds": [addon["id"]]}, current=addon_only)
    for b in (api_only, addon_only, unrestricted):
        fresh_sandbox.admin("m3ter", "drawdown", "POST", accountCode=hook.get_account(b["accountId"])["code"],
                            amount=float(b["amount"]) - 40)
    rule = TriggerRule.model_validate({"name": "api_low", "actions": [{"reset_balance_to": 0}],
                                       "when": {"balance_below": {"amount": 100, "product_codes": [PRODUCT_CODE]}}})

    worker = sorted(f.entity_id for f in Evaluator(hook).run([rule]).firings)
    triggerer = sorted(f.entity_id for f in asyncio.run(aevaluate(M3terAsyncHook(), [rule])).firings)
    assert worker == triggerer == sorted([api_only["id"], unrestricted["id"]])


def test_a_notified_pass_reads_only_the_notified_accounts_balances_and_keeps_the_credit_cache(
        fresh_sandbox: Any) -> None:
    """What a webhook-started run does: one balance call per notified account, balance rules only,
    the same firing as a full pass, and the S3 credit cache of the other balances left intact."""
    from m3sh.automation.evaluate import CreditsCache, Evaluator
    from m3sh.config import StorageConfig
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage

    hook = M3terHook()
    balance = sorted(hook.list_balances(), key=lambda b: b["code"])[0]
    code = hook.get_account(balance["accountId"])["code"]
    fresh_sandbox.admin("m3ter", "drawdown", "POST", accountCode=code, amount=float(balance["amount"]) - 40)
    low = TriggerRule.model_validate({"name": "low", "when": {"balance_below": {"amount": 100}},
                                      "actions": [{"reset_balance_to": 0}]})
    contract = TriggerRule.model_validate({"name": "renew", "when": {"contract_ending_within_days": 3650},
                                           "actions": [{"notify": "ops_slack"}]})
    storage = Storage.from_config(StorageConfig(prefix=f"t-{uuid.uuid4().hex[:8]}/"))
    full = Evaluator(hook, CreditsCache(storage).load()).run([low])
    cached = dict(CreditsCache(storage).load().entries)
    assert [f.entity_id for f in full.firings] == [balance["id"]] and cached

    def gets() -> dict[str, int]:
        return {k: n for k, n in fresh_sandbox.stats("m3ter")["counts"].items() if k.startswith("GET ")}

    before = gets()
    narrowed = Evaluator(hook, CreditsCache(storage).load()).run(
        [low, contract], notified_account_ids=[balance["accountId"]])
    made = {k: n - before.get(k, 0) for k, n in gets().items() if n != before.get(k, 0)}
    assert [f.key for f in narrowed.firings] == [f.key for f in full.firings]  # the contract rule is not run
    assert narrowed.counts["balances"] == len([b for b in hook.list_balances()
                                               if b["accountId"] == balance["accountId"]])
    assert sum(n for k, n in made.items() if k.endswith("/balances")) == 1, made  # one page, one account
    assert not any(k.endswith("/contracts") for k in made), made
    assert CreditsCache(storage).load().entries == cached
