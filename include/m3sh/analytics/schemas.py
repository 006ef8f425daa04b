"""The stable, documented Parquet schema of every analytics table.

Schemas are explicit (never inferred from the data), so an empty day, a null-only column or a new
field in m3ter's API never changes a file's schema: BI tools can rely on column names and types.
A change that renames, retypes or drops a column bumps :data:`SCHEMA_VERSION`; adding a nullable
column at the end does not. The version is in every partition's ``_manifest.json`` and in the
Parquet file's key-value metadata (``m3sh.schema_version``).

The partition key ``date`` (the exported day, UTC) is not a column in the files: it is the
``date=YYYY-MM-DD`` directory, which DuckDB, pandas, Spark and Athena read as a hive partition.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 1

_TS = pa.timestamp("us", tz="UTC")


def _f(name: str, typ: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, typ, nullable=nullable, metadata={"doc": doc})


@dataclass(frozen=True)
class TableSpec:
    name: str
    doc: str
    grain: str  # what one row is
    selection: str  # which rows belong to the day's partition
    schema: pa.Schema
    sort_by: tuple[str, ...]  # deterministic row order, so a re-run writes identical files

    def fingerprint(self) -> str:
        """Short hash of the column names and types (readers can detect drift cheaply)."""
        text = ";".join(f"{f.name}:{f.type}:{f.nullable}" for f in self.schema)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_ACCOUNT = [
    _f("account_id", pa.string(), "m3ter account id", nullable=False),
    _f("account_code", pa.string(), "m3ter account code"),
]

TABLES: dict[str, TableSpec] = {}


def _table(name: str, doc: str, grain: str, selection: str, fields: list[pa.Field], *,
           sort_by: tuple[str, ...]) -> None:
    TABLES[name] = TableSpec(name, doc, grain, selection, pa.schema(fields), sort_by)


_table(
    "usage_daily", "Usage aggregated per account, meter, measure field and day (m3ter usage query, "
    "grouped by ACCOUNT and TIME with DAY frequency).",
    "account x meter x measure field", "measurements timestamped in [date, date+1) UTC",
    [*_ACCOUNT,
     _f("meter_id", pa.string(), "m3ter meter id", nullable=False),
     _f("meter_code", pa.string(), "m3ter meter code"),
     _f("measure", pa.string(), "meter MEASURE field code (e.g. quantity)", nullable=False),
     _f("value_sum", pa.float64(), "SUM of the field over the day"),
     _f("value_min", pa.float64(), "MIN of the field over the day"),
     _f("value_max", pa.float64(), "MAX of the field over the day"),
     _f("measurement_count", pa.int64(), "number of measurements of the meter that day")],
    sort_by=("account_id", "meter_id", "measure"))

_table(
    "bills", "m3ter bills, one row each.", "bill", "bills whose billDate is the day",
    [_f("bill_id", pa.string(), "m3ter bill id", nullable=False), *_ACCOUNT,
     _f("bill_date", pa.date32(), "billDate"),
     _f("start_date", pa.date32(), "first day of the billing period"),
     _f("end_date", pa.date32(), "day after the billing period (exclusive)"),
     _f("due_date", pa.date32(), "dueDate"),
     _f("status", pa.string(), "PENDING | APPROVED"),
     _f("locked", pa.bool_(), "locked bills are final"),
     _f("currency", pa.string(), "ISO currency code"),
     _f("bill_total", pa.float64(), "billTotal (sum of the line item subtotals)"),
     _f("line_item_count", pa.int32(), "number of rows of this bill in bill_line_items"),
     _f("invoice_number", pa.string(), "sequentialInvoiceNumber"),
     _f("purchase_order_number", pa.string(), "purchaseOrderNumber"),
     _f("billing_frequency", pa.string(), "billingFrequency"),
     _f("bill_job_id", pa.string(), "bill job that last (re)calculated the bill"),
     _f("last_calculated_at", _TS, "lastCalculatedDate"),
     _f("last_modified_at", _TS, "dtLastModified")],
    sort_by=("bill_id",))

_table(
    "bill_line_items", "Line items of the bills in the same day's bills partition.", "bill line item",
    "line items of bills whose billDate is the day",
    [_f("bill_id", pa.string(), "m3ter bill id", nullable=False),
     _f("line_item_id", pa.string(), "m3ter line item id", nullable=False), *_ACCOUNT,
     _f("bill_date", pa.date32(), "billDate of the bill"),
     _f("line_item_type", pa.string(), "STANDING_CHARGE | USAGE | BALANCE_CONSUMED | ..."),
     _f("description", pa.string(), "line description"),
     _f("product_id", pa.string(), "m3ter product id (null for balance lines)"),
     _f("product_code", pa.string(), "m3ter product code"),
     _f("product_name", pa.string(), "m3ter product name"),
     _f("plan_id", pa.string(), "m3ter plan id"),
     _f("plan_code", pa.string(), "m3ter plan code"),
     _f("meter_id", pa.string(), "meter of a usage line"),
     _f("meter_code", pa.string(), "meter code of a usage line"),
     _f("balance_id", pa.string(), "balance drawn down by a BALANCE_CONSUMED line"),
     _f("quantity", pa.float64(), "quantity"),
     _f("unit", pa.string(), "unit"),
     _f("unit_price", pa.float64(), "averageUnitPrice"),
     _f("subtotal", pa.float64(), "subtotal in the bill currency (negative for balance consumed)"),
     _f("converted_subtotal", pa.float64(), "convertedSubtotal"),
     _f("currency", pa.string(), "ISO currency code"),
     _f("service_period_start", _TS, "servicePeriodStartDate"),
     _f("service_period_end", _TS, "servicePeriodEndDate (exclusive)"),
     _f("sequence_number", pa.int32(), "position on the bill")],
    sort_by=("bill_id", "sequence_number", "line_item_id"))

_table(
    "balances", "Balances as of the end of the day, rebuilt from their transactions (so a backfill shows "
    "the balance as it was, not as it is now).", "balance",
    "balances whose [startDate, endDate) overlaps the day",
    [_f("balance_id", pa.string(), "m3ter balance id", nullable=False),
     _f("balance_code", pa.string(), "m3ter balance code"),
     _f("name", pa.string(), "balance name"), *_ACCOUNT,
     _f("contract_id", pa.string(), "m3ter contract id"),
     _f("currency", pa.string(), "ISO currency code"),
     _f("start_date", _TS, "startDate"),
     _f("end_date", _TS, "endDate (exclusive)"),
     _f("credits_to_date", pa.float64(), "sum of positive transactions dated before the end of the day"),
     _f("debits_to_date", pa.float64(), "sum of negative transactions (as a positive number), same cut-off"),
     _f("closing_amount", pa.float64(), "credits_to_date - debits_to_date"),
     _f("transaction_count", pa.int64(), "transactions dated before the end of the day")],
    sort_by=("balance_id",))

_table(
    "balance_transactions", "Balance transactions (credits, top-ups, draw-downs).", "transaction",
    "transactions whose transactionDate is in the day",
    [_f("transaction_id", pa.string(), "m3ter transaction id", nullable=False),
     _f("balance_id", pa.string(), "m3ter balance id", nullable=False),
     _f("balance_code", pa.string(), "m3ter balance code"), *_ACCOUNT,
     _f("currency", pa.string(), "balance currency"),
     _f("amount", pa.float64(), "positive = credit, negative = debit"),
     _f("transaction_date", _TS, "transactionDate"),
     _f("applied_date", _TS, "appliedDate"),
     _f("description", pa.string(), "description"),
     _f("entity_type", pa.string(), "what caused it: BILL, SERVICE_USER, SCHEDULER, ..."),
     _f("entity_id", pa.string(), "id of that entity (e.g. the bill)"),
     _f("transaction_type_id", pa.string(), "m3ter transaction type id"),
     _f("transaction_type_code", pa.string(), "m3ter transaction type code")],
    sort_by=("transaction_id",))

_table(
    "account_plans", "Plans attached to accounts during the day.", "account plan",
    "account plans whose [startDate, endDate) overlaps the day",
    [_f("account_plan_id", pa.string(), "m3ter account plan id", nullable=False), *_ACCOUNT,
     _f("plan_id", pa.string(), "m3ter plan id"),
     _f("plan_code", pa.string(), "m3ter plan code"),
     _f("plan_name", pa.string(), "m3ter plan name"),
     _f("product_id", pa.string(), "m3ter product id"),
     _f("product_code", pa.string(), "m3ter product code"),
     _f("contract_id", pa.string(), "m3ter contract id"),
     _f("start_date", _TS, "startDate"),
     _f("end_date", _TS, "endDate (exclusive; null = open)")],
    sort_by=("account_id", "start_date", "account_plan_id"))

_table(
    "accounts", "Every m3ter account, with the CRM m3sh links it to (a daily snapshot).", "account",
    "all accounts at export time",
    [*_ACCOUNT,
     _f("name", pa.string(), "account name"),
     _f("currency", pa.string(), "billing currency"),
     _f("country", pa.string(), "country (m3sh custom field or address)"),
     _f("crm_source", pa.string(), "primary CRM source (name in m3sh.yaml): the linked CRM with the lowest "
                                   "priority number; 'none' when the account has no CRM link"),
     _f("crm_sources", pa.string(), "every CRM source linked, comma-separated, sorted"),
     _f("crm_id", pa.string(), "record id in the primary CRM"),
     _f("subsidiary", pa.string(), "m3ter custom field 'subsidiary'"),
     _f("created_at", _TS, "dtCreated")],
    sort_by=("account_id",))

_table(
    "account_links", "Identifiers of each account in the CRMs and ERPs m3sh links it to: m3ter external "
    "mappings (CRM records) and m3sh's invoicing ledger (ERP customers).", "account x external record",
    "all links at export time",
    [*_ACCOUNT,
     _f("system", pa.string(), "external system: CRM type (salesforce, hubspot) or ERP destination name",
        nullable=False),
     _f("system_type", pa.string(), "salesforce | hubspot | netsuite | ..."),
     _f("external_table", pa.string(), "external object (Account, companies, customer)"),
     _f("external_id", pa.string(), "record id in that system", nullable=False),
     _f("origin", pa.string(), "m3ter_external_mapping | m3sh_invoicing_ledger")],
    sort_by=("account_id", "system", "external_table", "external_id"))

_table(
    "bill_links", "Where each bill of the day's bills partition was delivered (m3sh invoicing ledger).",
    "bill x destination", "deliveries of bills whose billDate is the day",
    [_f("bill_id", pa.string(), "m3ter bill id", nullable=False), *_ACCOUNT,
     _f("destination", pa.string(), "destination name in m3sh.yaml", nullable=False),
     _f("destination_type", pa.string(), "netsuite | salesforce | hubspot | s3 | webhook"),
     _f("remote_id", pa.string(), "record id in the destination (NetSuite internal id, ...)"),
     _f("delivered_at", _TS, "when m3sh delivered it"),
     _f("total", pa.float64(), "total sent"),
     _f("currency", pa.string(), "currency sent")],
    sort_by=("bill_id", "destination"))

_table(
    "invoice_payments", "Payment state of each invoice m3sh exported to NetSuite, as the payments step of "
    "m3sh_invoice_sync last read it (invoicing.payments; empty while that is off). A daily snapshot.",
    "bill x NetSuite destination", "all payment states at export time",
    [_f("bill_id", pa.string(), "m3ter bill id (the NetSuite invoice's external id)", nullable=False),
     _f("destination", pa.string(), "NetSuite destination name in m3sh.yaml", nullable=False),
     _f("invoice_id", pa.string(), "NetSuite internal id"),
     _f("invoice_number", pa.string(), "NetSuite tranid"),
     _f("state", pa.string(), "paid | partly_paid | overdue | open"),
     _f("payment_text", pa.string(), "what the CRMs show, e.g. 'partly paid 40.00 remaining'"),
     _f("total", pa.float64(), "foreigntotal (transaction currency)"),
     _f("amount_paid", pa.float64(), "foreignamountpaid"),
     _f("amount_remaining", pa.float64(), "foreignamountunpaid"),
     _f("currency", pa.string(), "transaction currency"),
     _f("due_date", pa.date32(), "duedate"),
     _f("as_of", pa.date32(), "the logical date the state (overdue or not) was derived for"),
     _f("netsuite_modified", pa.string(), "lastmodifieddate as NetSuite wrote it (the account's time zone)"),
     _f("read_at", _TS, "when the payments step read it")],
    sort_by=("bill_id", "destination"))


def spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown analytics table {name!r}; known: {sorted(TABLES)}") from None


def schema_markdown() -> str:
    """The schema reference in docs/analytics.md (kept in sync by a test)."""
    out = [f"Schema version **{SCHEMA_VERSION}**.", ""]
    for t in TABLES.values():
        out += [f"### `{t.name}`", "", t.doc, "",
                f"One row per {t.grain}; the `date=` partition holds {t.selection}.", "",
                "| column | type | null | meaning |", "|---|---|---|---|"]
        for f in t.schema:
            doc = (f.metadata or {}).get(b"doc", b"").decode().replace("|", "\\|")
            out.append(f"| `{f.name}` | {f.type} | {'yes' if f.nullable else 'no'} | {doc} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
