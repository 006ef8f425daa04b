"""``m3sh.yaml``: the one validated file a user edits. Secrets never live here, only connection ids.

The models are pydantic v2 with ``extra="forbid"`` so a typo is an error, not a silently ignored
key. :func:`load_config` keeps the YAML node marks and turns every pydantic error into a line like
``m3sh.yaml:42 destinations[1].conn_id: Field required``, so a finance engineer can fix the file
without reading a traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import string
import sys
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from m3sh.exceptions import ConfigError
from m3sh.models.records import (
    CANONICAL_ACCOUNT_FIELDS,
    CANONICAL_CONTRACT_FIELDS,
    CanonicalAccountField,
    CanonicalContractField,
)

# The demo config beside the package in a checkout (include/m3sh.yaml); an installed wheel has none.
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "m3sh.yaml"
CONFIG_ENV = "M3SH_CONFIG"
CONFIG_FILE_NAME = "m3sh.yaml"

Ownership = Literal["crm_wins", "m3ter_wins", "fill_missing"]
MatchKey = Literal["external_id", "domain", "email"]
BillState = Literal["PENDING", "APPROVED", "LOCKED"]
DEFAULT_MATCH_KEYS: tuple[MatchKey, ...] = ("domain", "email")
DEFAULT_BILL_STATES: tuple[BillState, ...] = ("APPROVED",)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _one_of(known: tuple[str, ...], what: str) -> BeforeValidator:
    """Validator for a map key from a closed set (use inside ``Annotated[<the Literal>, ...]``).

    pydantic's own Literal error ("Input should be 'a', 'b' ...") does not say the key itself is
    unknown; this one names it, lists the known keys and suggests the closest one, and pydantic
    locates it at the key (``...account_fields.emial``), so the error carries the key's line.
    """
    def check(value: object) -> object:
        if value not in known:
            close = difflib.get_close_matches(str(value), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {what} {value!r}; known: {sorted(known)}{hint}")
        return value

    return BeforeValidator(check)


AccountFieldKey = Annotated[CanonicalAccountField, _one_of(CANONICAL_ACCOUNT_FIELDS, "canonical field")]
ContractFieldKey = Annotated[CanonicalContractField, _one_of(CANONICAL_CONTRACT_FIELDS, "canonical contract field")]
ContractDate = Literal["start_date", "end_date"]
CONTRACT_DATES: tuple[ContractDate, ...] = get_args(ContractDate)
ContractDateKey = Annotated[ContractDate, _one_of(CONTRACT_DATES, "contract date")]


# --------------------------------------------------------------------------------------- m3ter
class CustomFieldDeclarations(_Model):
    """Names of the m3ter custom fields m3sh may write (m3ter itself accepts any name)."""

    account: list[str] = Field(default_factory=list, description="Fields on accounts")
    accountplan: list[str] = Field(default_factory=list, description="Fields on account plans")


class M3terConfig(_Model):
    """Where the central m3ter org is and how m3sh names the entities it creates there."""

    conn_id: str = Field("m3ter_default", description="Airflow connection of type m3ter")
    account_code_from: Literal["domain_name", "domain", "crm_id"] = Field(
        "domain_name",
        description="How stable m3ter account codes are derived for new CRM customers: the domain without its "
                    "top-level label (acme.com -> acme), the whole domain, or '<source>-<crm id>'")
    ingest_batch_size: int = Field(1000, ge=1, le=1000, description="Measurements per ingest request")
    ingest_requests_in_flight: int = Field(
        4, ge=1, le=16,
        description="Ingest requests one file keeps in flight while reading the next rows; batches are still "
                    "confirmed in order, so a retry resumes after the last confirmed one")
    ingest_pool: str | None = Field(
        None,
        description="Airflow pool the usage ingest tasks run in (`m3sh pools sync` creates it with "
                    "ingest_pool_slots). For deployments whose workers cannot share the m3ter limiter through "
                    "Redis: each process then keeps m3ter's per-org limit on its own, and only a pool of one slot "
                    "stops parallel ingest tasks from sending several times the limit between them")
    ingest_pool_slots: int = Field(1, ge=1, le=64,
                                   description="Slots of ingest_pool: 1 without a shared limiter; more with one")
    plans: list[str] = Field(
        default_factory=list,
        description="m3ter plan codes trigger rules may switch to besides crm.plan_map values and "
                    "crm.default_plan (e.g. a downgrade plan no CRM product maps to); `m3sh config validate` "
                    "rejects a switch_plan to any other code, so a typo fails before it reaches m3ter")
    custom_fields: CustomFieldDeclarations | None = Field(
        None,
        description="Custom fields m3sh writes in m3ter, per entity; once declared, a trigger rule's "
                    "set_custom_fields may only name declared fields, so a typo cannot silently create a new field "
                    "on every account (without it, `m3sh config validate` warns that field names are unchecked)")


# ----------------------------------------------------------------------------------- CRM sources
CrmType = Literal["salesforce", "hubspot"]
# Where each CRM keeps the contract fields unless contract_fields says otherwise. Salesforce: the
# account's latest Contract (dates) and latest closed-won Opportunity (PO); HubSpot: the company's
# latest closed-won deal.
DEFAULT_CONTRACT_FIELDS: dict[CrmType, dict[CanonicalContractField, str]] = {
    "salesforce": {"start_date": "StartDate", "end_date": "EndDate", "po_number": "PO_Number__c"},
    "hubspot": {"start_date": "contract_start", "end_date": "contract_end", "po_number": "po_number"},
}


class CrmSource(_Model):
    """One CRM that feeds accounts and contracts into m3ter."""

    name: str = Field(description="Unique source name, used in external mappings and logs")
    type: CrmType
    conn_id: str = Field(description="Airflow connection of this source (each org or portal has its own)")
    enabled: bool = True
    legacy_mappings: bool | None = Field(
        None, description="Whether m3ter external mappings keyed by this source's CRM type (written before "
                          "mappings named the source) are this source's. Default: yes when it is the only "
                          "source of its type or is named after the type; with several sources of one type set "
                          "true on the one that wrote them, and false on a survivor of a retired source that "
                          "was named after the type")
    account_fields: dict[AccountFieldKey, str] = Field(
        default_factory=dict,
        description="Canonical account field -> field of the Salesforce Account / HubSpot company")
    contract_fields: dict[ContractFieldKey, str] = Field(
        default_factory=dict,
        description="Canonical contract field -> CRM field, for the m3ter contract's start and end date and "
                    "PO number; read from the Salesforce Contract (dates) and closed-won Opportunity "
                    "(po_number), or the HubSpot closed-won deal; unlisted keys keep the defaults: "
                    + "; ".join(f"{crm} {m}" for crm, m in DEFAULT_CONTRACT_FIELDS.items()))
    write_back_field: str | None = Field(None, description="CRM field that receives the m3ter account id")
    plan_field: str | None = Field(
        None, description="CRM field (Salesforce Account / HubSpot company) that receives the code of the "
                          "account's current m3ter plan, e.g. after m3sh_plan_triggers switched it (m3ter owns "
                          "it: written by the to_crm_<source> step of m3sh_crm_sync; None: not written)")
    priority: int = Field(100, description="Lower wins when the same customer is in several CRMs")

    def contract_field_map(self) -> dict[CanonicalContractField, str]:
        """Every canonical contract field -> the CRM field it is read from (configured or default)."""
        return {**DEFAULT_CONTRACT_FIELDS[self.type], **self.contract_fields}

    def field_names(self) -> list[tuple[tuple[str, ...], str]]:
        """(location within the source, CRM field name) of every CRM field this source names."""
        out: list[tuple[tuple[str, ...], str]] = [(("account_fields", k), v) for k, v in self.account_fields.items()]
        out += [(("contract_fields", k), v) for k, v in self.contract_fields.items()]
        if self.write_back_field is not None:
            out.append((("write_back_field",), self.write_back_field))
        if self.plan_field is not None:
            out.append((("plan_field",), self.plan_field))
        return out


class FieldOwnership(_Model):
    """Which side wins, per canonical account field (unlisted fields use ``default``) and per
    contract date (unlisted dates: ``crm_wins``)."""

    default: Ownership = "crm_wins"
    fields: dict[AccountFieldKey, Ownership] = Field(
        default_factory=dict,
        description="Canonical account field (as in account_fields) -> who wins on the m3ter account field it "
                    "fills (domain, owner, country: custom fields crm_domain, crm_owner, country)")

    contract_fields: dict[ContractDateKey, Ownership] = Field(
        default_factory=dict,
        description="Contract date (start_date, end_date) -> who wins on it; unlisted dates are crm_wins whatever "
                    "`default` says (m3ter -> CRM date writes are opt-in: a Salesforce Contract's EndDate is "
                    "written through ContractTerm). m3ter_wins: the CRM -> m3ter step keeps m3ter's date on an "
                    "existing contract and the to_crm_<source> step writes it to the linked Salesforce Contract "
                    "or HubSpot deal")

    def owner_of(self, field: CanonicalAccountField) -> Ownership:
        return self.fields.get(field, self.default)

    def owner_of_contract(self, field: ContractDate) -> Ownership:
        return self.contract_fields.get(field, "crm_wins")


class CrmSyncConfig(_Model):
    sources: list[CrmSource] = Field(default_factory=list)
    match_keys: list[MatchKey] = Field(
        default_factory=lambda: list(DEFAULT_MATCH_KEYS),
        description="Keys that identify one customer across CRMs, tried in order")
    ownership: FieldOwnership = FieldOwnership()
    plan_map: dict[str, str] = Field(
        default_factory=dict, description="CRM product code / SKU -> m3ter plan code")
    default_plan: str | None = Field(None, description="m3ter plan code when no product maps")
    lookback_minutes: int = Field(5, ge=0, description="Overlap added before each window (clock skew)")


# ----------------------------------------------------------------------------------- usage feeds
class MeterDefinition(_Model):
    """How one usage row becomes one m3ter measurement."""

    code: str = Field(description="m3ter meter code")
    account_field: str = "account"
    timestamp_field: str = "ts"
    measures: dict[str, str] = Field(description="m3ter measure field -> row column (numeric)")
    dimensions: dict[str, str] = Field(default_factory=dict,
                                       description="m3ter 'where'/'what'/'who' field -> row column")
    max_age_days: int = Field(90, ge=1, description="Rows older than this are rejected as out of bounds")
    timestamp_format: Literal["iso8601", "epoch_s", "epoch_ms"] = Field(
        "iso8601",
        description="How timestamp_field is written: ISO-8601 (no offset: UTC), or Unix epoch seconds / "
                    "milliseconds (integer or decimal); m3ter always receives ISO-8601 UTC")


class UsageFeed(_Model):
    name: str
    type: Literal["s3", "http"]
    conn_id: str
    enabled: bool = True
    # s3
    bucket: str | None = None
    prefix: str = ""
    format: Literal["auto", "csv", "jsonl"] = "auto"
    delimiter: Literal[",", ";", "\t"] | None = Field(
        None, description="CSV field separator: ',' ';' or a tab (\"\\t\" or the word tab); unset: a comma, "
                          "a tab for .tsv files. A file whose header does not split on it fails, naming the "
                          "delimiter it seems to use")
    event_queue: str | None = Field(
        None, description="SQS queue URL receiving the bucket's s3:ObjectCreated notifications; when set, new "
                          "objects trigger a run within seconds (AssetWatcher on the Amazon SqsSensorTrigger)")
    bulk_min_bytes: int | None = Field(
        None, ge=1, description="Objects of at least this many bytes go through m3ter's measurement file uploads "
                                "(validated the same way, built into JSON files, uploaded, the job awaited) instead "
                                "of the Ingest API; unset: never")
    # 16 MiB (~80,000 measurements), not m3ter's 1 GiB maximum: m3ter starts on a file while the next
    # is still being built, and a failed upload or job re-sends one small file, not the whole object.
    bulk_part_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, le=1_073_741_824,
        description="Largest measurement file uploaded at once (m3ter accepts up to 1 GiB); bigger objects "
                    "are sent as several files")
    # http
    endpoint: str | None = Field(None, description="Path on the connection host, paged JSON")
    page_param: str = Field("cursor", description="Query parameter carrying the page cursor")
    page_size: int = Field(500, ge=1, le=10_000, description="Rows requested per page ('limit')")
    since_param: str = Field("since", description="Query parameter for the window start (ISO-8601)")
    until_param: str = Field("until", description="Query parameter for the window end (ISO-8601, exclusive)")
    data_field: str = Field("data", description="Response field holding the rows")
    next_field: str = Field("next_cursor", description="Response field holding the next cursor (null: done)")
    # both
    meter_field: str = Field("meter", description="Row column naming the meter; rows route by it")
    id_field: str | None = Field("event_id", description="Row column used in the deterministic uid")
    meters: list[MeterDefinition]

    @field_validator("delimiter", mode="before")
    @classmethod
    def _tab_by_name(cls, value: Any) -> Any:
        # YAML has no short way to write a tab outside double quotes; "tab" and an unquoted \t also mean one.
        return "\t" if value in ("tab", "\\t") else value

    @model_validator(mode="after")
    def _check_kind(self) -> UsageFeed:
        if self.type == "s3" and not self.bucket:
            raise ValueError("an s3 feed needs 'bucket'")
        if self.type == "http" and not self.endpoint:
            raise ValueError("an http feed needs 'endpoint'")
        if self.type == "http" and self.bulk_min_bytes is not None:
            raise ValueError("'bulk_min_bytes' applies to s3 feeds only (an http feed has no object size)")
        return self


class UsageConfig(_Model):
    feeds: list[UsageFeed] = Field(default_factory=list)
    files_per_task: int = Field(20, ge=1, description="Files per mapped task (keeps maps under 1024)")
    progress_every_rows: int = Field(50_000, ge=1, description="Log progress (rows, rows/s, ETA) this often")
    bulk_poll_interval_s: float = Field(10.0, gt=0, description="Seconds between polls of m3ter file upload jobs "
                                                                "(feeds with bulk_min_bytes)")
    bulk_timeout_s: float = Field(6 * 3600.0, gt=0, description="Fail the files whose upload jobs are unfinished "
                                                                 "after this long")


class StorageConfig(_Model):
    """Durable state m3sh keeps itself (never on local disk): manifests, dead letters, reports, ledger."""

    conn_id: str = Field("aws_default", description="Airflow aws connection")
    bucket: str = "m3sh-archive"
    prefix: str = Field("m3sh/", description="Key prefix for everything below")


# ---------------------------------------------------------------------------------- destinations
class _Destination(_Model):
    name: str
    enabled: bool = True
    cutover_from: date | None = Field(None, description="Only bills dated on/after this go here")
    cutover_until: date | None = Field(None, description="Only bills dated before this go here")


class NetSuiteDestination(_Destination):
    """One NetSuite account. Customers are upserted by external id = m3ter account id, invoices by
    external id = m3ter bill id, so any re-run converges on one record each."""

    type: Literal["netsuite"]
    conn_id: str
    subsidiary_id: str = Field(description="NetSuite internal id of the subsidiary new customers belong to")
    currency_id: str | None = Field(None, description="NetSuite currency internal id; default: looked up by "
                                                      "the bill's ISO code")
    item_map: dict[str, str] = Field(default_factory=dict,
                                     description="m3ter line type or product code -> NetSuite item id")
    default_item_id: str
    concurrency: int = Field(5, ge=1, le=50, description="Concurrent requests this account allows")
    pool: str | None = Field(None, description="Airflow pool the delivery tasks use; create it with "
                                               "`airflow pools set <pool> <concurrency> ...` (m3sh prints "
                                               "the command: see the README)")
    locked_invoice_policy: Literal["update", "credit_memo"] = Field(
        "credit_memo",
        description="A bill changed after its invoice's period closed: 'credit_memo' books the difference "
                    "as a credit memo (or an adjustment invoice) dated today; 'update' tries to edit the "
                    "invoice and lists the refusal as action needed")


InvoiceStatusValue = Literal["invoice", "status", "date", "amount", "currency", "bill_id"]
InvoiceStatusKey = Annotated[InvoiceStatusValue, _one_of(get_args(InvoiceStatusValue), "latest-invoice value")]
DEFAULT_INVOICE_STATUS_FIELDS: dict[InvoiceStatusValue, str] = {
    "invoice": "M3ter_Last_Invoice__c", "status": "M3ter_Invoice_Status__c",
    "date": "M3ter_Last_Invoice_Date__c", "amount": "M3ter_Last_Invoice_Amount__c"}
SF_FIELD_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"
_STATUS_FIELDS_HELP = (
    "latest-invoice value -> {record} field (values: invoice = invoice number, status = Approved/Posted, "
    "date = bill date, amount, currency, bill_id); written only when it differs and only from the "
    "customer's latest bill (by 'date', which is therefore required); {{}} writes nothing there")


PaymentValue = Literal["payment", "amount_remaining"]
PaymentKey = Annotated[PaymentValue, _one_of(get_args(PaymentValue), "payment value")]
DEFAULT_INVOICE_PAYMENT_FIELDS: dict[PaymentValue, str] = {
    "payment": "Payment_Status__c", "amount_remaining": "Amount_Remaining__c"}
DEFAULT_RECORD_PAYMENT_FIELDS: dict[PaymentValue, str] = {"payment": "M3ter_Invoice_Payment__c"}
_PAYMENT_FIELDS_HELP = (
    "payment value -> {record} field, written by the payments step (invoicing.payments) from NetSuite: "
    "payment = 'paid' / 'partly paid 40.00 remaining' / 'overdue 40.00 remaining (due ...)' / 'open', "
    "amount_remaining = the amount still due{only}; {{}} writes nothing there")


class SalesforceDestination(_Destination):
    """Each bill as an ``Invoice__c`` (upserted by bill id); the latest invoice on Account and Opportunity.

    The Account and the customer's latest won Opportunity show the latest invoice's number, status,
    date and amount (``account_fields`` / ``opportunity_fields``)."""

    type: Literal["salesforce"]
    conn_id: str = "salesforce_default"
    crm_source: str | None = Field(
        None, description="Deliver only bills of customers linked to this crm.sources name (this destination's "
                          "org); required when several Salesforce sources are configured")
    invoice_object: str = "Invoice__c"
    external_id_field: str = "M3ter_Bill_Id__c"
    account_fields: dict[InvoiceStatusKey, Annotated[str, Field(pattern=SF_FIELD_NAME)]] = Field(
        default_factory=lambda: dict(DEFAULT_INVOICE_STATUS_FIELDS),
        description=_STATUS_FIELDS_HELP.format(record="Account"))
    opportunity_fields: dict[InvoiceStatusKey, Annotated[str, Field(pattern=SF_FIELD_NAME)]] = Field(
        default_factory=lambda: dict(DEFAULT_INVOICE_STATUS_FIELDS),
        description=_STATUS_FIELDS_HELP.format(record="Opportunity"))
    invoice_payment_fields: dict[PaymentKey, Annotated[str, Field(pattern=SF_FIELD_NAME)]] = Field(
        default_factory=lambda: dict(DEFAULT_INVOICE_PAYMENT_FIELDS),
        description=_PAYMENT_FIELDS_HELP.format(record="invoice object", only=""))
    account_payment_fields: dict[PaymentKey, Annotated[str, Field(pattern=SF_FIELD_NAME)]] = Field(
        default_factory=lambda: dict(DEFAULT_RECORD_PAYMENT_FIELDS),
        description=_PAYMENT_FIELDS_HELP.format(
            record="Account", only=" (only while the Account shows that invoice as its latest)"))
    opportunity_payment_fields: dict[PaymentKey, Annotated[str, Field(pattern=SF_FIELD_NAME)]] = Field(
        default_factory=lambda: dict(DEFAULT_RECORD_PAYMENT_FIELDS),
        description=_PAYMENT_FIELDS_HELP.format(
            record="Opportunity", only=" (only while the Opportunity shows that invoice as its latest)"))

    @model_validator(mode="after")
    def _dated(self) -> SalesforceDestination:
        for key in ("account_fields", "opportunity_fields"):
            if getattr(self, key) and "date" not in getattr(self, key):
                raise ValueError(f"{key} needs a 'date' field: without it an older bill delivered later "
                                 f"would overwrite the latest invoice shown (or set {key}: {{}})")
        return self


class HubSpotDestination(_Destination):
    """The latest invoice as a one-line summary in a property of the company's latest closed-won deal.

    The property is created on first use and written only when it differs."""

    type: Literal["hubspot"]
    conn_id: str = "hubspot_default"
    crm_source: str | None = Field(
        None, description="Deliver only bills of customers linked to this crm.sources name (this destination's "
                          "portal); required when several HubSpot sources are configured")
    deal_property: str = Field("m3ter_last_invoice", pattern=r"^[a-z][a-z0-9_]*$",
                               description="Deal property (internal name) holding the latest invoice")
    payment_property: str | None = Field(
        "m3ter_last_invoice_payment", pattern=r"^[a-z][a-z0-9_]*$",
        description="Deal property the payments step (invoicing.payments) writes the latest invoice's payment "
                    "state to ('paid', 'partly paid 40.00 remaining', ...), while the deal shows that invoice; "
                    "null: none")


class S3Destination(_Destination):
    type: Literal["s3"]
    conn_id: str = "aws_default"
    bucket: str
    prefix: str = "invoices/"


class WebhookDestination(_Destination):
    type: Literal["webhook"]
    conn_id: str = Field(description="http connection; its password is the HMAC secret")
    endpoint: str = "/invoices"


Destination = Annotated[
    NetSuiteDestination | SalesforceDestination | HubSpotDestination | S3Destination | WebhookDestination,
    Field(discriminator="type"),
]


class RouteMatch(_Model):
    """All given conditions must hold (AND); an empty match takes every bill."""

    currency: list[str] | None = None
    subsidiary: list[str] | None = None
    accounts: list[str] | None = Field(None, description="m3ter account codes or ids")
    min_amount: float | None = None
    max_amount: float | None = None
    custom_field: dict[str, str] | None = Field(None, description="m3ter account custom field -> value")


class Route(_Model):
    name: str
    when: RouteMatch = RouteMatch()
    to: list[str] = Field(min_length=1)


class PaymentsConfig(_Model):
    """Payment state of exported invoices, read back from NetSuite and written to the CRM destinations."""

    enabled: bool = Field(False, description="Run the payments step in m3sh_invoice_sync (the CRM fields it "
                                             "writes must exist: see the README)")
    sources: list[str] | None = Field(None, description="NetSuite destination names read (default: every "
                                                        "enabled one)")


class InvoicingConfig(_Model):
    """Which m3ter bills are exported, how they are enriched and where they go (every matching route)."""

    bill_states: list[BillState] = Field(default_factory=lambda: list(DEFAULT_BILL_STATES))
    destinations: list[Destination] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    required_enrichment: list[str] = Field(
        default_factory=lambda: ["subsidiary"],
        description="Enriched fields a bill must have to be exported (subsidiary, tax_code, department, "
                    "owner, po_number, crm_id, billing_address); a bill missing one is set aside")
    subsidiary_by_currency: dict[str, str] = Field(
        default_factory=dict,
        description="Subsidiary for accounts whose 'subsidiary' custom field is empty, by bill currency")
    exported_field: str = Field("exported_at", description="m3ter account custom field stamped on export")
    catchup: bool = Field(True, description="Run missed daily intervals (backfill)")
    bills_per_task: int = Field(50, ge=1, le=1000, description="Bills per mapped delivery task")
    reconcile_lookback_days: int = Field(90, ge=1, description="Bills dated this far back are reconciled")
    payments: PaymentsConfig = Field(default_factory=PaymentsConfig,
                                     description="Payment state read back from NetSuite to the CRM destinations")

    @model_validator(mode="after")
    def _payment_sources(self) -> InvoicingConfig:
        netsuite = {d.name for d in self.destinations if isinstance(d, NetSuiteDestination)}
        unknown = sorted(set(self.payments.sources or []) - netsuite)
        if unknown:
            raise ValueError(f"payments.sources names {unknown}, which are not NetSuite destinations; "
                             f"known: {sorted(netsuite)}")
        return self


# -------------------------------------------------------------------------------------- triggers
class BalanceBelow(_Model):
    """A prepaid balance under an absolute amount or a share of its original credit.

    The original is the sum of the balance's credit transactions (m3ter's ``totalCreditAmount``),
    so a top-up raises it. ``balance_codes``/``product_codes`` narrow which balances count.
    """

    amount: float | None = None
    percent_of_original: float | None = Field(None, gt=0, le=100)
    balance_codes: list[str] | None = Field(
        None, description="Only balances whose code matches one of these shell patterns (e.g. 'prepaid-*')")
    product_codes: list[str] | None = Field(
        None, description="Only balances that draw down for one of these m3ter product codes")

    @model_validator(mode="after")
    def _one(self) -> BalanceBelow:
        if (self.amount is None) == (self.percent_of_original is None):
            raise ValueError("give exactly one of 'amount' or 'percent_of_original'")
        return self


class UsageOverLimit(_Model):
    """Usage of one meter, aggregated per account over the current (calendar-month) billing period."""

    meter: str
    limit: float
    aggregation: Literal["SUM", "COUNT", "MAX"] = "SUM"
    field: str = Field("quantity", description="Meter measure field the aggregation runs over")


class Condition(_Model):
    balance_below: BalanceBelow | None = None
    usage_over_limit: UsageOverLimit | None = None
    contract_ending_within_days: int | None = Field(None, ge=0)
    contract_ended: bool | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        set_fields = [k for k, v in self.__dict__.items() if v is not None]
        if len(set_fields) != 1:
            raise ValueError(f"a condition needs exactly one kind, got {set_fields or 'none'}")
        return self

    @property
    def kind(self) -> str:
        """``balance_below`` | ``usage_over_limit`` | ``contract_ending`` | ``contract_ended``."""
        if self.balance_below is not None:
            return "balance_below"
        if self.usage_over_limit is not None:
            return "usage_over_limit"
        return "contract_ending" if self.contract_ending_within_days is not None else "contract_ended"


NEXT_BALANCE_CODE_FIELDS = ("code", "series", "start", "end")


class OpenNextBalance(_Model):
    """Open the firing balance's next period: a new balance like it, credited once.

    The new balance keeps the currency, products, draw-down and rollover settings (and the contract
    while it still runs). m3ter balances cover one period each, so a prepaid customer who used up
    this period's credit gets the next period opened (at the balance's end, or right away with
    ``start: event_time``) instead of an empty account. The new balance's code is derived from the
    firing balance and the new period's start, which is what makes re-runs and retries find it
    instead of opening another.
    """

    amount: float | None = Field(
        None, ge=0, description="Credit of the new balance; default: the firing balance's initial credit "
                                "(m3ter's initialCreditAmount; top-ups during the period are not carried over)")
    months: int | None = Field(
        None, ge=1, le=120, description="Length of the new period in calendar months; default: the firing "
                                        "balance's length (whole months when it spans whole months)")
    start: Literal["balance_end", "event_time"] = Field(
        "balance_end", description="Where the new period starts: the firing balance's endDate, or the firing's "
                                   "event time (the old balance then keeps running until its own end)")
    code: str = Field(
        "{series}-{start:%Y%m%d}",
        description="Code of the new balance. Placeholders: {code} (firing balance code), {series} (that code "
                    "without a trailing -YYYYMMDD, so codes don't grow period after period), {start}, {end} "
                    "(date-times; strftime format after ':'). Must contain {start}")

    @model_validator(mode="after")
    def _code_pattern(self) -> OpenNextBalance:
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(self.code) if name is not None}
            unknown = sorted(n for n in names if n not in NEXT_BALANCE_CODE_FIELDS)
            if unknown:
                raise ValueError(f"unknown placeholder(s) {unknown}; known: {list(NEXT_BALANCE_CODE_FIELDS)}")
            at = datetime(2026, 1, 1, tzinfo=UTC)
            self.code.format(code="prepaid-x", series="prepaid-x", start=at, end=at)
        except (ValueError, IndexError, KeyError) as exc:
            raise ValueError(f"code {self.code!r} is not a valid pattern: {exc}") from None
        if "start" not in names:
            raise ValueError(f"code {self.code!r} must contain {{start}} so each period gets its own code")
        return self


ACTION_KINDS = ("switch_plan", "top_up_balance", "reset_balance_to", "open_next_balance", "set_custom_fields",
                "update_crm_fields", "notify")


class Action(_Model):
    """One step of a rule; exactly one kind per list item, run in the order listed."""

    switch_plan: str | None = Field(
        None, description="m3ter plan code to attach: the current plan of the same product ends at the event time")
    top_up_balance: float | None = Field(None, gt=0, description="Credit added to the firing balance (type top_up)")
    reset_balance_to: float | None = Field(None, ge=0, description="Balance amount after the reset")
    open_next_balance: OpenNextBalance | None = Field(
        None, description="Open the firing balance's next period (balance_below rules only); "
                          "`{}` for the defaults")
    set_custom_fields: dict[str, str | float] | None = None
    custom_fields_on: Literal["account", "accountplan"] = Field(
        "account", description="Where set_custom_fields writes: the account or its current account plan")
    update_crm_fields: dict[str, str] | None = Field(
        None, description="CRM field -> value on the account's CRM record (found through m3ter external "
                          "mappings). Prefix a key with a crm.sources name to target that source only, or "
                          "with 'salesforce.' / 'hubspot.' to target every source of that type")
    notify: str | None = Field(None, description="Notifier name from alerting.notifiers")

    @model_validator(mode="after")
    def _exactly_one(self) -> Action:
        kinds = [k for k in ACTION_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"an action needs exactly one kind, got {kinds or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ACTION_KINDS if getattr(self, k) is not None)


class TriggerRule(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Unique; part of every firing key")
    enabled: bool = True
    when: Condition
    actions: list[Action] = Field(min_length=1)
    accounts: list[str] | None = Field(None, description="Only these account codes")
    notification_code: str | None = Field(
        None, description="Code of the m3ter notification `m3sh triggers sync-notifications` manages for this "
                          "rule (default m3sh_<name>); only balance rules have one")



class WatchRule(TriggerRule):
    """A condition a sensor or trigger watches: a :class:`TriggerRule` whose actions may be empty,
    because a stand-alone sensor's actions are the tasks downstream of it (never in m3sh.yaml)."""

    actions: list[Action] = Field(default_factory=list)

# -------------------------------------------------------------------------------------- alerting
class Notifier(_Model):
    name: str
    type: Literal["email", "slack_webhook", "sns", "webhook"]
    conn_id: str
    to: list[str] | None = Field(None, description="email recipients")
    target: str | None = Field(None, description="SNS topic ARN or webhook path")


class AlertingConfig(_Model):
    notifiers: list[Notifier] = Field(default_factory=list)
    on_failure: list[str] = Field(default_factory=list, description="Notifier names for failed tasks")
    on_retry: list[str] = Field(default_factory=list)
    on_conflict: list[str] = Field(
        default_factory=list, description="Notifier names told when m3sh_crm_sync's m3ter -> CRM step finds "
                                          "fields changed in m3ter and in a CRM since the last sync")
    send_resolved: bool = Field(True, description="Send a 'resolved' message when an alerted task succeeds again")
    ui_base_url: str = "http://localhost:8080"


class DagDefaults(_Model):
    """Retry policy every m3sh task gets (exponential backoff between tries)."""

    retries: int = Field(3, ge=0, le=20)
    retry_delay_s: float = Field(20, ge=0)
    max_retry_delay_s: float = Field(600, ge=0)
    start_date: date = Field(date(2026, 11, 1), description="First data interval of the scheduled DAGs")


# ------------------------------------------------------------------------------------- analytics
AnalyticsTable = Literal["usage_daily", "bills", "bill_line_items", "balances", "balance_transactions",
                         "account_plans", "accounts", "account_links", "bill_links", "invoice_payments"]
ANALYTICS_TABLES: tuple[AnalyticsTable, ...] = (
    "usage_daily", "bills", "bill_line_items", "balances", "balance_transactions", "account_plans", "accounts",
    "account_links", "bill_links", "invoice_payments")


class AnalyticsConfig(_Model):
    """``m3sh_analytics_export``: one day of m3ter data per run, as Parquet in S3 for BI tools.

    Files land under ``s3://<bucket>/<prefix><table>/date=YYYY-MM-DD/part-0.parquet`` with a
    ``_manifest.json`` beside each (see docs/analytics.md for the schemas and the reader protocol).
    """

    enabled: bool = Field(True, description="Build the m3sh_analytics_export DAG")
    source: Literal["api", "data_export"] = Field(
        "api",
        description="'api' pages m3ter's API; 'data_export' uses m3ter's ad-hoc data export jobs for usage "
                    "(the org must have data exports enabled); other tables always come from the API")
    conn_id: str | None = Field(None, description="aws connection; default: storage.conn_id")
    bucket: str | None = Field(None, description="Bucket; default: storage.bucket")
    prefix: str | None = Field(None, description="Key prefix ending in '/'; default: '<storage.prefix>analytics/'")
    tables: list[AnalyticsTable] = Field(default_factory=lambda: list(ANALYTICS_TABLES),
                                         description="Tables exported on every run")
    start_date: date | None = Field(
        None, description="First day exported (backfills go back to it); default: dag_defaults.start_date")
    catchup: bool = Field(True, description="Run missed days (backfill) after a pause or a later start_date")
    max_active_runs: int = Field(4, ge=1, le=64, description="Days exported in parallel during a backfill")
    export_timeout_s: float = Field(900, gt=0, description="How long a data export job may take (data_export)")
    export_poll_s: float = Field(5, gt=0, description="Data export job polling interval (data_export)")


# ---------------------------------------------------------------------------------------- root
class M3shConfig(_Model):
    version: Literal[1] = 1
    m3ter: M3terConfig = M3terConfig()
    storage: StorageConfig = StorageConfig()
    crm: CrmSyncConfig = CrmSyncConfig()
    usage: UsageConfig = UsageConfig()
    invoicing: InvoicingConfig = InvoicingConfig()
    triggers: list[TriggerRule] = Field(default_factory=list)
    alerting: AlertingConfig = AlertingConfig()
    owner: str = "m3sh"
    dag_defaults: DagDefaults = DagDefaults()
    analytics: AnalyticsConfig = AnalyticsConfig()

    def reference_errors(self) -> list[tuple[tuple[int | str, ...], str]]:
        """Cross-references between sections, as (location, message) so errors can carry lines."""
        errors: list[tuple[tuple[int | str, ...], str]] = []

        def unique(items: list[str], loc: tuple[int | str, ...], what: str) -> set[str]:
            seen: set[str] = set()
            for i, n in enumerate(items):
                if n in seen:
                    errors.append(((*loc, i, "name"), f"duplicate {what} name {n!r}"))
                seen.add(n)
            return seen

        unique([s.name for s in self.crm.sources], ("crm", "sources"), "CRM source")
        errors.extend(self._crm_source_errors())
        unique([f.name for f in self.usage.feeds], ("usage", "feeds"), "usage feed")
        unique([r.name for r in self.triggers], ("triggers",), "trigger rule")
        dests = unique([d.name for d in self.invoicing.destinations], ("invoicing", "destinations"), "destination")
        notifiers = unique([n.name for n in self.alerting.notifiers], ("alerting", "notifiers"), "notifier")
        for i, route in enumerate(self.invoicing.routes):
            for j, target in enumerate(route.to):
                if target not in dests:
                    errors.append((("invoicing", "routes", i, "to", j),
                                   f"unknown destination {target!r}; known: {sorted(dests)}"))
        for section in ("on_failure", "on_retry", "on_conflict"):
            for j, name in enumerate(getattr(self.alerting, section)):
                if name not in notifiers:
                    errors.append((("alerting", section, j), f"unknown notifier {name!r}; known: {sorted(notifiers)}"))
        plans = self.known_plans()
        for i, rule in enumerate(self.triggers):
            for j, action in enumerate(rule.actions):
                if action.notify and action.notify not in notifiers:
                    errors.append((("triggers", i, "actions", j, "notify"),
                                   f"unknown notifier {action.notify!r}; known: {sorted(notifiers)}"))
                errors.extend(((("triggers", i, "actions", j, *loc), msg)
                               for loc, msg in self._action_errors(action, plans)))
                if action.open_next_balance is not None and rule.when.kind != "balance_below":
                    errors.append((("triggers", i, "actions", j, "open_next_balance"),
                                   f"rule {rule.name!r}: open_next_balance opens the next period of the balance "
                                   f"that fired, and only balance_below rules have one (this rule's condition "
                                   f"is {rule.when.kind})"))
        return errors

    def _crm_source_errors(self) -> list[tuple[tuple[int | str, ...], str]]:
        """Several sources of one CRM type: names, type-keyed mapping ownership, destinations' orgs."""
        errors: list[tuple[tuple[int | str, ...], str]] = []
        sources = self.crm.sources
        types = get_args(CrmType)
        for i, s in enumerate(sources):
            if s.name in types and s.name != s.type:
                errors.append((("crm", "sources", i, "name"),
                               f"source {s.name!r} is a {s.type} source named after another CRM type; m3ter "
                               f"mappings keyed {s.name!r} would be ambiguous: rename it"))
        for crm_type in types:
            of_type = [(i, s) for i, s in enumerate(sources) if s.type == crm_type]
            named = next((s.name for _, s in of_type if s.name == crm_type), None)
            flagged = [(i, s) for i, s in of_type if s.legacy_mappings]
            for i, s in flagged:
                if named is not None and s.name != named:
                    errors.append((("crm", "sources", i, "legacy_mappings"),
                                   f"mappings keyed {crm_type!r} belong to the source named {named!r}; "
                                   f"source {s.name!r} cannot claim them"))
            if len(flagged) > 1:
                errors.append((("crm", "sources", flagged[1][0], "legacy_mappings"),
                               f"only one {crm_type} source may own the mappings keyed {crm_type!r}; set on: "
                               f"{[s.name for _, s in flagged]}"))
        for i, dest in enumerate(self.invoicing.destinations):
            if not isinstance(dest, SalesforceDestination | HubSpotDestination):
                continue
            dest_sources = [s for s in sources if s.type == dest.type]
            if dest.crm_source is None:
                if len(dest_sources) > 1:
                    errors.append((("invoicing", "destinations", i, "crm_source"),
                                   f"several {dest.type} sources are configured ({[s.name for s in dest_sources]}): "
                                   f"name the one whose org this destination writes to in crm_source"))
            elif dest.crm_source not in {s.name for s in dest_sources}:
                errors.append((("invoicing", "destinations", i, "crm_source"),
                               f"unknown {dest.type} source {dest.crm_source!r}; "
                               f"known: {sorted(s.name for s in dest_sources)}"))
        return errors

    def crm_field_errors(self) -> list[tuple[tuple[int | str, ...], str]]:
        """Salesforce field names that cannot be read: m3sh puts them into SOQL SELECTs and reads each
        record's value by that name, so a space breaks the query and a relationship path such as
        ``Owner.Name`` (returned nested, not under that key) would read as empty on every record."""
        errors: list[tuple[tuple[int | str, ...], str]] = []
        for i, source in enumerate(self.crm.sources):
            if source.type != "salesforce":
                continue
            for loc, name in source.field_names():
                if not re.fullmatch(SF_FIELD_NAME, name):
                    errors.append((("crm", "sources", i, *loc),
                                   f"{name!r} is not a Salesforce field API name (letters, digits and underscores, "
                                   "starting with a letter; for a related record's field, use a formula field)"))
        return errors

    def reference_warnings(self) -> list[tuple[tuple[int | str, ...], str]]:
        """References that cannot be checked because nothing is declared to check them against.

        Not errors: a config written before the declarations existed must keep loading (a config
        error fails every DAG's import); ``m3sh config validate`` shows these so they get declared.
        """
        warnings: list[tuple[tuple[int | str, ...], str]] = []
        for crm_type in get_args(CrmType):
            of_type = [(i, s) for i, s in enumerate(self.crm.sources) if s.type == crm_type]
            if (len(of_type) > 1 and all(s.name != crm_type for _, s in of_type)
                    and all(s.legacy_mappings is None for _, s in of_type)):
                warnings.append((("crm", "sources", of_type[0][0], "legacy_mappings"),
                                 f"several {crm_type} sources and none owns the m3ter mappings keyed {crm_type!r} "
                                 f"(written by m3sh before mappings named the source): set legacy_mappings: true "
                                 f"on the source that wrote them, or false on each if there are none"))
        plans_declared = bool(self.known_plans())
        for i, rule in enumerate(self.triggers):
            for j, action in enumerate(rule.actions):
                loc: tuple[int | str, ...] = ("triggers", i, "actions", j)
                if action.switch_plan and not plans_declared:
                    warnings.append(((*loc, "switch_plan"), f"plan {action.switch_plan!r} is unchecked: declare the "
                                                            "plans rules may switch to in m3ter.plans"))
                if action.set_custom_fields and self.m3ter.custom_fields is None:
                    warnings.append(((*loc, "set_custom_fields"),
                                     f"custom field(s) {sorted(action.set_custom_fields)} are unchecked: declare the "
                                     f"fields m3sh writes in m3ter.custom_fields.{action.custom_fields_on}"))
        return warnings

    def known_plans(self) -> set[str]:
        """Plan codes declared anywhere in the config (what a switch_plan may name)."""
        default = {self.crm.default_plan} if self.crm.default_plan else set()
        return set(self.crm.plan_map.values()) | default | set(self.m3ter.plans)

    def _action_errors(self, action: Action, plans: set[str]) -> list[tuple[tuple[int | str, ...], str]]:
        """A trigger action's references to plans (``plans``: :meth:`known_plans`), m3ter custom
        fields and CRM fields."""
        errors: list[tuple[tuple[int | str, ...], str]] = []
        if action.switch_plan and plans and action.switch_plan not in plans:
            errors.append((("switch_plan",), f"plan {action.switch_plan!r} is not declared; declare it in "
                                             f"m3ter.plans (or crm.plan_map); declared: {sorted(plans)}"))
        target = action.custom_fields_on
        fields = self.m3ter.custom_fields
        declared = getattr(fields, target) if fields is not None else None
        for name in action.set_custom_fields or {}:
            if declared is not None and name not in declared:
                errors.append((("set_custom_fields", name),
                               f"custom field {name!r} on the {target} is not declared in "
                               f"m3ter.custom_fields.{target}; declared: {sorted(declared)}"))
        # A CRM type, configured or not: disabling or removing a CRM must not invalidate the rules
        # (such writes are skipped at run time, with the reason in the ledger); or a configured source
        # name (enabled or not); anything else is a typo.
        types = set(get_args(CrmType))
        names = {s.name for s in self.crm.sources}
        for key in action.update_crm_fields or {}:
            prefix = key.split(".", 1)[0] if "." in key else None
            if prefix is not None and prefix not in types | names:
                errors.append((("update_crm_fields", key),
                               f"{key!r} targets CRM {prefix!r}; a prefix names a CRM source "
                               f"{sorted(names)} or a CRM type (every source of it) {sorted(types)}"))
        return errors

    def destination(self, name: str) -> Any:
        return next(d for d in self.invoicing.destinations if d.name == name)


# --------------------------------------------------------------------------- loading with lines
_SCALARS = yaml.SafeLoader("")  # only its scalar constructors are used (ints, floats, dates, bools)

_MAX_DEPTH = 64


def _construct(node: yaml.Node, source: str = "m3sh.yaml", depth: int = 0) -> Any:
    """Plain Python data from a YAML node (safe: only scalars, lists and string-keyed maps).

    Anything unreadable (a bad date, an unknown tag, a list as a key, an alias that contains
    itself) becomes a :class:`ConfigError` naming the file and line, never a bare exception.
    """
    line = node.start_mark.line + 1
    if depth > _MAX_DEPTH:
        raise ConfigError(f"{source}:{line} nested deeper than {_MAX_DEPTH} levels (an alias that contains itself?)")
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        seen: dict[Any, int] = {}
        for k, v in node.value:
            key = _construct(k, source, depth + 1)
            if isinstance(key, list | dict):
                raise ConfigError(f"{source}:{k.start_mark.line + 1} a key must be a plain name, not a list or mapping")
            if key in seen:  # PyYAML keeps the last silently: one of the two would be ignored
                raise ConfigError(f"{source}:{k.start_mark.line + 1} duplicate key {key!r} (first at line "
                                  f"{seen[key]}); YAML keeps only the last one")
            seen[key] = k.start_mark.line + 1
            out[key] = _construct(v, source, depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, source, depth + 1) for v in node.value]
    try:
        return _SCALARS.construct_object(node)
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        why = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ConfigError(f"{source}:{line} cannot read the value {str(node.value)[:60]!r}: {why}") from None


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == part), None)
            if match is None:
                tag = next((v.value for k, v in node.value if k.value == "type"), None)
                if part == tag:
                    continue  # pydantic's discriminated-union tag, not a YAML key
                return line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            continue  # discriminator tags and the like are not YAML nodes
        line = node.start_mark.line + 1
    return line


# Characters str.splitlines() breaks on: a key or value holding one must not split a problem line.
_LINE_BREAKS = {c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}


def _one_line(text: str) -> str:
    return text.translate(_LINE_BREAKS)


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue  # pydantic's marker for an error in a map's key, which the path already ends with
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.isprintable():
            out += f"[{part!r}]"  # a key of control characters, shown as Python would write it
        elif part in {"netsuite", "salesforce", "hubspot", "s3", "webhook"} and out.endswith("]"):
            continue  # the discriminated-union tag pydantic adds to the location
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_config(text: str, source: str = "m3sh.yaml") -> M3shConfig:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else f"{source}:1"
        raise ConfigError(f"{where} not valid YAML: {exc}") from None
    data = _construct(root, source) if root is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1 the top level must be a mapping of sections")
    problems: list[tuple[tuple[int | str, ...], str]] = []
    try:
        config = M3shConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; see the config reference in the README)"
            problems.append((tuple(err["loc"]), msg))
    else:
        problems = config.reference_errors() + config.crm_field_errors()
    if problems:
        lines = [f"{source}:{_line_of(root, loc)} {_format_loc(loc)}: {_one_line(msg)}" for loc, msg in problems]
        raise ConfigError(f"invalid m3sh config ({len(lines)} problem(s)):\n  " + "\n  ".join(lines))
    return config


def config_warnings(config: M3shConfig, text: str, source: str = "m3sh.yaml") -> list[str]:
    """``path:line location: message`` for each reference ``config`` (parsed from ``text``) leaves unchecked."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    return [f"{source}:{_line_of(root, loc)} {_format_loc(loc)}: {msg}" for loc, msg in config.reference_warnings()]


def _dags_folder_config() -> Path | None:
    """``m3sh.yaml`` in Airflow's DAGs folder, where ``m3sh init`` writes it, when running inside Airflow.

    Only when Airflow's configuration is already loaded (DAG parsing, tasks): the ``m3sh`` CLI must not
    import Airflow.
    """
    airflow_configuration = sys.modules.get("airflow.configuration")
    if airflow_configuration is None:
        return None
    try:
        folder = airflow_configuration.conf.get("core", "dags_folder")
    except Exception:  # a half-initialised Airflow config: fall back to the other sources
        return None
    candidate = Path(folder) / CONFIG_FILE_NAME
    return candidate if candidate.is_file() else None


def _config_path(path: str | os.PathLike[str] | None) -> Path:
    """Explicit path, else ``$M3SH_CONFIG``, else ``m3sh.yaml`` in Airflow's DAGs folder, else the demo config."""
    if path:
        return Path(path)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return _dags_folder_config() or DEFAULT_CONFIG_PATH


def read_config_text(path: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """The config's text and its name for messages (default: ``$M3SH_CONFIG`` or the demo config)."""
    p = _config_path(path)
    try:
        return p.read_text(), str(p)
    except OSError as exc:
        if p == DEFAULT_CONFIG_PATH and not path:
            raise ConfigError(
                f"no m3sh config: set {CONFIG_ENV} to your m3sh.yaml, or put one in the Airflow DAGs folder "
                "(`m3sh init DAGS_FOLDER` writes a starter)") from None
        raise ConfigError(f"cannot read m3sh config {p}: {exc.strerror}") from None


def load_config(path: str | os.PathLike[str] | None = None) -> M3shConfig:
    """Read and validate a config file (default: ``$M3SH_CONFIG`` or the shipped demo config)."""
    text, source = read_config_text(path)
    return parse_config(text, source=source)


@lru_cache(maxsize=8)
def _cached(path: str, mtime: float) -> M3shConfig:
    return load_config(path)


def get_config(path: str | None = None) -> M3shConfig:
    """Config for DAG files: cached per file and modification time so parsing stays cheap."""
    p = _config_path(path)
    return _cached(str(p), p.stat().st_mtime if p.exists() else 0.0)
