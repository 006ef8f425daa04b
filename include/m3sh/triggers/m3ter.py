"""Triggers that watch m3ter for rule firings, one pass over all accounts per poll.

Each trigger evaluates trigger rules of one condition kind with :func:`m3sh.automation.evaluate.aevaluate`
(async m3ter hook, list endpoints in pages of 100; no blocking call, no S3) and yields exactly one
:class:`TriggerEvent` ``{"status": "success"|"error", "message": ..., "firings": [...]}`` as soon
as a firing whose key is not in ``exclude_keys`` exists (the sensor passes the keys its ledger has
already handled). Firings in the event carry keys, account ids/codes and a few numbers only.

Rules travel as plain dicts (``TriggerRule.model_dump(mode="json")``) so ``serialize()`` stays
primitive and the triggerer needs no m3sh.yaml.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from m3sh.config import TriggerRule, WatchRule

MAX_FIRINGS_IN_EVENT = 500


class M3terRuleTrigger(BaseTrigger):
    """Polls m3ter until at least one new firing of ``rules`` exists (``kinds`` restricts the rules).

    :param rules: trigger rules as dicts (``TriggerRule.model_dump(mode="json")``).
    :param m3ter_conn_id: Airflow connection of type ``m3ter``.
    :param poll_interval: seconds between passes while nothing fires.
    :param exclude_keys: firing keys already handled (never reported again).
    :param accounts: only these account codes (empty: all).
    """

    kinds: tuple[str, ...] = ()

    def __init__(self, rules: Sequence[dict[str, Any]], m3ter_conn_id: str = "m3ter_default",
                 poll_interval: float = 60.0, exclude_keys: Sequence[str] = (),
                 accounts: Sequence[str] = ()) -> None:
        super().__init__()
        self.rules = [dict(r) for r in rules]
        self.m3ter_conn_id = m3ter_conn_id
        self.poll_interval = float(poll_interval)
        self.exclude_keys = list(exclude_keys)
        self.accounts = list(accounts)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"rules": self.rules, "m3ter_conn_id": self.m3ter_conn_id, "poll_interval": self.poll_interval,
                 "exclude_keys": self.exclude_keys, "accounts": self.accounts})

    def parsed_rules(self) -> list[TriggerRule]:
        # WatchRule: a sensor's inline condition has no actions (a rule from m3sh.yaml has some).
        rules: list[TriggerRule] = [WatchRule.model_validate(r) for r in self.rules]
        return [r for r in rules if r.enabled and (not self.kinds or r.when.kind in self.kinds)]

    def _hook(self) -> Any:
        from m3sh.hooks.m3ter import M3terAsyncHook

        return M3terAsyncHook(m3ter_conn_id=self.m3ter_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(await self._watch())  # exactly one event, whatever happens

    async def _watch(self) -> dict[str, Any]:
        from m3sh.automation.evaluate import CreditsCache, aevaluate

        try:
            rules = self.parsed_rules()
            if not rules:
                return {"status": "error", "message": f"no enabled rule of kind {self.kinds}", "firings": []}
            hook = self._hook()
            try:
                excluded = set(self.exclude_keys)
                credits = CreditsCache(None)  # balance credit totals by version, in memory across passes
                passes = 0
                while True:
                    passes += 1
                    result = await aevaluate(hook, rules, accounts=self.accounts or None, credit_cache=credits)
                    new = [f for f in result.firings if f.key not in excluded]
                    if new:
                        firings = [{"key": f.key, "rule": f.rule, "account_id": f.account_id,
                                    "account_code": f.account_code, "entity_id": f.entity_id, "detail": f.detail}
                                   for f in new[:MAX_FIRINGS_IN_EVENT]]
                        return {"status": "success", "firings": firings,
                                "message": f"{len(new)} firing(s) after {passes} pass(es)"}
                    self.log.info("pass %d: no new firing (%s); next in %ss", passes, result.counts,
                                  self.poll_interval)
                    await asyncio.sleep(self.poll_interval)
            finally:
                aclose = getattr(hook, "aclose", None)  # releases the hook's HTTP connections
                if aclose is not None:
                    await aclose()
        except Exception as exc:  # one event, never a crashed trigger: the sensor decides what to do
            self.log.exception("m3ter trigger failed")
            return {"status": "error", "message": f"{type(exc).__name__}: {str(exc)[:500]}", "firings": []}


class M3terBalanceTrigger(M3terRuleTrigger):
    """Fires when a prepaid balance falls under a ``balance_below`` rule's threshold."""

    kinds = ("balance_below",)


class M3terUsageLimitTrigger(M3terRuleTrigger):
    """Fires when an account's usage in the current billing period exceeds a ``usage_over_limit`` rule."""

    kinds = ("usage_over_limit",)


class M3terContractEndTrigger(M3terRuleTrigger):
    """Fires when a contract is within a ``contract_ending`` rule's window or has ended."""

    kinds = ("contract_ending", "contract_ended")
