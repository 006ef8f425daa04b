"""CRM (Salesforce, HubSpot) accounts and contracts -> m3ter, as operators for users' own DAGs.

Three steps, each usable on its own and without ``m3sh.yaml`` (an :class:`~m3sh.config.M3shConfig`
may be passed instead of the inline arguments):

* :class:`CrmExtractOperator` reads one CRM source's accounts changed in the run's data interval
  and stages them as JSONL in S3, returning ``{"source", "key", "records"}``;
* :class:`CrmToM3terSyncOperator` de-duplicates the staged records across sources, diffs them
  against m3ter and upserts accounts, contracts, account plans and external mappings (a re-run
  with no CRM change writes nothing); the report goes to S3 and the task fails naming each
  failed m3ter write;
* :class:`CrmWriteBackOperator` writes the m3ter account ids back into one source's records.

:class:`SalesforceToM3terOperator` and :class:`HubSpotToM3terOperator` do all three for one CRM in
one task, with the CRM connection and field mappings inline. The logic is
:mod:`m3sh.crm.run`'s; ``m3sh_crm_sync`` wires the three step operators.

Templated ``accounts``, ``full_resync`` and ``preview`` (a dry run: BaseOperator already has a
``dry_run`` method) accept their value or, rendered from a template, its JSON text
(``"{{ params.accounts | tojson }}"``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from airflow.sdk import BaseOperator
from pydantic import ValidationError

from m3sh.compat import AirflowFailException
from m3sh.config import CrmSource, CrmSyncConfig, CrmType, FieldOwnership, M3shConfig, M3terConfig
from m3sh.operators._common import M3terLazyOperator, names, native, problems

if TYPE_CHECKING:
    from airflow.sdk import Context

    from m3sh.storage import Storage

CodeFrom = Literal["domain_name", "domain", "crm_id"]
SourceArg = CrmSource | Mapping[str, Any] | str


def _source(task_id: str, source: SourceArg, config: M3shConfig | None) -> CrmSource:
    """A CRM source given as the object, its mapping, or its name in ``config``."""
    if isinstance(source, CrmSource):
        return source
    if isinstance(source, str):
        found = next((s for s in config.crm.sources if s.name == source), None) if config is not None else None
        if found is None:
            known = [s.name for s in config.crm.sources] if config is not None else []
            raise ValueError(f"{task_id}: source {source!r} is a name; give a CrmSource (or its mapping), or "
                             f"config=... that defines it (known: {known})")
        return found
    if isinstance(source, Mapping):
        try:
            return CrmSource.model_validate(dict(source))
        except ValidationError as exc:
            raise ValueError(f"{task_id}: invalid CRM source ({problems(exc)})") from None
    raise ValueError(f"{task_id}: source must be a CrmSource, mapping or name; got {type(source).__name__}")


def _settings(task_id: str, config: M3shConfig | None, inline: dict[str, Any],
              sources: Sequence[SourceArg] = ()) -> M3shConfig:
    """``config``, or the sync settings built from the inline arguments (``None`` ones left out)."""
    given = {k: v for k, v in inline.items() if v is not None}
    if config is not None:
        if given:
            raise ValueError(f"{task_id}: give config=... or the inline arguments {sorted(given)}, not both")
        return config
    code_from = given.pop("account_code_from", None)
    try:
        return M3shConfig(crm=CrmSyncConfig(sources=[_source(task_id, s, None) for s in sources], **given),
                          m3ter=M3terConfig(**({"account_code_from": code_from} if code_from else {})))
    except ValidationError as exc:
        raise ValueError(f"{task_id}: invalid CRM sync arguments ({problems(exc)})") from None


class _CrmStaging:
    """Where a run stages its records, write-backs and report: ``config.storage``, or inline arguments."""

    task_id: str

    def _init_storage(self, config: M3shConfig | None, aws_conn_id: str, bucket: str | None, prefix: str) -> None:
        if bucket is None and config is None:
            raise ValueError(f"{self.task_id}: give bucket=... (where CRM records are staged) or config=...")
        self.storage_config = config.storage if config is not None else None
        self.aws_conn_id = aws_conn_id
        self.bucket = bucket
        self.prefix = prefix

    def _storage(self) -> Storage:
        from m3sh.storage import Storage

        if self.bucket is None and self.storage_config is not None:
            return Storage.from_config(self.storage_config)
        if not self.bucket:
            raise AirflowFailException(f"{self.task_id}: bucket is empty")
        return Storage(self.aws_conn_id, self.bucket, self.prefix)


def _flag(task_id: str, name: str, value: Any) -> bool:
    return bool(native(task_id, name, value, bool))


def _window(task_id: str, context: Context, full_resync: Any,
            lookback_minutes: int) -> tuple[dt.datetime, dt.datetime]:
    from m3sh.crm.run import window

    # The run's data interval, so a backfill re-syncs exactly the records changed in its window.
    return window(context.get("data_interval_start"), context.get("data_interval_end"),
                  full_resync=_flag(task_id, "full_resync", full_resync), lookback_minutes=lookback_minutes)


def _raise_on_errors(task_id: str, errors: list[dict[str, Any]]) -> None:
    if errors:
        from m3sh.crm.run import failure_message
        from m3sh.dagkit.errors import RunFailed

        raise RunFailed(f"{task_id}: {failure_message(errors)}", records=[str(e["code"]) for e in errors])


class CrmExtractOperator(_CrmStaging, BaseOperator):
    """Stage one CRM source's accounts (with contract, PO number and product) changed in the run's
    data interval, widened by ``lookback_minutes``, as JSONL in S3. Reads only.

    Salesforce: Accounts changed themselves or through a Contract or Opportunity; HubSpot:
    companies changed themselves or through a deal or a deal's line item. Every record when
    ``full_resync`` or the run has no data interval.

    :param source: the source: a :class:`~m3sh.config.CrmSource` or its mapping (``{"name", "type",
        "conn_id", "account_fields", "contract_fields", "write_back_field", "priority"}``), or a
        name in ``config``.
    :param config: an :class:`~m3sh.config.M3shConfig` supplying the arguments below and the storage.
    :param plan_map: CRM product code / SKU -> m3ter plan code (chooses the product line that names the plan).
    :param lookback_minutes: overlap added before the data interval (clock skew; default 5).
    :param accounts: only these CRM ids, domains or billing emails (empty: all). (templated)
    :param full_resync: every record, whatever the data interval. (templated)
    :param bucket: S3 bucket of staging and reports (default: ``config.storage``). :param prefix: its prefix.
    :param aws_conn_id: Airflow AWS connection of the bucket.

    Returns ``{"source", "key", "records"}``.
    """

    template_fields: Sequence[str] = ("accounts", "full_resync")
    ui_color = "#e0f4ff"

    def __init__(self, *, source: SourceArg, config: M3shConfig | None = None,
                 plan_map: Mapping[str, str] | None = None, lookback_minutes: int | None = None,
                 accounts: Sequence[str] | str | None = None, full_resync: bool | str = False,
                 bucket: str | None = None, prefix: str = "m3sh/", aws_conn_id: str = "aws_default",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_storage(config, aws_conn_id, bucket, prefix)
        self.source = _source(self.task_id, source, config)
        self.settings = _settings(self.task_id, config, {"plan_map": plan_map, "lookback_minutes": lookback_minutes})
        self.accounts = accounts
        self.full_resync = full_resync

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.crm.run import extract

        start, end = _window(self.task_id, context, self.full_resync, self.settings.crm.lookback_minutes)
        return extract(self.source, self._storage(), dag_id=self.dag_id, run_id=context["run_id"], start=start,
                       end=end, plan_map=dict(self.settings.crm.plan_map),
                       accounts=names(self.task_id, "accounts", self.accounts))


class CrmToM3terSyncOperator(_CrmStaging, M3terLazyOperator):
    """Staged CRM records -> m3ter accounts, contracts, account plans and external mappings.

    Records of one customer in several CRMs (sharing a ``match_keys`` value) become one m3ter
    account; an account m3ter already has keeps its code. Every write follows a diff against what
    m3ter holds, so a re-run with no CRM change writes nothing. The report (counts, each change
    with before/after, the write-backs) goes to ``<prefix>reports/<dag id>/<run id>.json``; a
    failed write never stops the others, and the task fails afterwards naming each.

    :param staged: what :class:`CrmExtractOperator` returned, or a list of those (one per source). (templated)
    :param sources: every CRM source that may be staged, as objects or mappings (their priorities
        decide which CRM's values win; their names attribute existing m3ter mappings).
    :param config: an :class:`~m3sh.config.M3shConfig` supplying the arguments below and the storage.
    :param match_keys: keys identifying one customer across CRMs (default ``["domain", "email"]``).
    :param ownership: which side wins per account field (``{"default": "crm_wins", "fields": {...}}``).
    :param plan_map: CRM product code / SKU -> m3ter plan code.
    :param default_plan: m3ter plan code when no product maps (None: no account plan then).
    :param account_code_from: codes of new m3ter accounts: ``domain_name`` (acme.com -> acme),
        ``domain`` or ``crm_id``.
    :param preview: a dry run: compute and store the diff, write nothing. (templated)
    :param m3ter_conn_id: Airflow connection of type ``m3ter`` (default: the config's, else ``m3ter_default``).
    :param bucket: / :param prefix: / :param aws_conn_id: the extract tasks' storage.

    Returns ``{"report_key", "write_backs_key", "counts"}``.
    """

    template_fields: Sequence[str] = (*M3terLazyOperator.template_fields, "staged", "preview")
    ui_color = "#e8f0ff"

    def __init__(self, *, staged: Any, sources: Sequence[SourceArg] | None = None,
                 config: M3shConfig | None = None, match_keys: Sequence[str] | None = None,
                 ownership: FieldOwnership | Mapping[str, Any] | None = None,
                 plan_map: Mapping[str, str] | None = None, default_plan: str | None = None,
                 account_code_from: CodeFrom | None = None, preview: bool | str = False,
                 m3ter_conn_id: str | None = None, bucket: str | None = None, prefix: str = "m3sh/",
                 aws_conn_id: str = "aws_default", **kwargs: Any) -> None:
        conn = m3ter_conn_id or (config.m3ter.conn_id if config is not None else "m3ter_default")
        super().__init__(m3ter_conn_id=conn, **kwargs)
        self._init_storage(config, aws_conn_id, bucket, prefix)
        if config is None and sources is None:
            raise ValueError(f"{self.task_id}: give sources=[...] (the CRM sources the extract tasks read) or "
                             "config=...")
        inline: dict[str, Any] = {"match_keys": match_keys, "ownership": ownership, "plan_map": plan_map,
                                  "default_plan": default_plan, "account_code_from": account_code_from}
        if config is not None and sources is not None:
            inline["sources"] = sources
        self.settings = _settings(self.task_id, config, inline, sources or ())
        self.staged = staged
        self.preview = preview

    def _refs(self) -> list[dict[str, Any]]:
        value = self.staged
        if value is None:
            raise AirflowFailException(f"{self.task_id}: nothing staged: an extract task did not finish")
        if isinstance(value, str):
            value = native(self.task_id, "staged", value, (list, dict))
        refs = [value] if isinstance(value, Mapping) else list(value)
        bad = [r for r in refs if not isinstance(r, Mapping) or not {"source", "key", "records"} <= set(r)]
        if bad:
            raise AirflowFailException(f"{self.task_id}: staged must be what CrmExtractOperator returned (or a "
                                       f"list of those); got {bad[0]!r}")
        known = {s.name for s in self.settings.crm.sources}
        unknown = sorted({str(r["source"]) for r in refs} - known)
        if unknown:
            # Without the source, its priority and its existing m3ter links would be guessed.
            raise AirflowFailException(f"{self.task_id}: records of source(s) {unknown} are staged but sources "
                                       f"lists only {sorted(known)}")
        return [dict(r) for r in refs]

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.crm.run import sync

        result = sync(self.hook, self.settings, self._storage(), self._refs(), dag_id=self.dag_id,
                      run_id=context["run_id"], dry_run=_flag(self.task_id, "preview", self.preview))
        _raise_on_errors(self.task_id, result["errors"])
        return {k: result[k] for k in ("report_key", "write_backs_key", "counts")}


class CrmWriteBackOperator(_CrmStaging, BaseOperator):
    """Write the m3ter account id into one CRM source's records that lack it (the source's
    ``write_back_field``; nothing without one), as :class:`CrmToM3terSyncOperator` staged them.
    Only records whose value differs are in the list, so a re-run writes nothing.

    :param synced: what :class:`CrmToM3terSyncOperator` returned. (templated)
    :param source: a :class:`~m3sh.config.CrmSource`, its mapping, or its name in ``config``.
    :param config: supplies the source by name and the storage.
    :param bucket: / :param prefix: / :param aws_conn_id: the sync task's storage.

    Returns ``{"source", "written"}``.
    """

    template_fields: Sequence[str] = ("synced",)
    ui_color = "#f3e8ff"

    def __init__(self, *, synced: Any, source: SourceArg, config: M3shConfig | None = None,
                 bucket: str | None = None, prefix: str = "m3sh/", aws_conn_id: str = "aws_default",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_storage(config, aws_conn_id, bucket, prefix)
        self.source = _source(self.task_id, source, config)
        self.synced = synced

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.crm.run import write_back

        refs = native(self.task_id, "synced", self.synced, dict)
        if not refs or "write_backs_key" not in refs:
            raise AirflowFailException(f"{self.task_id}: synced must be what CrmToM3terSyncOperator returned; "
                                       f"got {refs!r}")
        n = write_back(self.source, self._storage(), str(refs["write_backs_key"]))
        return {"source": self.source.name, "written": n}


class _OneCrmToM3terOperator(_CrmStaging, M3terLazyOperator):
    """Extract + sync + write-back of one CRM in one task (see the subclasses)."""

    crm_type: ClassVar[CrmType]
    template_fields: Sequence[str] = (*M3terLazyOperator.template_fields, "accounts", "full_resync", "preview")
    ui_color = "#e0f4ff"

    def __init__(self, *, conn_id: str, source: SourceArg | None = None, source_name: str | None = None,
                 account_fields: Mapping[str, str] | None = None, contract_fields: Mapping[str, str] | None = None,
                 write_back_field: str | None = None, config: M3shConfig | None = None,
                 match_keys: Sequence[str] | None = None, ownership: FieldOwnership | Mapping[str, Any] | None = None,
                 plan_map: Mapping[str, str] | None = None, default_plan: str | None = None,
                 account_code_from: CodeFrom | None = None, lookback_minutes: int | None = None,
                 accounts: Sequence[str] | str | None = None, full_resync: bool | str = False,
                 preview: bool | str = False, m3ter_conn_id: str | None = None, bucket: str | None = None,
                 prefix: str = "m3sh/", aws_conn_id: str = "aws_default", **kwargs: Any) -> None:
        m3ter_conn = m3ter_conn_id or (config.m3ter.conn_id if config is not None else "m3ter_default")
        super().__init__(m3ter_conn_id=m3ter_conn, **kwargs)
        self._init_storage(config, aws_conn_id, bucket, prefix)
        fields = {k: v for k, v in (("source_name", source_name), ("account_fields", account_fields),
                                    ("contract_fields", contract_fields),
                                    ("write_back_field", write_back_field)) if v is not None}
        if source is not None:
            if fields:
                raise ValueError(f"{self.task_id}: give source=... or the inline source arguments {sorted(fields)}, "
                                 "not both")
            self.source = _source(self.task_id, source, config)
        else:
            self.source = _source(self.task_id, {
                "name": source_name or self.crm_type, "type": self.crm_type, "conn_id": conn_id,
                "account_fields": dict(account_fields or {}), "contract_fields": dict(contract_fields or {}),
                "write_back_field": write_back_field}, None)
        if self.source.type != self.crm_type:
            raise ValueError(f"{self.task_id}: source {self.source.name!r} is a {self.source.type} source; this "
                             f"operator reads {self.crm_type}")
        self.settings = _settings(self.task_id, config, {
            "match_keys": match_keys, "ownership": ownership, "plan_map": plan_map, "default_plan": default_plan,
            "account_code_from": account_code_from, "lookback_minutes": lookback_minutes}, [self.source])
        if config is not None and self.source.name not in {s.name for s in config.crm.sources}:
            # The sync needs the source among the settings' (priority, links): add it.
            crm = config.crm.model_copy(update={"sources": [*config.crm.sources, self.source]})
            self.settings = config.model_copy(update={"crm": crm})
        self.accounts = accounts
        self.full_resync = full_resync
        self.preview = preview

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.crm.run import extract, sync, write_back

        storage = self._storage()
        run_id = context["run_id"]
        start, end = _window(self.task_id, context, self.full_resync, self.settings.crm.lookback_minutes)
        staged = extract(self.source, storage, dag_id=self.dag_id, run_id=run_id, start=start, end=end,
                         plan_map=dict(self.settings.crm.plan_map),
                         accounts=names(self.task_id, "accounts", self.accounts))
        result = sync(self.hook, self.settings, storage, [staged], dag_id=self.dag_id, run_id=run_id,
                      dry_run=_flag(self.task_id, "preview", self.preview))
        # Accounts that did sync get their id written back even when others failed: the next run
        # would write the same ids anyway.
        written = write_back(self.source, storage, result["write_backs_key"])
        _raise_on_errors(self.task_id, result["errors"])
        return {"source": self.source.name, "records": staged["records"], "report_key": result["report_key"],
                "counts": result["counts"], "written": written}


class SalesforceToM3terOperator(_OneCrmToM3terOperator):
    """Salesforce Accounts (with their latest Contract and closed-won Opportunity) changed in the
    run's data interval -> m3ter accounts, contracts, account plans and external mappings, and the
    m3ter account id written back to each Account, in one task. Re-runs write nothing new.

    :param salesforce_conn_id: Airflow connection of type ``salesforce`` (the official provider's).
    :param account_fields: canonical field (``name``, ``domain``, ``email``, ``currency``, ``country``,
        ``owner``, ...) -> Account field, e.g. ``{"name": "Name", "domain": "Website"}``.
    :param contract_fields: ``start_date``/``end_date`` (Contract) and ``po_number`` (Opportunity) fields,
        defaults ``StartDate``, ``EndDate``, ``PO_Number__c``.
    :param write_back_field: Account field receiving the m3ter account id (None: no write-back).
    :param source_name: names the source in m3ter mappings and reports (default ``salesforce``).
    :param source: a whole :class:`~m3sh.config.CrmSource` (or mapping) instead of the four above.

    Other arguments as :class:`CrmExtractOperator` and :class:`CrmToM3terSyncOperator`
    (``plan_map``, ``default_plan``, ``match_keys``, ``ownership``, ``account_code_from``,
    *accounts*, *full_resync*, *preview*, ``bucket``/``prefix`` of the staging, ``config``).

    Returns ``{"source", "records", "report_key", "counts", "written"}``.
    """

    crm_type: ClassVar[CrmType] = "salesforce"

    def __init__(self, *, salesforce_conn_id: str = "salesforce_default", **kwargs: Any) -> None:
        super().__init__(conn_id=salesforce_conn_id, **kwargs)


class HubSpotToM3terOperator(_OneCrmToM3terOperator):
    """HubSpot companies (with their closed-won deal and its line items) changed in the run's data
    interval -> m3ter accounts, contracts, account plans and external mappings, and the m3ter
    account id written back to each company, in one task. Re-runs write nothing new.

    :param hubspot_conn_id: Airflow connection of type ``hubspot``.
    :param account_fields: canonical field -> company property, e.g. ``{"name": "name", "domain": "domain"}``.
    :param contract_fields: deal properties of ``start_date``, ``end_date`` and ``po_number``
        (defaults ``contract_start``, ``contract_end``, ``po_number``).
    :param write_back_field: company property receiving the m3ter account id (None: no write-back).
    :param source_name: names the source in m3ter mappings and reports (default ``hubspot``).
    :param source: a whole :class:`~m3sh.config.CrmSource` (or mapping) instead of the four above.

    Other arguments as :class:`SalesforceToM3terOperator`.

    Returns ``{"source", "records", "report_key", "counts", "written"}``.
    """

    crm_type: ClassVar[CrmType] = "hubspot"

    def __init__(self, *, hubspot_conn_id: str = "hubspot_default", **kwargs: Any) -> None:
        super().__init__(conn_id=hubspot_conn_id, **kwargs)


class M3terToCrmOperator(_CrmStaging, M3terLazyOperator):
    """m3ter -> one CRM source: each linked record's fields that m3ter owns (``ownership``
    ``m3ter_wins``; ``fill_missing`` where the CRM has no value) and the account's current plan
    (the source's ``plan_field``), written only where the CRM's value differs, so a re-run writes
    nothing. Fields changed on both sides since the last sync are conflicts: the ownership rule
    decides, and each is stored in S3 (``conflicts/crm/<source>/<run id>.json``) and counted.
    Incremental by a per-record fingerprint of m3ter's values kept in S3 (m3ter's account search
    has no modification filter); see :mod:`m3sh.crm.outbound`.

    :param source: a :class:`~m3sh.config.CrmSource`, its mapping, or its name in ``config``.
    :param config: supplies the source by name, the ownership rules, every source (to attribute
        m3ter's external mappings) and the storage. Required.
    :param staged: what :class:`CrmExtractOperator` returned for this source (its records changed
        in the CRM are compared too, so a CRM edit of an m3ter-owned field is undone). (templated)
    :param synced: what :class:`CrmToM3terSyncOperator` returned (its report holds m3ter's values
        before that step, which conflicts need). (templated)
    :param full_resync: compare every linked record, whatever the fingerprints. (templated)
    :param preview: a dry run: store the diff, write nothing. (templated)
    :param backfill: re-apply exactly the m3ter records (account, account plan, contract) whose
        ``dtLastModified`` is in the run's data interval, whatever the fingerprints, and no other;
        always so in a backfill run (``run_type`` backfill). (templated)

    Returns ``{"source", "report_key", "conflicts_key", "counts"}``.
    """

    template_fields: Sequence[str] = (*M3terLazyOperator.template_fields, "staged", "synced", "full_resync",
                                      "preview", "backfill")
    ui_color = "#fff1e0"

    def __init__(self, *, source: SourceArg, config: M3shConfig, staged: Any = None, synced: Any = None,
                 full_resync: bool | str = False, preview: bool | str = False, backfill: bool | str = False,
                 m3ter_conn_id: str | None = None, aws_conn_id: str = "aws_default", **kwargs: Any) -> None:
        super().__init__(m3ter_conn_id=m3ter_conn_id or config.m3ter.conn_id, **kwargs)
        self.backfill = backfill
        self._init_storage(config, aws_conn_id, None, "m3sh/")
        self.settings = config
        self.source = _source(self.task_id, source, config)
        self.staged = staged
        self.synced = synced
        self.full_resync = full_resync
        self.preview = preview

    def _backfill_window(self, context: Context) -> tuple[dt.datetime, dt.datetime] | None:
        """The data interval when this run is a backfill of it (see :func:`m3sh.crm.outbound.to_crm`)."""
        kind = getattr(context.get("dag_run"), "run_type", "")
        run_type = str(getattr(kind, "value", kind))  # DagRunType.BACKFILL_JOB's value is "backfill"
        if not (run_type == "backfill" or _flag(self.task_id, "backfill", self.backfill)):
            return None
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if start is None or end is None:
            raise AirflowFailException(f"{self.task_id}: a backfill of m3ter -> CRM needs the run's data interval; "
                                       "this run has none")
        return start, end

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.crm.outbound import failure_message, to_crm
        from m3sh.dagkit.errors import RunFailed

        staged = native(self.task_id, "staged", self.staged, dict) if self.staged not in (None, "", "None") else None
        synced = native(self.task_id, "synced", self.synced, dict) if self.synced not in (None, "", "None") else None
        result = to_crm(self.hook, self.settings, self.source, self._storage(), dag_id=self.dag_id,
                        run_id=context["run_id"], dry_run=_flag(self.task_id, "preview", self.preview),
                        full_resync=_flag(self.task_id, "full_resync", self.full_resync), staged=staged,
                        synced=synced, window=self._backfill_window(context))
        if result["conflicts_key"]:
            from m3sh.notifiers.alerts import alert_conflicts

            conflicts = (self._storage().get_json(result["conflicts_key"]) or {}).get("conflicts") or []
            alert_conflicts(self.settings, dag_id=self.dag_id, task_id=self.task_id, run_id=context["run_id"],
                            conflicts=conflicts, where=self._storage().uri(result["conflicts_key"]))
        if result["errors"]:
            raise RunFailed(f"{self.task_id}: {failure_message(self.source.name, result['errors'])}",
                            records=[str(e["record"]) for e in result["errors"]])
        return {k: result[k] for k in ("source", "report_key", "conflicts_key", "counts")}
