"""Deferrable sensors that wait for an m3ter condition to hold (one pass covers every account).

Each sensor watches either rule names from ``m3sh.yaml`` (``rules=[...]``) or one inline condition
given as arguments (``M3terBalanceSensor(below_amount=100)``, ``M3terUsageLimitSensor(meter=...,
limit=...)``, ``M3terContractEndSensor(days_before_end=30)``), which is what a user's own DAG does:
an inline sensor never reads ``m3sh.yaml``, and uses the S3 ledger only when given one (``ledger=``).

``M3terBalanceSensor``, ``M3terUsageLimitSensor`` and ``M3terContractEndSensor`` poke once on the
worker (sync hook, same pure evaluation as the DAG), and if nothing new fires, defer to their
trigger on the triggerer (async hook) so no worker slot is held while waiting. With
``deferrable=False`` they poke in the classic way (``mode="poke"`` or ``"reschedule"``).

The sensor returns (XCom) the new firings: keys, account ids/codes and a few numbers. With a ledger
(always for rule names; for an inline condition when ``ledger`` is given), firings already in it
(handled before) are excluded, so a depleted balance that was already acted on does not keep the
sensor succeeding. Without one every poke reports whatever holds now.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException
from pydantic import ValidationError

from m3sh.compat import conf
from m3sh.triggers.m3ter import (
    M3terBalanceTrigger,
    M3terContractEndTrigger,
    M3terRuleTrigger,
    M3terUsageLimitTrigger,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from m3sh.automation.ledger import Ledger
    from m3sh.config import TriggerRule


class M3terRuleSensor(BaseSensorOperator):
    """Waits until a trigger rule of this sensor's kind fires for some account.

    :param rules: rule names from ``m3sh.yaml`` (default: every enabled rule of the sensor's kind).
        Subclasses also take one inline condition instead (then ``m3sh.yaml`` is never read).
    :param m3ter_conn_id: Airflow connection of type ``m3ter`` (default: the config's for rule
        names, ``m3ter_default`` for an inline condition). (templated)
    :param accounts: only these m3ter account codes. (templated)
    :param exclude_handled: leave out firings the ledger already holds.
    :param ledger: the ledger that says which firings were handled; default: the config's for rule
        names, none for an inline condition.
    :param rule_name: the inline condition's name, part of each firing key (default: the task id).
    :param deferrable: wait on the triggerer (default ``[operators] default_deferrable``).
    :param poll_interval: seconds between passes on the triggerer.
    """

    template_fields: Sequence[str] = ("rules", "accounts", "m3ter_conn_id")
    trigger_class: type[M3terRuleTrigger] = M3terRuleTrigger
    ui_color = "#f0e4ff"

    def __init__(self, *, rules: Sequence[str] | None = None, m3ter_conn_id: str | None = None,
                 accounts: Sequence[str] | None = None, exclude_handled: bool = True,
                 ledger: Ledger | None = None, rule_name: str | None = None,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
                 poll_interval: float = 60.0, **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.rules = list(rules or [])
        self.m3ter_conn_id = m3ter_conn_id
        self.accounts = list(accounts or [])
        self.exclude_handled = exclude_handled
        self.ledger = ledger
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        condition = self._inline_condition()
        if condition is not None and self.rules:
            raise ValueError(f"{self.task_id}: give rule names (rules=) or an inline condition, not both")
        self.inline_rule: TriggerRule | None = (
            None if condition is None else _watch_rule(self.task_id, rule_name or self.task_id, condition))

    def _inline_condition(self) -> dict[str, Any] | None:
        """The ``when`` of the inline rule built from this sensor's arguments (None: use rule names)."""
        return None

    # -- shared pieces (read the config at run time, never at DAG parse time) ------------------
    def _rules(self) -> list[TriggerRule]:
        if self.inline_rule is not None:
            return [self.inline_rule]
        from m3sh.automation.rules import select_rules
        from m3sh.config import get_config

        rules = select_rules(get_config().triggers, self.rules or None, self.trigger_class.kinds)
        if not rules:
            raise AirflowException(f"{self.task_id}: no enabled trigger rule of kind "
                                   f"{self.trigger_class.kinds} (asked for {self.rules or 'all'})")
        return rules

    def _conn_id(self) -> str:
        if self.m3ter_conn_id:
            return self.m3ter_conn_id
        if self.inline_rule is not None:
            from m3sh.hooks.m3ter import M3terHook

            return M3terHook.default_conn_name
        from m3sh.config import get_config

        return get_config().m3ter.conn_id

    def _ledger(self) -> Ledger | None:
        if self.ledger is not None or self.inline_rule is not None:
            return self.ledger
        from m3sh.automation.ledger import Ledger
        from m3sh.config import get_config
        from m3sh.storage import Storage

        return Ledger(Storage.from_config(get_config().storage))

    def _handled_keys(self, keys: Sequence[str]) -> set[str]:
        if not self.exclude_handled or not keys:
            return set()
        ledger = self._ledger()
        if ledger is None:
            return set()
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


def _watch_rule(task_id: str, name: str, when: dict[str, Any]) -> TriggerRule:
    """Validate an inline condition as a rule; a bad argument fails at DAG parse time, naming it."""
    from m3sh.config import WatchRule

    try:
        return WatchRule.model_validate({"name": name, "when": when})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{task_id}: invalid sensor condition ({problems})") from None


class M3terBalanceSensor(M3terRuleSensor):
    """Waits until a prepaid balance is under a threshold (a ``balance_below`` condition).

    Inline: exactly one of ``below_amount`` / ``below_percent`` (of the balance's total credit),
    optionally narrowed by ``balance_code`` (shell patterns) and ``product_codes``. Or ``rules=``.

    :param below_amount: fire when a balance's amount is under this.
    :param below_percent: fire when a balance is under this share (0-100] of its total credit.
    :param balance_code: only balances whose code matches this pattern (or one of these patterns).
    :param product_codes: only balances that draw down for one of these m3ter product codes.
    """

    trigger_class = M3terBalanceTrigger

    def __init__(self, *, below_amount: float | None = None, below_percent: float | None = None,
                 balance_code: str | Sequence[str] | None = None, product_codes: Sequence[str] | None = None,
                 **kwargs: Any) -> None:
        self.below_amount = below_amount
        self.below_percent = below_percent
        self.balance_codes = [balance_code] if isinstance(balance_code, str) else list(balance_code or [])
        self.product_codes = list(product_codes or [])
        super().__init__(**kwargs)

    def _inline_condition(self) -> dict[str, Any] | None:
        if self.below_amount is None and self.below_percent is None:
            if self.balance_codes or self.product_codes:
                raise ValueError(f"{self.task_id}: balance_code/product_codes need below_amount or below_percent")
            return None
        return {"balance_below": {"amount": self.below_amount, "percent_of_original": self.below_percent,
                                  "balance_codes": self.balance_codes or None,
                                  "product_codes": self.product_codes or None}}


class M3terUsageLimitSensor(M3terRuleSensor):
    """Waits until an account's usage of a meter in the current (calendar-month) billing period is
    over a limit (a ``usage_over_limit`` condition). Inline: ``meter`` and ``limit``. Or ``rules=``.

    :param meter: m3ter meter code.
    :param limit: fire when the aggregated usage is over this.
    :param aggregation: ``SUM`` (default), ``COUNT`` or ``MAX``.
    :param field: the meter's measure field the aggregation runs over (default ``quantity``).
    """

    trigger_class = M3terUsageLimitTrigger

    def __init__(self, *, meter: str | None = None, limit: float | None = None,
                 aggregation: Literal["SUM", "COUNT", "MAX"] = "SUM", field: str = "quantity",
                 **kwargs: Any) -> None:
        self.meter = meter
        self.limit = limit
        self.aggregation = aggregation
        self.field = field
        super().__init__(**kwargs)

    def _inline_condition(self) -> dict[str, Any] | None:
        if self.meter is None and self.limit is None:
            return None
        if self.meter is None or self.limit is None:
            raise ValueError(f"{self.task_id}: an inline usage condition needs both meter and limit")
        return {"usage_over_limit": {"meter": self.meter, "limit": self.limit, "aggregation": self.aggregation,
                                     "field": self.field}}


class M3terContractEndSensor(M3terRuleSensor):
    """Waits until a contract ends within ``days_before_end`` days (``contract_ending``), or has
    ended (``ended=True``, ``contract_ended``). Or ``rules=``.

    :param days_before_end: fire when a contract's last day is at most this many days away.
    :param ended: fire once a contract has ended instead.
    """

    trigger_class = M3terContractEndTrigger

    def __init__(self, *, days_before_end: int | None = None, ended: bool = False, **kwargs: Any) -> None:
        self.days_before_end = days_before_end
        self.ended = ended
        super().__init__(**kwargs)

    def _inline_condition(self) -> dict[str, Any] | None:
        if self.days_before_end is not None and self.ended:
            raise ValueError(f"{self.task_id}: give days_before_end or ended=True, not both")
        if self.days_before_end is not None:
            return {"contract_ending_within_days": self.days_before_end}
        return {"contract_ended": True} if self.ended else None
