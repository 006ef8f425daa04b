"""Deferrable sensors that wait for m3sh trigger rules to fire (one pass covers every account).

``M3terBalanceSensor``, ``M3terUsageLimitSensor`` and ``M3terContractEndSensor`` poke once on the
worker (sync hook, same pure evaluation as the DAG), and if nothing new fires, defer to their
trigger on the triggerer (async hook) so no worker slot is held while waiting. With
``deferrable=False`` they poke in the classic way (``mode="poke"`` or ``"reschedule"``).

The sensor returns (XCom) the new firings: keys, account ids/codes and a few numbers. Firings
already in the S3 ledger (handled before) are excluded, so a depleted balance that was already
acted on does not keep the sensor succeeding.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException

from m3sh.compat import conf
from m3sh.triggers.m3ter import (
    M3terBalanceTrigger,
    M3terContractEndTrigger,
    M3terRuleTrigger,
    M3terUsageLimitTrigger,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from m3sh.config import TriggerRule


class M3terRuleSensor(BaseSensorOperator):
    """Waits until a trigger rule of this sensor's kind fires for some account.

    :param rules: rule names from ``m3sh.yaml`` (default: every enabled rule of the sensor's kind).
    :param m3ter_conn_id: Airflow connection of type ``m3ter`` (default: the config's).
    :param accounts: only these m3ter account codes.
    :param exclude_handled: leave out firings the ledger already holds.
    :param deferrable: wait on the triggerer (default ``[operators] default_deferrable``).
    :param poll_interval: seconds between passes on the triggerer.
    """

    template_fields: Sequence[str] = ("rules", "accounts", "m3ter_conn_id")
    trigger_class: type[M3terRuleTrigger] = M3terRuleTrigger
    ui_color = "#f0e4ff"

    def __init__(self, *, rules: Sequence[str] | None = None, m3ter_conn_id: str | None = None,
                 accounts: Sequence[str] | None = None, exclude_handled: bool = True,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 poll_interval: float = 60.0, **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.rules = list(rules or [])
        self.m3ter_conn_id = m3ter_conn_id
        self.accounts = list(accounts or [])
        self.exclude_handled = exclude_handled
        self.deferrable = deferrable
        self.poll_interval = poll_interval

    # -- shared pieces (read the config at run time, never at DAG parse time) ------------------
    def _rules(self) -> list[TriggerRule]:
        from m3sh.automation.rules import select_rules
        from m3sh.config import get_config

        rules = select_rules(get_config().triggers, self.rules or None, self.trigger_class.kinds)
        if not rules:
            raise AirflowException(f"{self.task_id}: no enabled trigger rule of kind "
                                   f"{self.trigger_class.kinds} (asked for {self.rules or 'all'})")
        return rules

    def _conn_id(self) -> str:
        from m3sh.config import get_config

        return self.m3ter_conn_id or get_config().m3ter.conn_id

    def _handled_keys(self, keys: Sequence[str]) -> set[str]:
        if not self.exclude_handled or not keys:
            return set()
        from m3sh.automation.ledger import Ledger
        from m3sh.config import get_config
        from m3sh.storage import Storage

        ledger = Ledger(Storage.from_config(get_config().storage))
        return {k for k in keys if (ledger.get(k) or {}).get("status") in ("done", "abandoned")}

    def poke(self, context: Context) -> PokeReturnValue:
        from m3sh.automation.evaluate import Evaluator
        from m3sh.hooks.m3ter import M3terHook

        result = Evaluator(M3terHook(self._conn_id())).run(self._rules(), accounts=self.accounts or None)
        handled = self._handled_keys([f.key for f in result.firings])
        self._seen_handled = sorted(handled)
        new = [f for f in result.firings if f.key not in handled]
        self.log.info("%d firing(s), %d already handled, %d new", len(result.firings), len(handled), len(new))
        firings = [{"key": f.key, "rule": f.rule, "account_id": f.account_id, "account_code": f.account_code,
                    "entity_id": f.entity_id, "detail": f.detail} for f in new]
        return PokeReturnValue(is_done=bool(new), xcom_value=firings)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        first = self.poke(context)
        if first.is_done:
            return first.xcom_value
        trigger = self.trigger_class(
            rules=[r.model_dump(mode="json") for r in self._rules()], m3ter_conn_id=self._conn_id(),
            poll_interval=self.poll_interval, exclude_keys=getattr(self, "_seen_handled", []),
            accounts=self.accounts)
        self.defer(trigger=trigger, method_name="execute_complete",
                   timeout=dt.timedelta(seconds=float(self.timeout)) if self.timeout else None)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if not event or event.get("status") != "success":
            raise AirflowException(f"{self.task_id}: trigger failed: {(event or {}).get('message', 'no event')}")
        self.log.info("%s", event.get("message"))
        firings: list[dict[str, Any]] = event.get("firings") or []
        return firings


class M3terBalanceSensor(M3terRuleSensor):
    """Waits for a ``balance_below`` rule to fire (prepaid balance under its threshold)."""

    trigger_class = M3terBalanceTrigger


class M3terUsageLimitSensor(M3terRuleSensor):
    """Waits for a ``usage_over_limit`` rule to fire (usage in the billing period over the limit)."""

    trigger_class = M3terUsageLimitTrigger


class M3terContractEndSensor(M3terRuleSensor):
    """Waits for a ``contract_ending``/``contract_ended`` rule to fire."""

    trigger_class = M3terContractEndTrigger
