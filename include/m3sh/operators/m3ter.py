"""m3ter plan actions as operators: switch plan, reset or top up a balance, set custom fields.

The writes are the rule engine's own (:mod:`m3sh.automation.actions`), so an operator in a user's
DAG and an ``m3sh.yaml`` rule behave alike: each reads the current state first and writes only
what differs, so a retry or a re-run changes nothing twice. Each ``execute`` returns
``{"status": "done"|"unchanged"|"skipped", "detail": ..., ...ids}`` (JSON-safe, pushed to XCom).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, final

from airflow.sdk import BaseOperator

from m3sh.compat import AirflowFailException
from m3sh.hooks.m3ter import M3terHook

if TYPE_CHECKING:
    from airflow.sdk import Context

    from m3sh.automation.actions import Outcome

HookT = TypeVar("HookT", bound=M3terHook)
CustomFieldTarget = Literal["account", "accountplan", "balance", "contract"]
CUSTOM_FIELD_TARGETS: tuple[str, ...] = ("account", "accountplan", "balance", "contract")
# run id + task id (+ map index) is stable across an Airflow retry of the same task instance, so a
# retried top-up finds its own transaction instead of crediting again.
DEFAULT_IDEMPOTENCY_KEY = "{{ run_id }}|{{ ti.task_id }}|{{ ti.map_index }}"


class M3terBaseOperator(BaseOperator, Generic[HookT]):
    """Base for operators that talk to m3ter through one hook (model: amazon's ``AwsBaseOperator``).

    Subclasses set ``hook_class`` (default :class:`M3terHook`) and extend :meth:`_hook_parameters`;
    the hook itself is built once per task, lazily, so parsing the DAG opens no connection.

    :param m3ter_conn_id: Airflow connection of type ``m3ter``. (templated)
    """

    hook_class: type[M3terHook] = M3terHook
    template_fields: Sequence[str] = ("m3ter_conn_id",)
    ui_color = "#e8f0ff"

    def __init__(self, *, m3ter_conn_id: str = M3terHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.m3ter_conn_id = m3ter_conn_id

    def _hook_parameters(self) -> dict[str, Any]:
        return {"m3ter_conn_id": self.m3ter_conn_id}

    @final
    @cached_property
    def hook(self) -> HookT:
        hook: HookT = self.hook_class(**self._hook_parameters())  # type: ignore[assignment]
        return hook

    # -- helpers the actions share -------------------------------------------------------------
    def _required(self, name: str) -> str:
        """A rendered string argument; empty after templating is bad input, not worth a retry."""
        value = getattr(self, name)
        if not isinstance(value, str) or not value.strip():
            raise AirflowFailException(f"{self.task_id}: {name} is empty (rendered {value!r})")
        return value.strip()

    def _account(self, code: str) -> dict[str, Any]:
        account = self.hook.find_account(code)
        if account is None:
            raise AirflowFailException(f"{self.task_id}: m3ter has no account with code {code!r}")
        return account

    def _result(self, outcome: Outcome, **ids: Any) -> dict[str, Any]:
        self.log.info("%s: %s", outcome.status, outcome.detail)
        if outcome.status == "failed":  # pragma: no cover - the shared actions raise instead
            raise AirflowFailException(f"{self.task_id}: {outcome.detail}")
        return {"status": outcome.status, "detail": outcome.detail, **ids}


def _instant(task_id: str, value: str | None) -> str:
    """An ISO-8601 instant (``...Z``), or now; m3ter dates without a time mean midnight UTC."""
    from m3sh.automation.rules import iso_instant, parse_instant

    if not value:
        return iso_instant(dt.datetime.now(dt.UTC))
    try:
        return iso_instant(parse_instant(value))
    except ValueError:
        raise AirflowFailException(f"{task_id}: at={value!r} is not an ISO-8601 date or date-time") from None


class M3terSwitchPlanOperator(M3terBaseOperator[M3terHook]):
    """Put an m3ter account on a plan from an instant: the account plan of the same product active
    then ends there and the new plan is attached from it (keeping the old end date and contract).
    Already on the plan, or the plan already attached from then: nothing is written.

    :param account_code: m3ter account code. (templated)
    :param plan_code: m3ter plan code to attach. (templated)
    :param at: ISO-8601 date or instant the switch takes effect (default: now). (templated)
    """

    template_fields: Sequence[str] = (*M3terBaseOperator.template_fields, "account_code", "plan_code", "at")

    def __init__(self, *, account_code: str, plan_code: str, at: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.account_code = account_code
        self.plan_code = plan_code
        self.at = at

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.automation.actions import switch_account_plan

        code, plan_code = self._required("account_code"), self._required("plan_code")
        at = _instant(self.task_id, self.at)
        account = self._account(code)
        plan = self.hook.find_plan(plan_code)
        if plan is None:
            raise AirflowFailException(f"{self.task_id}: m3ter has no plan with code {plan_code!r}")
        outcome = switch_account_plan(self.hook, str(account["id"]), plan, plan_code, at)
        return self._result(outcome, account_code=code, account_id=account["id"], plan_code=plan_code,
                            plan_id=plan["id"], at=at)


class M3terBalanceOperator(M3terBaseOperator[M3terHook]):
    """Reset a prepaid balance to an amount, or top it up by one, exactly once per ``idempotency_key``.

    The transaction's description carries the key (``m3sh reset <key>`` / ``m3sh top_up <key>``),
    and a transaction with that description on the balance means it was applied already, so an
    Airflow retry (same run id and task, the default key) or a re-run with the same key does not
    credit twice. A reset to the amount the balance already has writes nothing.

    :param account_code: m3ter account code. (templated)
    :param reset_to: the amount the balance has afterwards (exactly one of ``reset_to``/``top_up``).
    :param top_up: the credit added (> 0).
    :param balance_code: the balance's code (default: the account's balance active now). (templated)
    :param idempotency_key: what makes the change happen once (default: run id, task id and map
        index, i.e. once per task instance). (templated)
    """

    template_fields: Sequence[str] = (*M3terBaseOperator.template_fields, "account_code", "balance_code",
                                      "idempotency_key")

    def __init__(self, *, account_code: str, reset_to: float | None = None, top_up: float | None = None,
                 balance_code: str | None = None, idempotency_key: str = DEFAULT_IDEMPOTENCY_KEY,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if (reset_to is None) == (top_up is None):
            raise ValueError(f"{self.task_id}: give exactly one of reset_to or top_up")
        if reset_to is not None and reset_to < 0:
            raise ValueError(f"{self.task_id}: reset_to must be >= 0, got {reset_to}")
        if top_up is not None and not top_up > 0:
            raise ValueError(f"{self.task_id}: top_up must be > 0, got {top_up}")
        self.account_code = account_code
        self.reset_to = reset_to
        self.top_up = top_up
        self.balance_code = balance_code
        self.idempotency_key = idempotency_key

    def _balance(self, account: Mapping[str, Any]) -> dict[str, Any] | None:
        from m3sh.automation.rules import active_at

        balances = list(self.hook.list_balances(account_id=str(account["id"])))
        if self.balance_code:
            found = next((b for b in balances if b.get("code") == self.balance_code), None)
            if found is None:
                raise AirflowFailException(f"{self.task_id}: account {account.get('code')!r} has no balance "
                                           f"with code {self.balance_code!r}")
            return found
        now = dt.datetime.now(dt.UTC)
        return next((b for b in balances if active_at(b, now)), None)

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.automation.actions import Outcome, apply_balance_change

        code, key = self._required("account_code"), self._required("idempotency_key")
        account = self._account(code)
        balance = self._balance(account)
        if balance is None:
            return self._result(Outcome("skipped", f"account {code} has no active balance"), account_code=code)
        kind = "reset" if self.reset_to is not None else "top_up"

        def tx_type(type_code: str) -> str | None:
            found = self.hook.find_transaction_type(type_code)
            return str(found["id"]) if found else None

        outcome = apply_balance_change(self.hook, balance, f"m3sh {kind} {key}", reset_to=self.reset_to,
                                       top_up=self.top_up, tx_type=tx_type)
        return self._result(outcome, account_code=code, balance_id=balance["id"],
                            balance_code=balance.get("code"), idempotency_key=key)


class M3terSetCustomFieldsOperator(M3terBaseOperator[M3terHook]):
    """Set custom fields on an account, its current account plan, or one of its balances or
    contracts (by code); only fields whose value differs are written, none when all match.

    :param account_code: m3ter account code. (templated)
    :param fields: custom field name -> value (string or number). (templated)
    :param entity: ``account`` (default), ``accountplan`` (the plan active now), ``balance`` or
        ``contract`` (then ``entity_code`` names it).
    :param entity_code: the balance's or contract's code. (templated)
    """

    template_fields: Sequence[str] = (*M3terBaseOperator.template_fields, "account_code", "fields", "entity_code")

    def __init__(self, *, account_code: str, fields: Mapping[str, str | float],
                 entity: CustomFieldTarget = "account", entity_code: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if entity not in CUSTOM_FIELD_TARGETS:
            raise ValueError(f"{self.task_id}: entity must be one of {CUSTOM_FIELD_TARGETS}, got {entity!r}")
        if entity in ("balance", "contract") and not entity_code:
            raise ValueError(f"{self.task_id}: entity={entity!r} needs entity_code (the {entity}'s code)")
        if not isinstance(fields, Mapping) or not fields:
            raise ValueError(f"{self.task_id}: fields must be a non-empty mapping of custom field -> value")
        bad = sorted(k for k, v in fields.items() if not isinstance(v, str | int | float) or isinstance(v, bool))
        if bad:
            raise ValueError(f"{self.task_id}: custom field values must be strings or numbers; not {bad}")
        self.account_code = account_code
        self.fields = dict(fields)
        self.entity = entity
        self.entity_code = entity_code

    def _target(self, account: dict[str, Any]) -> tuple[dict[str, Any], Callable[..., dict[str, Any]]]:
        from m3sh.automation.rules import active_at

        if self.entity == "account":
            return account, self.hook.update_account
        if self.entity == "accountplan":
            now = dt.datetime.now(dt.UTC)
            plans = [ap for ap in self.hook.list_account_plans(account_id=str(account["id"]), include_all=True)
                     if active_at(ap, now)]
            if not plans:
                raise AirflowFailException(f"{self.task_id}: account {account.get('code')!r} has no account plan "
                                           "active now")
            return plans[0], self.hook.update_account_plan
        items = (self.hook.list_balances(account_id=str(account["id"])) if self.entity == "balance"
                 else self.hook.list_contracts(account_id=str(account["id"])))
        found = next((e for e in items if e.get("code") == self.entity_code), None)
        if found is None:
            raise AirflowFailException(f"{self.task_id}: account {account.get('code')!r} has no {self.entity} "
                                       f"with code {self.entity_code!r}")
        return found, (self.hook.update_balance if self.entity == "balance" else self.hook.update_contract)

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.automation.actions import write_custom_fields

        code = self._required("account_code")
        target, update = self._target(self._account(code))
        outcome = write_custom_fields(target, self.fields, update, self.entity)
        return self._result(outcome, account_code=code, entity=self.entity, entity_id=target["id"])
