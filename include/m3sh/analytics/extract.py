"""One day of m3ter data, as rows of the analytics tables (``source: api``).

Everything is read through :class:`~m3sh.hooks.m3ter.M3terHook` (paged list endpoints and the usage
query) plus m3sh's own invoicing ledger in S3 for the ERP identifiers. Reference data (accounts,
meters, plans, products) is listed once per task and cached on the :class:`DayExtract`.
Rows are plain dicts keyed by the column names in :mod:`m3sh.analytics.schemas`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from m3sh.exceptions import ConfigError

if TYPE_CHECKING:
    from m3sh.config import M3shConfig
    from m3sh.hooks.m3ter import M3terHook
    from m3sh.storage import Storage

log = logging.getLogger(__name__)
Row = dict[str, Any]
USAGE_QUERY_LIMIT = 20_000
USAGE_FUNCTIONS = ("SUM", "MIN", "MAX", "COUNT")


def parse_ts(value: Any) -> dt.datetime | None:
    """m3ter date-times (``...Z``), dates (``YYYY-MM-DD``) or None -> aware UTC datetime."""
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    parsed = dt.datetime.fromisoformat(text) if "T" in text else dt.datetime.combine(
        dt.date.fromisoformat(text), dt.time(0))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def parse_date(value: Any) -> dt.date | None:
    return dt.date.fromisoformat(str(value)[:10]) if value else None


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _overlaps(start: Any, end: Any, day_start: dt.datetime, day_end: dt.datetime) -> bool:
    s, e = parse_ts(start), parse_ts(end)
    return (s is None or s < day_end) and (e is None or e > day_start)


class DayExtract:
    """The rows of every table for one UTC day ``[day, day + 1)``."""

    def __init__(self, hook: M3terHook, cfg: M3shConfig, day: dt.date, storage: Storage | None = None) -> None:
        self.hook = hook
        self.cfg = cfg
        self.day = day
        self.start = dt.datetime.combine(day, dt.time(0), dt.UTC)
        self.end = self.start + dt.timedelta(days=1)
        self.storage = storage  # m3sh state bucket: the invoicing ledger lives there

    # -- reference data (listed once) --------------------------------------------------------------
    @cached_property
    def accounts(self) -> dict[str, dict[str, Any]]:
        return {a["id"]: a for a in self.hook.list_accounts()}

    @cached_property
    def meters(self) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for m in self.hook.list_meters()}

    @cached_property
    def plans(self) -> dict[str, dict[str, Any]]:
        return {p["id"]: p for p in self.hook.list_plans()}

    @cached_property
    def products(self) -> dict[str, dict[str, Any]]:
        return {p["id"]: p for p in self.hook.list_products()}

    @cached_property
    def mappings(self) -> dict[str, list[dict[str, Any]]]:
        """m3ter external mappings of accounts, by m3ter account id."""
        out: dict[str, list[dict[str, Any]]] = {}
        for m in self.hook.list_external_mappings():
            if str(m.get("m3terEntity", "")).lower() == "account":
                out.setdefault(str(m["m3terId"]), []).append(m)
        return out

    @cached_property
    def bills(self) -> list[dict[str, Any]]:
        """Bills dated the day, with their line items."""
        return list(self.hook.list_bills(bill_date=self.day.isoformat()))

    @cached_property
    def balances(self) -> list[dict[str, Any]]:
        return [b for b in self.hook.list_balances()
                if _overlaps(b.get("startDate"), b.get("endDate"), self.start, self.end)]

    @cached_property
    def transactions(self) -> dict[str, list[dict[str, Any]]]:
        """Every transaction of the day's balances, by balance id (200 per page, m3ter's maximum)."""
        return {b["id"]: list(self.hook.list_balance_transactions(b["id"]))
                for b in self.balances}

    @cached_property
    def transaction_types(self) -> dict[str, str]:
        return {t["id"]: str(t.get("code") or t.get("name") or t["id"]) for t in
                self.hook.list_transaction_types()}

    def code_of(self, account_id: str | None) -> str | None:
        return (self.accounts.get(account_id or "") or {}).get("code")

    # -- tables ------------------------------------------------------------------------------------
    def rows(self, table: str) -> list[Row]:
        fn: Callable[[], Iterable[Row]] | None = getattr(self, f"table_{table}", None)
        if fn is None:
            raise ConfigError(f"analytics table {table!r} has no extractor")
        return list(fn())

    def usage_query_rows(self) -> list[dict[str, Any]]:
        """m3ter usage query for the day, grouped by account and day, every MEASURE field of every meter."""
        meters = [m for m in self.meters.values() if self._measures(m)]
        if not meters:
            return []
        data = self._query(meters)
        if data is None:  # more than one page: one query per meter
            data = []
            for m in meters:
                part = self._query([m])
                if part is None:
                    raise RuntimeError(f"usage of meter {m.get('code')} on {self.day} exceeds {USAGE_QUERY_LIMIT} "
                                       "account rows in one query; use analytics.source: data_export")
                data += part
        return data

    @staticmethod
    def _measures(meter: dict[str, Any]) -> list[str]:
        return [f["code"] for f in meter.get("dataFields", []) + meter.get("derivedFields", [])
                if f.get("category") == "MEASURE"]

    def usage_query_body(self, meters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The day's usage query: grouped by account and day, SUM/MIN/MAX/COUNT of every MEASURE field."""
        meters = meters if meters is not None else [m for m in self.meters.values() if self._measures(m)]
        return {
            "startDate": self.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "endDate": self.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "meterIds": [m["id"] for m in meters],
            "groups": [{"groupType": "ACCOUNT"}, {"groupType": "TIME", "frequency": "DAY"}],
            "aggregations": [{"meterId": m["id"], "fieldCode": field, "fieldType": "MEASURE", "function": fn}
                             for m in meters for field in self._measures(m) for fn in USAGE_FUNCTIONS],
        }

    def _query(self, meters: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        result = self.hook.query_usage({**self.usage_query_body(meters), "limit": USAGE_QUERY_LIMIT})
        return None if result.get("hasMoreData") else list(result.get("data") or [])

    def usage_rows_from(self, data: Iterable[dict[str, Any]]) -> Iterator[Row]:
        """Usage query (or data export) rows -> ``usage_daily`` rows, one per measure field."""
        by_code = {m.get("code"): m for m in self.meters.values()}
        for r in data:
            meter = self.meters.get(r.get("meterId") or "") or by_code.get(r.get("meterCode")) or {}
            if not meter:
                raise RuntimeError(f"usage row for unknown meter {r.get('meterCode') or r.get('meterId')!r}")
            account_id = r.get("accountId") or next(
                (a["id"] for a in self.accounts.values() if a.get("code") == r.get("accountCode")), None)
            if account_id is None:
                raise RuntimeError(f"usage row for unknown account {r.get('accountCode')!r}")
            for field in self._measures(meter):
                count = r.get(f"{field}_count")
                yield {"account_id": account_id, "account_code": r.get("accountCode") or self.code_of(account_id),
                       "meter_id": meter["id"], "meter_code": meter.get("code"), "measure": field,
                       "value_sum": _num(r.get(f"{field}_sum")), "value_min": _num(r.get(f"{field}_min")),
                       "value_max": _num(r.get(f"{field}_max")),
                       "measurement_count": None if count is None else int(count)}

    def table_usage_daily(self) -> Iterable[Row]:
        return self.usage_rows_from(self.usage_query_rows())

    def table_bills(self) -> Iterable[Row]:
        for b in self.bills:
            yield {"bill_id": b["id"], "account_id": b["accountId"],
                   "account_code": b.get("accountCode") or self.code_of(b["accountId"]),
                   "bill_date": parse_date(b.get("billDate")), "start_date": parse_date(b.get("startDate")),
                   "end_date": parse_date(b.get("endDate")), "due_date": parse_date(b.get("dueDate")),
                   "status": b.get("status"), "locked": b.get("locked"), "currency": b.get("currency"),
                   "bill_total": _num(b.get("billTotal")), "line_item_count": len(b.get("lineItems") or []),
                   "invoice_number": _str(b.get("sequentialInvoiceNumber")),
                   "purchase_order_number": _str(b.get("purchaseOrderNumber")),
                   "billing_frequency": b.get("billingFrequency"), "bill_job_id": b.get("billJobId"),
                   "last_calculated_at": parse_ts(b.get("lastCalculatedDate")),
                   "last_modified_at": parse_ts(b.get("dtLastModified"))}

    def table_bill_line_items(self) -> Iterable[Row]:
        for b in self.bills:
            for li in b.get("lineItems") or []:
                plan = self.plans.get(li.get("planId") or "") or {}
                product = self.products.get(li.get("productId") or "") or {}
                meter = self.meters.get(li.get("meterId") or "") or {}
                yield {"bill_id": b["id"], "line_item_id": li["id"], "account_id": b["accountId"],
                       "account_code": b.get("accountCode") or self.code_of(b["accountId"]),
                       "bill_date": parse_date(b.get("billDate")), "line_item_type": li.get("lineItemType"),
                       "description": li.get("description"), "product_id": li.get("productId"),
                       "product_code": li.get("productCode") or product.get("code"),
                       "product_name": li.get("productName") or product.get("name"),
                       "plan_id": li.get("planId"), "plan_code": plan.get("code"),
                       "meter_id": li.get("meterId"), "meter_code": meter.get("code"),
                       "balance_id": li.get("balanceId"), "quantity": _num(li.get("quantity")),
                       "unit": li.get("unit"), "unit_price": _num(li.get("averageUnitPrice")),
                       "subtotal": _num(li.get("subtotal")), "converted_subtotal": _num(li.get("convertedSubtotal")),
                       "currency": li.get("currency") or b.get("currency"),
                       "service_period_start": parse_ts(li.get("servicePeriodStartDate")),
                       "service_period_end": parse_ts(li.get("servicePeriodEndDate")),
                       "sequence_number": li.get("sequenceNumber")}

    def _tx_date(self, tx: dict[str, Any]) -> dt.datetime | None:
        return parse_ts(tx.get("transactionDate") or tx.get("appliedDate") or tx.get("dtCreated"))

    def table_balances(self) -> Iterable[Row]:
        for b in self.balances:
            txs = [t for t in self.transactions.get(b["id"], [])
                   if (self._tx_date(t) or self.end) < self.end]
            credits = sum(float(t["amount"]) for t in txs if float(t["amount"]) > 0)
            debits = -sum(float(t["amount"]) for t in txs if float(t["amount"]) < 0)
            yield {"balance_id": b["id"], "balance_code": b.get("code"), "name": b.get("name"),
                   "account_id": b["accountId"], "account_code": self.code_of(b["accountId"]),
                   "contract_id": b.get("contractId"), "currency": b.get("currency"),
                   "start_date": parse_ts(b.get("startDate")), "end_date": parse_ts(b.get("endDate")),
                   "credits_to_date": round(credits, 6), "debits_to_date": round(debits, 6),
                   "closing_amount": round(credits - debits, 6), "transaction_count": len(txs)}

    def table_balance_transactions(self) -> Iterable[Row]:
        for b in self.balances:
            for t in self.transactions.get(b["id"], []):
                when = self._tx_date(t)
                if when is None or not self.start <= when < self.end:
                    continue
                type_id = t.get("transactionTypeId")
                yield {"transaction_id": t["id"], "balance_id": b["id"], "balance_code": b.get("code"),
                       "account_id": b["accountId"], "account_code": self.code_of(b["accountId"]),
                       "currency": b.get("currency"), "amount": _num(t.get("amount")), "transaction_date": when,
                       "applied_date": parse_ts(t.get("appliedDate")), "description": t.get("description"),
                       "entity_type": t.get("entityType"), "entity_id": t.get("entityId"),
                       "transaction_type_id": type_id,
                       "transaction_type_code": self.transaction_types.get(type_id) if type_id else None}

    def table_account_plans(self) -> Iterable[Row]:
        for ap in self.hook.list_account_plans():
            if not _overlaps(ap.get("startDate"), ap.get("endDate"), self.start, self.end):
                continue
            plan = self.plans.get(ap.get("planId") or "") or {}
            product_id = ap.get("productId") or plan.get("productId")
            yield {"account_plan_id": ap["id"], "account_id": ap["accountId"],
                   "account_code": self.code_of(ap["accountId"]), "plan_id": ap.get("planId"),
                   "plan_code": plan.get("code"), "plan_name": plan.get("name"), "product_id": product_id,
                   "product_code": (self.products.get(product_id or "") or {}).get("code"),
                   "contract_id": ap.get("contractId"), "start_date": parse_ts(ap.get("startDate")),
                   "end_date": parse_ts(ap.get("endDate"))}

    # -- links ---------------------------------------------------------------------------------------
    def table_accounts(self) -> Iterable[Row]:
        from m3sh.crm.links import SourceLinks

        resolver = SourceLinks(self.cfg.crm.sources)
        by_name = {s.name: (s.priority, s.name) for s in self.cfg.crm.sources}
        for a in self.accounts.values():
            custom = a.get("customFields") or {}
            linked: dict[str, tuple[tuple[int, str], str]] = {}  # source name -> (rank, crm id)
            # by source name (two orgs of one CRM are two sources); retired sources' links are history
            for source, crm_id in resolver.account_links(self.mappings.get(a["id"], []), enabled_only=False):
                linked.setdefault(source.name, ((source.priority, source.name), crm_id))
            if not linked:  # accounts m3sh has not linked yet: fall back to the m3ter custom field
                for name in str(custom.get("crm_source") or "").split(","):
                    if name.strip():
                        linked[name.strip()] = (by_name.get(name.strip(), (1000, name.strip())),
                                                str(custom.get("crm_id") or "") or "")
            primary = min(linked.items(), key=lambda kv: kv[1][0]) if linked else None
            yield {"account_id": a["id"], "account_code": a.get("code"), "name": a.get("name"),
                   "currency": a.get("currency"),
                   "country": _str(custom.get("country")) or _str((a.get("address") or {}).get("country")),
                   "crm_source": primary[0] if primary else "none",
                   "crm_sources": ",".join(sorted(linked)) or None,
                   "crm_id": (primary[1][1] or None) if primary else None,
                   "subsidiary": _str(custom.get("subsidiary")), "created_at": parse_ts(a.get("dtCreated"))}

    def _ledger_destinations(self) -> list[Any]:
        return [d for d in self.cfg.invoicing.destinations] if self.storage is not None else []

    def _ledger_entries(self, dest: str, wanted: Callable[[str], bool]) -> Iterator[dict[str, Any]]:
        """Ledger entries of one destination whose file name passes ``wanted`` (one listing, then GETs)."""
        from m3sh.invoicing.ledger import S3Ledger

        assert self.storage is not None
        ledger = S3Ledger(self.storage)
        for obj in self.storage.list_keys(ledger.prefix(dest)):
            name = obj["Key"].rsplit("/", 1)[-1].removesuffix(".json")
            if wanted(name):
                entry = self.storage.get_json(obj["Key"])
                if isinstance(entry, dict):
                    yield entry

    def table_account_links(self) -> Iterable[Row]:
        from m3sh.crm.links import SourceLinks

        resolver = SourceLinks(self.cfg.crm.sources)
        for account_id, maps in self.mappings.items():
            for m in maps:
                system = str(m.get("externalSystem", ""))
                source = resolver.source_of(m)  # system is a CRM source name (or a type, before names)
                yield {"account_id": account_id, "account_code": self.code_of(account_id), "system": system,
                       "system_type": source.type if source else system.lower(),
                       "external_table": m.get("externalTable"),
                       "external_id": str(m["externalId"]), "origin": "m3ter_external_mapping"}
        for dest in self._ledger_destinations():
            for e in self._ledger_entries(dest.name, lambda n: n.startswith("customer")):
                if e.get("remote_id") and e.get("account_id"):
                    yield {"account_id": e["account_id"], "account_code": self.code_of(e["account_id"]),
                           "system": dest.name, "system_type": dest.type, "external_table": "customer",
                           "external_id": str(e["remote_id"]), "origin": "m3sh_invoicing_ledger"}

    def table_bill_links(self) -> Iterable[Row]:
        bills = {b["id"]: b for b in self.bills}
        if not bills:
            return
        for dest in self._ledger_destinations():
            for e in self._ledger_entries(dest.name, lambda n: n in bills):
                b = bills[str(e.get("bill_id"))]
                yield {"bill_id": b["id"], "account_id": b["accountId"], "account_code": self.code_of(b["accountId"]),
                       "destination": dest.name, "destination_type": dest.type,
                       "remote_id": _str(e.get("remote_id")), "delivered_at": parse_ts(e.get("delivered_at")),
                       "total": _num(e.get("total")), "currency": e.get("currency")}

    def table_invoice_payments(self) -> Iterable[Row]:
        from m3sh.config import NetSuiteDestination
        from m3sh.layout import payments_states_prefix

        for dest in self._ledger_destinations():
            if not isinstance(dest, NetSuiteDestination):
                continue
            assert self.storage is not None
            for obj in self.storage.list_keys(payments_states_prefix(self.storage, dest.name)):
                e = self.storage.get_json(obj["Key"])
                if not isinstance(e, dict) or not e.get("bill_id"):
                    continue
                yield {"bill_id": str(e["bill_id"]), "destination": dest.name, "invoice_id": _str(e.get("invoice_id")),
                       "invoice_number": _str(e.get("tran_id")), "state": _str(e.get("state")),
                       "payment_text": _str(e.get("text")), "total": _num(e.get("total")),
                       "amount_paid": _num(e.get("paid")), "amount_remaining": _num(e.get("remaining")),
                       "currency": _str(e.get("currency")), "due_date": parse_date(e.get("due_date")),
                       "as_of": parse_date(e.get("as_of")), "netsuite_modified": _str(e.get("last_modified")),
                       "read_at": parse_ts(e.get("read_at"))}
