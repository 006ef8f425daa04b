"""Plan & contract automation rules (balances, usage limits, contract dates -> plan switches, balance
resets, fields, CRM fields, notifications) as operators for users' own DAGs.

* :class:`M3terRulesEvaluateOperator` evaluates the rules over m3ter's list endpoints (or, in a run
  started by m3ter notifications, the notified accounts' balances) and returns the firings not yet
  done, in chunks;
* :class:`M3terApplyFiringsOperator` (mapped over the chunks) claims each firing in the S3 ledger
  and runs its rule's actions in order, each idempotent, recording every outcome: exactly once
  per firing across retries and re-runs;
* :class:`M3terFiringsSummaryOperator` counts the outcomes and fails naming the firings whose
  actions failed (the next pass resumes them). Give it ``trigger_rule="all_done"``.

Rules are :class:`~m3sh.config.TriggerRule` objects or their mappings (``rules=[...]``, with
``notifiers`` and ``crm_sources`` for the actions that need them), or a config (``config=``, an
:class:`~m3sh.config.M3shConfig` or its JSON form); ``m3sh.yaml`` is never read. The logic is
:mod:`m3sh.automation.run`'s; ``m3sh_plan_triggers`` wires these same operators. Templated
``only_rules``, ``accounts`` and ``preview`` (a dry run) accept their value or its JSON text
(``"{{ params.rules | tojson }}"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from m3sh.compat import AirflowFailException
from m3sh.config import AlertingConfig, CrmSource, CrmSyncConfig, M3shConfig, Notifier, TriggerRule
from m3sh.operators._common import ConfigArg, M3terLazyOperator, flag, models, names, native, settings, storage_settings

if TYPE_CHECKING:
    from airflow.sdk import Context

RuleArg = Sequence[TriggerRule | Mapping[str, Any]] | None


class _RulesSettings:
    """The rules, notifiers, CRM sources and ledger bucket: ``config``, or the inline arguments."""

    task_id: str

    def _init_settings(self, config: ConfigArg, *, rules: RuleArg, bucket: str | None, prefix: str,
                       aws_conn_id: str, notifiers: Sequence[Notifier | Mapping[str, Any]] | None = None,
                       crm_sources: Sequence[CrmSource | Mapping[str, Any]] | None = None) -> None:
        if (config is None) == (rules is None):
            raise ValueError(f"{self.task_id}: give rules=[...] (TriggerRule objects or mappings) or config=..., "
                             "exactly one")
        if config is not None and (bucket is not None or notifiers is not None or crm_sources is not None):
            raise ValueError(f"{self.task_id}: give config=... or the inline arguments (bucket, notifiers, "
                             "crm_sources), not both")

        def inline() -> M3shConfig:
            return M3shConfig(triggers=models(rules), alerting=AlertingConfig(notifiers=models(notifiers)),
                              crm=CrmSyncConfig(sources=models(crm_sources)),
                              storage=storage_settings(self.task_id, bucket, prefix, aws_conn_id))

        self.settings = settings(self.task_id, config, inline)


class M3terRulesEvaluateOperator(_RulesSettings, M3terLazyOperator):
    """Evaluate trigger rules and return the firings to act on, in chunks for
    :class:`M3terApplyFiringsOperator`. A run started by m3ter notifications (an asset event naming
    ``account_id``) evaluates only those accounts' balance rules.

    :param rules: :class:`~m3sh.config.TriggerRule` objects or mappings.
    :param config: an :class:`~m3sh.config.M3shConfig` (or its JSON form) instead of ``rules`` and
        the storage arguments (``triggers``, ``storage``).
    :param only_rules: only these rule names (empty: every enabled rule). (templated)
    :param accounts: only these m3ter account codes (empty: all). (templated)
    :param preview: a dry run: list what would fire and which actions; change nothing. (templated)
    :param bucket: S3 bucket of the ledger and the credit cache. :param prefix: key prefix there.
    :param aws_conn_id: Airflow AWS connection of that bucket.
    :param firings_per_task: firings per chunk (one mapped task each).

    Returns ``{"chunks", "firings", "dry_run", "scope"}`` (a dry run: ``would_fire`` and ``plan``, no chunks).
    """

    template_fields: Sequence[str] = (*M3terLazyOperator.template_fields, "only_rules", "accounts", "preview")
    ui_color = "#fff0f0"

    def __init__(self, *, rules: RuleArg = None, config: ConfigArg = None,
                 only_rules: Sequence[str] | str | None = None, accounts: Sequence[str] | str | None = None,
                 preview: bool | str = False, bucket: str | None = None, prefix: str = "m3sh/",
                 aws_conn_id: str = "aws_default", firings_per_task: int = 50, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_settings(config, rules=rules, bucket=bucket, prefix=prefix, aws_conn_id=aws_conn_id)
        if firings_per_task < 1:
            raise ValueError(f"{self.task_id}: firings_per_task must be >= 1, got {firings_per_task}")
        self.only_rules = only_rules
        self.accounts = accounts
        self.preview = preview
        self.firings_per_task = firings_per_task

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.automation.run import TooManyFirings, evaluate, notified_account_ids
        from m3sh.dagkit.errors import RunFailed
        from m3sh.storage import Storage

        try:
            return evaluate(self.hook, self.settings.triggers, Storage.from_config(self.settings.storage),
                            only_rules=names(self.task_id, "only_rules", self.only_rules),
                            accounts=names(self.task_id, "accounts", self.accounts),
                            dry_run=flag(self.task_id, "preview", self.preview),
                            notified=notified_account_ids(context.get("triggering_asset_events")),
                            firings_per_task=self.firings_per_task)
        except TooManyFirings as exc:
            raise RunFailed(str(exc), records=[]) from None


class M3terApplyFiringsOperator(_RulesSettings, M3terLazyOperator):
    """Act on one chunk of firings, each exactly once: claimed in the S3 ledger, its rule's actions
    run in order (each checks m3ter's current state first), every outcome recorded. An action that
    fails stops that firing's later actions; the next pass resumes it.

    :param firings: one of :class:`M3terRulesEvaluateOperator`'s chunks. (templated)
    :param rules: :class:`~m3sh.config.TriggerRule` objects or mappings (mapped tasks: mappings).
    :param notifiers: :class:`~m3sh.config.Notifier` objects or mappings the ``notify`` actions name.
    :param crm_sources: CRM sources the ``update_crm_fields`` actions write to.
    :param config: an :class:`~m3sh.config.M3shConfig` (or its JSON form) instead of the arguments
        above and the storage arguments.
    :param bucket: S3 bucket of the ledger. :param prefix: key prefix there.
    :param aws_conn_id: Airflow AWS connection of that bucket.

    Returns one outcome per firing: ``{"key", "rule", "account", "status", "actions", "error"}``.
    """

    template_fields: Sequence[str] = (*M3terLazyOperator.template_fields, "firings")
    ui_color = "#fff0f0"

    def __init__(self, *, firings: Any, rules: RuleArg = None, config: ConfigArg = None,
                 notifiers: Sequence[Notifier | Mapping[str, Any]] | None = None,
                 crm_sources: Sequence[CrmSource | Mapping[str, Any]] | None = None, bucket: str | None = None,
                 prefix: str = "m3sh/", aws_conn_id: str = "aws_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_settings(config, rules=rules, bucket=bucket, prefix=prefix, aws_conn_id=aws_conn_id,
                            notifiers=notifiers, crm_sources=crm_sources)
        self.firings = firings

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from m3sh.automation.actions import ActionRunner
        from m3sh.automation.ledger import Ledger
        from m3sh.automation.run import apply_chunk
        from m3sh.storage import Storage

        firings = native(self.task_id, "firings", self.firings, (list, tuple)) or []
        if not all(isinstance(f, Mapping) and "rule" in f for f in firings):
            raise AirflowFailException(f"{self.task_id}: firings must be a chunk M3terRulesEvaluateOperator "
                                       "returned (firing mappings)")
        return apply_chunk(firings, self.settings.triggers, ActionRunner(self.settings, self.hook),
                           Ledger(Storage.from_config(self.settings.storage)), context.get("run_id") or "manual")


class M3terFiringsSummaryOperator(BaseOperator):
    """Count a pass's outcomes (a dry run: report the evaluation's plan) and fail naming every
    firing whose actions failed. Give it ``trigger_rule="all_done"``.

    :param evaluation: what :class:`M3terRulesEvaluateOperator` returned. (templated)
    :param outcomes: what the :class:`M3terApplyFiringsOperator` tasks returned. (templated)

    Returns ``{"firings", <status>: count, "failed_keys", "dry_run"}`` (a dry run adds ``would_fire`` and ``plan``).
    """

    template_fields: Sequence[str] = ("evaluation", "outcomes")
    ui_color = "#f3e8ff"

    def __init__(self, *, evaluation: Any, outcomes: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.evaluation = evaluation
        self.outcomes = outcomes

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.automation.run import summarize_pass
        from m3sh.dagkit.errors import RunFailed

        evaluation = native(self.task_id, "evaluation", self.evaluation, dict) or {}
        outcomes = native(self.task_id, "outcomes", self.outcomes, list) if isinstance(self.outcomes, str) \
            else list(self.outcomes or [])
        out = summarize_pass(evaluation, outcomes or [])
        if out.failure:
            raise RunFailed(out.failure, records=out.records)
        return out.totals
