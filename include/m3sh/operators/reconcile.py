"""Reconciliation as operators for users' own DAGs: does every system agree with m3ter?

Three steps, each usable without ``m3sh.yaml`` (an :class:`~m3sh.config.M3shConfig` may be passed
instead of the inline arguments):

* :class:`M3terReconcileAccountsOperator`: CRM records (Salesforce Accounts, HubSpot companies)
  <-> m3ter accounts, both ways;
* :class:`M3terReconcileBillsOperator`: m3ter bills of the look-back period <-> what each invoice
  destination holds, read back through its type's reader (NetSuite invoices and credit memos via
  SuiteQL, the Salesforce invoice object, the S3 archive, the HubSpot deal summary);
* :class:`ReconcileReportOperator`: an HTML page for finance, a CSV and ``latest.json``; fails with
  ``RunFailed`` naming the records when anything drifted and sends a "resolved" alert when a
  previous run drifted and this one is clean.

The checks stage their findings in S3 and return small JSON-safe refs. The logic is
:mod:`m3sh.invoicing.reconcile_run`'s; ``m3sh_reconcile`` wires these same operators.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from pydantic import TypeAdapter, ValidationError

from m3sh.compat import AirflowFailException
from m3sh.config import CrmSource, CrmSyncConfig, InvoicingConfig, M3shConfig, Notifier
from m3sh.operators._common import M3terLazyOperator, StagingMixin, destination, native, problems

if TYPE_CHECKING:
    from airflow.sdk import Context

_SOURCES: TypeAdapter[list[CrmSource]] = TypeAdapter(list[CrmSource])
_NOTIFIERS: TypeAdapter[list[Notifier]] = TypeAdapter(list[Notifier])


def _crm_sources(task_id: str, sources: Sequence[CrmSource | Mapping[str, Any]]) -> list[CrmSource]:
    try:
        return _SOURCES.validate_python([s if isinstance(s, CrmSource) else dict(s) for s in sources])
    except ValidationError as exc:
        raise ValueError(f"{task_id}: invalid crm_sources ({problems(exc)})") from None


def _destinations(task_id: str, given: Sequence[Any] | None, config: M3shConfig | None) -> list[Any]:
    """Destination objects from objects, mappings or (with ``config``) names; default: the config's."""
    known = {d.name: d for d in config.invoicing.destinations} if config is not None else {}
    if given is None:
        return [d for d in known.values() if d.enabled]
    return [destination(task_id, "destination", d, config) for d in given]


class M3terReconcileAccountsOperator(StagingMixin, M3terLazyOperator):
    """CRM records <-> m3ter accounts: an m3ter account linking to a CRM record that is gone, a CRM
    record whose write-back field names an m3ter account that is gone, and disagreeing currencies.

    Each source is read on its own connection (:func:`m3sh.crm.salesforce.read_account_links`,
    :func:`m3sh.crm.hubspot.read_account_links`). Reads only.

    :param crm_sources: the CRMs (:class:`~m3sh.config.CrmSource` objects or mappings:
        ``{"name", "type", "conn_id", "write_back_field", "account_fields": {"currency": ...}}``).
    :param config: an :class:`~m3sh.config.M3shConfig` supplying ``crm.sources`` and the storage.
    :param bucket: S3 bucket where the findings are staged (default: ``config.storage``).
    :param prefix: key prefix there. :param aws_conn_id: Airflow AWS connection of the bucket.

    Returns ``{"key", "findings", "checked"}`` (``key``: the staged findings, for the report).
    """

    ui_color = "#fdf6e3"

    def __init__(self, *, crm_sources: Sequence[CrmSource | Mapping[str, Any]] | None = None,
                 config: M3shConfig | None = None, bucket: str | None = None, prefix: str = "m3sh/",
                 aws_conn_id: str = "aws_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_storage(config, aws_conn_id, bucket, prefix)
        if config is not None and crm_sources is not None:
            raise ValueError(f"{self.task_id}: give config=... or crm_sources=..., not both")
        if config is None and not crm_sources:
            raise ValueError(f"{self.task_id}: give crm_sources=[...] (the CRMs to compare) or config=...")
        self.crm_sources = list(config.crm.sources) if config is not None else _crm_sources(
            self.task_id, crm_sources or [])

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.invoicing.reconcile_run import check_accounts, stage_findings

        findings, checked = check_accounts(self.hook, self.crm_sources)
        key = stage_findings(self._storage(), self.dag_id, context["run_id"], "accounts.jsonl", findings)
        return {"key": key, "findings": len(findings), "checked": checked}


class M3terReconcileBillsOperator(StagingMixin, M3terLazyOperator):
    """m3ter bills dated in the look-back period <-> what each destination holds: missing, extra
    (not, or no longer, an exportable bill), amount, currency and status differences.

    Each destination is read back through its type's reader: NetSuite invoices and credit memos
    via SuiteQL (corrections netted), the Salesforce invoice object by its external id field, the
    archived bill JSON in S3, the summary on each HubSpot deal (the customer's latest bill); a
    webhook cannot be read back and is named in the notes. Without a config every bill is expected
    in every destination (as :class:`~m3sh.operators.invoicing.M3terBillsCollectOperator` routes
    without one); with one, its ``invoicing.routes`` decide. Reads only.

    :param destinations: destination objects or mappings (``{"type": "netsuite", "name": ...}``),
        or names in ``config`` (default: the config's enabled destinations).
    :param config: an :class:`~m3sh.config.M3shConfig` supplying the arguments below instead.
    :param bill_states: m3ter bill states the invoice run exports (default ``["APPROVED"]``).
    :param crm_sources: CRMs whose links say which customers Salesforce / HubSpot destinations hold.
    :param lookback_days: bills dated this many days back (0 or None:
        ``invoicing.reconcile_lookback_days``, 90 by default). (templated)
    :param bucket: S3 bucket of the findings and the delivery ledger (default: ``config.storage``).
    :param prefix: key prefix there (the invoice run's, whose ledger says when a bill was delivered).
    :param aws_conn_id: Airflow AWS connection of the bucket.

    Returns ``{"key", "findings", "checked", "notes", "period"}``.
    """

    template_fields: Sequence[str] = (*M3terLazyOperator.template_fields, "lookback_days")
    ui_color = "#fdf6e3"

    def __init__(self, *, destinations: Sequence[Any] | None = None, config: M3shConfig | None = None,
                 bill_states: Sequence[str] | None = None,
                 crm_sources: Sequence[CrmSource | Mapping[str, Any]] | None = None,
                 lookback_days: int | str | None = None, bucket: str | None = None, prefix: str = "m3sh/",
                 aws_conn_id: str = "aws_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_storage(config, aws_conn_id, bucket, prefix)
        inline = {k: v for k, v in (("bill_states", bill_states), ("crm_sources", crm_sources)) if v is not None}
        if config is not None:
            if inline:
                raise ValueError(f"{self.task_id}: give config=... or the inline arguments {sorted(inline)}, "
                                 "not both")
            self.settings = config
        else:
            if not destinations:
                raise ValueError(f"{self.task_id}: give destinations=[...] (what to read back) or config=...")
            try:
                self.settings = M3shConfig(
                    invoicing=InvoicingConfig(**({"bill_states": list(bill_states)} if bill_states else {})),
                    crm=CrmSyncConfig(sources=_crm_sources(self.task_id, crm_sources or [])))
            except ValidationError as exc:
                raise ValueError(f"{self.task_id}: invalid arguments ({problems(exc)})") from None
        self.destinations = _destinations(self.task_id, destinations, config)
        self.route_all = config is None
        self.lookback_days = lookback_days

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.invoicing.ledger import S3Ledger
        from m3sh.invoicing.reconcile_run import check_bills, stage_findings

        days = native(self.task_id, "lookback_days", self.lookback_days, int)
        if days is not None and days < 0:
            raise AirflowFailException(f"{self.task_id}: lookback_days must be >= 0, got {days}")
        storage = self._storage()
        result = check_bills(self.hook, self.settings, self.destinations, S3Ledger(storage),
                             lookback_days=days or self.settings.invoicing.reconcile_lookback_days,
                             route_all=self.route_all)
        key = stage_findings(storage, self.dag_id, context["run_id"], "bills.jsonl", result["findings"])
        return {"key": key, "findings": len(result["findings"]), "checked": result["checked"],
                "notes": result["notes"], "period": result["period"]}


class ReconcileReportOperator(StagingMixin, BaseOperator):
    """The reconciliation report: ``reports/<report_name>/<date>/report.html`` (for finance) and
    ``report.csv``, plus ``reports/<report_name>/latest.json`` (the m3sh UI page reads the default
    one). Fails with ``RunFailed(records=...)`` when anything drifted, so failure alerts fire; a
    clean run after a drifting one sends a "resolved" alert to ``alert_channels``.

    :param accounts: what :class:`M3terReconcileAccountsOperator` returned (``.output``). (templated)
    :param bills: what :class:`M3terReconcileBillsOperator` returned (``.output``). (templated)
    :param preview: a dry run: log the differences; write no report, raise nothing, send nothing.
        (templated)
    :param alert_channels: where the "resolved" alert goes (:class:`~m3sh.config.Notifier` objects
        or mappings; default: the config's ``alerting.on_failure`` notifiers, else none).
    :param report_name: the folder under ``reports/`` (``reconcile``: the one the m3sh UI shows).
    :param config: supplies the storage and the alert channels. :param bucket: / :param prefix: /
        :param aws_conn_id: where the checks staged their findings and the report goes.

    Returns ``{"clean", "findings", "html_key"}`` (``{"clean", "findings", "dry_run"}`` previewing).
    """

    template_fields: Sequence[str] = ("accounts", "bills", "preview")
    ui_color = "#f3e8ff"

    def __init__(self, *, accounts: Any = None, bills: Any = None, preview: bool | str = False,
                 alert_channels: Sequence[Notifier | Mapping[str, Any]] | None = None,
                 report_name: str = "reconcile", config: M3shConfig | None = None, bucket: str | None = None,
                 prefix: str = "m3sh/", aws_conn_id: str = "aws_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_storage(config, aws_conn_id, bucket, prefix)
        if accounts is None and bills is None:
            raise ValueError(f"{self.task_id}: give accounts=... and/or bills=... (the checks' .output)")
        if not report_name or "/" in report_name:
            raise ValueError(f"{self.task_id}: report_name must be one folder name, got {report_name!r}")
        if alert_channels is not None:
            try:
                channels = _NOTIFIERS.validate_python(
                    [c if isinstance(c, Notifier) else dict(c) for c in alert_channels])
            except ValidationError as exc:
                raise ValueError(f"{self.task_id}: invalid alert_channels ({problems(exc)})") from None
        elif config is not None:
            channels = [n for n in config.alerting.notifiers if n.name in config.alerting.on_failure]
        else:
            channels = []
        self.alert_channels = [c.model_dump() for c in channels]
        self.accounts = accounts
        self.bills = bills
        self.preview = preview
        self.report_name = report_name

    def _part(self, name: str, value: Any) -> dict[str, Any] | None:
        part = native(self.task_id, name, value, dict)
        if part is not None and "key" not in part:
            raise AirflowFailException(f"{self.task_id}: {name} must be what the {name} check returned; it has no "
                                       "'key'")
        return part

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.dagkit.errors import RunFailed
        from m3sh.invoicing.reconcile_run import (
            drift_message,
            load_findings,
            log_drift,
            resolved_alert,
            send_alert,
            write_report,
        )

        parts = [p for p in (self._part("accounts", self.accounts), self._part("bills", self.bills)) if p]
        if not parts:
            raise AirflowFailException(f"{self.task_id}: no check result: the compare tasks did not finish")
        storage = self._storage()
        findings = load_findings(storage, [p["key"] for p in parts])
        if native(self.task_id, "preview", self.preview, bool):
            log_drift(findings, dry_run=True)
            self.log.info("dry run: %d difference(s); no report written, no alert", len(findings))
            return {"clean": not findings, "findings": len(findings), "dry_run": True}
        checked = {k: v for p in parts for k, v in (p.get("checked") or {}).items()}
        bills = next((p for p in parts if "period" in p), {})
        summary, previous = write_report(storage, findings, checked=checked, notes=list(bills.get("notes") or []),
                                         period=str(bills.get("period") or ""), run_id=context["run_id"],
                                         name=self.report_name)
        if findings:
            log_drift(findings)
            raise RunFailed(drift_message(findings, summary["by_check"], storage.uri(summary["html_key"])),
                            records=sorted({f.record for f in findings}))
        if previous.get("clean") is False:
            self.log.info("reconciliation resolved: the %d difference(s) of run %s are gone",
                          int(previous.get("findings") or 0), previous.get("run_id"))
            send_alert(self.alert_channels, resolved_alert(previous, dag_id=self.dag_id, task_id=self.task_id,
                                                           run_id=context["run_id"]))
        return {"clean": True, "findings": 0, "html_key": summary["html_key"]}
