"""m3ter bills -> invoices in NetSuite (or any m3sh destination) as operators for users' own DAGs.

Three steps, each usable on its own and without ``m3sh.yaml`` (an :class:`~m3sh.config.M3shConfig`
may be passed instead of the inline arguments):

* :class:`M3terBillsCollectOperator` reads the bills, enriches and routes them, stages them in S3
  and returns small JSON-safe *refs* (keys and counts);
* :class:`M3terBillsDeliverOperator` (or :class:`M3terBillsToNetSuiteOperator` with inline NetSuite
  arguments) delivers the staged bills to one destination: upserts by external id plus the S3
  ledger, so a retry or a re-run writes each invoice exactly once and an unchanged bill not at all;
* :class:`M3terInvoiceRunSummaryOperator` merges the outcomes, stamps exported bills in m3ter,
  writes the run summary and fails naming each bill that is not exported everywhere (failed,
  *action needed* with the destination's own words, or set aside for missing data).

The logic is :mod:`m3sh.invoicing.run`'s; ``m3sh_invoice_sync`` wires these same operators.

Templated ``bill_ids``, ``only_destinations``, ``full_scan``, ``preview`` (a dry run: BaseOperator
already has a ``dry_run`` method) and ``redeliver`` accept
their value or, rendered from a template, its JSON text (``"{{ params.bill_ids | tojson }}"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator
from pydantic import ValidationError

from m3sh.compat import AirflowFailException
from m3sh.config import (
    CrmSource,
    CrmSyncConfig,
    InvoicingConfig,
    M3shConfig,
    NetSuiteDestination,
)
from m3sh.operators._common import M3terLazyOperator, StagingMixin, names, native, problems
from m3sh.operators._common import destination as resolve_destination

if TYPE_CHECKING:
    from airflow.sdk import Context


NON_NETSUITE_THREADS = 4
LockedPolicy = Literal["update", "credit_memo"]


def _staged(task_id: str, value: Any) -> dict[str, Any]:
    if value is None:
        from m3sh.dagkit.errors import RunFailed

        raise RunFailed(f"{task_id}: no staged bills: the collect task did not finish (no bill was read, nothing "
                        "was exported)", records=[])
    refs = native(task_id, "staged", value, dict)
    missing = [k for k in ("bills_key", "routes_key") if k not in refs]
    if missing:
        raise AirflowFailException(f"{task_id}: staged must be what M3terBillsCollectOperator returned (or one "
                                   f"part of it); it lacks {missing}")
    return dict(refs)



class M3terBillsCollectOperator(StagingMixin, M3terLazyOperator):
    """Read m3ter bills ready for export, enrich and route them, and stage them in S3.

    By default the bills in ``bill_states`` last changed in the run's data interval (all of them
    when the run has none or ``full_scan``); ``bill_ids`` reads exactly those (their state is still
    checked). Without a config every bill goes to every name in ``destinations``; with one, its
    ``invoicing.routes`` decide. A bill missing a ``required_enrichment`` value is set aside.

    :param destinations: destination names the bills go to (default: the config's enabled ones).
    :param config: an :class:`~m3sh.config.M3shConfig` supplying the arguments below instead.
    :param bill_states: m3ter bill states exported (``PENDING``, ``APPROVED``, ``LOCKED``).
    :param bill_ids: only these bills, whatever their change time. (templated)
    :param only_destinations: route to these destination names only (empty: all). (templated)
    :param full_scan: every bill in ``bill_states``, not only those changed in the interval. (templated)
    :param required_enrichment: values a bill must have (``subsidiary``, ``tax_code``, ``owner``, ...).
    :param subsidiary_by_currency: subsidiary of accounts without a ``subsidiary`` custom field.
    :param crm_sources: CRMs read for owner, PO number and billing address.
    :param bucket: S3 bucket of staging, ledger and reports (default: ``config.storage``).
    :param prefix: key prefix there.
    :param aws_conn_id: Airflow AWS connection of the bucket.

    Returns ``{"bills_key", "routes_key", "bills", "set_aside", "by_destination"}``.
    """

    template_fields: Sequence[str] = (*M3terLazyOperator.template_fields, "bill_ids", "only_destinations",
                                      "full_scan")
    ui_color = "#fff4e0"

    def __init__(self, *, destinations: Sequence[str] | None = None, config: M3shConfig | None = None,
                 bill_states: Sequence[str] | None = None, bill_ids: Sequence[str] | str | None = None,
                 only_destinations: Sequence[str] | str | None = None, full_scan: bool | str = False,
                 required_enrichment: Sequence[str] | None = None,
                 subsidiary_by_currency: Mapping[str, str] | None = None,
                 crm_sources: Sequence[CrmSource | Mapping[str, Any]] | None = None, bucket: str | None = None,
                 prefix: str = "m3sh/", aws_conn_id: str = "aws_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_storage(config, aws_conn_id, bucket, prefix)
        inline = {k: v for k, v in (("bill_states", bill_states), ("required_enrichment", required_enrichment),
                                    ("subsidiary_by_currency", subsidiary_by_currency),
                                    ("crm_sources", crm_sources)) if v is not None}
        if config is not None:
            if inline:
                raise ValueError(f"{self.task_id}: give config=... or the inline arguments {sorted(inline)}, "
                                 "not both")
            self.settings = config
            self.destinations = list(destinations) if destinations is not None else [
                d.name for d in config.invoicing.destinations if d.enabled]
        else:
            if not destinations:
                raise ValueError(f"{self.task_id}: give destinations=[names] (or config=...): where bills go")
            self.destinations = list(destinations)
            self.settings = self._settings(inline)
        self.route_all = config is None
        self.bill_ids = bill_ids
        self.only_destinations = only_destinations
        self.full_scan = full_scan

    def _settings(self, inline: dict[str, Any]) -> M3shConfig:
        crm = inline.pop("crm_sources", [])
        try:
            return M3shConfig(invoicing=InvoicingConfig(**inline), crm=CrmSyncConfig(sources=crm))
        except ValidationError as exc:
            raise ValueError(f"{self.task_id}: invalid invoicing arguments ({problems(exc)})") from None

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.invoicing.run import collect

        bill_ids = names(self.task_id, "bill_ids", self.bill_ids)
        only = names(self.task_id, "only_destinations", self.only_destinations)
        unknown = sorted(set(only) - set(self.destinations))
        if unknown:
            raise AirflowFailException(f"{self.task_id}: only_destinations names unknown destinations {unknown}; "
                                       f"known: {sorted(self.destinations)}")
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if start is not None and start == end:
            # A cron string schedules with CronTriggerTimetable in Airflow 3: the interval is a point,
            # and "changed in it" would be nothing, ever. Every bill in the states, then; the delivery
            # ledger skips those already delivered unchanged.
            self.log.info("the run's data interval is empty (a trigger timetable): reading every bill in %s",
                          self.settings.invoicing.bill_states)
            start = end = None
        if native(self.task_id, "full_scan", self.full_scan, bool) or bill_ids or start is None:
            start, end = None, None
        return collect(self.hook, self.settings, self._storage(), dag_id=self.dag_id, run_id=context["run_id"],
                       destinations=self.destinations, bill_ids=bill_ids, only=only, start=start, end=end,
                       route_all=self.route_all)


class M3terBillsDeliverOperator(StagingMixin, BaseOperator):
    """Deliver staged bills to one destination (NetSuite, Salesforce, HubSpot, S3 or a webhook).

    Each write is an upsert by external id or carries an idempotency key, and the S3 ledger skips
    a bill already delivered with the same content, so re-runs write nothing new. A bill's failure
    never stops the others; the task fails afterwards naming them (retried when transient).

    :param staged: what :class:`M3terBillsCollectOperator` returned (``collect.output``), or one
        part of it (``m3sh.invoicing.run.plan_chunks``). (templated)
    :param destination: the destination: a config destination object or its mapping
        (``{"type": "netsuite", "name": ..., ...}``), or a name in ``config``.
    :param config: an :class:`~m3sh.config.M3shConfig` naming the destination and the storage.
    :param preview: a dry run: report what would be written, write nothing. (templated)
    :param redeliver: ignore the ledger and upsert again (still exactly once). (templated)
    :param threads: bills in flight (default 1 for NetSuite, whose hook limits per account; else 4).
    :param bucket: S3 bucket of staging and ledger (the collect task's). :param prefix: its prefix.
    :param aws_conn_id: Airflow AWS connection of the bucket.

    Returns the count of bills per outcome (``delivered``, ``unchanged``, ``not_applicable``,
    ``action_needed``, ``dry_run`` when previewing); action-needed items are logged with the destination's words.
    """

    template_fields: Sequence[str] = ("staged", "preview", "redeliver")
    ui_color = "#eaf7ea"

    def __init__(self, *, staged: Any, destination: Any, config: M3shConfig | None = None,
                 preview: bool | str = False, redeliver: bool | str = False, threads: int | None = None,
                 bucket: str | None = None, prefix: str = "m3sh/", aws_conn_id: str = "aws_default",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_storage(config, aws_conn_id, bucket, prefix)
        destination = resolve_destination(self.task_id, "destination", destination, config)
        if threads is not None and threads < 1:
            raise ValueError(f"{self.task_id}: threads must be >= 1, got {threads}")
        self.destination = destination
        self.staged = staged
        self.preview = preview
        self.redeliver = redeliver
        self.threads = threads or (1 if isinstance(destination, NetSuiteDestination) else NON_NETSUITE_THREADS)

    def execute(self, context: Context) -> dict[str, int]:
        from m3sh.dagkit.errors import RunFailed
        from m3sh.exceptions import RetryableError
        from m3sh.invoicing.deliver import delivery_for
        from m3sh.invoicing.ledger import Ledger, S3Ledger, WriteOnlyLedger
        from m3sh.invoicing.run import count_statuses, deliver_staged

        refs = _staged(self.task_id, self.staged)
        name = str(self.destination.name)
        storage = self._storage()
        ledger: Ledger = S3Ledger(storage)
        if native(self.task_id, "redeliver", self.redeliver, bool):
            ledger = WriteOnlyLedger(ledger)
        preview = bool(native(self.task_id, "preview", self.preview, bool))
        try:
            results = deliver_staged(delivery_for(self.destination, ledger), storage, refs, name, dag_id=self.dag_id,
                                     run_id=context["run_id"], threads=self.threads, dry_run=preview)
        except ValueError as exc:
            raise AirflowFailException(f"{self.task_id}: {exc}") from None
        for r in results:
            if r.status in ("failed", "action_needed"):
                self.log.error("bill %s (%s) -> %s %s: %s", r.bill_id, r.account_code, name, r.status, r.detail)
        counts = count_statuses(results)
        self.log.info("%s part %d: %s", name, int(refs.get("index", 0)) + 1, counts)
        failed = [r for r in results if r.status == "failed"]
        if any(r.retryable for r in failed):
            raise RetryableError(f"{name}: {len(failed)} bill(s) failed transiently, e.g. bill "
                                 f"{failed[0].bill_id}: {failed[0].detail}")
        if failed:
            raise RunFailed(f"{name}: {len(failed)} bill(s) failed: "
                            + "; ".join(f"bill {r.bill_id}: {r.detail}" for r in failed[:5]),
                            records=[r.bill_id for r in failed])
        return counts


class M3terBillsToNetSuiteOperator(M3terBillsDeliverOperator):
    """Staged bills -> invoices in one NetSuite account, with the NetSuite arguments inline.

    Customers are upserted by external id = m3ter account id, invoices by external id = m3ter bill
    id, so a retry or a re-run converges on one invoice per bill. A refusal finance must act on
    (a closed period under ``locked_invoice_policy="update"``, an unknown item) is reported as
    *action needed* with NetSuite's own message.

    :param staged: what :class:`M3terBillsCollectOperator` returned. (templated)
    :param netsuite_conn_id: Airflow connection of type ``netsuite``.
    :param subsidiary_id: NetSuite internal id of the subsidiary new customers belong to.
    :param default_item_id: NetSuite item of lines ``item_map`` does not map.
    :param item_map: m3ter line type or product code -> NetSuite item id.
    :param currency_id: NetSuite currency internal id (default: looked up by the bill's ISO code).
    :param locked_invoice_policy: ``credit_memo`` (book the difference) or ``update``.
    :param destination_name: names the ledger, results and summary entries (must match the
        collect task's ``destinations``).

    Other arguments as :class:`M3terBillsDeliverOperator`.
    """

    def __init__(self, *, staged: Any, subsidiary_id: str, default_item_id: str,
                 netsuite_conn_id: str = "netsuite_default", item_map: Mapping[str, str] | None = None,
                 currency_id: str | None = None, locked_invoice_policy: LockedPolicy = "credit_memo",
                 destination_name: str = "netsuite", **kwargs: Any) -> None:
        task_id = kwargs.get("task_id", "?")
        try:
            dest = NetSuiteDestination(type="netsuite", name=destination_name, conn_id=netsuite_conn_id,
                                       subsidiary_id=subsidiary_id, default_item_id=default_item_id,
                                       item_map=dict(item_map or {}), currency_id=currency_id,
                                       locked_invoice_policy=locked_invoice_policy)
        except ValidationError as exc:
            raise ValueError(f"{task_id}: invalid NetSuite arguments ({problems(exc)})") from None
        super().__init__(staged=staged, destination=dest, **kwargs)


class M3terInvoiceRunSummaryOperator(StagingMixin, M3terLazyOperator):
    """The end of an invoice run: merge every destination's outcomes, stamp fully exported bills
    on their m3ter account (``exported_field``, with the bill id and destinations), write the
    summary to ``reports/<dag id>/runs/<run id>.json`` and ``latest.json``, and fail naming each
    bill not exported everywhere. Give it ``trigger_rule="all_done"`` so it runs whatever failed.

    :param staged: what :class:`M3terBillsCollectOperator` returned. (templated)
    :param preview: a dry run: stamp nothing (the deliver tasks' ``preview``). (templated)
    :param exported_field: m3ter account custom field stamped on export (None: stamp nothing).
    :param fail_on_problems: fail the task when a bill failed, needs action or was set aside.
    :param config: supplies ``exported_field`` and the storage. :param bucket: / :param prefix: /
        :param aws_conn_id: the collect task's storage.

    Returns ``{"summary_key", "exported", "by_destination"}`` (and, with ``fail_on_problems=False``,
    ``action_needed``, ``failed`` and ``set_aside`` lists).
    """

    template_fields: Sequence[str] = (*M3terLazyOperator.template_fields, "staged", "preview")
    ui_color = "#f3e8ff"

    def __init__(self, *, staged: Any, preview: bool | str = False, exported_field: str | None = "exported_at",
                 fail_on_problems: bool = True, config: M3shConfig | None = None, bucket: str | None = None,
                 prefix: str = "m3sh/", aws_conn_id: str = "aws_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._init_storage(config, aws_conn_id, bucket, prefix)
        self.staged = staged
        self.preview = preview
        self.exported_field = config.invoicing.exported_field if config is not None else exported_field
        self.fail_on_problems = fail_on_problems

    def execute(self, context: Context) -> dict[str, Any]:
        from m3sh.dagkit.errors import RunFailed
        from m3sh.invoicing.run import problem_message, summarize

        refs = _staged(self.task_id, self.staged)
        storage = self._storage()
        result = summarize(self.hook, storage, refs, dag_id=self.dag_id, run_id=context["run_id"],
                           dry_run=bool(native(self.task_id, "preview", self.preview, bool)),
                           exported_field=self.exported_field)
        if result["problems"] and self.fail_on_problems:
            raise RunFailed(problem_message(result, storage.uri(result["report_key"])), records=result["records"])
        out = {"summary_key": result["report_key"], "exported": result["exported"],
               "by_destination": result["by_destination"]}
        if result["problems"]:
            out.update({k: result[k] for k in ("action_needed", "failed", "set_aside")})
        return out


class NetSuitePaymentsToCrmOperator(StagingMixin, BaseOperator):
    """Payment state of the invoices m3sh exported to one NetSuite account, read back with SuiteQL and
    written to the CRM destinations that took those invoices (:mod:`m3sh.invoicing.payments`).

    Reads the invoices changed in ``[min(data interval start, watermark), data interval end)`` (a
    backfill re-reads exactly its interval; the S3 watermark catches up after failed or skipped runs)
    plus open invoices falling due since the last read; derives ``paid`` / ``partly_paid`` /
    ``overdue`` / ``open`` as of the end of the data interval (a manual run's logical date); writes
    the text ("partly paid 40.00 remaining") to the Salesforce invoice record and, while they show
    that invoice, its Account and Opportunity, and to the HubSpot deal's ``payment_property``. Every
    record is read first and written only where it differs, so a re-run with no payment in between
    writes nothing.

    :param source: the NetSuite destination read: an object, its mapping, or its name in ``config``.
    :param destinations: Salesforce / HubSpot destinations written (objects, mappings or names in
        ``config``; default: the config's enabled ones).
    :param config: an :class:`~m3sh.config.M3shConfig` supplying names and storage.
    :param full_scan: read every invoice m3sh wrote, whatever its change time. (templated)
    :param preview: a dry run: report what would be written, write nothing. (templated)
    :param bucket: / :param prefix: / :param aws_conn_id: where the watermark and report live.

    Returns ``{"source", "window", "as_of", "invoices", "by_state", "by_destination", "report_key"}``.
    """

    template_fields: Sequence[str] = ("full_scan", "preview")
    ui_color = "#e8f4ff"

    def __init__(self, *, source: Any, destinations: Sequence[Any] | None = None, config: M3shConfig | None = None,
                 full_scan: bool | str = False, preview: bool | str = False, bucket: str | None = None,
                 prefix: str = "m3sh/", aws_conn_id: str = "aws_default", **kwargs: Any) -> None:
        from m3sh.config import HubSpotDestination, SalesforceDestination

        super().__init__(**kwargs)
        self._init_storage(config, aws_conn_id, bucket, prefix)
        self.source = resolve_destination(self.task_id, "source", source, config)
        if not isinstance(self.source, NetSuiteDestination):
            raise ValueError(f"{self.task_id}: source must be a NetSuite destination, got {self.source.type!r}")
        if destinations is None:
            if config is None:
                raise ValueError(f"{self.task_id}: give destinations=[...] (Salesforce / HubSpot) or config=...")
            destinations = [d for d in config.invoicing.destinations
                            if d.enabled and isinstance(d, SalesforceDestination | HubSpotDestination)]
        self.destinations = [resolve_destination(self.task_id, "destinations", d, config) for d in destinations]
        wrong = [d.name for d in self.destinations if not isinstance(d, SalesforceDestination | HubSpotDestination)]
        if wrong:
            raise ValueError(f"{self.task_id}: destinations must be Salesforce or HubSpot destinations; {wrong} "
                             "are not")
        self.full_scan = full_scan
        self.preview = preview

    def execute(self, context: Context) -> dict[str, Any]:
        import datetime as dt

        from m3sh.config import HubSpotDestination
        from m3sh.dagkit.errors import RunFailed
        from m3sh.hooks.netsuite import NetSuiteHook
        from m3sh.invoicing import payments as pay
        from m3sh.invoicing.ledger import S3Ledger
        from m3sh.layout import payments_report

        storage = self._storage()
        name = str(self.source.name)
        preview = bool(native(self.task_id, "preview", self.preview, bool))
        full_scan = bool(native(self.task_id, "full_scan", self.full_scan, bool))
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        logical = context.get("logical_date")
        started = dt.datetime.now(dt.UTC).replace(microsecond=0)
        watermark = pay.read_watermark(storage, name)
        lower, upper = pay.read_window(start, end, watermark, full_scan)
        # The state is derived as of the end of the data interval (a manual run's logical date): tied to
        # the run, not to the wall clock, so a re-run of the same interval derives the same states.
        as_of = (end or logical or started).date()
        # Open invoices falling due since the last read became overdue without any record changing.
        due_from = (lower.date() - dt.timedelta(days=1)) if lower is not None else None
        hook = NetSuiteHook(self.source.conn_id)
        rows = hook.invoice_payment_rows(modified_from=lower, modified_until=upper, due_from=due_from,
                                         due_until=as_of if due_from is not None else None)
        items: list[tuple[pay.InvoicePayment, pay.PaymentStatus]] = []
        outcomes: list[pay.Outcome] = []
        for row in rows:
            try:
                payment = pay.parse_payment_row(row, name)
            except pay.PaymentRowError as exc:
                outcomes.append(pay.Outcome(str(row.get("externalid") or ""), name, f"invoice {exc.invoice}",
                                            "failed", str(exc)))
                continue
            items.append((payment, pay.payment_status(payment, as_of)))
        self.log.info("%s: %d invoice(s) changed in [%s, %s) or falling due before %s", name, len(items),
                      lower or "-", upper or "-", as_of)
        ledger = S3Ledger(storage)
        for dest in self.destinations:
            writer: Any = (pay.HubSpotPayments(dest, ledger) if isinstance(dest, HubSpotDestination)
                           else pay.SalesforcePayments(dest))
            try:
                outcomes += writer.apply(items, dry_run=preview) if items else []
            except Exception as exc:  # a destination that cannot be read never blocks the others
                outcomes += [pay.Outcome(p.bill_id, dest.name, "-", "failed", f"{type(exc).__name__}: {exc}"[:1000])
                             for p, _ in items]
        by_dest = {d.name: pay.count(o for o in outcomes if o.destination == d.name) for d in self.destinations}
        by_state: dict[str, int] = {}
        for _, status in items:
            by_state[status.state] = by_state.get(status.state, 0) + 1
        failed = [o for o in outcomes if o.status == "failed"]
        report_key = payments_report(storage, self.dag_id, context["run_id"], name)
        storage.put_json(report_key, {
            "source": name, "window": [lower.isoformat() if lower else None, upper.isoformat() if upper else None],
            "as_of": as_of.isoformat(), "dry_run": preview, "invoices": len(items), "by_state": by_state,
            "by_destination": by_dest,
            "states": {p.bill_id: {"invoice": p.tran_id, "state": s.state, "text": s.text} for p, s in items},
            "outcomes": [o.to_json() for o in outcomes if o.status != "unchanged"]})
        for o in failed:
            self.log.error("bill %s -> %s %s: %s", o.bill_id, o.destination, o.record, o.detail)
        if failed:
            # The watermark stays: the next run reads these invoices again.
            raise RunFailed(f"{name}: payment state of {len(failed)} record(s) not written, e.g. bill "
                            f"{failed[0].bill_id} -> {failed[0].destination}: {failed[0].detail}",
                            records=sorted({o.bill_id for o in failed}))
        if not preview:
            pay.record_states(storage, items, as_of, started)
            pay.write_watermark(storage, name, upper or started, watermark)
        return {"source": name, "window": [lower.isoformat() if lower else None, upper.isoformat() if upper else None],
                "as_of": as_of.isoformat(), "invoices": len(items), "by_state": by_state, "by_destination": by_dest,
                "report_key": report_key}
