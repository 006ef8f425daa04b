"""``m3sh preflight``: check a config against the systems its connections point at, before go-live.

Every check is derived from the config (so a check exists only for what the config will use) and
only *reads*: logins, token introspection, describes, list calls, SuiteQL, and the AWS calls
``GetCallerIdentity``, ``HeadBucket``, ``ListObjectsV2``, ``GetQueueAttributes`` and
``GetBucketNotificationConfiguration``. Nothing is created, updated or deleted anywhere, so it is
safe against production, which is what it is for. Each check is one
:class:`CheckResult`; a failed one carries the fix, in the words of the system that needs it.

Every request goes through the hooks (``m3sh.hooks.*`` and the Amazon provider's): no URL or API
path is built here; m3ter access is kept in the ``_m3ter_*`` helpers below.

Secrets: details and fixes are built from names, ids and vendors' error codes, never from
credentials; as a second line of defence every secret of every connection read is redacted from
the output (:class:`_Redactor`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from m3sh.config import (
    CONTRACT_DATES,
    CrmSource,
    HubSpotDestination,
    M3shConfig,
    NetSuiteDestination,
    S3Destination,
    SalesforceDestination,
    UsageFeed,
)
from m3sh.mapping.crm import M3TER_ACCOUNT_CUSTOM_FIELDS, M3TER_ACCOUNT_FIELDS

log = logging.getLogger(__name__)

OK_MARK = "✅"
FAIL_MARK = "❌"


@dataclass(frozen=True)
class CheckResult:
    """One line of the report: what was checked, whether it holds, what was seen, and the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{OK_MARK if self.ok else FAIL_MARK} {self.name}: {self.detail}"
        return text if self.ok or not self.fix else f"{text} -> fix: {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def passed(name: str, detail: str) -> CheckResult:
    return CheckResult(name, True, detail)


def failed(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, False, detail, fix)


def unreachable(name: str, system: str, conn_id: str, exc: BaseException, default_host: str) -> CheckResult:
    """A transport failure (refused, DNS, timeout, 5xx after retries): nothing was said about the
    credentials, so the fix is about where the connection points."""
    return failed(name, f"{system} not reachable: {_short(exc)}",
                  f"check the host of connection {conn_id!r} ({default_host}) and the network path from here; "
                  "then run preflight again")


def _guarded(checks: Iterable[CheckResult], names: list[str], needs: str) -> Iterator[CheckResult]:
    """``checks``, and if producing them fails midway (a 403 on one list, a 5xx after the hook's
    retries), a failed line for each of ``names`` that had not been reported yet."""
    done: set[str] = set()
    try:
        for result in checks:
            done.add(result.name)
            yield result
    except Exception as exc:
        for name in names:
            if name not in done:
                yield failed(name, f"could not be checked: {_short(exc)}",
                             f"{needs}, or run preflight again if the error was transient")


def not_checked(name: str, blocker: str) -> CheckResult:
    """A check that cannot run because the check named ``blocker`` failed (a login, a bucket...)."""
    return CheckResult(name, False, f"not checked: needs '{blocker}'", f"fix '{blocker}' first")


# ------------------------------------------------------------------------------- redaction
_SECRET_KEY = re.compile(r"secret|token|password|passwd|api_?key|private|credential", re.IGNORECASE)


class _Redactor:
    """Every secret of every connection preflight read, blanked out of anything it prints."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def add_connection(self, conn: Any) -> None:
        if conn.password:
            self.secrets.add(str(conn.password))
        for key, value in (conn.extra_dejson or {}).items():
            if _SECRET_KEY.search(str(key)) and isinstance(value, str) and value:
                self.secrets.add(value)

    def __call__(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= 4:  # a one-character "secret" would blank half the report
                text = text.replace(secret, "***")
        return text


def _short(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line (hooks' messages carry no credentials; redaction follows anyway)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plural(items: Iterable[str]) -> str:
    return ", ".join(sorted(items))


# ------------------------------------------------------------------------ what the config needs
@dataclass
class Needs:
    """Names a system must have, each with the config locations that need it (for the messages)."""

    items: dict[str, list[str]] = field(default_factory=dict)

    def add(self, name: str, why: str) -> None:
        reasons = self.items.setdefault(name, [])
        if why not in reasons:
            reasons.append(why)

    def why(self, name: str) -> str:
        return "; ".join(self.items.get(name, []))

    def __bool__(self) -> bool:
        return bool(self.items)


def needed_plans(cfg: M3shConfig) -> Needs:
    plans = Needs()
    for product, plan in cfg.crm.plan_map.items():
        plans.add(plan, f"crm.plan_map.{product}")
    if cfg.crm.default_plan:
        plans.add(cfg.crm.default_plan, "crm.default_plan")
    for plan in cfg.m3ter.plans:
        plans.add(plan, "m3ter.plans")
    for rule in cfg.triggers:
        if rule.enabled:
            for action in rule.actions:
                if action.switch_plan:
                    plans.add(action.switch_plan, f"triggers[{rule.name}] switch_plan")
    return plans


@dataclass
class MeterNeed:
    measures: set[str] = field(default_factory=set)
    dimensions: set[str] = field(default_factory=set)
    why: list[str] = field(default_factory=list)


def needed_meters(cfg: M3shConfig) -> dict[str, MeterNeed]:
    """Meter code -> the measure and dimension fields m3sh sends (``measure`` / ``where``)."""
    meters: dict[str, MeterNeed] = {}
    for feed in cfg.usage.feeds:
        if not feed.enabled:
            continue
        for m in feed.meters:
            need = meters.setdefault(m.code, MeterNeed())
            need.measures |= set(m.measures)
            need.dimensions |= set(m.dimensions)
            need.why.append(f"usage.feeds[{feed.name}]")
    for rule in cfg.triggers:
        cond = rule.when.usage_over_limit
        if rule.enabled and cond is not None:
            need = meters.setdefault(cond.meter, MeterNeed())
            need.why.append(f"triggers[{rule.name}] usage_over_limit")
    return meters


# m3ter's organization-level custom field groups (GET /customfields), by the config's entity names.
CUSTOM_FIELD_GROUPS = {"account": "account", "accountplan": "accountPlan"}


def needed_custom_fields(cfg: M3shConfig) -> dict[str, Needs]:
    """m3ter entity ('account' / 'accountplan') -> the custom fields the config declares or routes on."""
    out: dict[str, Needs] = {"account": Needs(), "accountplan": Needs()}
    declared = cfg.m3ter.custom_fields
    if declared is not None:
        for name in declared.account:
            out["account"].add(name, "m3ter.custom_fields.account")
        for name in declared.accountplan:
            out["accountplan"].add(name, "m3ter.custom_fields.accountplan")
    for route in cfg.invoicing.routes:
        for name in route.when.custom_field or {}:
            out["account"].add(name, f"invoicing.routes[{route.name}].when.custom_field")
    return out


def _enabled_sources(cfg: M3shConfig, crm_type: str) -> list[CrmSource]:
    return [s for s in cfg.crm.sources if s.type == crm_type and s.enabled]


def _crm_fields_of_rules(cfg: M3shConfig, source: CrmSource) -> Needs:
    """Fields ``update_crm_fields`` actions write in one CRM source (unprefixed keys go to every
    source; a prefix is the source's name or its type)."""
    fields = Needs()
    for rule in cfg.triggers:
        if not rule.enabled:
            continue
        for action in rule.actions:
            for key in action.update_crm_fields or {}:
                prefix, _, name = key.partition(".")
                if not name:
                    prefix, name = source.type, key
                if prefix in (source.type, source.name):
                    fields.add(name, f"triggers[{rule.name}] update_crm_fields")
    return fields


@dataclass
class HubSpotNeeds:
    scopes: Needs = field(default_factory=Needs)
    company_properties: Needs = field(default_factory=Needs)
    deal_properties: Needs = field(default_factory=Needs)  # created on first use when missing
    deal_dates: Needs = field(default_factory=Needs)  # contract dates m3sh writes: must exist (never created)


def needed_hubspot(cfg: M3shConfig) -> dict[str, HubSpotNeeds]:
    """Per HubSpot connection: the private-app scopes and the properties the config uses.

    Scope names are HubSpot's (api-notes A.2): ``crm.objects.<type>.read|write``. The CRM sync
    searches companies, deals and line items and reads their associations (README "CRM sync: which
    m3ter plan"), so all three read scopes are needed whatever the field mapping.
    """
    out: dict[str, HubSpotNeeds] = {}
    for src in cfg.crm.sources:
        if src.type != "hubspot" or not src.enabled:
            continue
        need = out.setdefault(src.conn_id, HubSpotNeeds())
        why = f"crm.sources[{src.name}]"
        for obj in ("companies", "deals", "line_items"):
            need.scopes.add(f"crm.objects.{obj}.read", why)
        for canonical, prop in src.account_fields.items():
            need.company_properties.add(prop, f"{why}.account_fields.{canonical}")
        # m3sh writes these to the company: the m3ter id, the plan, fields m3ter owns or fills (crm.outbound)
        written: list[tuple[str, str | None]] = [
            (f"{why}.{key}", name) for key, name in (("write_back_field", src.write_back_field),
                                                     ("plan_field", src.plan_field)) if name]
        written += [(f"crm.ownership ({canonical})", None) for canonical in src.account_fields
                    if cfg.crm.ownership.owner_of(canonical) != "crm_wins"]
        for reason, name in written:
            need.scopes.add("crm.objects.companies.write", reason)
            if name:
                need.company_properties.add(name, reason)
        for fld, prop in _m3ter_owned_dates(cfg, src).items():  # written to the closed-won deal
            reason = (f"{why}.contract_fields.{fld}: {cfg.crm.ownership.owner_of_contract(fld)} in "  # type: ignore[arg-type]
                      "crm.ownership.contract_fields")
            need.scopes.add("crm.objects.deals.write", reason)
            need.deal_dates.add(prop, reason)
    for src in _enabled_sources(cfg, "hubspot"):  # each portal is written on its own connection
        rule_fields = _crm_fields_of_rules(cfg, src)
        if not rule_fields:
            continue
        need = out.setdefault(src.conn_id, HubSpotNeeds())
        for name, reasons in rule_fields.items.items():
            for why in reasons:
                need.company_properties.add(name, why)
                need.scopes.add("crm.objects.companies.read", why)
                need.scopes.add("crm.objects.companies.write", why)
    _hubspot_destination_needs(cfg, out)
    return out


def _hubspot_destination_needs(cfg: M3shConfig, out: dict[str, HubSpotNeeds]) -> None:
    """The deal scopes and properties of each enabled HubSpot invoice destination."""
    for dest in cfg.invoicing.destinations:
        if isinstance(dest, HubSpotDestination) and dest.enabled:
            need = out.setdefault(dest.conn_id, HubSpotNeeds())
            why = f"invoicing.destinations[{dest.name}]"
            need.scopes.add("crm.objects.deals.read", why)
            need.scopes.add("crm.objects.deals.write", why)
            need.deal_properties.add(dest.deal_property, f"{why}.deal_property")
            if cfg.invoicing.payments.enabled and dest.payment_property:
                # created on first use like deal_property; listed so preflight shows it
                need.deal_properties.add(dest.payment_property, f"{why}.payment_property")


# Salesforce field kinds: what m3sh reads (any type), or writes as text / number / date / a lookup.
TEXT_TYPES = frozenset({"string", "textarea", "picklist", "email", "url", "phone"})
NUMBER_TYPES = frozenset({"double", "currency", "percent", "int"})
DATE_TYPES = frozenset({"date"})
KIND_TYPES: dict[str, frozenset[str]] = {"text": TEXT_TYPES, "number": NUMBER_TYPES, "date": DATE_TYPES}
# The Invoice__c fields invoicing.salesforce.invoice_fields() writes, with the kind of value it sends
# (a unit test keeps this in step with that function).
INVOICE_FIELD_KINDS: dict[str, str] = {
    "Name": "text", "Account__c": "ref:Account", "Opportunity__c": "ref:Opportunity",
    "Invoice_Number__c": "text", "Amount__c": "number", "Currency__c": "text", "Status__c": "text",
    "Invoice_Date__c": "date", "Due_Date__c": "date"}
# Latest-invoice values (config keys of account_fields / opportunity_fields) -> kind of value written.
STATUS_VALUE_KINDS = {"invoice": "text", "status": "text", "date": "date", "amount": "number",
                      "currency": "text", "bill_id": "text"}
# Payment values (keys of the *_payment_fields) -> kind of value the payments step writes.
PAYMENT_VALUE_KINDS = {"payment": "text", "amount_remaining": "number"}
# Canonical account fields m3ter holds, so the m3ter -> CRM step may write them (crm/outbound.py).
M3TER_OWNABLE = frozenset(M3TER_ACCOUNT_FIELDS.values()) | frozenset(M3TER_ACCOUNT_CUSTOM_FIELDS.values())
# Fields the Salesforce extract always reads besides the mapped Account fields (crm/salesforce.py).
SALESFORCE_READS = {
    "Contract": ("Id", "AccountId", "StartDate", "EndDate", "Status"),
    "Opportunity": ("Id", "AccountId", "PO_Number__c", "CloseDate", "StageName"),
    "OpportunityLineItem": ("Id", "OpportunityId", "ProductCode"),
}


@dataclass(frozen=True)
class FieldNeed:
    kind: str          # "read", "text", "number", "date", "ref:<sObject>"
    why: str
    external_id: bool = False
    picklist: tuple[str, ...] = ()  # values m3sh writes, when the field is a picklist
    update: bool = False  # m3sh updates existing records' value (describe's `updateable`, not `createable`)

    @property
    def writes(self) -> bool:
        return self.kind != "read"


_Need = Callable[[str, str, str, FieldNeed], None]


def needed_salesforce(cfg: M3shConfig) -> dict[str, dict[str, dict[str, list[FieldNeed]]]]:
    """Per Salesforce connection: sObject -> field -> what the config does with it."""
    out: dict[str, dict[str, dict[str, list[FieldNeed]]]] = {}

    def need(conn: str, sobject: str, name: str, fn: FieldNeed) -> None:
        out.setdefault(conn, {}).setdefault(sobject, {}).setdefault(name, []).append(fn)

    for src in cfg.crm.sources:
        if src.type == "salesforce" and src.enabled:
            _salesforce_source_needs(src, need, cfg)
    for src in _enabled_sources(cfg, "salesforce"):  # each org is written on its own connection
        for name, reasons in _crm_fields_of_rules(cfg, src).items.items():
            for why in reasons:
                need(src.conn_id, "Account", name, FieldNeed("text", why))
    statuses = ("Approved", "Posted") if "LOCKED" in cfg.invoicing.bill_states else ("Approved",)
    for dest in cfg.invoicing.destinations:
        if isinstance(dest, SalesforceDestination) and dest.enabled:
            _salesforce_destination_needs(dest, statuses, need)
            if cfg.invoicing.payments.enabled:
                _salesforce_payment_needs(dest, need)
    return out


def _salesforce_payment_needs(dest: SalesforceDestination, need: _Need) -> None:
    why = f"invoicing.destinations[{dest.name}]"
    for sobject, mapping, key in ((dest.invoice_object, dest.invoice_payment_fields, "invoice_payment_fields"),
                                  ("Account", dest.account_payment_fields, "account_payment_fields"),
                                  ("Opportunity", dest.opportunity_payment_fields, "opportunity_payment_fields")):
        for value, name in mapping.items():
            need(dest.conn_id, sobject, name, FieldNeed(PAYMENT_VALUE_KINDS[value], f"{why}.{key}.{value}"))


def _m3ter_owned_dates(cfg: M3shConfig, src: CrmSource) -> dict[str, str]:
    """Contract date -> CRM field, of the dates the m3ter -> CRM step writes for ``src``."""
    cf = src.contract_field_map()
    return {f: cf[f] for f in CONTRACT_DATES if cfg.crm.ownership.owner_of_contract(f) != "crm_wins"}


def _salesforce_source_needs(src: CrmSource, need: _Need, cfg: M3shConfig) -> None:
    why = f"crm.sources[{src.name}]"
    ownership = cfg.crm.ownership
    dates = _m3ter_owned_dates(cfg, src)
    need(src.conn_id, "Account", "Id", FieldNeed("read", why))
    for canonical, name in src.account_fields.items():
        need(src.conn_id, "Account", name, FieldNeed("read", f"{why}.account_fields.{canonical}"))
    if src.write_back_field:
        need(src.conn_id, "Account", src.write_back_field, FieldNeed("text", f"{why}.write_back_field"))
    if src.plan_field:
        need(src.conn_id, "Account", src.plan_field, FieldNeed("text", f"{why}.plan_field", update=True))
    for canonical, name in src.account_fields.items():
        if canonical in M3TER_OWNABLE and ownership.owner_of(canonical) != "crm_wins":
            need(src.conn_id, "Account", name, FieldNeed(
                "text", f"{why}.account_fields.{canonical}: {ownership.owner_of(canonical)}, so m3ter -> CRM "
                        f"updates Account.{name}", update=True))
    for fld, name in dates.items():
        reason = (f"{why}.contract_fields.{fld}: {ownership.owner_of_contract(fld)} in "  # type: ignore[arg-type]
                  "crm.ownership.contract_fields")
        if name == "EndDate":
            # Salesforce computes Contract.EndDate (object reference: read-only, StartDate + ContractTerm),
            # so m3sh writes the term that yields m3ter's end date, from the StartDate it reads.
            need(src.conn_id, "Contract", "ContractTerm", FieldNeed(
                "number", f"{reason}, so m3ter -> CRM updates Contract.ContractTerm (Salesforce computes EndDate "
                          "from StartDate + ContractTerm)", update=True))
            need(src.conn_id, "Contract", "StartDate", FieldNeed("read", reason))
        else:
            need(src.conn_id, "Contract", name, FieldNeed("date", f"{reason}, so m3ter -> CRM updates "
                                                                  f"Contract.{name}", update=True))
    for sobject, names in SALESFORCE_READS.items():
        for name in names:
            need(src.conn_id, sobject, name, FieldNeed("read", why))


def _salesforce_destination_needs(dest: SalesforceDestination, statuses: tuple[str, ...], need: _Need) -> None:
    why = f"invoicing.destinations[{dest.name}]"
    need(dest.conn_id, dest.invoice_object, dest.external_id_field,
         FieldNeed("text", f"{why}.external_id_field", external_id=True))
    for name, kind in INVOICE_FIELD_KINDS.items():
        need(dest.conn_id, dest.invoice_object, name,
             FieldNeed(kind, why, picklist=statuses if name == "Status__c" else ()))
    for sobject, mapping, key in (("Account", dest.account_fields, "account_fields"),
                                  ("Opportunity", dest.opportunity_fields, "opportunity_fields")):
        for value, name in mapping.items():
            need(dest.conn_id, sobject, name,
                 FieldNeed(STATUS_VALUE_KINDS[value], f"{why}.{key}.{value}",
                           picklist=statuses if value == "status" else ()))


@dataclass(frozen=True)
class BucketNeed:
    conn_id: str
    bucket: str
    prefix: str
    why: str


def needed_buckets(cfg: M3shConfig) -> list[BucketNeed]:
    out = [BucketNeed(cfg.storage.conn_id, cfg.storage.bucket, cfg.storage.prefix, "storage")]
    for feed in cfg.usage.feeds:
        if feed.enabled and feed.type == "s3" and feed.bucket:
            out.append(BucketNeed(feed.conn_id, feed.bucket, feed.prefix, f"usage.feeds[{feed.name}]"))
    for dest in cfg.invoicing.destinations:
        if isinstance(dest, S3Destination) and dest.enabled:
            out.append(BucketNeed(dest.conn_id, dest.bucket, dest.prefix, f"invoicing.destinations[{dest.name}]"))
    if cfg.analytics.enabled:
        an = cfg.analytics
        out.append(BucketNeed(an.conn_id or cfg.storage.conn_id, an.bucket or cfg.storage.bucket,
                              an.prefix or f"{cfg.storage.prefix}analytics/", "analytics"))
    merged: dict[tuple[str, str], BucketNeed] = {}
    for b in out:  # one check per (connection, bucket), naming every user
        key = (b.conn_id, b.bucket)
        prev = merged.get(key)
        merged[key] = b if prev is None else BucketNeed(b.conn_id, b.bucket, prev.prefix, f"{prev.why}, {b.why}")
    return list(merged.values())


# Airflow connection types by what uses the connection (README "Connections").
NOTIFIER_CONN_TYPES = {"email": "smtp", "slack_webhook": "slackwebhook", "sns": "aws", "webhook": "http"}


def named_connections(cfg: M3shConfig) -> dict[str, tuple[str, str]]:
    """Every connection id the config names -> (what uses it, its connection type)."""
    conns: dict[str, tuple[list[str], str]] = {}

    def add(conn_id: str, why: str, conn_type: str) -> None:
        conns.setdefault(conn_id, ([], conn_type))[0].append(why)

    add(cfg.m3ter.conn_id, "m3ter", "m3ter")
    add(cfg.storage.conn_id, "storage", "aws")
    for src in cfg.crm.sources:
        if src.enabled:
            add(src.conn_id, f"crm.sources[{src.name}]", src.type)
    for feed in cfg.usage.feeds:
        if feed.enabled:
            add(feed.conn_id, f"usage.feeds[{feed.name}]", "aws" if feed.type == "s3" else "http")
    for dest in cfg.invoicing.destinations:
        if dest.enabled:
            add(dest.conn_id, f"invoicing.destinations[{dest.name}]", "aws" if dest.type == "s3" else
                "http" if dest.type == "webhook" else dest.type)
    for notifier in cfg.alerting.notifiers:
        add(notifier.conn_id, f"alerting.notifiers[{notifier.name}]", NOTIFIER_CONN_TYPES[notifier.type])
    if any(r.enabled and r.when.kind == "balance_below" for r in cfg.triggers):
        from m3sh.web.receiver import WEBHOOK_CONN_ID

        add(WEBHOOK_CONN_ID, "the m3ter webhook receiver (balance rules; password = the signing secret)", "generic")
    return {k: (", ".join(whys), conn_type) for k, (whys, conn_type) in conns.items()}


# -------------------------------------------------------------------------------- the runner
class Preflight:
    """Runs every check the config implies; :meth:`run` returns them in a stable order."""

    def __init__(self, cfg: M3shConfig, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.redact = _Redactor()
        self._conns: dict[str, Any] = {}
        self._conn_errors: dict[str, str] = {}
        self.aws = _AwsClients()

    # -- connections ------------------------------------------------------------------------
    def connection(self, conn_id: str) -> Any | None:
        """The Airflow connection (env ``AIRFLOW_CONN_*``, secrets backend or metadata DB), or None."""
        if conn_id in self._conns:
            return self._conns[conn_id]
        if conn_id in self._conn_errors:
            return None
        from airflow.sdk import BaseHook

        try:
            conn = BaseHook.get_connection(conn_id)
        except Exception as exc:  # AirflowNotFoundException, or a secrets backend that failed
            self._conn_errors[conn_id] = type(exc).__name__
            return None
        self.redact.add_connection(conn)
        self._conns[conn_id] = conn
        return conn

    def missing_connection(self, name: str, conn_id: str, conn_type: str) -> CheckResult:
        return failed(name, f"connection {conn_id!r} is not defined ({self._conn_errors.get(conn_id, 'not found')})",
                      f"create the Airflow connection {conn_id!r} (type {conn_type}), e.g. "
                      f"AIRFLOW_CONN_{conn_id.upper()} in the environment or in the UI (Admin > Connections)")

    # -- run ----------------------------------------------------------------------------------
    def run(self) -> list[CheckResult]:
        sections: list[Callable[[], Iterable[CheckResult]]] = [
            self.check_connections, self.check_m3ter, self.check_hubspot, self.check_salesforce,
            self.check_netsuite, self.check_aws]
        results: list[CheckResult] = []
        for section in sections:
            try:
                results.extend(section())
            except Exception as exc:  # a bug in a check must not hide the other sections' results
                log.exception("preflight section %s failed", section.__name__)
                results.append(failed(section.__name__.removeprefix("check_"),
                                      f"the check itself failed: {type(exc).__name__}: {_short(exc)}",
                                      "report this as an m3sh bug (with the log above)"))
        return [CheckResult(r.name, r.ok, self.redact(r.detail), self.redact(r.fix)) for r in results]

    # -- connections that get no deeper check -------------------------------------------------
    def check_connections(self) -> Iterator[CheckResult]:
        deep = {self.cfg.m3ter.conn_id, *self._hubspot_conns(), *needed_salesforce(self.cfg),
                *(d.conn_id for d in self._netsuite_dests()), *(b.conn_id for b in needed_buckets(self.cfg))}
        # Connections with no read-only check of their own (alert channels, the usage API, webhooks:
        # anything more than a look-up would send something) are only looked up.
        for conn_id, (why, conn_type) in sorted(named_connections(self.cfg).items()):
            if conn_id in deep:
                continue
            name = f"connection {conn_id}"
            conn = self.connection(conn_id)
            if conn is None:
                yield self.missing_connection(name, conn_id, conn_type)
            else:
                yield passed(name, f"defined (type {conn.conn_type or 'unset'}; used by {why})")

    # -- m3ter ----------------------------------------------------------------------------------
    def check_m3ter(self) -> Iterator[CheckResult]:
        conn_id = self.cfg.m3ter.conn_id
        creds, org = f"m3ter credentials ({conn_id})", f"m3ter organization ({conn_id})"
        later = self._m3ter_check_names()
        if self.connection(conn_id) is None:
            yield self.missing_connection(creds, conn_id, "m3ter")
            yield from (not_checked(n, creds) for n in [org, *later])
            return
        from m3sh.exceptions import M3terApiError
        from m3sh.hooks.m3ter import M3terHook

        hook = M3terHook(conn_id)
        try:
            org_id = _m3ter_login(hook)
        except M3terApiError as exc:
            if (exc.status or 0) >= 500:
                yield unreachable(creds, "m3ter", conn_id, exc, "empty for https://api.m3ter.com")
                yield from (not_checked(n, creds) for n in [org, *later])
                return
            yield failed(creds, (f"the API key was refused: {_short(exc)}" if exc.status else _short(exc)),
                         f"set login (Access Key ID) and password (API Secret) of connection {conn_id!r} to a "
                         "service user's API key (m3ter console > Settings > Access > Service Users), and host to "
                         "the API URL (empty for https://api.m3ter.com)")
            yield from (not_checked(n, creds) for n in [org, *later])
            return
        except Exception as exc:  # httpx transport errors, RetryableError
            yield unreachable(creds, "m3ter", conn_id, exc, "empty for https://api.m3ter.com")
            yield from (not_checked(n, creds) for n in [org, *later])
            return
        yield passed(creds, "access key accepted (OAuth client credentials)")
        try:
            _m3ter_read_org(hook)
        except M3terApiError as exc:
            yield failed(org, f"organization {org_id!r} is not readable with this key: {_short(exc)}",
                         f"set extra.org_id of connection {conn_id!r} to the Organization ID shown in the m3ter "
                         "console (Settings > Organization), for the org the service user belongs to")
            yield from (not_checked(n, org) for n in later)
            return
        except Exception as exc:
            yield unreachable(org, "m3ter", conn_id, exc, "empty for https://api.m3ter.com")
            yield from (not_checked(n, org) for n in later)
            return
        yield passed(org, f"organization {org_id} readable")
        for names, check, what in self._m3ter_groups():
            yield from _guarded(check(hook), names, f"let the service user of {conn_id!r} read {what} in m3ter "
                                                     "(its permission policy)")


    def _m3ter_groups(self) -> list[tuple[list[str], Callable[[Any], Iterator[CheckResult]], str]]:
        """(check names, the method producing them, what it reads) after the login and org checks."""
        notifications = [f"m3ter notification {code}" for code in sorted(self._desired_notifications())]
        return [
            ([f"m3ter meter {code}" for code in sorted(needed_meters(self.cfg))], self._m3ter_meters, "meters"),
            (["m3ter plans"] if needed_plans(self.cfg) else [], self._m3ter_plans, "plans"),
            ([f"m3ter custom fields ({ent})" for ent, n in needed_custom_fields(self.cfg).items() if n],
             self._m3ter_custom_fields, "the organization's custom fields"),
            ([*notifications, "m3ter webhook destination"] if notifications else [], self._m3ter_notifications,
             "notification configurations and webhook destinations"),
        ]

    def _m3ter_check_names(self) -> list[str]:
        return [name for names, _, _ in self._m3ter_groups() for name in names]

    def _m3ter_meters(self, hook: Any) -> Iterator[CheckResult]:
        meters = needed_meters(self.cfg)
        if not meters:
            return
        found = _m3ter_by_code(hook, "meters", meters)
        for code, need in sorted(meters.items()):
            name = f"m3ter meter {code}"
            meter = found.get(code)
            why = ", ".join(dict.fromkeys(need.why))
            if meter is None:
                yield failed(name, f"no meter with code {code!r} in the organization (used by {why})",
                             f"create meter {code!r} in m3ter (Metering > Meters) with the fields the feed sends, "
                             f"or correct the code in {why}")
                continue
            categories = {str(f.get("code")): str(f.get("category", "")).upper()
                          for f in meter.get("dataFields") or []}
            problems = [f"measure {m!r} is {_field_state(categories, m)}" for m in sorted(need.measures)
                        if categories.get(m) != "MEASURE"]
            problems += [f"dimension {d!r} is {_field_state(categories, d)}" for d in sorted(need.dimensions)
                         if categories.get(d) != "WHERE"]
            if problems:
                yield failed(name, f"{'; '.join(problems)} (m3sh sends measures as 'measure' and dimensions "
                                   f"as 'where' data; {why})",
                             f"add the field(s) to meter {code!r} with those categories (MEASURE / WHERE), or "
                             f"change the meters' measures/dimensions in {why}")
            else:
                yield passed(name, f"exists with the fields m3sh sends ({_plural(need.measures | need.dimensions)})"
                                   if need.measures or need.dimensions else "exists")

    def _m3ter_plans(self, hook: Any) -> Iterator[CheckResult]:
        plans = needed_plans(self.cfg)
        if not plans:
            return
        found = _m3ter_by_code(hook, "plans", plans.items)
        missing = sorted(set(plans.items) - set(found))
        if missing:
            yield failed("m3ter plans", "not found in the organization: "
                         + "; ".join(f"{p!r} ({plans.why(p)})" for p in missing),
                         "create the plan(s) in m3ter (Pricing > Plans) or correct the code(s) at the config "
                         "location(s) named")
        else:
            yield passed("m3ter plans", f"all {len(plans.items)} exist ({_plural(plans.items)})")

    def _m3ter_custom_fields(self, hook: Any) -> Iterator[CheckResult]:
        wanted = {ent: n for ent, n in needed_custom_fields(self.cfg).items() if n}
        if not wanted:
            return
        org_fields = _m3ter_org_custom_fields(hook)
        for entity, need in wanted.items():
            name = f"m3ter custom fields ({entity})"
            defined = set(org_fields.get(CUSTOM_FIELD_GROUPS[entity]) or {})
            missing = sorted(set(need.items) - defined)
            # m3ter stores any custom field name on an entity, so nothing fails at write time; a name
            # the org has not defined (with its default) is, before go-live, almost always a typo or
            # a field nobody set up, and rules writing it would add a stray field to every account.
            if missing:
                yield failed(name, "not defined at organization level: "
                             + "; ".join(f"{m!r} ({need.why(m)})" for m in missing),
                             f"define them with a default value in the m3ter console (Settings > Custom Fields > "
                             f"{CUSTOM_FIELD_GROUPS[entity]}), or correct the names in m3sh.yaml")
            else:
                yield passed(name, f"defined ({_plural(need.items)})")

    def _desired_notifications(self) -> dict[str, dict[str, Any]]:
        from m3sh.automation.notifications import desired_notifications

        return desired_notifications(self.cfg.triggers)

    def _m3ter_notifications(self, hook: Any) -> Iterator[CheckResult]:
        from m3sh.automation.notifications import WEBHOOK_CODE
        from m3sh.hooks.m3ter import changed_fields

        desired = self._desired_notifications()
        if not desired:
            return
        fix = ("run `m3sh triggers sync-notifications" + (f" --config {self.config_path}" if self.config_path else "")
               + " --webhook-url https://<your airflow>/m3sh/webhooks/m3ter`")
        current = {str(n.get("code")): n for n in _m3ter_list(hook, "notifications")}
        for code, want in sorted(desired.items()):
            name = f"m3ter notification {code}"
            have = current.get(code)
            if have is None:
                if want["active"]:
                    yield failed(name, f"missing: trigger rule {want['name'].removeprefix('m3sh: ')!r} expects it "
                                       "(m3ter calls the m3sh webhook when a balance crosses the threshold)", fix)
                else:
                    yield passed(name, "absent, as its rule is disabled")
                continue
            diff = changed_fields(have, want)
            if diff:
                yield failed(name, f"differs from the rule in m3sh.yaml ({_plural(diff)})", fix)
            else:
                yield passed(name, f"{'active' if want['active'] else 'inactive'}, calculation "
                                   f"{want['calculation']!r}")
        stale = sorted(c for c, n in current.items()
                       if c.startswith("m3sh_") and c not in desired and n.get("active", True))
        hooks = [w for w in _m3ter_list(hook, "webhooks") if w.get("code") == WEBHOOK_CODE]
        name = "m3ter webhook destination"
        if not hooks:
            yield failed(name, f"no webhook destination {WEBHOOK_CODE!r}: the notifications reach nobody", fix)
        elif not hooks[0].get("active", True):
            yield failed(name, f"webhook destination {WEBHOOK_CODE!r} is inactive", fix)
        elif stale:
            yield failed(name, f"active m3sh notifications without a rule: {_plural(stale)}", fix)
        else:
            yield passed(name, f"{WEBHOOK_CODE!r} active, to {hooks[0].get('url', '?')}")

    # -- HubSpot --------------------------------------------------------------------------------
    def _hubspot_conns(self) -> list[str]:
        return sorted(needed_hubspot(self.cfg))

    def check_hubspot(self) -> Iterator[CheckResult]:
        for conn_id, need in sorted(needed_hubspot(self.cfg).items()):
            yield from self._hubspot(conn_id, need)

    def _hubspot(self, conn_id: str, need: HubSpotNeeds) -> Iterator[CheckResult]:
        token_name, scopes_name = f"HubSpot token ({conn_id})", f"HubSpot scopes ({conn_id})"
        later = [scopes_name]
        if need.company_properties:
            later.append(f"HubSpot company properties ({conn_id})")
        if need.deal_properties:
            later.append(f"HubSpot deal properties ({conn_id})")
        if self.connection(conn_id) is None:
            yield self.missing_connection(token_name, conn_id, "hubspot")
            yield from (not_checked(n, token_name) for n in later)
            return
        from m3sh.exceptions import RetryableError
        from m3sh.hooks.hubspot import HubSpotError, HubSpotHook

        hook = HubSpotHook(conn_id, max_attempts=3, backoff_max_s=5.0, timeout_s=30.0)
        try:
            info = hook.access_token_info()
        except HubSpotError as exc:
            if exc.status is None or isinstance(exc, RetryableError):
                yield unreachable(token_name, "HubSpot", conn_id, exc, "empty for https://api.hubapi.com")
            else:
                yield failed(token_name, f"HubSpot refused the private app token: {_short(exc)}",
                             f"put the private app's access token (HubSpot: your private app > Auth > Access "
                             f"token) in the password field of connection {conn_id!r}")
            yield from (not_checked(n, token_name) for n in later)
            return
        yield passed(token_name, f"private app token valid (HubSpot account {info.get('hubId', '?')})")
        granted = set(info.get("scopes") or [])
        missing = sorted(set(need.scopes.items) - granted)
        if missing:
            yield failed(scopes_name, "the private app lacks " + "; ".join(
                f"{s} ({need.scopes.why(s)})" for s in missing),
                "add the scope(s) to the private app in HubSpot (Development > Legacy apps, or Settings > "
                "Integrations > Private Apps in older portals) > your app > Scopes, commit the change, and put the "
                "token in the connection's password again if HubSpot shows a new one")
        else:
            yield passed(scopes_name, f"all {len(need.scopes.items)} granted ({_plural(need.scopes.items)})")
        yield from self._hubspot_properties(hook, conn_id, need, granted)

    @staticmethod
    def _hubspot_properties(hook: Any, conn_id: str, need: HubSpotNeeds, granted: set[str]) -> Iterator[CheckResult]:
        from m3sh.hooks.hubspot import HubSpotError

        for object_type, props, label in (("companies", need.company_properties, "company"),
                                          ("deals", need.deal_properties, "deal")):
            if not props and not (object_type == "deals" and need.deal_dates):
                continue
            name = f"HubSpot {label} properties ({conn_id})"
            try:
                existing = hook.property_names(object_type)
            except HubSpotError as exc:
                yield failed(name, f"cannot read {object_type} properties: {_short(exc)}",
                             f"grant the private app crm.objects.{object_type}.read")
                continue
            absent = sorted(set(props.items) - existing)
            if object_type == "deals" and need.deal_dates:
                dates_absent = sorted(set(need.deal_dates.items) - existing)
                if dates_absent:
                    yield failed(f"HubSpot deal date properties ({conn_id})", "missing: " + "; ".join(
                        f"{p!r} ({need.deal_dates.why(p)})" for p in dates_absent),
                        "create the deal date propert(ies) in HubSpot or correct contract_fields in m3sh.yaml")
            if object_type == "deals":
                # The HubSpot destination creates its deal property on first use, which needs the
                # schema scope (HubSpot's scopes reference: crm.schemas.deals.write).
                if absent and "crm.schemas.deals.write" not in granted:
                    yield failed(name, f"{_plural(absent)} does not exist yet and the app may not create it",
                                 "create the deal property (single-line text) in HubSpot, or grant the private app "
                                 "crm.schemas.deals.write so m3sh creates it on first use")
                else:
                    yield passed(name, "exist" if not absent else f"{_plural(absent)} will be created on first use")
                continue
            if absent:
                yield failed(name, "missing: " + "; ".join(f"{p!r} ({props.why(p)})" for p in absent),
                             "create the company propert(ies) in HubSpot (Settings > Properties > Company "
                             "properties; internal name as given) or correct the name(s) in m3sh.yaml")
            else:
                yield passed(name, f"all {len(props.items)} exist ({_plural(props.items)})")

    # -- Salesforce -----------------------------------------------------------------------------
    def check_salesforce(self) -> Iterator[CheckResult]:
        for conn_id, objects in sorted(needed_salesforce(self.cfg).items()):
            yield from self._salesforce(conn_id, objects)

    def _salesforce(self, conn_id: str, objects: dict[str, dict[str, list[FieldNeed]]]) -> Iterator[CheckResult]:
        login = f"Salesforce login ({conn_id})"
        later = [f"Salesforce {obj} fields ({conn_id})" for obj in objects]
        if self.connection(conn_id) is None:
            yield self.missing_connection(login, conn_id, "salesforce")
            yield from (not_checked(n, login) for n in later)
            return
        from m3sh.hooks.salesforce import (
            SalesforceNotFoundError,
            SalesforceSync,
            SalesforceSyncError,
            SalesforceUnavailableError,
        )

        try:
            sf = SalesforceSync(conn_id=conn_id)
            client = sf.client
        except SalesforceUnavailableError as exc:
            yield unreachable(login, "Salesforce", conn_id, exc, "the login domain: extra.domain, 'login' by default")
            yield from (not_checked(n, login) for n in later)
            return
        except (SalesforceSyncError, ValueError) as exc:
            yield failed(login, f"login refused: {_short(exc)}",
                         f"check login (username), password and extra.security_token of connection {conn_id!r} "
                         "(or its OAuth/JWT fields), and extra.domain ('test' for a sandbox org)")
            yield from (not_checked(n, login) for n in later)
            return
        yield passed(login, f"logged in (API {getattr(client, 'sf_version', '?')})")
        for sobject, fields in objects.items():
            name = f"Salesforce {sobject} fields ({conn_id})"
            try:
                described = sf.describe(sobject)
            except SalesforceNotFoundError:
                users = sorted({fn.why for needs in fields.values() for fn in needs})
                yield failed(name, f"object {sobject} does not exist (or this user cannot see it); needed by "
                                   + "; ".join(users),
                             f"create the custom object {sobject} with the fields m3sh writes (see the README, "
                             f"'Invoicing: what each destination writes') and give the integration user access")
                continue
            except SalesforceSyncError as exc:
                yield failed(name, f"describe failed: {_short(exc)}",
                             f"give the integration user of {conn_id!r} read access to {sobject}")
                continue
            problems = _salesforce_field_problems(described, fields)
            if problems:
                yield failed(name, "; ".join(problems),
                             f"in Salesforce Setup > Object Manager > {sobject} > Fields & Relationships create or "
                             "fix the field(s) named (API name, type), and give the integration user field-level "
                             "access; or correct the name(s) in m3sh.yaml")
            else:
                writes = sum(1 for needs in fields.values() if any(fn.writes for fn in needs))
                yield passed(name, f"{len(fields)} field(s) present with usable types"
                                   + (f" ({writes} written)" if writes else ""))

    # -- NetSuite ---------------------------------------------------------------------------------
    def _netsuite_dests(self) -> list[NetSuiteDestination]:
        return [d for d in self.cfg.invoicing.destinations if isinstance(d, NetSuiteDestination) and d.enabled]

    def check_netsuite(self) -> Iterator[CheckResult]:
        for dest in self._netsuite_dests():
            yield from self._netsuite(dest)

    def _route_currencies(self, dest_name: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for route in self.cfg.invoicing.routes:
            if dest_name in route.to:
                for cur in route.when.currency or []:
                    out.setdefault(cur.upper(), f"invoicing.routes[{route.name}]")
        return out

    def _netsuite(self, dest: NetSuiteDestination) -> Iterator[CheckResult]:
        from m3sh.hooks.netsuite import NetSuiteError, NetSuiteHook

        prefix = f"NetSuite {dest.name} ({dest.conn_id})"
        login, sub_name, items_name, records_name = (f"{prefix} login", f"{prefix} subsidiary", f"{prefix} items",
                                                     f"{prefix} record access")
        currencies = self._route_currencies(dest.name)
        cur_name = f"{prefix} currencies"
        later = [sub_name, items_name, *([cur_name] if currencies or dest.currency_id else []), records_name]
        if self.connection(dest.conn_id) is None:
            yield self.missing_connection(login, dest.conn_id, "netsuite")
            yield from (not_checked(n, login) for n in later)
            return
        hook = NetSuiteHook(dest.conn_id)
        try:
            subs = {str(r["id"]): r for r in hook.suiteql("SELECT id, name, isinactive FROM subsidiary ORDER BY id")}
        except NetSuiteError as exc:
            if exc.status == 0 or exc.status >= 500:
                yield unreachable(login, "NetSuite", dest.conn_id, exc,
                                  "empty for https://<account>.suitetalk.api.netsuite.com")
                yield from (not_checked(n, login) for n in later)
                return
            status = exc.status
            fix = (f"check connection {dest.conn_id!r}: login = consumer key, password = consumer secret, extras "
                   "token_id / token_secret of an access token for this integration and role, and account_id "
                   "(Setup > Company > Company Information > Account ID)")
            if status == 403:
                fix = (f"give the role of the access token in {dest.conn_id!r} the permissions REST Web Services, "
                       "Log in using Access Tokens and SuiteAnalytics Workbook (SuiteQL)")
            yield failed(login, f"{_short(exc)}", fix)
            yield from (not_checked(n, login) for n in later)
            return
        except ValueError as exc:  # the hook's own check: a required connection field is empty
            yield failed(login, _short(exc), f"fill in the fields named in connection {dest.conn_id!r}")
            yield from (not_checked(n, login) for n in later)
            return
        yield passed(login, f"account {hook.account_id}: token accepted, SuiteQL works ({len(subs)} subsidiary(ies) "
                            "visible)")
        sub = subs.get(dest.subsidiary_id)
        if sub is None:
            yield failed(sub_name, f"subsidiary {dest.subsidiary_id!r} (invoicing.destinations[{dest.name}]."
                                   f"subsidiary_id) not found in account {hook.account_id}; visible: "
                                   + (", ".join(f"{k} {v.get('name', '')}".strip() for k, v in subs.items()) or "none"),
                         "set subsidiary_id to the internal id of the subsidiary new customers belong to (Setup > "
                         "Company > Subsidiaries, with internal ids shown), or give the token's role access to it")
        elif str(sub.get("isinactive", "F")) == "T":
            yield failed(sub_name, f"subsidiary {dest.subsidiary_id} ({sub.get('name')}) is inactive",
                         "reactivate it in NetSuite or point subsidiary_id at an active subsidiary")
        else:
            yield passed(sub_name, f"{dest.subsidiary_id} = {sub.get('name', '?')}")
        yield from self._netsuite_items(hook, dest, items_name)
        if currencies or dest.currency_id:
            yield from self._netsuite_currencies(hook, dest, cur_name, currencies)
        try:
            for query in ("SELECT id FROM customer ORDER BY id",
                          "SELECT id FROM transaction WHERE type = 'CustInvc' ORDER BY id"):
                list(hook.suiteql(query, page_size=1, max_rows=1))
        except NetSuiteError as exc:
            yield failed(records_name, f"cannot read customers or invoices: {_short(exc)}",
                         f"give the role of the access token in {dest.conn_id!r} Lists > Customers and "
                         "Transactions > Invoice (Full; m3sh creates and updates them)" +
                         (" and Credit Memo" if dest.locked_invoice_policy == "credit_memo" else ""))
        else:
            yield passed(records_name, "customers and invoices readable")

    def _netsuite_items(self, hook: Any, dest: NetSuiteDestination, name: str) -> Iterator[CheckResult]:
        from m3sh.hooks.netsuite import NetSuiteError

        wanted = Needs()
        wanted.add(dest.default_item_id, f"invoicing.destinations[{dest.name}].default_item_id")
        for key, item in dest.item_map.items():
            wanted.add(item, f"invoicing.destinations[{dest.name}].item_map.{key}")
        bad = sorted(i for i in wanted.items if not i.isdigit())
        ids = sorted((i for i in wanted.items if i.isdigit()), key=int)
        try:
            # Ids are digits only (checked above), so the IN list cannot inject SuiteQL.
            rows = list(hook.suiteql(f"SELECT id, itemid, isinactive FROM item WHERE id IN ({', '.join(ids)}) "  # noqa: S608
                                     "ORDER BY id")) if ids else []
        except NetSuiteError as exc:
            yield failed(name, f"cannot read items: {_short(exc)}",
                         f"give the role of the access token in {dest.conn_id!r} Lists > Items (View)")
            return
        found = {str(r["id"]): r for r in rows}
        problems = [f"{i!r} is not an internal id ({wanted.why(i)})" for i in bad]
        problems += [f"item {i} not found ({wanted.why(i)})" for i in ids if i not in found]
        problems += [f"item {i} ({found[i].get('itemid')}) is inactive ({wanted.why(i)})" for i in ids
                     if i in found and str(found[i].get("isinactive", "F")) == "T"]
        if problems:
            yield failed(name, "; ".join(problems),
                         "use the internal ids of active sale items (Lists > Accounting > Items, internal ids "
                         "shown) in item_map / default_item_id")
        else:
            yield passed(name, ", ".join(f"{i} = {found[i].get('itemid', '?')}" for i in ids))

    def _netsuite_currencies(self, hook: Any, dest: NetSuiteDestination, name: str,
                             routed: dict[str, str]) -> Iterator[CheckResult]:
        from m3sh.hooks.netsuite import NetSuiteError

        try:  # the query the NetSuite destination itself uses to map ISO codes to internal ids
            rows = list(hook.suiteql("SELECT id, symbol FROM currency ORDER BY id"))
        except NetSuiteError as exc:
            yield failed(name, f"cannot read currencies: {_short(exc)}",
                         f"give the role of the access token in {dest.conn_id!r} Lists > Currency (View)")
            return
        by_symbol = {str(r.get("symbol", "")).upper(): str(r["id"]) for r in rows}
        problems = []
        if dest.currency_id and dest.currency_id not in by_symbol.values():
            problems.append(f"currency_id {dest.currency_id!r} not found")
        if not dest.currency_id:
            problems += [f"{cur} ({why}) is not a currency of this account" for cur, why in sorted(routed.items())
                         if cur not in by_symbol]
        if problems:
            yield failed(name, "; ".join(problems),
                         "enable the currency in NetSuite (Lists > Accounting > Currencies; Multiple Currencies "
                         "feature) or route those bills to another destination")
        else:
            shown = [dest.currency_id] if dest.currency_id else [f"{c} = {by_symbol[c]}" for c in sorted(routed)]
            yield passed(name, ", ".join(shown))

    # -- AWS: S3 buckets and SQS queues -------------------------------------------------------------
    def check_aws(self) -> Iterator[CheckResult]:
        from botocore.exceptions import ClientError

        buckets = needed_buckets(self.cfg)
        bad_conns: dict[str, str] = {}
        for conn_id in sorted({b.conn_id for b in buckets}):
            name = f"AWS credentials ({conn_id})"
            if self.connection(conn_id) is None:
                bad_conns[conn_id] = name
                yield self.missing_connection(name, conn_id, "aws")
                continue
            try:
                account = str(self.aws.client(conn_id, "sts").get_caller_identity()["Account"])
            except ClientError as exc:
                bad_conns[conn_id] = name
                yield failed(name, f"AWS refused the credentials: {_client_error_code(exc)}",
                             f"check the access key (login), secret (password) or role settings of connection "
                             f"{conn_id!r}")
                continue
            except Exception as exc:  # BotoCoreError: endpoint unreachable, no credentials found, ...
                bad_conns[conn_id] = name
                yield failed(name, f"AWS not usable: {_short(exc)}",
                             f"check the credentials, region_name and (for S3-compatible stores) endpoint_url of "
                             f"connection {conn_id!r}, and the network path from here")
                continue
            yield passed(name, f"valid (AWS account {account})")
        bad_buckets: set[str] = set()
        for b in buckets:
            name = f"S3 bucket {b.bucket} ({b.conn_id})"
            if b.conn_id in bad_conns:
                yield not_checked(name, bad_conns[b.conn_id])
                continue
            result = _s3_check(name, b, self.aws.client(b.conn_id, "s3"))
            if not result.ok:
                bad_buckets.add(b.bucket)
            yield result
        for feed in self.cfg.usage.feeds:
            if not (feed.enabled and feed.type == "s3" and feed.event_queue and feed.bucket):
                continue
            name = f"SQS queue of usage feed {feed.name} ({feed.conn_id})"
            if feed.conn_id in bad_conns:
                yield not_checked(name, bad_conns[feed.conn_id])
                continue
            yield from _sqs_checks(name, feed, self.aws, bucket_ok=feed.bucket not in bad_buckets)


# ------------------------------------------------------------------------------ m3ter helpers
# The only places preflight talks to m3ter, all through M3terHook's named methods.
def _m3ter_login(hook: Any) -> str:
    """Fetch a fresh token (a cached one would not test the secret); returns the org id."""
    from m3sh.hooks.m3ter import TOKEN_CACHE

    TOKEN_CACHE.invalidate(hook.settings, None)
    hook.get_conn()
    return str(hook.settings.org_id)


def _m3ter_read_org(hook: Any) -> None:
    """One read inside the organization: proves the org id and the key's access to it."""
    next(iter(hook.list_products(page_size=1)), None)


def _m3ter_by_code(hook: Any, kind: str, codes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ``meters`` or ``plans`` with these codes (the hook filters by code as the API allows)."""
    wanted = sorted(set(codes))
    found = hook.list_meters(codes=wanted) if kind == "meters" else hook.list_plans()
    return {str(e.get("code")): e for e in found if e.get("code") in wanted}


def _m3ter_list(hook: Any, kind: str) -> list[dict[str, Any]]:
    """Every notification configuration or webhook destination of the organization."""
    if kind == "notifications":
        return list(hook.list_notification_configurations())
    return list(hook.list_webhook_destinations())


def _m3ter_org_custom_fields(hook: Any) -> dict[str, Any]:
    """The organization-level custom fields, by group (``account``, ...)."""
    data: dict[str, Any] = hook.get_custom_fields()
    return data


# ------------------------------------------------------------------------- Salesforce helpers
def _salesforce_field_problems(described: dict[str, Any], fields: dict[str, list[FieldNeed]]) -> list[str]:
    by_name = {str(f["name"]).lower(): f for f in described.get("fields") or []}
    problems: list[str] = []
    for name, needs in fields.items():
        f = by_name.get(name.lower())
        why = "; ".join(dict.fromkeys(n.why for n in needs))
        if f is None:
            problems.append(f"{name} missing ({why})")
            continue
        ftype = str(f.get("type", ""))
        for fn in needs:
            problem = _field_problem(f, ftype, fn)
            if problem:
                problems.append(f"{name} {problem} ({fn.why})")
                break
    return problems


def _field_problem(f: dict[str, Any], ftype: str, need: FieldNeed) -> str | None:
    if not need.writes:
        return None
    if need.update and not f.get("updateable"):
        return "is not updateable for the integration user (describe: updateable false)"
    if need.kind.startswith("ref:"):
        target = need.kind.removeprefix("ref:")
        if ftype != "reference" or target not in (f.get("referenceTo") or []):
            return f"is {ftype}, not a lookup to {target}"
    elif ftype not in KIND_TYPES[need.kind]:
        allowed = "/".join(sorted(KIND_TYPES[need.kind]))
        return f"is {ftype}; m3sh writes a {need.kind} value ({allowed})"
    if not (f.get("createable") or f.get("updateable")):
        return "is read-only for the integration user"
    if need.external_id and not f.get("externalId"):
        return "is not marked External ID (m3sh upserts by it)"
    if need.picklist and ftype == "picklist" and f.get("restrictedPicklist"):
        # Only a restricted picklist refuses other values; an unrestricted one stores them as given.
        values = {str(v.get("value")) for v in f.get("picklistValues") or [] if v.get("active", True)}
        absent = [v for v in need.picklist if v not in values]
        if absent:
            return f"is a restricted picklist without the value(s) {', '.join(absent)}"
    return None


def _field_state(categories: dict[str, str], code: str) -> str:
    cat = categories.get(code)
    return "missing" if cat is None else f"a {cat} field"


# -------------------------------------------------------------------------------- AWS helpers
class _AwsClients:
    """One boto3 client per (connection, service), from the Amazon provider's hooks: each hook
    builds a session from the Airflow connection, which costs a second or more, so reuse them."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], Any] = {}

    def client(self, conn_id: str, service: str) -> Any:
        key = (conn_id, service)
        if key not in self._clients:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
            from airflow.providers.amazon.aws.hooks.sqs import SqsHook
            from airflow.providers.amazon.aws.hooks.sts import StsHook

            hook_class: Any = {"s3": S3Hook, "sqs": SqsHook, "sts": StsHook}[service]
            self._clients[key] = hook_class(aws_conn_id=conn_id).get_conn()
        return self._clients[key]


def _client_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or type(exc).__name__)


def _s3_check(name: str, b: BucketNeed, s3: Any) -> CheckResult:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3.head_bucket(Bucket=b.bucket)
        s3.list_objects_v2(Bucket=b.bucket, Prefix=b.prefix, MaxKeys=1)
    except ClientError as exc:
        code = _client_error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            return failed(name, f"bucket does not exist (used by {b.why})",
                          f"create the bucket {b.bucket!r} (in the connection's region) or correct the bucket "
                          f"name in {b.why}")
        return failed(name, f"not readable: {code} (used by {b.why})",
                      f"allow the identity of connection {b.conn_id!r} s3:ListBucket, s3:GetObject and "
                      f"s3:PutObject on arn:aws:s3:::{b.bucket} and arn:aws:s3:::{b.bucket}/*")
    except BotoCoreError as exc:
        return failed(name, f"S3 not reachable: {_short(exc)}",
                      f"check extra.endpoint_url / region_name of connection {b.conn_id!r} and the network path")
    return passed(name, f"exists and is readable (used by {b.why})")


def _sqs_checks(name: str, usage_feed: UsageFeed, aws: _AwsClients, *, bucket_ok: bool) -> Iterator[CheckResult]:
    """The feed's event queue exists, and its bucket sends s3:ObjectCreated events there."""
    from botocore.exceptions import BotoCoreError, ClientError

    conn_id, queue_url, bucket = usage_feed.conn_id, str(usage_feed.event_queue), str(usage_feed.bucket)
    prefix, feed = usage_feed.prefix, usage_feed.name
    queue = queue_url.rstrip("/").rsplit("/", 1)[-1]
    try:
        attrs = aws.client(conn_id, "sqs").get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
    except ClientError as exc:
        code = _client_error_code(exc)
        if "NonExistentQueue" in code or code == "QueueDoesNotExist":
            yield failed(name, f"queue {queue_url} does not exist (usage.feeds[{feed}].event_queue)",
                         f"create the SQS queue {queue!r} and add an event notification on bucket {bucket!r} "
                         f"(s3:ObjectCreated:*, prefix {prefix!r}) sending to it, or remove "
                         f"usage.feeds[{feed}].event_queue (the hourly schedule still ingests)")
        else:
            yield failed(name, f"queue {queue_url} not readable: {code}",
                         f"allow the identity of connection {conn_id!r} sqs:GetQueueAttributes, sqs:ReceiveMessage "
                         f"and sqs:DeleteMessage on the queue")
        return
    except BotoCoreError as exc:
        yield failed(name, f"SQS not reachable: {_short(exc)}",
                     f"check extra.endpoint_url / region_name of connection {conn_id!r} and the network path")
        return
    arn = str(attrs.get("QueueArn", ""))
    yield passed(name, f"queue {queue} exists ({arn})")
    notif_name = f"S3 bucket {bucket} notifies {queue}"
    if not bucket_ok:
        yield not_checked(notif_name, f"S3 bucket {bucket} ({conn_id})")
        return
    try:
        conf = aws.client(conn_id, "s3").get_bucket_notification_configuration(Bucket=bucket)
    except (ClientError, BotoCoreError) as exc:
        yield failed(notif_name, f"cannot read the bucket's event notifications: {_short(exc)}",
                     f"allow the identity of connection {conn_id!r} s3:GetBucketNotification on {bucket!r}")
        return
    for qc in conf.get("QueueConfigurations") or []:
        events = qc.get("Events") or []
        rules = ((qc.get("Filter") or {}).get("Key") or {}).get("FilterRules") or []
        key_prefix = next((str(r.get("Value", "")) for r in rules if str(r.get("Name", "")).lower() == "prefix"), "")
        if (qc.get("QueueArn") == arn and any(fnmatch.fnmatch("s3:ObjectCreated:Put", e) for e in events)
                and prefix.startswith(key_prefix)):
            yield passed(notif_name, f"s3:ObjectCreated events under {prefix or '/'} go to the queue")
            return
    yield failed(notif_name, f"no event notification sends s3:ObjectCreated under {prefix!r} to {arn}: new usage "
                             "files would wait for the hourly run",
                 f"add an event notification on bucket {bucket!r}: events s3:ObjectCreated:*, prefix {prefix!r}, "
                 f"destination SQS queue {arn} (and allow S3 to send to it in the queue policy)")


# -------------------------------------------------------------------------------------- output
def run_preflight(config_path: str | None = None) -> list[CheckResult]:
    from m3sh.config import load_config

    cfg = load_config(config_path)
    return Preflight(cfg, config_path).run()


def render_text(results: list[CheckResult]) -> str:
    bad = sum(1 for r in results if not r.ok)
    lines = [r.line() for r in results]
    lines.append(f"{len(results) - bad} passed, {bad} failed" + ("" if bad else ": ready for go-live"))
    return "\n".join(lines)


def render_json(results: list[CheckResult]) -> str:
    return json.dumps({"ok": all(r.ok for r in results), "passed": sum(r.ok for r in results),
                       "failed": sum(not r.ok for r in results), "checks": [r.to_dict() for r in results]},
                      indent=2, ensure_ascii=False)


__all__ = ["CheckResult", "Preflight", "render_json", "render_text", "run_preflight"]
